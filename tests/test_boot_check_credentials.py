"""boot-check boots a server with the destination's credentials (`register.cloud`), never with
this site's: without `register.cloud` a pipeline with boot-check is refused when it is built."""

import os
import uuid

import pytest
import yaml
from click.testing import CliRunner

from migratio.cli import main
from migratio.conf.sites import load_site
from migratio.errors import ConfigError
from migratio.pipeline.context import Context
from migratio.pipeline.services import Services
from migratio.pipeline.status import DictMeta, JobInfo
from migratio.steps import build_steps
from migratio.steps.openstack import BootCheck
from tests.builders import config_factory, write_site

PIPELINE = ["locate", "dedupe", "inspect", "convert", "transfer", "register", "verify", "boot-check", "cleanup"]


class RecordingNova:
    """Nova as the step sees it: remembers which cloud's credentials it was built with."""

    def __init__(self, asked: list):
        self.asked, self.site = asked, None

    def __call__(self, cloud):
        self.asked.append(cloud)
        return self

    def boot(self, name, image_id, flavor, network=None):
        return "server-1"

    def wait(self, server_id, timeout):
        return "ACTIVE", None

    def delete(self, server_id):
        return True


class Lines:
    def emit(self, job, text):
        pass


def conf(**register) -> dict:
    return {"type": "openstack", "host": "head.example.org", "user": "glance", "pipeline": PIPELINE,
            "boot_check": {"flavor": "m1.small"}, **({"register": register} if register else {})}


@pytest.mark.parametrize("register", [{}, {"via": "ssh"}, {"via": "api", "cloud": None}])
def test_a_pipeline_with_boot_check_needs_register_cloud(tmp_path, register):
    path = write_site(tmp_path, "b", yaml.safe_dump(conf(**register)))
    with pytest.raises(ConfigError) as info:
        build_steps(load_site(tmp_path, "b"))
    assert str(info.value) == (f"{path}: step 'boot-check' needs key 'register.cloud' (the destination's "
                               f"clouds.yaml cloud): without it the server would boot with this site's "
                               f"credentials")


def test_a_pipeline_with_boot_check_but_no_boot_check_section_is_refused(tmp_path):
    values = conf(via="ssh", cloud="site-b")
    del values["boot_check"]
    path = write_site(tmp_path, "b", yaml.safe_dump(values))
    with pytest.raises(ConfigError, match=f"^{path}: pipeline has 'boot-check' but no 'boot_check' section$"):
        build_steps(load_site(tmp_path, "b"))


def test_migratio_sites_and_check_say_so_before_any_job(tmp_path):
    config_factory(tmp_path)
    path = write_site(tmp_path / "sites", "site-b", yaml.safe_dump(conf(via="ssh")))
    env = {name: None for name in os.environ if name.startswith(("OS_", "AWS_"))}
    config_file = str(tmp_path / "config.yml")
    sites = CliRunner().invoke(main, ["--config", config_file, "sites"], env=env)
    assert sites.exit_code == 1
    assert sites.output.startswith(f"site-b: ERROR {path}: step 'boot-check' needs key 'register.cloud' ")
    check = CliRunner().invoke(main, ["--config", config_file, "check", "site-b"], env=env)
    line = next(ln for ln in check.output.splitlines() if "site-b: conf" in ln)
    assert line.startswith(f"FAIL  site-b: conf: {path}: step 'boot-check' needs key 'register.cloud' ")


@pytest.mark.parametrize("via", ["ssh", "api"])
def test_boot_check_uses_the_destination_cloud(tmp_path, via):
    write_site(tmp_path / "sites", "b", yaml.safe_dump(conf(via=via, cloud="site-b-cloud")))
    site = load_site(tmp_path / "sites", "b")
    assert [s.name for s in build_steps(site)] == PIPELINE
    asked: list = []
    ctx = context(tmp_path, site, asked)
    assert BootCheck().run(ctx).startswith("Boot check passed")
    assert asked == ["site-b-cloud"]


def test_boot_check_never_asks_for_this_sites_credentials(tmp_path):
    """A step run without build_steps (no register.cloud) fails before any Nova client exists."""
    write_site(tmp_path / "sites", "b", yaml.safe_dump({**conf(), "pipeline": None}))
    site = load_site(tmp_path / "sites", "b")
    asked: list = []
    with pytest.raises(ConfigError, match="needs key 'register.cloud'"):
        BootCheck().run(context(tmp_path, site, asked))
    assert asked == []


def context(tmp_path, site, asked: list) -> Context:
    config = config_factory(tmp_path)
    services = Services(source_glance=None, glance=None, remote=None, aws=None, nova=RecordingNova(asked))
    ctx = Context(JobInfo("j1", str(uuid.uuid4()), "site-a", site.id), config, site, services,
                  tmp_path / "work", DictMeta(), Lines())
    ctx.dest_image_id = str(uuid.uuid4())
    return ctx
