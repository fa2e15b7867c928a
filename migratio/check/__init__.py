"""`migratio check`: the preflight probes."""
