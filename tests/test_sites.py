from pathlib import Path

import pytest

from migratio.errors import ConfigError, InvalidInput
from migratio.sites import AwsSite, OpenStackSite, list_sites, load_site
from migratio.steps import DEFAULT_PIPELINES, build_steps
from tests.helpers import write_site

CONFIG_DIR = Path(__file__).parent.parent / "config"


def test_shipped_examples_load():
    openstack = load_site(CONFIG_DIR, "external_openstack")
    assert openstack.type == "openstack"
    assert isinstance(openstack.options, OpenStackSite)
    assert openstack.options.known_hosts == Path("/etc/migratio/known_hosts")
    assert openstack.limits.max_concurrent == 2
    amazon = load_site(CONFIG_DIR, "amazon")
    assert isinstance(amazon.options, AwsSite)
    assert amazon.options.import_mode == "ebs-direct"
    assert [s.name for s in build_steps(amazon)] == DEFAULT_PIPELINES["aws"]


def test_legacy_openstack_conf(tmp_path):
    write_site(tmp_path, "old", "# from the Ruby tool\nexport EXTERNAL_USER=glance\n"
                                "export EXTERNAL_HOST='head.example.org'\nexport EXTERNAL_PORT=2222\n")
    site = load_site(tmp_path, "old")
    assert site.type == "openstack"
    assert (site.options.user, site.options.host, site.options.port) == ("glance", "head.example.org", 2222)
    assert [s.name for s in build_steps(site)] == DEFAULT_PIPELINES["openstack"]


def test_legacy_aws_conf(tmp_path):
    write_site(tmp_path, "aws", 'export AWS_REGION=us-east-1\nexport EC2_URL="https://ec2.us-east-1.amazonaws.com"\n')
    site = load_site(tmp_path, "aws")
    assert site.type == "aws"
    assert site.options.region == "us-east-1"
    assert site.options.endpoint_url == "https://ec2.us-east-1.amazonaws.com"


def test_relative_paths_are_relative_to_the_conf(tmp_path):
    write_site(tmp_path, "b", "type: openstack\nhost: h\nuser: u\nkey_file: keys/id\n")
    assert load_site(tmp_path, "b").options.key_file == tmp_path / "keys" / "id"


@pytest.mark.parametrize("text, expected", [
    ("type: nova\n", "key 'type' must be one of openstack, aws"),
    ("type: openstack\nhost: h\n", "missing required key 'user'"),
    ("type: openstack\nhost: h\nuser: u\nprot: 22\n", "unknown key 'prot'"),
    ("type: openstack\nhost: h\nuser: u\nport: '22'\n", "key 'port' must be an integer"),
    ("type: openstack\nhost: h\nuser: u\nregister: {via: ftp}\n", "key 'register': key 'via' must be one of ssh, api"),
    ("type: aws\nregion: r\nimport: s3\n", "key 'import' must be one of ebs-direct, vm-import"),
    ("type: aws\nregion: r\npipeline: [locate, teleport]\n", "unknown step 'teleport' in pipeline for type aws"),
    ("export EXTERNAL_USER=u\nexport EXTERNAL_PORT=x\n", "EXTERNAL_PORT must be a number"),
    ("export FOO=bar\n", "legacy conf sets neither"),
])
def test_bad_site_conf_names_file_and_key(tmp_path, text, expected):
    path = write_site(tmp_path, "bad", text)
    with pytest.raises(ConfigError) as info:
        build_steps(load_site(tmp_path, "bad"))
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_unknown_step_lists_valid_ones(tmp_path):
    write_site(tmp_path, "b", "type: openstack\nhost: h\nuser: u\npipeline: [locate, teleport]\n")
    with pytest.raises(ConfigError, match="valid steps: locate, dedupe, inspect"):
        build_steps(load_site(tmp_path, "b"))


def test_unknown_site(tmp_path):
    with pytest.raises(ConfigError, match="unknown destination site 'nowhere'"):
        load_site(tmp_path, "nowhere")


@pytest.mark.parametrize("bad", ["../x", "../../etc/passwd", "a/b", ".."])
def test_hostile_site_id_rejected_before_any_path(tmp_path, bad):
    with pytest.raises(InvalidInput, match="invalid site id"):
        load_site(tmp_path, bad)


def test_list_sites(tmp_path):
    write_site(tmp_path, "b", "type: aws\nregion: r\n")
    write_site(tmp_path, "a", "type: aws\nregion: r\n")
    (tmp_path / "notes.txt").write_text("x")
    assert list_sites(tmp_path) == ["a", "b"]
