"""What runs around migratio: the local lab and the demo (systemd units, logrotate and the
Sidekiq side are files, not modules)."""
