"""A tiny Glance API client that runs on a destination head node (stdlib only, Python >= 3.6).

The worker sends this file over ssh as the stdin of `python3 - OP ARGS...`, after the site's
env file was sourced. One process, a few HTTP requests: about 0.1 s, where each start of the
glance CLI costs close to a second.

    find KEY=VALUE...   images with these properties  -> JSON list of image records
    project             the owner of what these credentials create -> {"project": ID}
    show ID / delete ID one image -> JSON record / delete it
    probe               only authenticate             -> {}
    create JSON         a new queued image from {name, disk_format, container_format,
                        min_disk, min_ram, properties} -> its id
    upload --size=N ID  exactly N bytes from stdin into the image (Content-Length: N)

Credentials are the OS_* variables the glance CLI reads: a token with an image endpoint
(OS_AUTH_TOKEN + OS_IMAGE_URL), or Keystone v3 auth (OS_AUTH_URL with password, application
credential or token). The project is the Keystone token's, else the owner of a throwaway image
(deleted at once). Exit status: 0 done; 3 these credentials need
the glance CLI (e.g. OS_CLOUD); 4 no such image; 5 Glance or Keystone answered an error; 6 no
connection; 7 stdin ended before N bytes (the upload is abandoned: the image stays queued).
Secrets never reach the output.
"""

import json
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request

UNSUPPORTED, NOT_FOUND, HTTP_ERROR, NO_CONNECTION, SHORT_INPUT = 3, 4, 5, 6, 7
OWNER_PROBE = "migratio-owner-probe"  # (migratio.openstack.glance_protocol.OWNER_PROBE)
TIMEOUT = 60
UPLOAD_TIMEOUT = 900  # Glance may take a while to answer once the last byte is in
BLOCK = 1024 * 1024
PAGE = 200
AUTH_TYPES = {"", "password", "v3password", "token", "v3token", "v3applicationcredential",
              "applicationcredential", "v3applicationcredentials"}


