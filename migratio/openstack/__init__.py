"""OpenStack clients: Glance (API, head-node client, CLI), SSH, rsync, the stream into the
destination Glance, Nova, Keystone auth."""
