"""The registry client's pure parts: references, plain-HTTP registries, WWW-Authenticate
challenges and the token flow (against httpx's mock transport), media types and
platforms, and the credentials file."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import httpx
import pytest

from minidock import auth, registry
from minidock.errors import InvalidArgument
from minidock.registry import RegistryError, RemoteNotFound, parse_reference

DIGEST = "sha256:" + "ab" * 32


# --- references --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "host", "repository", "tag", "digest", "local"),
    [
        ("127.0.0.1:5000/demo/web:1", "127.0.0.1:5000", "demo/web", "1", None,
         "127.0.0.1:5000/demo/web:1"),
        ("localhost/web", "localhost", "web", "latest", None, "localhost/web:latest"),
        ("registry.example.com/a/b/c", "registry.example.com", "a/b/c", "latest", None,
         "registry.example.com/a/b/c:latest"),
        ("localhost:5000/web@" + DIGEST, "localhost:5000", "web", None, DIGEST, None),
        ("[::1]:5000/web:v1.2-rc_3", "[::1]:5000", "web", "v1.2-rc_3", None,
         "[::1]:5000/web:v1.2-rc_3"),
        ("myhost:5000/my_app__x/a-b.c:t", "myhost:5000", "my_app__x/a-b.c", "t", None,
         "myhost:5000/my_app__x/a-b.c:t"),
    ],
)  # fmt: skip
def test_references_name_their_registry(
    text: str, host: str, repository: str, tag: str | None, digest: str | None, local: str | None
) -> None:
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest, ref.local) == (
        host, repository, tag, digest, local,
    )  # fmt: skip
    assert ref.reference == (digest or tag)


def test_a_name_without_a_host_needs_a_default_registry() -> None:
    with pytest.raises(InvalidArgument, match="no Docker Hub here"):
        parse_reference("busybox")
    with pytest.raises(InvalidArgument, match="MINIDOCK_REGISTRY"):
        parse_reference("demo/web:1")  # "demo" has no "." or ":": a path, not a host
    ref = parse_reference("demo/web:1", "127.0.0.1:5000")
    assert (ref.registry, ref.repository, ref.tag) == ("127.0.0.1:5000", "demo/web", "1")
    assert ref.local == "demo/web:1"  # stored under the name the user gave
    assert str(ref) == "127.0.0.1:5000/demo/web:1"
    assert parse_reference("busybox", "http://10.0.0.1:5000/").registry == "10.0.0.1:5000"


def test_str_shows_tag_and_digest() -> None:
    assert str(parse_reference("h:1/r")) == "h:1/r:latest"
    assert str(parse_reference(f"h:1/r:t@{DIGEST}")) == f"h:1/r:t@{DIGEST}"
    assert parse_reference(f"h:1/r:t@{DIGEST}").local is None  # by digest: no tag to give


@pytest.mark.parametrize(
    "text",
    ["h:1/Web", "h:1/web:", "h:1/web:-x", "h:1/web@sha256:abc", "h:1/web@md5:" + "a" * 32,
     "h:1//web", "h:1/web/", "-h.x/web", "h:1/we b", "h:1/web:" + "t" * 129],
)  # fmt: skip
def test_malformed_references_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgument, match="reference format"):
        parse_reference(text)


def test_plain_http_only_for_loopback_and_listed_registries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MINIDOCK_INSECURE_REGISTRIES", raising=False)
    for host in ("localhost", "localhost:5000", "127.0.0.1:5000", "127.9.8.7", "[::1]:5000"):
        assert registry.plain_http(host), host
    for host in ("10.0.0.1:5000", "registry.example.com", "localhost.example.com:5000"):
        assert not registry.plain_http(host), host
    monkeypatch.setenv("MINIDOCK_INSECURE_REGISTRIES", "10.0.0.1:5000, http://reg.lan")
    assert registry.plain_http("10.0.0.1:5000") and registry.plain_http("reg.lan")
    assert not registry.plain_http("10.0.0.1:5001")


# --- challenges and the token flow --------------------------------------------------------------
def test_bearer_challenge_is_parsed() -> None:
    header = (
        'Bearer realm="https://auth.example.com/token",service="registry.example.com",'
        'scope="repository:demo/web:pull,push"'
    )
    challenge = auth.parse_challenge(header)
    assert challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "https://auth.example.com/token",
        "service": "registry.example.com",
        "scope": "repository:demo/web:pull,push",  # the comma inside quotes stays
    }


def test_basic_and_odd_challenges_are_parsed() -> None:
    assert auth.parse_challenge('Basic realm="minidock test"') == auth.Challenge(
        "basic", {"realm": "minidock test"}
    )
    odd = auth.parse_challenge(r'BEARER Realm=http://t/token , error="a \"quoted\" word"')
    assert odd.scheme == "bearer"
    assert odd.params == {"realm": "http://t/token", "error": 'a "quoted" word'}


class FakeRegistry:
    """A registry and token server behind httpx's mock transport: /v2/ wants a Bearer
    token that the token server gives for alice:secret. ``seen`` records each request's
    URL and Authorization header (a retried request is the same object, changed)."""

    def __init__(self, scheme: str = "bearer") -> None:
        self.scheme = scheme
        self.seen: list[tuple[httpx.URL, str | None]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.url, request.headers.get("Authorization")))
        basic = auth.Credentials("alice", "secret").basic()
        if request.url.path == "/token":
            if request.headers.get("Authorization") != basic:
                return httpx.Response(401, json={"details": "bad credentials"})
            return httpx.Response(200, json={"token": "T0KEN"})
        wanted = "Bearer T0KEN" if self.scheme == "bearer" else basic
        if request.headers.get("Authorization") == wanted:
            return httpx.Response(200, json={})
        challenge = (
            'Bearer realm="http://auth.test/token",service="reg.test",'
            'scope="repository:demo/web:pull"'
            if self.scheme == "bearer"
            else 'Basic realm="test"'
        )
        return httpx.Response(401, headers={"WWW-Authenticate": challenge})


def client(fake: FakeRegistry, credentials: auth.Credentials | None) -> httpx.Client:
    scopes = ["repository:demo/web:pull,push", "repository:other:pull"]
    return httpx.Client(
        base_url="http://reg.test",
        auth=auth.RegistryAuth(credentials, scopes),
        transport=httpx.MockTransport(fake),
    )


def test_bearer_flow_gets_a_token_for_all_scopes_and_reuses_it() -> None:
    fake = FakeRegistry()
    with client(fake, auth.Credentials("alice", "secret")) as c:
        assert c.get("/v2/").status_code == 200
        assert c.get("/v2/demo/web/tags/list").status_code == 200
    (_, first), (token, basic), (_, retried), (_, second) = fake.seen
    assert first is None
    assert token.host == "auth.test" and token.path == "/token"
    assert basic == auth.Credentials("alice", "secret").basic()
    assert token.params.get_list("scope") == [
        "repository:demo/web:pull,push", "repository:other:pull", "repository:demo/web:pull",
    ]  # fmt: skip
    assert token.params["service"] == "reg.test"
    assert token.params["account"] == "alice"
    assert retried == "Bearer T0KEN"
    assert second == "Bearer T0KEN"  # no second 401 round trip


def test_bearer_flow_with_wrong_credentials_returns_the_401() -> None:
    fake = FakeRegistry()
    with client(fake, auth.Credentials("alice", "wrong")) as c:
        assert c.get("/v2/").status_code == 401
    assert [url.path for url, _ in fake.seen] == ["/v2/", "/token"]


def test_anonymous_bearer_flow_asks_for_a_token_without_credentials() -> None:
    fake = FakeRegistry()
    with client(fake, None) as c:
        assert c.get("/v2/").status_code == 401  # this token server wants alice
    token, basic = fake.seen[1]
    assert basic is None and "account" not in token.params


def test_basic_flow_sends_the_credentials_after_the_challenge() -> None:
    fake = FakeRegistry("basic")
    with client(fake, auth.Credentials("alice", "secret")) as c:
        assert c.get("/v2/").status_code == 200
    with client(FakeRegistry("basic"), None) as c:
        assert c.get("/v2/").status_code == 401  # nothing to answer with
    assert fake.seen[1][1] == auth.Credentials("alice", "secret").basic()


@pytest.mark.parametrize(
    ("status", "headers", "body", "logged_in", "error", "message"),
    [
        (401, {}, b"", False, registry.Unauthorized,
         "x: unauthorized: authentication required (minidock login reg.test:5000)"),
        (401, {}, b"", True, registry.Unauthorized,
         "x: unauthorized: incorrect username or password"),
        (401, {"WWW-Authenticate": 'Bearer realm="r",error="insufficient_scope"'}, b"", True,
         registry.Unauthorized, "x: denied: requested access to the resource is denied"),
        (403, {}, b'{"errors": [{"code": "DENIED", "message": "no pushing here"}]}', True,
         registry.Unauthorized, "x: denied: no pushing here"),
        (404, {}, b'{"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}',
         False, RemoteNotFound, "x not found: manifest unknown"),
        (404, {}, b"<html>", False, RemoteNotFound, "x not found: unknown to the registry"),
        (500, {}, b"oops", False, RegistryError, "x: 500 Internal Server Error"),
        (400, {}, b'{"errors": [{"code": "DIGEST_INVALID"}]}', False, RegistryError,
         "x: 400 Bad Request: DIGEST_INVALID"),
    ],
)  # fmt: skip
def test_refusals_say_what_went_wrong_in_one_line(
    status: int, headers: dict, body: bytes, logged_in: bool, error: type, message: str
) -> None:
    credentials = auth.Credentials("alice", "pw") if logged_in else None
    with registry.Registry("reg.test:5000", [], credentials) as r:
        refusal = r._refusal(httpx.Response(status, headers=headers, content=body), "x")
    assert type(refusal) is error
    assert str(refusal) == message


# --- media types and platforms -------------------------------------------------------------------
def manifest(media_type: str, config_type: str, layer_type: str) -> dict:
    return {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": config_type, "digest": DIGEST, "size": 2},
        "layers": [{"mediaType": layer_type, "digest": DIGEST, "size": 3}],
    }


@pytest.mark.parametrize(
    ("media_type", "config_type", "layer_type"),
    [
        (registry.MANIFEST_MEDIA_TYPE, registry.CONFIG_MEDIA_TYPE,
         "application/vnd.oci.image.layer.v1.tar+gzip"),
        (registry.MANIFEST_MEDIA_TYPE, registry.CONFIG_MEDIA_TYPE,
         "application/vnd.oci.image.layer.v1.tar+zstd"),
        (registry.MANIFEST_MEDIA_TYPE, registry.CONFIG_MEDIA_TYPE,
         "application/vnd.oci.image.layer.v1.tar"),
        (registry.DOCKER_MANIFEST, registry.DOCKER_CONFIG, registry.DOCKER_LAYER),
    ],
)  # fmt: skip
def test_oci_and_docker_manifests_are_accepted(
    media_type: str, config_type: str, layer_type: str
) -> None:
    registry.check_manifest(manifest(media_type, config_type, layer_type), media_type, "x")


def test_accept_header_names_manifests_and_indexes() -> None:
    assert registry.ACCEPT.split(", ") == [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]


@pytest.mark.parametrize(
    ("media_type", "config_type", "layer_type", "error"),
    [
        ("application/vnd.docker.distribution.manifest.v1+prettyjws", "", "", "schema 1"),
        ("application/vnd.oci.artifact.manifest.v1+json", "", "", "unsupported manifest"),
        (registry.MANIFEST_MEDIA_TYPE, "application/vnd.cncf.helm.config.v1+json",
         "application/vnd.oci.image.layer.v1.tar", "not a container image"),
        (registry.DOCKER_MANIFEST, registry.DOCKER_CONFIG,
         "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "unsupported layer"),
    ],
)  # fmt: skip
def test_what_is_not_a_runnable_image_is_refused(
    media_type: str, config_type: str, layer_type: str, error: str
) -> None:
    with pytest.raises(RegistryError, match=error):
        registry.check_manifest(manifest(media_type, config_type, layer_type), media_type, "x")


def test_digests_in_manifests_are_checked_before_use() -> None:
    bad = manifest(registry.MANIFEST_MEDIA_TYPE, registry.CONFIG_MEDIA_TYPE,
                   "application/vnd.oci.image.layer.v1.tar")  # fmt: skip
    bad["layers"][0]["digest"] = "sha256:../../etc/passwd"
    with pytest.raises(RegistryError, match="invalid digest"):
        registry.check_manifest(bad, registry.MANIFEST_MEDIA_TYPE, "x")


INDEX = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": [
        {"digest": "sha256:" + "1" * 64, "platform": {"os": "linux", "architecture": "amd64"}},
        {"digest": "sha256:" + "2" * 64,
         "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
        {"digest": "sha256:" + "3" * 64,
         "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        {"digest": "sha256:" + "4" * 64, "platform": {"os": "unknown", "architecture": "unknown"}},
    ],
}  # fmt: skip


def test_an_index_resolves_to_the_platform_asked_for() -> None:
    assert registry.choose_platform(INDEX, "linux/amd64")["digest"].endswith("1" * 64)
    assert registry.choose_platform(INDEX, "linux/arm64")["digest"].endswith("3" * 64)
    assert registry.choose_platform(INDEX, "linux/arm/v7")["digest"].endswith("2" * 64)
    with pytest.raises(RemoteNotFound, match="linux/amd64, linux/arm/v7, linux/arm64/v8"):
        registry.choose_platform(INDEX, "linux/s390x")
    with pytest.raises(InvalidArgument, match="OS/ARCH"):
        registry.choose_platform(INDEX, "amd64")


# --- the credentials file -----------------------------------------------------------------------
def test_credentials_are_stored_docker_style(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    assert auth.credentials_for("127.0.0.1:5000") is None
    assert not auth.remove_credentials("127.0.0.1:5000")
    path = auth.save_credentials("http://127.0.0.1:5000/", auth.Credentials("alice", "pa:ss"))
    assert path == str(tmp_path / "docker" / "config.json")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    data = json.loads(Path(path).read_text())
    assert data == {
        "auths": {"127.0.0.1:5000": {"auth": base64.b64encode(b"alice:pa:ss").decode()}}
    }
    assert auth.credentials_for("127.0.0.1:5000") == auth.Credentials("alice", "pa:ss")
    assert auth.remove_credentials("127.0.0.1:5000")
    assert auth.credentials_for("127.0.0.1:5000") is None


def test_an_existing_docker_config_is_read_and_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    config = {
        "auths": {"https://reg.example.com/v1/": {"auth": base64.b64encode(b"bob:pw").decode()}},
        "credsStore": "desktop",
        "proxies": {"default": {"httpProxy": "http://proxy:3128"}},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert auth.credentials_for("reg.example.com") == auth.Credentials("bob", "pw")
    auth.save_credentials("127.0.0.1:5000", auth.Credentials("alice", "x"))
    kept = json.loads((tmp_path / "config.json").read_text())
    assert kept["credsStore"] == "desktop" and kept["proxies"] == config["proxies"]
    assert set(kept["auths"]) == {"https://reg.example.com/v1/", "127.0.0.1:5000"}
    (tmp_path / "config.json").write_text('{"auths": {"h:1": {"auth": "bm9jb2xvbg=="}}}')
    with pytest.raises(InvalidArgument, match="not base64 user:pass"):
        auth.credentials_for("h:1")
