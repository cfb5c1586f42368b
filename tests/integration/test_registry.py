"""push and pull against a real registry (Debian's docker-registry, distribution 2.8) on
127.0.0.1, with skopeo and umoci as independent peers: round trips, images made by others,
auth, a corrupt blob, a cut connection, and what a second push does not send."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from minidock.images import ARCHITECTURE
from tests.conftest import REPO, Minidock, wait_for
from tests.integration.test_bridge_networking import fetch, free_port
from tests.integration.test_images import ImageCli

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("docker-registry", "skopeo", "umoci", "htpasswd", "openssl")),
    reason="needs docker-registry, skopeo, umoci, htpasswd (apache2-utils) and openssl",
)

_BLOB_UPLOAD = re.compile(r'"(?:POST|PUT|PATCH) /v2/\S+/blobs/uploads/')


@dataclass
class Registry:
    """A docker-registry process: where it listens, stores and logs."""

    host: str
    storage: Path
    log: Path

    def requests(self) -> list[str]:
        """The request lines of its access log so far (``"PUT /v2/… HTTP/1.1" 201``)."""
        return re.findall(r'"[A-Z]+ /v2/[^"]*" \d+', self.log.read_text())

    def blob_data(self, digest: str) -> Path:
        hex_ = digest.removeprefix("sha256:")
        return self.storage / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"


@contextlib.contextmanager
def running_registry(work: Path, auth: str = "") -> Iterator[Registry]:
    """Start ``docker-registry serve`` on a free loopback port; stop it by its PID."""
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.yml").write_text(
        f"version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {work / 'data'}\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}"
    )
    log = work / "registry.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["/usr/bin/docker-registry", "serve", str(work / "config.yml")],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:

        def answers() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code in (
                    200,
                    401,
                )
            except httpx.TransportError:
                return False

        assert wait_for(answers, 15), log.read_text()
        yield Registry(f"127.0.0.1:{port}", work / "data", log)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("registry")) as r:
        yield r


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry with htpasswd auth: alice / s3cret."""
    work = tmp_path_factory.mktemp("auth-registry")
    entry = subprocess.run(["htpasswd", "-Bbn", "alice", "s3cret"], capture_output=True,
                           text=True, check=True).stdout  # fmt: skip
    (work / "htpasswd").write_text(entry)
    config = f"auth:\n  htpasswd:\n    realm: minidock-test\n    path: {work / 'htpasswd'}\n"
    with running_registry(work, config) as r:
        yield r


class TokenServer:
    """The distribution spec's token server, small: GET /token?service=…&scope=… answers
    with a JWT (RS256, its certificate in the ``x5c`` header, which the registry trusts
    through ``rootcertbundle``) granting every scope asked for to alice:s3cret, nothing to
    anonymous callers, and 401 to wrong credentials. ``asked`` records each request."""

    def __init__(self, work: Path) -> None:
        self.key, self.cert = work / "token.key", work / "token.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=minidock-test-token", "-keyout", str(self.key), "-out", str(self.cert)],
            check=True, capture_output=True,
        )  # fmt: skip
        der = subprocess.run(["openssl", "x509", "-in", str(self.cert), "-outform", "DER"],
                             check=True, capture_output=True).stdout  # fmt: skip
        self.x5c = base64.b64encode(der).decode()
        self.asked: list[dict[str, list[str]]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
                given = self.headers.get("Authorization")
                server.asked.append({**query, "authorization": [given or ""]})
                alice = "Basic " + base64.b64encode(b"alice:s3cret").decode()
                if given not in (None, alice):
                    self.send_response(401)
                    self.end_headers()
                    return
                body = json.dumps({"token": server.token(query.get("scope", []) if given else [])})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def token(self, scopes: list[str]) -> str:
        def b64url(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        now = int(time.time())
        claims = {
            "iss": "minidock-test", "sub": "alice", "aud": "minidock-registry",
            "exp": now + 300, "nbf": now - 10, "iat": now - 10, "jti": secrets.token_hex(8),
            "access": [
                {"type": kind, "name": name, "actions": actions.split(",")}
                for kind, name, actions in (scope.split(":") for scope in scopes)
            ],
        }  # fmt: skip
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        signed = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)],
                                   input=signed.encode(), check=True,
                                   capture_output=True).stdout  # fmt: skip
        return f"{signed}.{b64url(signature)}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="session")
