"""`streams` in an OpenStack site conf: 1 by default, a whole number up to MAX_STREAMS or `auto`;
anything else is one ConfigError naming the file and the key."""

import pytest

from migratio.conf.sites import MAX_STREAMS, load_site
from migratio.errors import ConfigError
from tests.builders import write_site

HEAD = "type: openstack\nhost: head.example.org\nuser: glance\n"


def test_one_stream_unless_the_conf_says_otherwise(tmp_path):
    write_site(tmp_path, "b", HEAD)
    assert load_site(tmp_path, "b").openstack.streams == 1


@pytest.mark.parametrize("value, expected", [("4", 4), (str(MAX_STREAMS), MAX_STREAMS), ("auto", "auto")])
def test_a_number_of_streams_or_auto(tmp_path, value, expected):
    write_site(tmp_path, "b", HEAD + f"streams: {value}\n")
    assert load_site(tmp_path, "b").openstack.streams == expected


@pytest.mark.parametrize("value", ["0", str(MAX_STREAMS + 1), "-2", "fast", "2.5", "true", "'3'", "[2]"])
def test_anything_else_is_refused_naming_file_and_key(tmp_path, value):
    path = write_site(tmp_path, "b", HEAD + f"streams: {value}\n")
    with pytest.raises(ConfigError) as caught:
        load_site(tmp_path, "b")
    message = str(caught.value)
    assert message.startswith(f"{path}: key 'streams' must be ") and "\n" not in message
