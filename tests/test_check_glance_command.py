"""`glance_command` is split into words the same way by `migratio check` and by the worker, so a
multi-word command (`sudo -E glance`, `env OS_X=1 glance`) passes the check exactly when the
worker can use it. Against the lab's head node (real sshd, real glance CLI, site-b's Glance)."""

import os
import uuid
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from migratio.cli import main
from migratio.conf.sites import load_site
from migratio.errors import ConfigError, ImageNotFound
from migratio.openstack.glance_cli import CliGlance
from migratio.openstack.ssh import RemoteShell
from tests.builders import config_factory, write_site

MULTI_WORD = "env MIGRATIO_TEST=1 glance"  # a command of three words that runs the glance CLI


def head_conf(lab, **overrides) -> dict:
    head = lab.head_node
    return {"type": "openstack", "host": head.host, "port": head.port, "user": head.user,
            "key_file": str(head.key_file), "known_hosts": str(head.known_hosts),
            "staging_dir": str(head.staging_dir), "remote_env_file": str(head.env_file),
            "remote_python": None, "connect_timeout": 10, **overrides}


def check_lines(tmp_path: Path, lab) -> list[str]:
    env = {name: None for name in os.environ if name.startswith(("OS_", "AWS_"))}
    env.update(OS_IMAGE_URL=lab.site_a.glance_url, OS_AUTH_TOKEN="lab-token")
    result = CliRunner().invoke(main, ["--config", str(tmp_path / "config.yml"), "check", "site-b",
                                       "--min-free", "1M"], env=env)
    return result.output.splitlines()


@pytest.mark.lab
def test_a_multi_word_glance_command_passes_the_check_and_works_in_the_worker(lab, tmp_path):
    config = config_factory(tmp_path, redis_url=lab.redis_url, images_dir=str(lab.site_a.images_dir))
    write_site(config.sites_dir, "site-b", yaml.safe_dump(head_conf(lab, glance_command=MULTI_WORD)))

    lines = check_lines(tmp_path, lab)
    glance = next(ln for ln in lines if "remote glance" in ln)
    assert glance.startswith(f"PASS  site-b: remote glance: `{MULTI_WORD} image-list` works on "), lines

    options = load_site(config.sites_dir, "site-b").openstack  # the worker's client, same conf
    with RemoteShell.connect(options) as shell:
        with pytest.raises(ImageNotFound):
            CliGlance(shell, options, "site-b").show(str(uuid.uuid4()))


@pytest.mark.lab
def test_a_glance_command_that_is_not_there_fails_the_check(lab, tmp_path):
    config = config_factory(tmp_path, redis_url=lab.redis_url, images_dir=str(lab.site_a.images_dir))
    write_site(config.sites_dir, "site-b", yaml.safe_dump(head_conf(lab, glance_command="env no-such-glance")))
    glance = next(ln for ln in check_lines(tmp_path, lab) if "remote glance" in ln)
    assert glance.startswith("FAIL  site-b: remote glance: `env no-such-glance image-list` on ")


@pytest.mark.parametrize("command, problem", [("glance 'unclosed", "No closing quotation"), ("", "is empty"),
                                              ("  ", "is empty")])
def test_a_glance_command_that_cannot_be_split_is_refused_at_load(tmp_path, command, problem):
    path = write_site(tmp_path, "b", yaml.safe_dump({"type": "openstack", "host": "h", "user": "u",
                                                     "glance_command": command}))
    with pytest.raises(ConfigError) as info:
        load_site(tmp_path, "b")
    assert str(info.value).startswith(f"{path}: key 'glance_command' ")
    assert problem in str(info.value)


def test_the_words_are_the_shells(tmp_path):
    write_site(tmp_path, "b", yaml.safe_dump({"type": "openstack", "host": "h", "user": "u",
                                              "glance_command": "sudo -E '/opt/glance client/bin/glance'"}))
    assert load_site(tmp_path, "b").openstack.glance_argv == ["sudo", "-E", "/opt/glance client/bin/glance"]