def token_registry(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Registry, TokenServer]]:
    """A registry with token (Bearer) auth, and its token server."""
    work = tmp_path_factory.mktemp("token-registry")
    tokens = TokenServer(work)
    config = (
        f"auth:\n  token:\n    realm: {tokens.realm}\n    service: minidock-registry\n"
        f"    issuer: minidock-test\n    rootcertbundle: {tokens.cert}\n"
    )
    try:
        with running_registry(work, config) as r:
            yield r, tokens
    finally:
        tokens.close()


class RegistryCli(ImageCli):
    """``minidock`` with the registry commands, a private ``DOCKER_CONFIG`` and no
    default registry."""

    def __init__(self, md: Minidock, docker_config: Path) -> None:
        super().__init__(md)
        self.env = {**md.env, "DOCKER_CONFIG": str(docker_config)}
        self.env.pop("MINIDOCK_REGISTRY", None)
        self.env.pop("MINIDOCK_INSECURE_REGISTRIES", None)

    def fails(self, *args: str, input: str | None = None) -> str:
        """Run a command that must fail as an engine error; return its one-line message."""
        proc = self(*args, check=False, input=input)
        assert proc.returncode == 125, proc.stdout + proc.stderr
        assert proc.stderr.startswith("minidock: ") and proc.stderr.count("\n") == 1, proc.stderr
        return proc.stderr

    def image_id(self, ref: str) -> str:
        return self("image", "inspect", "-f", "{{.Id}}", ref).stdout.strip()

    def unique_image(self, tmp: Path, ref: str, megabytes: float = 0.01) -> None:
        """A one-layer image of random bytes: blobs no other test's image shares."""
        rootfs = tmp / f"rootfs-{secrets.token_hex(4)}"
        rootfs.mkdir()
        (rootfs / "random").write_bytes(os.urandom(int(megabytes * 1024 * 1024)))
        self("import", str(rootfs), ref)

    def snapshot(self) -> tuple[str, list[str]]:
        """The index and the blob names: a failed pull must change neither."""
        return self.store("index.json").read_text(), sorted(os.listdir(self.store("blobs/sha256")))


def skopeo(*args: str) -> bytes:
    return subprocess.run(["skopeo", *args], check=True, capture_output=True).stdout


@pytest.fixture
def mdr(md: Minidock, tmp_path: Path) -> RegistryCli:
    return RegistryCli(md, tmp_path / "docker-config")


def pushed(output: str) -> tuple[str, str, int]:
    """The summary line of a push: ``TAG: digest: sha256:… size: N``."""
    match = re.search(r"^(\S+): digest: (sha256:[0-9a-f]{64}) size: (\d+)$", output, re.M)
    assert match, output
    return match.group(1), match.group(2), int(match.group(3))


# --- round trips --------------------------------------------------------------------------------
def test_web_image_pushed_pulled_and_served(mdr: RegistryCli, registry: Registry) -> None:
    ref = f"{registry.host}/demo/web:1"
    mdr("build", "-t", "web-reg", str(REPO / "rootfs-samples/web"))
    mdr("tag", "web-reg", ref)
    image_id = mdr.image_id(ref)
    out = mdr("push", ref).stdout
    assert f"The push refers to repository [{registry.host}/demo/web]" in out
    tag, digest, size = pushed(out)
    local = json.loads(mdr("image", "inspect", ref).stdout)[0]["Descriptor"]
    assert (tag, digest, size) == ("1", local["digest"], local["size"])  # the very bytes
    mdr("rmi", ref, "web-reg")
    out = mdr("pull", ref).stdout
    assert f"Digest: {digest}" in out
    assert f"Status: Downloaded newer image for {ref}" in out
    assert out.splitlines()[-1] == ref
    assert mdr.image_id(ref) == image_id
    mdr.assert_consistent()
    port = free_port()
    mdr("run", "-d", "--name", "web", "-p", f"{port}:80", ref)
    assert fetch(port) == (REPO / "rootfs-samples/web/index.html").read_text()
    again = mdr("pull", ref).stdout
    assert f"Status: Image is up to date for {ref}" in again


def test_second_push_uploads_nothing_and_other_repos_mount(
    mdr: RegistryCli, registry: Registry, tmp_path: Path
) -> None:
    ref = f"{registry.host}/demo/twice:1"
    mdr.unique_image(tmp_path, ref)
    before = len(registry.requests())
    first = mdr("push", ref).stdout
    assert first.count(": Pushed") == 2  # the layer and the config
    uploads = [r for r in registry.requests()[before:] if _BLOB_UPLOAD.search(r)]
    assert len(uploads) == 4  # POST + PUT for each blob

    before = len(registry.requests())
    second = mdr("push", ref).stdout
    assert second.count(": Layer already exists") == 2
    assert pushed(second) == pushed(first)
    sent = registry.requests()[before:]
    assert not [r for r in sent if _BLOB_UPLOAD.search(r)], sent
    assert sum(r.startswith('"HEAD ') for r in sent) == 2

    # Another repository of the same registry: mounted, not uploaded.
    other = f"{registry.host}/elsewhere/copy:2"
    mdr("tag", ref, other)
    before = len(registry.requests())
    out = mdr("push", other).stdout
    assert out.count(": Mounted from demo/twice") == 2, out
    sent = registry.requests()[before:]
    assert [r for r in sent if r.startswith('"POST ')] == [
        r for r in sent if "mount=sha256" in r and r.endswith(" 201")
    ]
    assert not [r for r in sent if r.startswith('"PUT ') and "/blobs/" in r]


