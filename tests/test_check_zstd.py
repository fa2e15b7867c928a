"""`migratio check` says whether a destination's stream can be compressed: zstd on its head node."""

import pytest

from tests import test_check, test_stream_compression

lab_check, no_zstd_env_file = test_check.lab_check, test_stream_compression.no_zstd_env_file  # the fixtures


def _zstd_line(lines: list[str]) -> str:
    return next(ln for ln in lines if ln.split("  ", 1)[-1].startswith("site-b: zstd: "))


@pytest.mark.lab
def test_check_reports_zstd_on_the_head_node(lab_check):
    lab, site, check = lab_check
    code, _, lines = check("site-b")
    assert code == 0, "\n".join(lines)
    line = _zstd_line(lines)
    assert line.startswith("PASS  site-b: zstd: ")
    assert line.endswith(f"on {lab.head_node.host}: streams to site-b are compressed only on a link capped at "
                         "122070 KiB/s (1 Gbit/s) or less, and bandwidth_limit is not set: not now (compress: auto)")
    site(bandwidth_limit=24414)
    _, _, lines = check("site-b")
    assert _zstd_line(lines).endswith(": streams to site-b are compressed when a sample of the image compresses "
                                      "(compress: auto)")


@pytest.mark.lab
def test_check_says_what_a_missing_zstd_means(lab_check, no_zstd_env_file):
    lab, site, check = lab_check
    site(remote_env_file=no_zstd_env_file)
    code, _, lines = check("site-b")
    assert code == 0, "\n".join(lines)
    assert _zstd_line(lines) == (f"PASS  site-b: zstd: zstd is not installed on the head node {lab.head_node.host}: "
                                 "images to site-b are streamed uncompressed (compress: auto); install it to "
                                 "compress them on slow links")
    site(remote_env_file=no_zstd_env_file, compress=True)
    code, _, lines = check("site-b")
    assert code != 0
    assert _zstd_line(lines).startswith(
        f"FAIL  site-b: zstd: zstd is not installed on the head node {lab.head_node.host}: site site-b has "
        "'compress: true', so every stream fails -- fix: install zstd on")


@pytest.mark.lab
def test_check_skips_zstd_when_compress_is_false(lab_check):
    lab, site, check = lab_check
    site(compress=False)
    _, _, lines = check("site-b")
    assert _zstd_line(lines) == "PASS  site-b: zstd: not used (compress: false): images are streamed uncompressed"
