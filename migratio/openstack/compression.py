"""The stream's codec, in one place: `zstd -1` on the worker, `zstd -d` on the head node.

The compressor reads the payload from a pipe (a thread writes the file into it) and the stream
reads its output in blocks, paced: the bandwidth limit caps the compressed bytes on the wire.
The head node decompresses before the staging `dd`, so the staged copy, the upload and the
verification see the payload's own bytes. Whether a payload is worth it is judged from a sample
of its data extents compressed the same way (`sample_ratio`).

Level 1, not `--adapt`: on the 2-core benchmark machine, where the destination Glance competes
for the same CPUs, `--adapt` took a paced link for a slow one and raised its level (and, in its
multi-threaded mode, used 170 MB), making capped runs slower than uncompressed ones; level 1
(about 150 MB/s here, 2.1x on real files) paid on the capped link. Unshaped, the CPU is the
limit and compressing cost up to ~20 %: hence AUTO_LIMIT (README, Performance).
"""

import os
import shutil
import subprocess
import threading
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from migratio.errors import CommandFailed
from migratio.local.commands import child_env, die_with_parent
from migratio.local.sparse import data_extents
from migratio.openstack.ssh import RemoteShell, last_line

PROGRAM = "zstd"
COMPRESS = (PROGRAM, "-q", "-c", "-1")  # stdin to stdout; also what a sample is judged by
DECOMPRESS = (PROGRAM, "-d", "-q", "-c")  # the head node's words (stdin to stdout)
MIN_RATIO = 1.1  # a sample compressing less than this is sent as it is
AUTO_LIMIT = 122070  # KiB/s (1 Gbit/s): `compress: auto` only on links capped (bandwidth_limit) at most at this
SAMPLES, SAMPLE_BYTES = 8, 1024 * 1024  # 8 windows of 1 MiB, spread over the data extents
CHUNK = 1024 * 1024
STDERR_KEPT = 4096


def link_capped(bandwidth_limit: int | None) -> bool:
    """Whether `compress: auto` may compress: the site's link is capped (KiB/s) at AUTO_LIMIT or less."""
    return bool(bandwidth_limit) and bandwidth_limit <= AUTO_LIMIT


def local_program() -> str | None:
    """The worker's zstd (on the PATH its children get), or None."""
    return shutil.which(PROGRAM, path=child_env(PROGRAM)["PATH"])


def remote_version(shell: RemoteShell, env_file: str | None) -> str | None:
    """The head node's `zstd --version` line (on the PATH the stream's line has there), or None."""
    code, out, _ = shell.run([PROGRAM, "--version"], env_file=env_file, timeout=60)
    return (last_line(out) or PROGRAM) if code == 0 else None


def sample_ratio(path: Path) -> float:
    """payload bytes / zstd -1 bytes of SAMPLES windows spread over the file's data extents
    (1.0 when the file holds no data)."""
    sample = b"".join(_windows(path))
    if not sample:
        return 1.0
    done = subprocess.run(COMPRESS, input=sample, capture_output=True, env=child_env(PROGRAM), timeout=120,
                          check=False)
    if done.returncode != 0 or not done.stdout:
        raise CommandFailed(f"zstd sampling {path} failed (exit {done.returncode}): "
                            f"{last_line(done.stderr.decode('utf-8', 'replace'))}")
    return len(sample) / len(done.stdout)


def _windows(path: Path) -> list[bytes]:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        extents = list(data_extents(f.fileno(), size))
        total = sum(end - start for start, end in extents)
        step = max(total // SAMPLES, SAMPLE_BYTES)
        windows, skipped = [], 0  # one window at every `step` bytes of data
        for start, end in extents:
            offset = start + (-skipped % step)
            while offset < end and len(windows) < SAMPLES:
                windows.append(os.pread(f.fileno(), min(SAMPLE_BYTES, end - offset), offset))
                offset += step
            skipped += end - start
        return windows


class Compressing:
    """A context: the compressor reading `source` (written into it by a thread); `read` gives its
    output. `consumed` counts the payload bytes it took so far. Leaving the context without an
    error waits for it and raises CommandFailed when it died; with an error, it is killed."""

    def __init__(self, source: BinaryIO, name: Path):
        self.source, self.name, self.consumed = source, name, 0
        self.errors: list[OSError] = []
        self.proc: subprocess.Popen | None = None
        self.writer = threading.Thread(target=self._write, daemon=True)

    def __enter__(self) -> "Compressing":
        try:
            self.proc = subprocess.Popen(COMPRESS, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, env=child_env(PROGRAM), preexec_fn=die_with_parent)
        except OSError as exc:
            raise CommandFailed(f"cannot start zstd to compress {self.name}: {exc.strerror or exc}") from None
        self.writer.start()
        return self

    def read(self, n: int) -> bytes:
        assert self.proc is not None and self.proc.stdout is not None
        return self.proc.stdout.read1(n)

    def _write(self) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        try:
            while block := self.source.read(CHUNK):
                self.proc.stdin.write(block)
                self.consumed += len(block)
        except BrokenPipeError:
            pass  # the compressor died: its exit status says so
        except OSError as exc:  # the payload cannot be read
            self.errors.append(exc)
            self.proc.kill()
        finally:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self.proc is not None and self.proc.stdout is not None and self.proc.stderr is not None
        if kind is not None:
            self.proc.kill()
        code = self.proc.wait()
        self.writer.join()
        err = self.proc.stderr.read(STDERR_KEPT).decode("utf-8", "replace")
        self.proc.stdout.close()
        self.proc.stderr.close()
        if kind is not None:
            return
        if self.errors:
            raise self.errors[0]
        if code != 0:
            why = last_line(err) or (f"killed by signal {-code}" if code < 0 else f"exit {code}")
            raise CommandFailed(f"zstd compressing {self.name} for the stream died: {why}", retryable=True)
