"""The `compress` key of a site conf: auto (the default), true or false; rsync's zstd only with true."""

from pathlib import Path

import pytest

from migratio.conf.sites import load_site
from migratio.errors import ConfigError
from migratio.openstack import rsync
from tests.builders import write_site

HEAD = "type: openstack\nhost: head.example.org\nuser: glance\n"


@pytest.mark.parametrize("text, expected", [("", "auto"), ("compress: auto\n", "auto"),
                                            ("compress: true\n", True), ("compress: false\n", False)])
def test_compress_values(tmp_path, text, expected):
    write_site(tmp_path, "dest", HEAD + text)
    compress = load_site(tmp_path, "dest").openstack.compress
    assert (compress, type(compress)) == (expected, type(expected))


@pytest.mark.parametrize("value, shown", [("fast", "'fast'"), ("1", "1"), ("zstd", "'zstd'"), ("null", "None")])
def test_a_bad_compress_value_is_one_line_naming_file_and_key(tmp_path, value, shown):
    path = write_site(tmp_path, "dest", HEAD + f"compress: {value}\n")
    with pytest.raises(ConfigError) as caught:
        load_site(tmp_path, "dest")
    assert str(caught.value) == f"{path}: key 'compress' must be one of auto, true, false, got {shown}"


@pytest.mark.parametrize("text, zstd", [("", False), ("compress: auto\n", False), ("compress: true\n", True),
                                        ("compress: false\n", False)])
def test_rsync_compresses_only_with_true(tmp_path, text, zstd):
    write_site(tmp_path, "dest", HEAD + text)
    argv = rsync.rsync_argv(Path("/img"), "/staging/x", load_site(tmp_path, "dest").openstack)
    assert ("--zc=zstd" in argv) is zstd
