"""migratio/headnode_client.py run exactly as the worker runs it on a head node: `python3 - OP ARGS`,
the script on stdin, only the OS_* variables of the site's env file (plus PATH) in the environment.

Keystone v3 and Glance v2 are answered by small doubles shaped like the real services (Keystone's
token body and X-Subject-Token header, Glance's paging links and 404s); one test runs against the
lab's real Glance in token mode, as the lab's head node uses it.
"""

import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from migratio.openstack import headnode_client
from tests.http_double import HttpDouble, Request, free_port

SCRIPT = Path(headnode_client.__file__).read_bytes()

PASSWORD = "pw-Sup3r&Secret=1"
APP_SECRET = "appcred-s3cret-value"
ISSUED_TOKEN = "gAAAAAB-issued-subject-token-0123456789"   # what Keystone hands out
USER_TOKEN = "gAAAAAB-user-supplied-token-9876543210"      # an OS_AUTH_TOKEN of the env file
SECRETS = (PASSWORD, APP_SECRET, ISSUED_TOKEN, USER_TOKEN)

KEYSTONE_401 = {"error": {"code": 401, "title": "Unauthorized",
                          "message": "The request you have made requires authentication."}}


def header(req: Request, name: str):
    """A request header, whatever case the client spelled it in (urllib sends 'X-auth-token')."""
    return {k.lower(): v for k, v in req.headers.items()}.get(name.lower())


def run(op: str, *args: str, env: dict) -> subprocess.CompletedProcess:
    """Run the client as the worker does; every run is checked for leaked secrets."""
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
    assert all(k == "PATH" or k.startswith("OS_") for k in clean)
    proc = subprocess.run([sys.executable, "-", op, *args], input=SCRIPT, env=clean,
                          capture_output=True, timeout=60)
    out, err = proc.stdout.decode(), proc.stderr.decode()
    for secret in SECRETS:
        assert secret not in out and secret not in err, f"secret leaked: {out!r} {err!r}"
    proc.out, proc.err = out, err
    return proc


def ok(proc: subprocess.CompletedProcess):
    assert (proc.returncode, proc.err) == (0, ""), proc.err
    return json.loads(proc.out)


def close(*doubles) -> None:
    """Stop doubles at once (each takes up to half a second, its server's poll interval)."""
    threads = [threading.Thread(target=d.close) for d in doubles]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def failed(proc: subprocess.CompletedProcess, code: int) -> str:
    """The one-line stderr of a run that exited with `code` and printed nothing on stdout."""
    assert proc.returncode == code, (proc.returncode, proc.err)
    assert proc.out == ""
    assert proc.err.endswith("\n") and proc.err.count("\n") == 1, proc.err
    return proc.err.rstrip("\n")


# --------------------------------------------------------------------------- Glance v2 double


def glance_image(name: str, **properties) -> dict:
    image_id = str(uuid.uuid4())
    return {"id": image_id, "name": name, "status": "active", "disk_format": "qcow2",
            "container_format": "bare", "visibility": "shared", "protected": False,
            "os_hidden": False, "size": 4194304, "virtual_size": 67108864, "min_disk": 0,
            "min_ram": 0, "checksum": uuid.uuid4().hex, "os_hash_algo": "sha512",
            "os_hash_value": uuid.uuid4().hex * 4, "owner": "p-demo", "tags": [],
            "created_at": "2024-05-01T10:00:00Z", "updated_at": "2024-05-01T10:00:05Z",
            "self": f"/v2/images/{image_id}", "file": f"/v2/images/{image_id}/file",
            "schema": "/v2/schemas/image", **properties}


class Service:
    """An HttpDouble answering from `self.route`, reached under `prefix`."""

    def __init__(self, prefix: str = ""):
        self.prefix = prefix
        self.http = HttpDouble(self.route)

    @property
    def url(self) -> str:
        return self.http.url + self.prefix

    @property
    def requests(self) -> list[Request]:
        return self.http.requests

    def close(self):
        self.http.close()


