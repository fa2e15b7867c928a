"""The local test bed: two real Glance sites, site-b's head node (sshd) and Redis, on loopback.

Stdlib only, so that it also loads in the lab's Glance venv (which has no migratio):
``lab`` (the ``Lab`` and lab.json), ``services`` (Redis, sshd, Glance processes),
``glance_venv`` (the Glance venv and pristine DB), ``images`` (qcow2 files, a small Glance
client), ``config`` (a migratio config for a running lab); ``wsgi`` and ``auth`` are loaded
by gunicorn in the Glance venv. ``python3 -m support.lab`` starts, shows and stops it.
"""
