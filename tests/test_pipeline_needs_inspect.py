"""A pipeline that would convert, transfer or import an image nobody inspected is refused when it
is built (one line naming the site conf), like any other order that cannot work."""

import pytest

from migratio.conf.sites import load_site
from migratio.errors import ConfigError
from migratio.steps import DEFAULT_PIPELINES, build_steps
from tests.builders import write_site

OPENSTACK = "type: openstack\nhost: h\nuser: u\n"
AWS = "type: aws\nregion: eu-west-1\n"


@pytest.mark.parametrize("head, pipeline, step", [
    (OPENSTACK, "[locate, dedupe, convert, transfer, register, verify, cleanup]", "convert"),
    (OPENSTACK, "[locate, convert, inspect, transfer, register, verify]", "convert"),
    (OPENSTACK, "[locate, transfer, register, verify]", "transfer"),
    (AWS, "[locate, dedupe, convert, import, tag, cleanup]", "convert"),
    (AWS, "[locate, import, tag]", "import"),
])
def test_sending_an_uninspected_image_is_refused(tmp_path, head, pipeline, step):
    path = write_site(tmp_path, "dest", f"{head}pipeline: {pipeline}\n")
    site = load_site(tmp_path, "dest")
    with pytest.raises(ConfigError) as info:
        build_steps(site)
    assert str(info.value) == (f"{path}: step '{step}' in pipeline for type {site.type} needs the inspected "
                               f"source image: put 'inspect' before it")


@pytest.mark.parametrize("head, kind", [(OPENSTACK, "openstack"), (AWS, "aws")])
def test_the_default_pipelines_inspect_first(tmp_path, head, kind):
    write_site(tmp_path, "dest", head)
    names = [s.name for s in build_steps(load_site(tmp_path, "dest"))]
    assert names == DEFAULT_PIPELINES[kind]
    assert names.index("inspect") < names.index("convert")


def test_a_pipeline_that_sends_nothing_needs_no_inspect(tmp_path):
    write_site(tmp_path, "dest", f"{OPENSTACK}pipeline: [locate, dedupe, cleanup]\n")
    assert [s.name for s in build_steps(load_site(tmp_path, "dest"))] == ["locate", "dedupe", "cleanup"]