class Glance(Service):
    """Glance v2: GET /v2/images (property filters, paging), GET and DELETE /v2/images/<id>.

    Pages like Glance: the page size is min(limit, api_limit_max); a full page carries
    "next": "/v2/images?<the request's parameters, marker=last id>", so the page after the
    last full one may be empty. Only `token` is accepted as X-Auth-Token (else 401).
    """

    RESERVED = {"limit", "marker", "sort_key", "sort_dir", "sort"}

    def __init__(self, images=(), api_limit_max=1000, token=ISSUED_TOKEN, prefix=""):
        self.images = list(images)
        self.api_limit_max = api_limit_max
        self.token = token
        super().__init__(prefix)  # a path Glance is mounted under behind a proxy (it never knows it)

    @staticmethod
    def not_found(message: str):  # webob's JSON error body, as the lab's Glance sends it
        return 404, {"code": "404 Not Found", "title": "Not Found", "message": message + "<br /><br />\n\n\n"}

    def route(self, req: Request):
        if header(req, "X-Auth-Token") != self.token:
            return 401, {"code": "401 Unauthorized", "title": "Unauthorized",
                         "message": "This server could not verify that you are authorized."}
        parts = urlsplit(req.path)
        if not parts.path.startswith(self.prefix + "/v2/"):
            return 404, {"code": "404 Not Found", "title": "Not Found", "message": "no such path"}
        path = parts.path[len(self.prefix):]
        if path == "/v2/images" and req.method == "GET":
            return self.index(parse_qs(parts.query, keep_blank_values=True))
        if path.startswith("/v2/images/") and path.count("/") == 3:
            image_id = path.rsplit("/", 1)[1]
            image = next((i for i in self.images if i["id"] == image_id), None)
            if image is None:
                return self.not_found(f"No image found with ID {image_id}")
            if req.method == "GET":
                return 200, image
            if req.method == "DELETE":
                self.images.remove(image)
                return 204, None
        return 405, {"code": "405 Method Not Allowed", "title": "Method Not Allowed", "message": ""}

    def index(self, query: dict):
        params = {k: v[-1] for k, v in query.items()}
        hits = [i for i in self.images
                if all(str(i.get(k)) == v for k, v in params.items() if k not in self.RESERVED)]
        if "marker" in params:
            ids = [i["id"] for i in hits]
            if params["marker"] not in ids:
                return 400, {"code": "400 Bad Request", "title": "Bad Request",
                             "message": f"No image found with ID {params['marker']}<br /><br />\n\n\n"}
            hits = hits[ids.index(params["marker"]) + 1:]
        limit = min(int(params.get("limit", self.api_limit_max)), self.api_limit_max)
        page = hits[:limit]
        first = {k: v for k, v in params.items() if k != "marker"}
        body = {"images": page, "schema": "/v2/schemas/images",
                "first": "/v2/images" + ("?" + urlencode(first) if first else "")}
        if page and len(page) == limit:
            body["next"] = "/v2/images?" + urlencode({**first, "marker": page[-1]["id"]})
        return 200, body


# --------------------------------------------------------------------------- Keystone v3 double


class Keystone(Service):
    """Keystone v3: POST {prefix}/v3/auth/tokens -> 201, X-Subject-Token, a token with a catalog.

    Accepts the password PASSWORD (any user), the application credential secret APP_SECRET and
    the token USER_TOKEN; anything else gets Keystone's 401.
    """

    def __init__(self, catalog: list, prefix: str = ""):
        self.catalog = catalog
        super().__init__(prefix)

    def route(self, req: Request):
        if (req.method, req.path) != ("POST", self.prefix + "/v3/auth/tokens"):
            return 404, {"error": {"code": 404, "title": "Not Found",
                                   "message": "The resource could not be found."}}
        auth = req.json()["auth"]
        methods = auth["identity"]["methods"]
        given = {"password": lambda i: i["password"]["user"].get("password"),
                 "application_credential": lambda i: i["application_credential"].get("secret"),
                 "token": lambda i: i["token"].get("id")}[methods[0]](auth["identity"])
        if given not in (PASSWORD, APP_SECRET, USER_TOKEN):
            return 401, KEYSTONE_401
        domain = {"id": "default", "name": "Default"}
        token = {"methods": methods, "audit_ids": ["3T2dc1CGQxyJsHdDu1xkcw"],
                 "expires_at": "2030-01-01T00:00:00.000000Z",
                 "issued_at": "2029-12-31T23:00:00.000000Z",
                 "user": {"domain": domain, "id": "u-1", "name": "demo", "password_expires_at": None},
                 "project": {"domain": domain, "id": "p-demo", "name": "demo"},
                 "is_domain": False, "roles": [{"id": "r-1", "name": "member"}],
                 "catalog": self.catalog}
        return 201, {"token": token}, {"X-Subject-Token": ISSUED_TOKEN, "Vary": "X-Auth-Token"}


