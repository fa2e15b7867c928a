"""migratio: moves Glance images from one cloud site to another."""

__version__ = "0.1.0"
