"""The lab's Glance venv and pristine Glance database, made once under the lab root.

``<root>/glance-venv`` holds glance, gunicorn and glanceclient (made with uv, recorded in
its ``.lab-requirements`` marker); ``<root>/cache`` holds a db_sync'ed sqlite copied for
every site. Concurrent lab processes are serialised by file locks.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from support.lab.services import LabError, run

GLANCE_PYTHON = "3.11"
GLANCE_REQUIREMENTS = ("glance==33.0.0", "gunicorn>=23", "python-glanceclient")


@contextmanager
def file_lock(path: Path):
    """An exclusive flock on ``path`` (serialises concurrent lab processes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def find_uv() -> str:
    """``uv`` next to the running Python (e.g. the project venv's) or from PATH."""
    candidates = [str(Path(sys.executable).parent / "uv"), shutil.which("uv")]
    for uv in candidates:
        if uv and os.access(uv, os.X_OK):
            return uv
    raise LabError("uv not found on PATH nor next to " + sys.executable +
                   " (install it: python3 -m pip install uv)")


def venv_spec() -> str:
    """The exact requirement spec of the glance venv (recorded in its marker)."""
    return "\n".join([f"python {GLANCE_PYTHON}", *GLANCE_REQUIREMENTS]) + "\n"


def ensure_glance_venv(lab_root: Path) -> Path:
    """``<lab_root>/glance-venv`` with glance, gunicorn and glanceclient (idempotent)."""
    venv = Path(lab_root).resolve() / "glance-venv"
    marker = venv / ".lab-requirements"
    if marker.exists() and marker.read_text() == venv_spec():
        return venv
    with file_lock(Path(lab_root).resolve() / "glance-venv.lock"):
        if marker.exists() and marker.read_text() == venv_spec():
            return venv
        uv = find_uv()
        run([uv, "venv", "--clear", "--quiet", "--python", GLANCE_PYTHON, str(venv)])
        run([uv, "pip", "install", "--quiet", "--python", str(venv / "bin/python"),
             *GLANCE_REQUIREMENTS])
        marker.write_text(venv_spec())
    return venv


def ensure_pristine_db(lab_root: Path, venv: Path) -> Path:
    """A db_sync'ed glance sqlite under ``<lab_root>/cache`` (made once per venv spec)."""
    cache = Path(lab_root).resolve() / "cache"
    key = hashlib.sha256(venv_spec().encode()).hexdigest()[:12]
    db = cache / f"glance-pristine-{key}.sqlite"
    if db.exists():
        return db
    with file_lock(cache / "pristine-db.lock"):
        if db.exists():
            return db
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            (Path(tmp) / "glance-api.conf").write_text(
                f"[database]\nconnection = sqlite:///{tmp}/glance.sqlite\n")
            run([str(venv / "bin/glance-manage"), "--config-dir", tmp, "db_sync"], cwd=tmp)
            os.replace(Path(tmp) / "glance.sqlite", db)
    return db