def endpoint(interface: str, region: str, url: str) -> dict:
    return {"id": uuid.uuid4().hex, "interface": interface, "region_id": region, "region": region,
            "url": url}


class Cloud:
    """A Keystone whose catalog names one Glance double per (interface, region)."""

    PLACES = [("public", "RegionOne"), ("internal", "RegionOne"), ("admin", "RegionOne"),
              ("public", "RegionTwo"), ("internal", "RegionTwo")]

    def __init__(self, images=(), keystone_prefix=""):
        self.glances = {place: Glance(images) for place in self.PLACES}
        image_service = {"type": "image", "name": "glance", "id": uuid.uuid4().hex,
                         "endpoints": [endpoint(i, r, g.url) for (i, r), g in self.glances.items()]}
        self.keystone = Keystone([], prefix=keystone_prefix)
        identity = {"type": "identity", "name": "keystone", "id": uuid.uuid4().hex,
                    "endpoints": [endpoint(i, "RegionOne", self.keystone.url)
                                  for i in ("public", "internal", "admin")]}
        self.keystone.catalog.extend([identity, image_service])

    def used(self) -> list[tuple[str, str]]:
        """The (interface, region) of every Glance that got a request."""
        return [place for place, g in self.glances.items() if g.requests]

    def close(self):
        close(self.keystone, *self.glances.values())


@pytest.fixture(scope="module")
def _cloud():
    c = Cloud()
    yield c
    c.close()


@pytest.fixture
def cloud(_cloud):
    """The module's Cloud, reset: no requests seen, one image ("one", source_uuid=s-1) everywhere."""
    image = glance_image("one", source_uuid="s-1")
    _cloud.keystone.requests.clear()
    for g in _cloud.glances.values():
        g.requests.clear()
        g.images = [image]
    return _cloud


def password_env(auth_url: str, **extra) -> dict:
    return {"OS_AUTH_URL": auth_url, "OS_USERNAME": "demo", "OS_PASSWORD": PASSWORD,
            "OS_USER_DOMAIN_NAME": "Default", "OS_PROJECT_NAME": "demo",
            "OS_PROJECT_DOMAIN_NAME": "Default", "OS_REGION_NAME": "RegionOne", **extra}


def keystone_auth(keystone: Keystone) -> dict:
    [req] = keystone.requests
    assert (req.method, req.path) == ("POST", keystone.prefix + "/v3/auth/tokens")
    assert header(req, "Content-Type") == "application/json"
    return req.json()


# --------------------------------------------------------------------------- password auth


@pytest.mark.parametrize("suffix", ["", "/", "/v3", "/v3/"])
def test_password_auth_body_and_token_on_the_public_endpoint(cloud, suffix):
    image = cloud.glances["public", "RegionOne"].images[0]
    shown = ok(run("show", image["id"], env=password_env(cloud.keystone.url + suffix)))
    assert shown == image
    assert keystone_auth(cloud.keystone) == {"auth": {
        "identity": {"methods": ["password"],
                     "password": {"user": {"name": "demo", "domain": {"name": "Default"},
                                           "password": PASSWORD}}},
        "scope": {"project": {"name": "demo", "domain": {"name": "Default"}}}}}
    assert cloud.used() == [("public", "RegionOne")]
    [req] = cloud.glances["public", "RegionOne"].requests
    assert (req.method, req.path) == ("GET", f"/v2/images/{image['id']}")
    assert header(req, "X-Auth-Token") == ISSUED_TOKEN


def test_password_auth_with_ids_instead_of_names(cloud):
    env = {"OS_AUTH_URL": cloud.keystone.url + "/v3", "OS_USER_ID": "u-1", "OS_PASSWORD": PASSWORD,
           "OS_PROJECT_ID": "p-demo"}
    ok(run("find", "source_uuid=s-1", env=env))
    assert keystone_auth(cloud.keystone) == {"auth": {
        "identity": {"methods": ["password"],
                     "password": {"user": {"id": "u-1", "password": PASSWORD}}},
        "scope": {"project": {"id": "p-demo"}}}}


def test_password_auth_with_domain_ids_and_legacy_tenant_name(cloud):
    env = {"OS_AUTH_URL": cloud.keystone.url, "OS_USERNAME": "demo", "OS_PASSWORD": PASSWORD,
           "OS_USER_DOMAIN_ID": "default", "OS_TENANT_NAME": "demo", "OS_PROJECT_DOMAIN_ID": "d-2"}
    ok(run("find", "source_uuid=s-1", env=env))
    assert keystone_auth(cloud.keystone)["auth"] == {
        "identity": {"methods": ["password"],
                     "password": {"user": {"name": "demo", "domain": {"id": "default"},
                                           "password": PASSWORD}}},
        "scope": {"project": {"name": "demo", "domain": {"id": "d-2"}}}}