# --- peers ----------------------------------------------------------------------------------------
def test_images_pushed_by_skopeo_are_pulled_and_run(
    mdr: RegistryCli, registry: Registry, busybox_rootfs: str, tmp_path: Path
) -> None:
    # An OCI image (gzip layer) made by umoci.
    layout = tmp_path / "oci"
    for cmd in (
        ["umoci", "init", "--layout", str(layout)],
        ["umoci", "new", "--image", f"{layout}:bb"],
        ["umoci", "insert", "--image", f"{layout}:bb", busybox_rootfs, "/"],
        ["umoci", "config", "--image", f"{layout}:bb", "--config.cmd", "sh",
         "--config.env", "PATH=/bin", "--os", "linux", "--architecture", ARCHITECTURE],
    ):  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True)
    oci_ref = f"{registry.host}/peer/umoci:1"
    skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:bb", f"docker://{oci_ref}")
    # A Docker schema 2 image (skopeo gzips the layers) from `minidock save`.
    mdr("tag", "busybox", "saved:1")
    mdr("save", "-o", str(tmp_path / "saved.tar"), "saved:1")
    docker_ref = f"{registry.host}/peer/docker:1"
    archive = f"docker-archive:{tmp_path / 'saved.tar'}"
    skopeo("copy", "--dest-tls-verify=false", archive, f"docker://{docker_ref}")
    mdr("rmi", "saved:1", "busybox")

    for ref, media_type in ((oci_ref, "oci.image.manifest"), (docker_ref, "docker.distribution")):
        raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}")
        assert media_type in json.loads(raw).get("mediaType", "oci.image.manifest")
        out = mdr("pull", ref).stdout
        assert f"Digest: sha256:{hashlib.sha256(raw).hexdigest()}" in out
        assert "Pull complete" in out
        ran = mdr("run", "--rm", ref, "sh", "-c", "echo hello from $(busybox | head -c 7)")
        assert ran.stdout == "hello from BusyBox\n"
    mdr.assert_consistent()


def test_image_pushed_by_minidock_is_read_by_skopeo(
    mdr: RegistryCli, registry: Registry, tmp_path: Path
) -> None:
    ref = f"{registry.host}/demo/for-skopeo:v1"
    mdr("tag", "busybox", ref)
    _, digest, _ = pushed(mdr("push", ref).stdout)
    info = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{ref}"))
    assert info["Digest"] == digest
    assert info["Architecture"] == ARCHITECTURE and info["Os"] == "linux"
    assert info["Layers"] == json.loads(mdr("image", "inspect", ref).stdout)[0]["RootFS"]["Layers"]
    skopeo("copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{tmp_path / 'copy'}:v1")
    # skopeo compresses the layers on the way (so the manifest changes); the config is
    # copied as it is, so the image is the same one.
    index = json.loads((tmp_path / "copy/index.json").read_text())
    blob = tmp_path / "copy/blobs/sha256" / index["manifests"][0]["digest"][7:]
    assert json.loads(blob.read_text())["config"]["digest"] == mdr.image_id(ref)


def test_an_index_is_resolved_to_a_platform(mdr: RegistryCli, registry: Registry) -> None:
    ref = f"{registry.host}/demo/multi:single"
    mdr("tag", "busybox", ref)
    _, digest, size = pushed(mdr("push", ref).stdout)
    other_arch = "arm64" if ARCHITECTURE != "arm64" else "amd64"
    index = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest,
             "size": size, "platform": {"os": "linux", "architecture": other_arch}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest,
             "size": size, "platform": {"os": "linux", "architecture": ARCHITECTURE}},
        ],
    }).encode()  # fmt: skip
    put = httpx.put(
        f"http://{registry.host}/v2/demo/multi/manifests/all", content=index,
        headers={"Content-Type": "application/vnd.oci.image.index.v1+json"},
    )  # fmt: skip
    assert put.status_code == 201, put.text
    index_digest = f"sha256:{hashlib.sha256(index).hexdigest()}"
    mdr("rmi", ref)
    out = mdr("pull", f"{registry.host}/demo/multi:all").stdout
    assert f"Digest: {index_digest}" in out
    assert mdr.image_id(f"{registry.host}/demo/multi:all") == mdr.image_id("busybox")
    err = mdr.fails("pull", "--platform", "linux/s390x", f"{registry.host}/demo/multi:all")
    assert f"no image for linux/s390x here: there are linux/{other_arch}, " in err
    by_digest = mdr("pull", f"{registry.host}/demo/multi@{index_digest}").stdout
    assert by_digest.splitlines()[-1] == f"{registry.host}/demo/multi@{index_digest}"


