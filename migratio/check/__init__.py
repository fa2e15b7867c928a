"""`migratio check`: the preflight, one PASS/FAIL/SKIP line per probe, split by target.

`run` wires the probes in order; `probe` turns one outcome into a line; `local` probes this
host (config, Redis, dirs, tools), `openstack` this site's Glance and each head node, `aws` each
EC2 destination. Probes call the same clients the steps use.
"""