def test_keystone_under_a_path_prefix():
    c = Cloud([glance_image("one")], keystone_prefix="/identity")
    try:
        ok(run("find", env=password_env(c.keystone.url)))
        assert keystone_auth(c.keystone)["auth"]["identity"]["methods"] == ["password"]
        assert c.used() == [("public", "RegionOne")]
    finally:
        c.close()


@pytest.mark.parametrize("variables, place", [
    ({}, ("public", "RegionOne")),
    ({"OS_INTERFACE": "internal"}, ("internal", "RegionOne")),
    ({"OS_INTERFACE": "admin"}, ("admin", "RegionOne")),
    ({"OS_ENDPOINT_TYPE": "internalURL"}, ("internal", "RegionOne")),
    ({"OS_ENDPOINT_TYPE": "publicURL"}, ("public", "RegionOne")),
    ({"OS_INTERFACE": "internal", "OS_REGION_NAME": "RegionTwo"}, ("internal", "RegionTwo")),
    ({"OS_ENDPOINT_TYPE": "internalURL", "OS_REGION_NAME": "RegionTwo"}, ("internal", "RegionTwo")),
    ({"OS_REGION_NAME": "RegionTwo"}, ("public", "RegionTwo")),
    ({"OS_INTERFACE": "internal", "OS_ENDPOINT_TYPE": "publicURL"}, ("internal", "RegionOne")),
])
def test_endpoint_chosen_by_interface_and_region(cloud, variables, place):
    env = password_env(cloud.keystone.url, **variables)
    if "OS_REGION_NAME" not in variables:
        del env["OS_REGION_NAME"]  # the first endpoint of the interface (RegionOne's here)
    found = ok(run("find", "source_uuid=s-1", env=env))
    assert [i["name"] for i in found] == ["one"]
    assert cloud.used() == [place]
    [req] = cloud.glances[place].requests
    assert header(req, "X-Auth-Token") == ISSUED_TOKEN


def test_region_matched_by_region_field_when_region_id_differs():
    glance = Glance([glance_image("one")])
    catalog = [{"type": "image", "name": "glance", "endpoints": [
        {"interface": "public", "region_id": "r-uuid-1", "region": "Krakow", "url": glance.url}]}]
    keystone = Keystone(catalog)
    try:
        ok(run("find", env=password_env(keystone.url, OS_REGION_NAME="Krakow")))
        assert len(glance.requests) == 1
    finally:
        close(keystone, glance)


def test_os_image_url_overrides_the_catalog(cloud):
    other = Glance([glance_image("elsewhere")])
    try:
        found = ok(run("find", env=password_env(cloud.keystone.url, OS_IMAGE_URL=other.url + "/v2")))
        assert [i["name"] for i in found] == ["elsewhere"]
        assert len(cloud.keystone.requests) == 1 and cloud.used() == []
        assert header(other.requests[0], "X-Auth-Token") == ISSUED_TOKEN
    finally:
        other.close()


# --------------------------------------------------------------------------- other auth methods


@pytest.mark.parametrize("auth_type", ["v3applicationcredential", "applicationcredential"])
def test_application_credential_by_id_is_unscoped(cloud, auth_type):
    env = {"OS_AUTH_URL": cloud.keystone.url + "/v3", "OS_AUTH_TYPE": auth_type,
           "OS_APPLICATION_CREDENTIAL_ID": "ac-1234", "OS_APPLICATION_CREDENTIAL_SECRET": APP_SECRET,
           "OS_REGION_NAME": "RegionOne", "OS_INTERFACE": "public",
           "OS_PROJECT_NAME": "ignored", "OS_PROJECT_DOMAIN_NAME": "Default"}  # a stray scope
    assert [i["name"] for i in ok(run("find", "source_uuid=s-1", env=env))] == ["one"]
    assert keystone_auth(cloud.keystone) == {"auth": {"identity": {
        "methods": ["application_credential"],
        "application_credential": {"id": "ac-1234", "secret": APP_SECRET}}}}
    assert cloud.used() == [("public", "RegionOne")]


