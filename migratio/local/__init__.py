"""This host: subprocesses, qemu-img, per-job work dirs, hashes."""
