from pathlib import Path

import pytest

from migratio.conf.config import config_path, load_config
from migratio.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yml"
    path.write_text(text)
    return path


def test_minimal_config_gets_documented_defaults(tmp_path):
    config = load_config(write(tmp_path, "name: cyfronet-folkstack\n"))
    assert config.name == "cyfronet-folkstack"
    assert config.queue_name == "migration_cyfronet-folkstack"
    assert config.namespace == "atmosphere"
    assert config.images_dir == Path("/var/lib/glance/images")
    assert config.log_dir == tmp_path / "log"  # relative paths are relative to the file
    assert config.sites_dir == tmp_path / "config"
    assert config.retry_intervals == [60, 300, 900]


def test_example_config_loads():
    config = load_config(Path(__file__).parent.parent / "config.yml.example")
    assert config.name == "my-site"


@pytest.mark.parametrize("text, expected", [
    ("redis_url: redis://x\n", "missing required key 'name'"),
    ("name: a\nnamspace: x\n", "unknown key 'namspace'"),
    ("name: a\nretries: many\n", "key 'retries' must be an integer"),
    ("name: a\nretries: true\n", "key 'retries' must be an integer"),
    ("name: a\nlog_dir: 5\n", "key 'log_dir' must be a path"),
    ("name: a\nretry_intervals: [1, x]\n", "key 'retry_intervals'[1] must be an integer"),
    ("name: a\nlog_level: LOUD\n", "key 'log_level' must be one of DEBUG, INFO, WARNING, ERROR"),
    ("name: ../etc\n", "key 'name': invalid site id"),
    ("name: a\nredis_url: localhost:6379\n", "key 'redis_url' must start with redis://"),
    ("name: a\njob_timeout: 0\n", "key 'job_timeout' must be a positive number"),
    ("- a\n- b\n", "expected a mapping of keys"),
    ("name: [unclosed\n", "not valid YAML (line 2)"),
])
def test_bad_config_is_one_line_naming_file_and_key(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert expected in message
    assert "\n" not in message


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yml")


def test_config_path_precedence():
    assert config_path("a.yml", {"MIGRATIO_CONFIG": "b.yml"}) == Path("a.yml")
    assert config_path(None, {"MIGRATIO_CONFIG": "b.yml"}) == Path("b.yml")
    assert config_path(None, {}) == Path("config.yml")