def test_application_credential_by_name_names_its_user(cloud):
    env = {"OS_AUTH_URL": cloud.keystone.url, "OS_AUTH_TYPE": "v3applicationcredential",
           "OS_APPLICATION_CREDENTIAL_NAME": "migratio", "OS_APPLICATION_CREDENTIAL_SECRET": APP_SECRET,
           "OS_USERNAME": "demo", "OS_USER_DOMAIN_NAME": "Users"}
    ok(run("find", env=env))
    assert keystone_auth(cloud.keystone) == {"auth": {"identity": {
        "methods": ["application_credential"],
        "application_credential": {"name": "migratio", "secret": APP_SECRET,
                                   "user": {"name": "demo", "domain": {"name": "Users"}}}}}}


@pytest.mark.parametrize("auth_type", ["v3token", "token", None])
def test_token_method_against_keystone(cloud, auth_type):
    env = {"OS_AUTH_URL": cloud.keystone.url, "OS_AUTH_TOKEN": USER_TOKEN, "OS_PROJECT_ID": "p-demo"}
    if auth_type:
        env["OS_AUTH_TYPE"] = auth_type
    ok(run("find", env=env))
    assert keystone_auth(cloud.keystone) == {"auth": {
        "identity": {"methods": ["token"], "token": {"id": USER_TOKEN}},
        "scope": {"project": {"id": "p-demo"}}}}
    [req] = cloud.glances["public", "RegionOne"].requests
    assert header(req, "X-Auth-Token") == ISSUED_TOKEN  # the new, scoped token


def test_token_and_image_url_skip_keystone(cloud):
    glance = Glance([glance_image("one", source_uuid="s-1")], token=USER_TOKEN)
    try:
        env = {"OS_AUTH_TOKEN": USER_TOKEN, "OS_IMAGE_URL": glance.url,
               "OS_AUTH_URL": cloud.keystone.url}
        assert [i["name"] for i in ok(run("find", "source_uuid=s-1", env=env))] == ["one"]
        assert cloud.keystone.requests == []
        assert header(glance.requests[0], "X-Auth-Token") == USER_TOKEN
    finally:
        glance.close()


# --------------------------------------------------------------------------- find, show, delete


@pytest.fixture(scope="module")
def _glance():
    g = Glance(api_limit_max=2, token=USER_TOKEN)
    yield g
    g.close()


@pytest.fixture
def glance(_glance):
    """The module's Glance double, reset: no images, no requests, pages of 2 at most."""
    _glance.requests.clear()
    _glance.images = []
    return _glance


def token_env(glance: Glance) -> dict:
    return {"OS_AUTH_TOKEN": USER_TOKEN, "OS_IMAGE_URL": glance.url}


@pytest.mark.parametrize("matching", [5, 4])  # a short last page; a full one, then an empty one
def test_find_follows_next_pages_with_the_filters(glance, matching):
    wanted = [glance_image(f"hit-{n}", source_uuid="s-1", source_cs="site a&b=c") for n in range(matching)]
    others = [glance_image("same uuid, other site", source_uuid="s-1", source_cs="site-x"),
              glance_image("other uuid", source_uuid="s-2", source_cs="site a&b=c")]
    glance.images = [others[0], *wanted[:2], others[1], *wanted[2:]]
    found = ok(run("find", "source_uuid=s-1", "source_cs=site a&b=c", env=token_env(glance)))
    assert found == wanted
    pages = [parse_qs(urlsplit(r.path).query) for r in glance.requests]
    assert len(pages) == 3
    assert all(urlsplit(r.path).path == "/v2/images" for r in glance.requests)
    assert all(header(r, "X-Auth-Token") == USER_TOKEN for r in glance.requests)
    for page in pages:
        assert (page["source_uuid"], page["source_cs"], page["limit"]) == (["s-1"], ["site a&b=c"], ["200"])
    assert "marker" not in pages[0]
    assert [p["marker"] for p in pages[1:]] == [[wanted[1]["id"]], [wanted[3]["id"]]]


def test_find_without_filters_and_with_an_equals_sign_in_a_value(glance):
    glance.images = [glance_image("a", k="x=y"), glance_image("b", k="x")]
    assert [i["name"] for i in ok(run("find", env=token_env(glance)))] == ["a", "b"]
    assert [i["name"] for i in ok(run("find", "k=x=y", env=token_env(glance)))] == ["a"]
    assert parse_qs(urlsplit(glance.requests[-1].path).query) == {"k": ["x=y"], "limit": ["200"]}


