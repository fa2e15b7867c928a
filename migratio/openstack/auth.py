"""keystoneauth1 sessions from clouds.yaml or OS_* variables (the usual OpenStack ways).

clouds.yaml: the `clouds_file` given in config.yml, else $OS_CLIENT_CONFIG_FILE,
~/.config/openstack/clouds.yaml, /etc/openstack/clouds.yaml (first that exists). A cloud's
`auth_type` picks the keystoneauth plugin (`password` by default, `v3applicationcredential`,
`admin_token` with auth {endpoint, token} for sites without Keystone, ...).

Without a cloud name: OS_IMAGE_URL + OS_AUTH_TOKEN (token endpoint), else OS_AUTH_URL and the
plugin options from OS_* variables (OS_AUTH_TYPE, default password or, when
OS_APPLICATION_CREDENTIAL_ID/_NAME is set, v3applicationcredential).
"""

from pathlib import Path
from typing import Any, Mapping

import yaml
from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import loading
from keystoneauth1 import session as ks_session

from migratio.errors import ConfigError

STANDARD_FILES = ("~/.config/openstack/clouds.yaml", "/etc/openstack/clouds.yaml")
ENDPOINT_KEYS = ("region_name", "interface")
DEFAULT_TIMEOUT = 60
ALSO_REQUIRED = {"admin_token": ("endpoint", "token")}  # its loader does not mark them required


class CloudSession(ks_session.Session):
    """A keystoneauth Session that also carries the cloud's endpoint filter (region, interface)."""

    def __init__(self, *args: Any, endpoint_filter: Mapping[str, str] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.endpoint_filter = dict(endpoint_filter or {})


def session(cloud: str | None, clouds_file: Path | None, environ: Mapping[str, str]) -> CloudSession:
    """A session for `cloud` (from clouds.yaml) or, when cloud is None, from OS_* variables."""
    if cloud is None:
        return _from_env(environ)
    path = find_clouds_file(clouds_file, environ)
    entry = _cloud_entry(path, cloud)
    where = f"{path}: cloud '{cloud}'"
    auth_type = entry.get("auth_type") or "password"
    auth = entry.get("auth") or {}
    if not isinstance(auth, dict):
        raise ConfigError(f"{where}: key 'auth' must be a mapping")
    plugin = _plugin(auth_type, auth, where)
    return _session(plugin, entry, where)


def find_clouds_file(clouds_file: Path | None, environ: Mapping[str, str]) -> Path:
    if clouds_file is not None:
        if not clouds_file.is_file():
            raise ConfigError(f"clouds file {clouds_file} not found (key 'clouds_file' in config.yml)")
        return clouds_file
    candidates = [environ.get("OS_CLIENT_CONFIG_FILE")] if environ.get("OS_CLIENT_CONFIG_FILE") else []
    home = environ.get("HOME")
    candidates += [p.replace("~", home, 1) if home else p for p in STANDARD_FILES]
    for candidate in candidates:
        if "~" not in candidate and Path(candidate).is_file():
            return Path(candidate)
    raise ConfigError(f"no clouds.yaml found (looked in {', '.join(candidates)}); "
                      "set 'clouds_file' in config.yml")


def _cloud_entry(path: Path, cloud: str) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError:
        raise ConfigError(f"{path}: not valid YAML") from None
    clouds = data.get("clouds") if isinstance(data, dict) else None
    if not isinstance(clouds, dict):
        raise ConfigError(f"{path}: expected a top-level 'clouds' mapping")
    entry = clouds.get(cloud)
    if not isinstance(entry, dict):
        known = ", ".join(sorted(map(str, clouds))) or "none"
        raise ConfigError(f"{path}: no cloud '{cloud}' (clouds defined: {known})")
    return entry


def _from_env(environ: Mapping[str, str]) -> CloudSession:
    if environ.get("OS_IMAGE_URL") and environ.get("OS_AUTH_TOKEN"):
        plugin = _plugin("admin_token", {"endpoint": environ["OS_IMAGE_URL"],
                                          "token": environ["OS_AUTH_TOKEN"]}, "OS_IMAGE_URL/OS_AUTH_TOKEN")
        return _session(plugin, _env_endpoint_options(environ), "environment")
    if not environ.get("OS_AUTH_URL"):
        raise ConfigError("no OpenStack credentials: set 'cloud' in config.yml, or OS_AUTH_URL "
                          "(or OS_IMAGE_URL and OS_AUTH_TOKEN) in the environment")
    auth_type = environ.get("OS_AUTH_TYPE") or _default_env_auth_type(environ)
    loader = _loader(auth_type, "OS_AUTH_TYPE")
    options = {}
    for opt in loader.get_options():
        for var in opt.argparse_envvars:
            if environ.get(var):
                options[opt.dest] = environ[var]
                break
    plugin = _plugin(auth_type, options, "OS_* environment")
    return _session(plugin, _env_endpoint_options(environ), "environment")


def _default_env_auth_type(environ: Mapping[str, str]) -> str:
    if environ.get("OS_APPLICATION_CREDENTIAL_ID") or environ.get("OS_APPLICATION_CREDENTIAL_NAME"):
        return "v3applicationcredential"
    return "password"


def _env_endpoint_options(environ: Mapping[str, str]) -> dict:
    options = {"region_name": environ.get("OS_REGION_NAME"), "interface": environ.get("OS_INTERFACE")}
    if environ.get("OS_CACERT"):
        options["cacert"] = environ["OS_CACERT"]
    if environ.get("OS_INSECURE", "").lower() in ("1", "true", "yes"):
        options["verify"] = False
    return {k: v for k, v in options.items() if v is not None}


def _loader(auth_type: str, where: str):
    try:
        return loading.get_plugin_loader(auth_type)
    except ks_exc.NoMatchingPlugin:
        raise ConfigError(f"{where}: unknown auth_type '{auth_type}' (e.g. password, "
                          "v3applicationcredential, admin_token)") from None


def _plugin(auth_type: str, auth: Mapping[str, Any], where: str):
    loader = _loader(auth_type, where)
    valid = {opt.dest for opt in loader.get_options()}
    unknown = sorted(set(auth) - valid)
    if unknown:
        raise ConfigError(f"{where}: auth key '{unknown[0]}' is not used by auth_type '{auth_type}' "
                          f"(valid: {', '.join(sorted(valid))})")
    missing = [k for k in ALSO_REQUIRED.get(auth_type, ()) if not auth.get(k)]
    if missing:
        raise ConfigError(f"{where}: auth_type '{auth_type}' needs {', '.join(missing)}")
    try:
        return loader.load_from_options(**auth)
    except ks_exc.MissingRequiredOptions as exc:
        names = ", ".join(o.dest for o in exc.options)
        raise ConfigError(f"{where}: auth_type '{auth_type}' needs {names}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: auth_type '{auth_type}': {exc}") from None


def _session(plugin, entry: Mapping[str, Any], where: str) -> CloudSession:
    verify: bool | str = entry.get("verify", True)
    if entry.get("cacert") and verify is not False:
        verify = str(entry["cacert"])
    cert = entry.get("cert")
    if cert and entry.get("key"):
        cert = (str(cert), str(entry["key"]))
    timeout = entry.get("api_timeout", DEFAULT_TIMEOUT)
    endpoint_filter = {k: str(entry[k]) for k in ENDPOINT_KEYS if entry.get(k)}
    if not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigError(f"{where}: key 'api_timeout' must be a positive number of seconds")
    return CloudSession(auth=plugin, verify=verify, cert=cert, timeout=timeout,
                        endpoint_filter=endpoint_filter)