# --- auth -----------------------------------------------------------------------------------------
def test_login_wrong_password_refused_right_one_stored(
    mdr: RegistryCli, auth_registry: Registry, tmp_path: Path
) -> None:
    host = auth_registry.host
    ref = f"{host}/private/bb:1"
    config = tmp_path / "docker-config" / "config.json"
    mdr("tag", "busybox", ref)
    err = mdr.fails("push", ref)
    assert f"unauthorized: authentication required (minidock login {host})" in err
    err = mdr.fails("login", "-u", "alice", "--password-stdin", host, input="wrong\n")
    assert (
        err == f"minidock: login to {host} failed: unauthorized: incorrect username or password\n"
    )
    assert not config.exists()

    out = mdr("login", "-u", "alice", "--password-stdin", host, input="s3cret\n")
    assert out.stdout == "Login Succeeded\n"
    assert os.stat(config).st_mode & 0o777 == 0o600
    assert json.loads(config.read_text()) == {"auths": {host: {"auth": "YWxpY2U6czNjcmV0"}}}
    mdr("push", ref)
    mdr("rmi", ref)
    mdr("pull", ref)

    assert mdr("logout", host).stdout == f"Removing login credentials for {host}\n"
    assert "authentication required" in mdr.fails("pull", ref)
    assert mdr("logout", host).stdout == f"Not logged in to {host}\n"


def test_bearer_token_flow(
    mdr: RegistryCli, token_registry: tuple[Registry, TokenServer], tmp_path: Path
) -> None:
    registry, tokens = token_registry
    ref = f"{registry.host}/tok/bb:1"
    mdr.unique_image(tmp_path, ref)
    # Anonymous: the token server gives a token that grants nothing.
    assert "authentication required" in mdr.fails("push", ref)
    assert tokens.asked[-1]["authorization"] == [""]
    err = mdr.fails("login", "-u", "alice", "--password-stdin", registry.host, input="nope\n")
    assert "incorrect username or password" in err
    mdr("login", "-u", "alice", "--password-stdin", registry.host, input="s3cret\n")

    del tokens.asked[:]
    mdr("push", ref)
    (asked,) = tokens.asked  # one token for the whole push
    assert asked["service"] == ["minidock-registry"] and asked["account"] == ["alice"]
    assert asked["scope"] == ["repository:tok/bb:pull,push"]

    # A mount needs pull access to the source repository too: asked for up front.
    del tokens.asked[:]
    other = f"{registry.host}/tok/copy:1"
    mdr("tag", ref, other)
    assert mdr("push", other).stdout.count("Mounted from tok/bb") == 2
    assert tokens.asked[0]["scope"] == ["repository:tok/copy:pull,push", "repository:tok/bb:pull"]

    mdr("rmi", ref, other)
    del tokens.asked[:]
    assert "Pull complete" in mdr("pull", ref).stdout
    assert [a["scope"] for a in tokens.asked] == [["repository:tok/bb:pull"]]


# --- failures -------------------------------------------------------------------------------------
def test_corrupt_blob_on_the_registry_is_refused(
    mdr: RegistryCli, registry: Registry, tmp_path: Path
) -> None:
    ref = f"{registry.host}/demo/corrupt:1"
    mdr.unique_image(tmp_path, ref, megabytes=0.5)
    (digest,) = layer_digests(mdr, ref)
    mdr("push", ref)
    data = registry.blob_data(digest)
    data.write_bytes(os.urandom(data.stat().st_size))  # same size, other bytes
    mdr("rmi", ref)
    before = mdr.snapshot()
    err = mdr.fails("pull", ref)
    assert f"blob {digest} is corrupt: its content is sha256:" in err, err
    assert mdr.snapshot() == before  # no blob, no config, no manifest, no image, no tag
    assert os.listdir(mdr.store("tmp")) == []


