"""`make bench`: migratio against the copy ceiling and the old tool's flow, on the lab (`run` is the entry point)."""
