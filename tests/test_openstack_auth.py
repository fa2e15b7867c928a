"""Sessions from clouds.yaml and OS_* variables; requests really go out through them."""

import pytest
import yaml
from keystoneauth1.identity import generic, v3
from keystoneauth1.token_endpoint import Token

from migratio.errors import ConfigError
from migratio.openstack import auth
from tests.http_double import HttpDouble


@pytest.fixture
def api():
    double = HttpDouble(lambda req: (200, {"ok": req.path}))
    yield double
    double.close()


def write_clouds(path, clouds):
    path.write_text(yaml.safe_dump({"clouds": clouds}))
    return path


def test_admin_token_cloud_sends_the_token_to_the_endpoint(tmp_path, api):
    clouds = write_clouds(tmp_path / "clouds.yaml", {
        "site-a": {"auth_type": "admin_token", "auth": {"endpoint": api.url, "token": "s3cret"},
                   "region_name": "RegionOne"}})
    session = auth.session("site-a", clouds, {})
    assert isinstance(session.auth, Token)
    assert session.endpoint_filter == {"region_name": "RegionOne"}
    resp = session.get("/v2/images", endpoint_filter={"service_type": "image"})
    assert resp.json() == {"ok": "/v2/images"}
    assert api.requests[0].headers["X-Auth-Token"] == "s3cret"


def test_password_cloud_builds_a_keystone_plugin(tmp_path):
    clouds = write_clouds(tmp_path / "clouds.yaml", {"prod": {"auth": {
        "auth_url": "https://keystone.example.org/v3", "username": "migratio", "password": "pw",
        "project_name": "admin", "user_domain_name": "Default", "project_domain_name": "Default"},
        "interface": "internal", "verify": False}})
    session = auth.session("prod", clouds, {})
    assert isinstance(session.auth, generic.Password)
    assert session.verify is False and session.endpoint_filter == {"interface": "internal"}


def test_application_credential_cloud(tmp_path):
    clouds = write_clouds(tmp_path / "clouds.yaml", {"prod": {"auth_type": "v3applicationcredential", "auth": {
        "auth_url": "https://keystone.example.org/v3", "application_credential_id": "id",
        "application_credential_secret": "s"}}})
    assert isinstance(auth.session("prod", clouds, {}).auth, v3.ApplicationCredential)


def test_standard_location_under_home(tmp_path):
    home = tmp_path / "home"
    (home / ".config/openstack").mkdir(parents=True)
    write_clouds(home / ".config/openstack/clouds.yaml",
                 {"x": {"auth_type": "admin_token", "auth": {"endpoint": "http://g:9292", "token": "t"}}})
    session = auth.session("x", None, {"HOME": str(home)})
    assert session.auth.endpoint == "http://g:9292"


def test_unknown_cloud_names_the_file_and_the_known_ones(tmp_path):
    clouds = write_clouds(tmp_path / "clouds.yaml", {"a": {}, "b": {}})
    with pytest.raises(ConfigError, match=r"clouds.yaml: no cloud 'c' \(clouds defined: a, b\)"):
        auth.session("c", clouds, {})


def test_missing_clouds_file(tmp_path):
    with pytest.raises(ConfigError, match="clouds file .*nope.yaml not found"):
        auth.session("a", tmp_path / "nope.yaml", {})
    with pytest.raises(ConfigError, match="no clouds.yaml found"):
        auth.session("a", None, {"HOME": str(tmp_path)})


def test_bad_auth_settings_are_config_errors(tmp_path):
    clouds = write_clouds(tmp_path / "clouds.yaml", {
        "typo": {"auth_type": "admin_token", "auth": {"endpont": "http://x", "token": "t"}},
        "short": {"auth_type": "admin_token", "auth": {"token": "t"}},
        "weird": {"auth_type": "kerberos-magic", "auth": {}}})
    with pytest.raises(ConfigError, match="auth key 'endpont' is not used by auth_type 'admin_token'"):
        auth.session("typo", clouds, {})
    with pytest.raises(ConfigError, match="auth_type 'admin_token' needs endpoint"):
        auth.session("short", clouds, {})
    with pytest.raises(ConfigError, match="unknown auth_type 'kerberos-magic'"):
        auth.session("weird", clouds, {})


def test_env_token_endpoint(api):
    session = auth.session(None, None, {"OS_IMAGE_URL": api.url, "OS_AUTH_TOKEN": "tok"})
    session.get("/v2/images/x", endpoint_filter={"service_type": "image"})
    assert api.requests[0].headers["X-Auth-Token"] == "tok"


def test_env_password_and_application_credential():
    env = {"OS_AUTH_URL": "https://k/v3", "OS_USERNAME": "u", "OS_PASSWORD": "p", "OS_PROJECT_NAME": "pr",
           "OS_USER_DOMAIN_NAME": "Default", "OS_REGION_NAME": "R2"}
    session = auth.session(None, None, env)
    assert isinstance(session.auth, generic.Password) and session.endpoint_filter == {"region_name": "R2"}
    env = {"OS_AUTH_URL": "https://k/v3", "OS_APPLICATION_CREDENTIAL_ID": "i",
           "OS_APPLICATION_CREDENTIAL_SECRET": "s"}
    assert isinstance(auth.session(None, None, env).auth, v3.ApplicationCredential)


def test_no_credentials_at_all():
    with pytest.raises(ConfigError, match="no OpenStack credentials"):
        auth.session(None, None, {})
