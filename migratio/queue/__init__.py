"""Everything on Redis: clients, key names and Lua scripts, enqueueing, the RQ job and worker,
locks, recovery, the Atmosphere (Sidekiq) ingest and feedback, job views for `status`."""