def test_find_nothing_is_an_empty_list(glance):
    glance.images = [glance_image("a", source_uuid="s-1")]
    assert ok(run("find", "source_uuid=nope", env=token_env(glance))) == []


@pytest.mark.parametrize("suffix", ["", "/", "/v2", "/v2/"])
def test_show_one_image_whatever_the_image_url_ends_with(glance, suffix):
    glance.images = [glance_image("a"), glance_image("b", os_distro="debian")]
    env = {**token_env(glance), "OS_IMAGE_URL": glance.url + suffix}
    assert ok(run("show", glance.images[1]["id"], env=env)) == glance.images[1]
    assert [(r.method, r.path) for r in glance.requests] == [("GET", f"/v2/images/{glance.images[1]['id']}")]


def test_delete_then_it_is_gone(glance):
    keep, gone = glance_image("keep"), glance_image("gone")
    glance.images = [keep, gone]
    assert isinstance(ok(run("delete", gone["id"], env=token_env(glance))), dict)
    assert (glance.requests[0].method, glance.requests[0].path) == ("DELETE", f"/v2/images/{gone['id']}")
    assert glance.images == [keep]
    err = failed(run("delete", gone["id"], env=token_env(glance)), 4)
    assert err == f"HTTP 404 Not Found: DELETE {glance.url}/v2/images/{gone['id']}"


def test_show_missing_image_exits_4(glance):
    missing = str(uuid.uuid4())
    err = failed(run("show", missing, env=token_env(glance)), 4)
    assert err == f"HTTP 404 Not Found: GET {glance.url}/v2/images/{missing}"


def test_ids_are_quoted_into_the_path(glance):
    failed(run("show", "a b?c=d#e", env=token_env(glance)), 4)
    failed(run("delete", "a&b", env=token_env(glance)), 4)
    assert [(r.method, r.path) for r in glance.requests] == [("GET", "/v2/images/a%20b%3Fc%3Dd%23e"),
                                                             ("DELETE", "/v2/images/a%26b")]


def test_usage_errors_exit_2():
    for argv in ([], ["list"], ["show"], ["delete", "a", "b"], ["find", "source_uuid"]):
        proc = subprocess.run([sys.executable, "-", *argv], input=SCRIPT, capture_output=True,
                              env={"PATH": os.environ.get("PATH", "")}, timeout=60)
        assert (proc.returncode, proc.stdout) == (2, b"")
        assert proc.stderr.startswith(b"usage: find KEY=VALUE")


def test_paging_behind_a_path_prefix_stays_under_the_prefix():
    glance = Glance([glance_image(f"hit-{n}", source_uuid="s-1") for n in range(3)],
                    api_limit_max=2, token=USER_TOKEN, prefix="/image")
    try:
        proc = run("find", "source_uuid=s-1", env=token_env(glance))
        assert [urlsplit(r.path).path for r in glance.requests] == ["/image/v2/images"] * 2
        assert [i["name"] for i in ok(proc)] == ["hit-0", "hit-1", "hit-2"]
    finally:
        glance.close()


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("env", [
    password_env("{keystone}", OS_PASSWORD="wrong-" + PASSWORD),
    {"OS_AUTH_URL": "{keystone}", "OS_AUTH_TYPE": "v3applicationcredential",
     "OS_APPLICATION_CREDENTIAL_ID": "ac-1", "OS_APPLICATION_CREDENTIAL_SECRET": APP_SECRET + "-revoked"},
], ids=["password", "application-credential"])
def test_keystone_401_exits_5_with_one_line_and_no_secret(cloud, env):
    env = {k: v.format(keystone=cloud.keystone.url) for k, v in env.items()}
    proc = run("find", "source_uuid=s-1", env=env)
    err = failed(proc, 5)
    assert err == (f"HTTP 401 Unauthorized: POST {cloud.keystone.url}/v3/auth/tokens "
                   "(The request you have made requires authentication.)")
    wrong = env.get("OS_PASSWORD") or env["OS_APPLICATION_CREDENTIAL_SECRET"]
    assert wrong not in proc.out + proc.err
    assert cloud.used() == []


def test_glance_401_with_a_stale_token_exits_5(glance):
    env = {**token_env(glance), "OS_AUTH_TOKEN": USER_TOKEN + "-expired"}
    proc = run("find", "source_uuid=s-1", env=env)
    assert failed(proc, 5) == (f"HTTP 401 Unauthorized: GET {glance.url}/v2/images "
                               "(This server could not verify that you are authorized.)")
    assert env["OS_AUTH_TOKEN"] not in proc.err