class Failure(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def env(*names):
    """The first of these variables that is set and not empty (else None)."""
    return next((os.environ[name] for name in names if os.environ.get(name)), None)


def tls_context():
    context = ssl.create_default_context(cafile=env("OS_CACERT"))
    if (env("OS_INSECURE") or "").lower() in ("1", "true", "yes"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if env("OS_CERT"):
        context.load_cert_chain(env("OS_CERT"), env("OS_KEY"))
    return context


class Exactly:
    """A request body of exactly `size` bytes read from `stream`, in large blocks."""

    def __init__(self, stream, size):
        self.stream, self.left = stream, size

    def read(self, _hint=-1):
        block = self.stream.read(min(BLOCK, self.left)) if self.left else b""
        self.left -= len(block)
        if not block and self.left:
            raise Failure(SHORT_INPUT, "the image stream ended %d bytes early" % self.left)
        return block


def request(method, url, token=None, body=None, data=None, content_type=None, timeout=TIMEOUT):
    """(status, headers, parsed JSON or None); HTTP errors and lost connections raise Failure.

    `body` is sent as JSON; `data` (an Exactly) as is.
    """
    headers = {"Accept": "application/json", "User-Agent": "migratio-headnode"}
    if token:
        headers["X-Auth-Token"] = token
    if body is not None:
        data = json.dumps(body).encode()
        content_type = "application/json"
    elif data is not None:
        headers["Content-Length"] = str(data.left)
    if content_type:
        headers["Content-Type"] = content_type
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    where = url.split("?", 1)[0]  # (the query is not needed to say what failed)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=tls_context()) as resp:
            raw = resp.read()
            return resp.status, resp.headers, json.loads(raw.decode()) if raw.strip() else None
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise Failure(NOT_FOUND, "HTTP 404 Not Found: %s %s" % (method, where))
        raise Failure(HTTP_ERROR, "HTTP %s %s: %s %s%s" % (exc.code, exc.reason, method, where, explanation(exc)))
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Failure(NO_CONNECTION, "Unable to establish connection to %s: %s" % (where, reason))


def explanation(exc):
    """Glance's and Keystone's one-line reason from an error body, if any."""
    try:
        body = json.loads(exc.read().decode() or "null")
    except (ValueError, OSError):
        return ""
    if isinstance(body, dict):
        inner = body.get("error") or body
        message = inner.get("message") or inner.get("title") if isinstance(inner, dict) else None
        if message:
            return " (%s)" % " ".join(str(message).split())[:300]
    return ""


def keystone_v3(auth_url):
    url = auth_url.rstrip("/")
    if url.endswith("/v3"):
        return url
    if url.rsplit("/", 1)[-1].startswith("v2"):
        raise Failure(UNSUPPORTED, "OS_AUTH_URL %s is Keystone v2: use the glance CLI" % auth_url)
    return url + "/v3"


def domain(kind):
    """{"id": ...} or {"name": ...} of the user or project domain (Keystone's "Default" if none)."""
    upper = kind.upper()
    domain_id = env("OS_%s_DOMAIN_ID" % upper, "OS_DEFAULT_DOMAIN_ID")
    if domain_id:
        return {"id": domain_id}
    return {"name": env("OS_%s_DOMAIN_NAME" % upper, "OS_DEFAULT_DOMAIN_NAME") or "Default"}


def identity():
    """The `identity` part of a Keystone v3 token request, from OS_* variables."""
    kind = (env("OS_AUTH_TYPE") or "").lower()
    if kind.startswith("v3applicationcredential") or kind == "applicationcredential":
        credential = {"secret": env("OS_APPLICATION_CREDENTIAL_SECRET") or ""}
        if env("OS_APPLICATION_CREDENTIAL_ID"):
            credential["id"] = env("OS_APPLICATION_CREDENTIAL_ID")
        else:
            credential["name"] = env("OS_APPLICATION_CREDENTIAL_NAME") or ""
            credential["user"] = user()
        return {"methods": ["application_credential"], "application_credential": credential}, False
    if kind in ("token", "v3token") or (not kind and env("OS_AUTH_TOKEN", "OS_TOKEN") and not env("OS_PASSWORD")):
        return {"methods": ["token"], "token": {"id": env("OS_AUTH_TOKEN", "OS_TOKEN")}}, True
    password = user()
    password["password"] = env("OS_PASSWORD") or ""
    return {"methods": ["password"], "password": {"user": password}}, True


def user():
    if env("OS_USER_ID"):
        return {"id": env("OS_USER_ID")}
    return {"name": env("OS_USERNAME") or "", "domain": domain("user")}


def scope():
    project_id = env("OS_PROJECT_ID", "OS_TENANT_ID")
    if project_id:
        return {"project": {"id": project_id}}
    name = env("OS_PROJECT_NAME", "OS_TENANT_NAME")
    if name:
        return {"project": {"name": name, "domain": domain("project")}}
    return None


def image_endpoint(catalog):
    interface = (env("OS_INTERFACE", "OS_ENDPOINT_TYPE") or "public").lower()
    interface = interface[:-3] if interface.endswith("url") else interface
    region = env("OS_REGION_NAME")
    for service in catalog or []:
        if service.get("type") != "image":
            continue
        for endpoint in service.get("endpoints", []):
            if endpoint.get("interface") == interface and \
                    (not region or region in (endpoint.get("region_id"), endpoint.get("region"))):
                return endpoint["url"]
    where = " in region %s" % region if region else ""
    raise Failure(HTTP_ERROR, "Keystone's catalog has no %s image endpoint%s" % (interface, where))


def connect():
    """(Glance root URL, token, the token's project id or None) the way the glance CLI would find them."""
    kind = (env("OS_AUTH_TYPE") or "").lower()
    if kind not in AUTH_TYPES or (env("OS_CLOUD") and not env("OS_AUTH_URL")):
        raise Failure(UNSUPPORTED, "these credentials (OS_AUTH_TYPE/OS_CLOUD) need the glance CLI")
    token, image_url = env("OS_AUTH_TOKEN", "OS_TOKEN"), env("OS_IMAGE_URL")
    if token and image_url and not env("OS_PASSWORD"):
        return image_url, token, None
    if not env("OS_AUTH_URL"):
        raise Failure(UNSUPPORTED, "no OS_AUTH_URL (nor OS_AUTH_TOKEN with OS_IMAGE_URL) in the environment")
    ident, scoped = identity()
    auth = {"identity": ident}
    if scoped and scope():
        auth["scope"] = scope()
    _, headers, body = request("POST", keystone_v3(env("OS_AUTH_URL")) + "/auth/tokens", body={"auth": auth})
    token = headers.get("X-Subject-Token")
    if not token:
        raise Failure(HTTP_ERROR, "Keystone answered without a token (X-Subject-Token)")
    issued = (body or {}).get("token") or {}
    return image_url or image_endpoint(issued.get("catalog")), token, (issued.get("project") or {}).get("id")


def unversioned(root):
    root = root.rstrip("/")
    return root[:-3] if root.endswith("/v2") else root


def images_url(root, image_id=None):
    url = unversioned(root) + "/v2/images"
    return url if image_id is None else url + "/" + urllib.parse.quote(image_id, safe="")


def find(root, token, filters):
    query = dict(pair.split("=", 1) for pair in filters)
    query["limit"] = str(PAGE)
    url = images_url(root) + "?" + urllib.parse.urlencode(query)
    found = []
    while url:
        _, _, page = request("GET", url, token)
        found.extend(page.get("images", []))
        # Glance's `next` is a path under the endpoint ("/v2/images?marker=..."), as glanceclient reads it
        url = unversioned(root) + page["next"] if page.get("next") else None
    return found


def probe_owner(root, token):
    """The owner of a throwaway image, deleted at once: the project of what these credentials create."""
    spec = {"name": OWNER_PROBE, "disk_format": "raw", "container_format": "bare"}
    image = request("POST", images_url(root), token, body=spec)[2]
    request("DELETE", images_url(root, image["id"]), token)
    if not image.get("owner"):
        raise Failure(HTTP_ERROR, "Glance named no owner of a new image")
    return image["owner"]


def create(root, token, spec):
    """POST a queued image; prints only its id (the head node's shell line reads it)."""
    spec = json.loads(spec)
    body = dict(spec.get("properties") or {})
    body.update({k: spec[k] for k in ("name", "disk_format", "container_format") if k in spec})
    body.update({k: int(spec[k]) for k in ("min_disk", "min_ram") if spec.get(k)})
    image = request("POST", images_url(root), token, body=body)[2]
    return image["id"]


def upload(root, token, size_arg, image_id):
    if not size_arg.startswith("--size="):
        raise Failure(2, "usage: upload --size=N ID")
    body = Exactly(getattr(sys.stdin, "buffer", sys.stdin), int(size_arg[len("--size="):]))
    request("PUT", images_url(root, image_id) + "/file", token, data=body,
            content_type="application/octet-stream", timeout=UPLOAD_TIMEOUT)
    return {}


def run(op, args):
    root, token, scoped = connect()
    if op == "find":
        return find(root, token, args)
    if op == "project":
        return {"project": scoped or probe_owner(root, token)}
    if op == "show":
        return request("GET", images_url(root, args[0]), token)[2]
    if op == "delete":
        request("DELETE", images_url(root, args[0]), token)
        return {}
    if op == "create":
        return create(root, token, args[0])
    if op == "upload":
        return upload(root, token, *args)
    return {}  # probe


def main(argv):
    ops = {"find": None, "show": 1, "delete": 1, "probe": 0, "project": 0, "create": 1, "upload": 2}
    args = argv[1:]
    if not argv or argv[0] not in ops or ops[argv[0]] not in (None, len(args)) or \
            (argv[0] == "find" and not all("=" in a for a in args)):
        sys.stderr.write("usage: find KEY=VALUE... | show ID | delete ID | probe | project | create JSON | "
                         "upload --size=N ID\n")
        return 2
    try:
        result = run(argv[0], args)
    except Failure as exc:
        sys.stderr.write("%s\n" % exc)
        return exc.code
    sys.stdout.write((result if isinstance(result, str) else json.dumps(result)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
