import pytest

from tests.builders import glance_dest_context

pytest_plugins = [
    "tests.fixtures.redis",
    "tests.fixtures.lab",
    "tests.fixtures.moto",
    "tests.fixtures.sidekiq",
    "tests.fixtures.burst",
    "tests.fixtures.faults",
]


@pytest.fixture
def make_ctx(tmp_path):
    """make_ctx(dest, **site_options) -> tests.builders.glance_dest_context in this test's tmp_path."""
    return lambda dest, **site_kw: glance_dest_context(tmp_path, dest, **site_kw)