def test_glance_500_exits_5_with_its_message():
    double = HttpDouble(lambda req: (500, {"code": "500 Internal Server Error", "title": "Internal Server Error",
                                           "message": "The server has either erred or is incapable\n of it."}))
    try:
        err = failed(run("show", "abc", env={"OS_AUTH_TOKEN": USER_TOKEN, "OS_IMAGE_URL": double.url}), 5)
        assert err == (f"HTTP 500 Internal Server Error: GET {double.url}/v2/images/abc "
                       "(The server has either erred or is incapable of it.)")
    finally:
        double.close()


def test_keystone_without_subject_token_exits_5():
    double = HttpDouble(lambda req: (201, {"token": {"catalog": []}}))
    try:
        err = failed(run("find", env=password_env(double.url)), 5)
        assert err == "Keystone answered without a token (X-Subject-Token)"
    finally:
        double.close()


@pytest.mark.parametrize("variables, expected", [
    ({"OS_REGION_NAME": "RegionThree"}, "Keystone's catalog has no public image endpoint in region RegionThree"),
    ({"OS_REGION_NAME": "RegionTwo", "OS_INTERFACE": "admin"},
     "Keystone's catalog has no admin image endpoint in region RegionTwo"),
    ({"OS_ENDPOINT_TYPE": "internalURL", "OS_REGION_NAME": "RegionThree"},
     "Keystone's catalog has no internal image endpoint in region RegionThree"),
])
def test_no_image_endpoint_for_the_region_exits_5(cloud, variables, expected):
    assert failed(run("find", env=password_env(cloud.keystone.url, **variables)), 5) == expected
    assert len(cloud.keystone.requests) == 1 and cloud.used() == []


def test_catalog_without_an_image_service_exits_5():
    keystone = Keystone([{"type": "identity", "name": "keystone", "endpoints": []}])
    try:
        env = password_env(keystone.url)
        del env["OS_REGION_NAME"]
        assert failed(run("find", env=env), 5) == "Keystone's catalog has no public image endpoint"
    finally:
        keystone.close()


@pytest.mark.parametrize("env", [
    {"OS_CLOUD": "mycloud"},
    {"OS_CLOUD": "mycloud", "OS_PASSWORD": PASSWORD},
    password_env("{keystone}", OS_AUTH_TYPE="v3oidcpassword"),
    password_env("{keystone}", OS_AUTH_TYPE="v3totp"),
    password_env("{keystone}/v2.0"),
    password_env("{keystone}/v2.0/"),
    {},
], ids=["cloud", "cloud+password", "oidc", "totp", "keystone-v2", "keystone-v2-slash", "nothing"])
def test_unsupported_credentials_exit_3_without_a_request(cloud, env):
    env = {k: v.format(keystone=cloud.keystone.url) for k, v in env.items()}
    err = failed(run("find", "source_uuid=s-1", env=env), 3)
    assert "glance CLI" in err or "OS_AUTH_URL" in err
    assert cloud.keystone.requests == [] and cloud.used() == []


def test_keystone_v2_url_is_named():
    url = f"http://127.0.0.1:{free_port()}/v2.0"
    assert failed(run("find", env=password_env(url)), 3) == f"OS_AUTH_URL {url} is Keystone v2: use the glance CLI"


def test_keystone_refusing_connections_exits_6():
    url = f"http://127.0.0.1:{free_port()}"
    err = failed(run("find", "source_uuid=s-1", env=password_env(url)), 6)
    assert err.startswith(f"Unable to establish connection to {url}/v3/auth/tokens: ")
    assert "refused" in err.lower()


def test_glance_refusing_connections_exits_6():
    url = f"http://127.0.0.1:{free_port()}"
    err = failed(run("show", "abc", env={"OS_AUTH_TOKEN": USER_TOKEN, "OS_IMAGE_URL": url}), 6)
    assert err.startswith(f"Unable to establish connection to {url}/v2/images/abc: ")


# --------------------------------------------------------------------------- the lab's real Glance


