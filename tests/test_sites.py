import logging
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from migratio.conf.sites import AwsOptions, OpenStackOptions, list_sites, load_site
from migratio.errors import ConfigError, InvalidInput
from migratio.openstack.ssh import command_line, source_env_file
from migratio.steps import DEFAULT_PIPELINES, build_steps
from tests.builders import write_site

CONFIG_DIR = Path(__file__).parent.parent / "config"


def test_shipped_examples_load():
    openstack = load_site(CONFIG_DIR, "external_openstack")
    assert openstack.type == "openstack"
    assert isinstance(openstack.options, OpenStackOptions)
    assert openstack.options.known_hosts == Path("/etc/migratio/known_hosts")
    assert openstack.limits.max_concurrent == 2
    amazon = load_site(CONFIG_DIR, "amazon")
    assert isinstance(amazon.options, AwsOptions)
    assert amazon.options.import_mode == "ebs-direct"
    assert [s.name for s in build_steps(amazon)] == DEFAULT_PIPELINES["aws"]


def test_legacy_openstack_conf(tmp_path):
    write_site(tmp_path, "old", "# from the Ruby tool\nexport EXTERNAL_USER=glance\n"
                                "export EXTERNAL_HOST='head.example.org'\nexport EXTERNAL_PORT=2222\n")
    site = load_site(tmp_path, "old")
    assert site.type == "openstack"
    assert (site.options.user, site.options.host, site.options.port) == ("glance", "head.example.org", 2222)
    assert site.options.remote_env_file == "~/.creds"  # the old tool's `. ~/.creds` on the head node
    assert [s.name for s in build_steps(site)] == DEFAULT_PIPELINES["openstack"]


def test_yaml_conf_keeps_no_remote_env_file_by_default(tmp_path):
    write_site(tmp_path, "new", "type: openstack\nhost: h\nuser: u\n")
    assert load_site(tmp_path, "new").options.remote_env_file is None


def test_legacy_aws_keys_are_named_never_shown(tmp_path, caplog):
    secret, key_id = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRET", "AKIAOLDTOOLKEY123456"
    keys = f"export AWS_ACCESS_KEY={key_id}\nexport AWS_SECRET_KEY='{secret}'\n"
    for site_id, first in (("aws", "export AWS_REGION=eu-west-1\n"),
                           ("os", "export EXTERNAL_HOST=h\nexport EXTERNAL_USER=u\n")):
        write_site(tmp_path, site_id, first + keys)
        with caplog.at_level(logging.DEBUG):
            site = load_site(tmp_path, site_id)
        assert secret not in repr(site) and key_id not in repr(site)
    assert secret not in caplog.text and key_id not in caplog.text
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("AWS_ACCESS_KEY is not used" in w and "AWS_ACCESS_KEY_ID" in w for w in warnings) == 2
    assert sum("AWS_SECRET_KEY is not used" in w and "AWS_SECRET_ACCESS_KEY" in w for w in warnings) == 2


@pytest.mark.parametrize("env_file, rendered", [
    ("~/.creds", '. "$HOME"/.creds'),
    ("$HOME/.creds", '. "$HOME"/.creds'),
    ("${HOME}/my creds/openrc.sh", """. "$HOME"/'my creds/openrc.sh'"""),
    ("~/$(touch pwned)", """. "$HOME"/'$(touch pwned)'"""),
    ("/etc/migratio/openrc.sh", ". /etc/migratio/openrc.sh"),
    ("/etc/glance env.sh", ". '/etc/glance env.sh'"),
    ("~other/.creds", ". '~other/.creds'"),  # only the ssh user's own home is expanded
    ("./~/.creds", ". './~/.creds'"),
])
def test_env_file_rendering_expands_only_a_home_prefix(env_file, rendered):
    assert source_env_file(env_file) == rendered
    assert command_line(["glance", "image-list"], env_file) == f"{rendered} && glance image-list"


def test_home_env_file_is_sourced_from_the_shells_home(tmp_path):
    home = tmp_path / "home dir"
    (home / "my creds").mkdir(parents=True)
    (home / "my creds" / "openrc.sh").write_text("export OS_MARK='from home'\n")
    (home / "$(touch pwned)").write_text("export OS_MARK=literal\n")
    env = {"PATH": os.environ["PATH"], "HOME": str(home)}
    for env_file, expected in (("~/my creds/openrc.sh", "from home"), ("$HOME/$(touch pwned)", "literal")):
        line = command_line(["sh", "-c", 'printf %s "$OS_MARK"'], env_file)
        proc = subprocess.run(["sh", "-c", line], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, expected, "")
        assert shlex.split(line)[-3:] == ["sh", "-c", 'printf %s "$OS_MARK"']
    assert not (tmp_path / "pwned").exists() and not (home / "pwned").exists()


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
    ("type: openstack\nhost: h\nuser: u\npipeline: [dedupe, locate]\n",
     "step 'dedupe' in pipeline for type openstack needs the located source image: put 'locate' before it"),
    ("type: openstack\nhost: h\nuser: u\npipeline: [locate, register, verify]\n",
     "step 'register' in pipeline for type openstack needs the payload to send: put 'convert' before it"),
    ("type: openstack\nhost: h\nuser: u\npipeline: [locate, inspect, convert, verify]\n",
     "step 'verify' in pipeline for type openstack needs the destination image id: put 'register' before it"),
    ("type: aws\nregion: r\npipeline: [locate, inspect, convert, tag, import]\n",
     "step 'tag' in pipeline for type aws needs the destination image id: put 'import' before it"),
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


def test_options_are_read_for_the_sites_type(tmp_path):
    write_site(tmp_path, "b", "type: openstack\nhost: h\nuser: u\ndisk_format: raw\n")
    write_site(tmp_path, "c", "type: aws\nregion: r\n")
    openstack, amazon = load_site(tmp_path, "b"), load_site(tmp_path, "c")
    assert openstack.openstack.disk_format == "raw" and amazon.aws.region == "r"
    with pytest.raises(ConfigError, match=f"{tmp_path / 'b.conf'}: site b is of type openstack, not aws"):
        openstack.aws
    with pytest.raises(ConfigError, match="site c is of type aws, not openstack"):
        amazon.openstack


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