def layer_digests(mdr: RegistryCli, ref: str) -> list[str]:
    """The layer blobs of a local image, as its manifest lists them."""
    descriptor = json.loads(mdr("image", "inspect", ref).stdout)[0]["Descriptor"]
    manifest = json.loads(mdr.store("blobs/sha256", descriptor["digest"][7:]).read_text())
    return [layer["digest"] for layer in manifest["layers"]]


class FaultyProxy:
    """A TCP relay to the registry that breaks transfers half-way: once ``limit`` bytes
    of a connection have come back from the registry, it closes it (``mode`` "cut") or
    stops relaying and holds it open (``mode`` "stall"); in ``mode`` "pass" it relays all."""

    def __init__(self, upstream: str, limit: int) -> None:
        self.upstream = upstream.split(":")
        self.limit = limit
        self.mode = "cut"
        self.closed = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                server = socket.create_connection((self.upstream[0], int(self.upstream[1])))
                for args in ((client, server, None), (server, client, self.limit)):
                    threading.Thread(target=self._pipe, args=args, daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if limit is not None and self.mode != "pass" and sent + len(data) > limit:
                    dst.sendall(data[: limit - sent])
                    if self.mode == "stall":
                        self.closed.wait()
                    break
                dst.sendall(data)
                sent += len(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.closed.set()
        self.listener.close()


def test_interrupted_pulls_keep_nothing_and_a_rerun_completes(
    mdr: RegistryCli, registry: Registry, tmp_path: Path
) -> None:
    mdr.unique_image(tmp_path, f"{registry.host}/demo/cut:1", megabytes=4)
    mdr("push", f"{registry.host}/demo/cut:1")
    image_id = mdr.image_id(f"{registry.host}/demo/cut:1")
    mdr("rmi", f"{registry.host}/demo/cut:1")
    proxy = FaultyProxy(registry.host, limit=1 << 20)
    try:
        ref = f"{proxy.host}/demo/cut:1"
        before = mdr.snapshot()
        # The connection drops in the middle of the layer.
        err = mdr.fails("pull", ref)
        assert "the transfer was interrupted" in err and "run the command again" in err, err
        assert mdr.snapshot() == before
        assert os.listdir(mdr.store("tmp")) == []
        # The registry stops sending, and the user presses Ctrl-C.
        proxy.mode = "stall"
        pull = mdr.popen("pull", ref)
        assert wait_for(lambda: any(p.stat().st_size for p in mdr.store("tmp").iterdir()), 30)
        time.sleep(0.5)
        (partial,) = mdr.store("tmp").iterdir()
        assert 0 < partial.stat().st_size < 4 << 20  # stuck half-way
        start = time.monotonic()
        pull.send_signal(signal.SIGINT)
        assert pull.wait(10) == 130, pull.communicate()
        assert time.monotonic() - start < 2  # not waiting for the read timeout
        assert mdr.snapshot() == before
        assert os.listdir(mdr.store("tmp")) == []
        # A rerun starts afresh and completes.
        proxy.mode = "pass"
        assert "Pull complete" in mdr("pull", ref).stdout
    finally:
        proxy.close()
    assert mdr.image_id(ref) == image_id
    mdr.assert_consistent()


def test_clear_errors(mdr: RegistryCli, registry: Registry) -> None:
    err = mdr.fails("pull", f"{registry.host}/demo/web:no-such-tag")
    assert err == (f"minidock: manifest for {registry.host}/demo/web:no-such-tag not found: "
                   "manifest unknown\n")  # fmt: skip
    err = mdr.fails("pull", f"{registry.host}/no/such-repo:1")
    assert err.endswith("no/such-repo:1 not found: manifest unknown\n")
    port = free_port()
    err = mdr.fails("pull", f"127.0.0.1:{port}/demo/web:1")
    assert f"registry 127.0.0.1:{port} is unreachable" in err
    assert "no Docker Hub here" in mdr.fails("pull", "busybox")
    assert "No such image" in mdr.fails("push", f"{registry.host}/demo/absent:1")
    assert "push takes a tag" in mdr.fails("push", f"{registry.host}/demo/web@sha256:{'0' * 64}")
    # A default registry makes short names work.
    mdr.env["MINIDOCK_REGISTRY"] = registry.host
    mdr("tag", "busybox", "short/name:1")
    assert pushed(mdr("push", "short/name:1").stdout)[0] == "1"
    mdr("rmi", "short/name:1")
    assert mdr("pull", "-q", "short/name:1").stdout == f"{registry.host}/short/name:1\n"
    assert mdr.image_id("short/name:1") == mdr.image_id("busybox")