@pytest.mark.lab
def test_find_show_delete_against_the_lab_glance(lab, glance_image):
    source_uuid = str(uuid.uuid4())
    img = glance_image(site="site-b", properties={"source_uuid": source_uuid, "source_cs": "site-a",
                                                  "os_distro": "debian"})
    glance_image(site="site-b", properties={"source_uuid": str(uuid.uuid4()), "source_cs": "site-a"})
    env = {"OS_AUTH_TOKEN": "lab-token", "OS_IMAGE_URL": lab.site_b.glance_url}  # as head-env.sh
    [found] = ok(run("find", f"source_uuid={source_uuid}", env=env))
    assert (found["id"], found["status"], found["checksum"], found["size"]) == (img.id, "active", img.checksum, img.size)
    assert (found["os_hash_algo"], found["os_hash_value"]) == ("sha512", img.os_hash_value)
    assert (found["source_uuid"], found["source_cs"], found["os_distro"]) == (source_uuid, "site-a", "debian")
    assert ok(run("find", f"source_uuid={source_uuid}", "source_cs=site-b", env=env)) == []
    assert ok(run("show", img.id, env=env)) == found
    assert isinstance(ok(run("delete", img.id, env=env)), dict)
    assert failed(run("show", img.id, env=env), 4).startswith("HTTP 404 Not Found: GET ")
    assert ok(run("find", f"source_uuid={source_uuid}", env=env)) == []


# --------------------------------------------------------------------------- the stream's commands


def run_file(op: str, *args: str, env: dict, data: bytes = b"") -> subprocess.CompletedProcess:
    """Run the installed copy (`python3 FILE OP ...`), as the stream's line does: stdin is data."""
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
    return subprocess.run([sys.executable, headnode_client.__file__, op, *args], input=data, env=clean,
                          capture_output=True, timeout=60)


@pytest.fixture
def recorder():
    """A Glance that creates images (201) and takes their data (204), recording each request."""
    image_id = str(uuid.uuid4())

    def route(req: Request):
        if req.method == "POST" and req.path == "/v2/images":
            return 201, {**req.json(), "id": image_id, "status": "queued"}
        if req.method == "PUT" and req.path == f"/v2/images/{image_id}/file":
            return 204, None
        return 404, {"code": "404 Not Found", "title": "Not Found", "message": req.path}

    double = HttpDouble(route)
    double.image_id = image_id
    yield double
    double.close()


def test_create_posts_the_record_and_prints_only_the_id(recorder):
    spec = {"name": 'odd "name"\n| id | x |', "disk_format": "qcow2", "container_format": "bare",
            "min_disk": 3, "min_ram": 0, "properties": {"source_uuid": "s-1", "note": "--file=/etc/shadow"}}
    proc = run_file("create", json.dumps(spec), env={"OS_AUTH_TOKEN": USER_TOKEN, "OS_IMAGE_URL": recorder.url})
    assert (proc.returncode, proc.stdout.decode()) == (0, recorder.image_id + "\n"), proc.stderr
    (req,) = recorder.requests
    assert req.json() == {"name": spec["name"], "disk_format": "qcow2", "container_format": "bare", "min_disk": 3,
                          "source_uuid": "s-1", "note": "--file=/etc/shadow"}  # min_ram 0: Glance's default
    assert header(req, "X-Auth-Token") == USER_TOKEN


def test_upload_sends_exactly_the_announced_bytes_with_a_content_length(recorder):
    data = os.urandom(3 * 1024 * 1024 + 5)
    env = {"OS_AUTH_TOKEN": USER_TOKEN, "OS_IMAGE_URL": recorder.url + "/v2/"}
    proc = run_file("upload", f"--size={len(data)}", recorder.image_id, env=env, data=data)
    assert (proc.returncode, proc.stderr) == (0, b"")
    (req,) = recorder.requests
    assert (req.method, req.body) == ("PUT", data)
    assert header(req, "Content-Length") == str(len(data))
    assert header(req, "Content-Type") == "application/octet-stream"
    assert header(req, "Transfer-Encoding") is None


def test_short_upload_exits_7_and_glance_never_gets_the_full_image(recorder):
    data = os.urandom(100_000)
    env = {"OS_AUTH_TOKEN": USER_TOKEN, "OS_IMAGE_URL": recorder.url}
    proc = run_file("upload", f"--size={len(data) + 10}", recorder.image_id, env=env, data=data)
    assert proc.returncode == headnode_client.SHORT_INPUT
    assert proc.stderr.decode() == "the image stream ended 10 bytes early\n"
    assert all(len(r.body) < len(data) + 10 for r in recorder.requests)


def test_probe_only_authenticates(glance):
    assert ok(run("probe", env=token_env(glance))) == {}
    assert glance.requests == []  # a token and an image URL need no request at all
