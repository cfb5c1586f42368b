"""``push`` and ``pull``: a client for the OCI distribution API (the "registry v2" API).

A registry keeps what the local image store keeps — blobs named by their digest, and
manifests that list them — under repository names, and serves them over HTTP::

    GET  /v2/                                      a v2 registry? (a 401 here starts auth)
    GET  /v2/<repo>/manifests/<tag or digest>      a manifest, or an index of per-platform ones
    HEAD /v2/<repo>/blobs/<digest>                 is this blob here already?
    GET  /v2/<repo>/blobs/<digest>                 its bytes (perhaps by a redirect)
    POST /v2/<repo>/blobs/uploads/                 start an upload: 202 and a Location
    POST /v2/<repo>/blobs/uploads/?mount=<digest>&from=<repo2>
                                                   link a blob it keeps for repo2: 201, or
                                                   202 (refused: upload it after all)
    PUT  <Location>&digest=<digest>                the whole blob in one request: 201
    PUT  /v2/<repo>/manifests/<tag>                the manifest, last: every blob it names
                                                   must be there already

**pull** fetches the manifest (an index is resolved to one platform's manifest), then the
config (kept in memory), then the layers, several at a time. Each layer blob streams into
the store's ``tmp/`` and is renamed into ``blobs/`` only if its sha256 is the digest the
manifest names, then unpacked, its DiffID checked against the config. Config and manifest
are stored and the image named last, so a failed or interrupted pull leaves no image, and
a rerun reuses the layers that did arrive whole. **push** goes the other way: for each
blob, HEAD, else mount from another repository of the same registry, else upload; the
manifest last, as the very bytes the store keeps, so the registry's digest for it is the
local one.

Digests make this safe over any transport; TLS keeps it private and is verified, except
for registries spoken to over plain HTTP: loopback ones (``localhost``, ``127.0.0.0/8``,
``::1``) and those listed in ``MINIDOCK_INSECURE_REGISTRIES`` (comma-separated
``host[:port]``). References name a registry: ``host[:port]/repo[:tag][@sha256:…]``;
there is no Docker Hub here, so a name without a host is refused unless
``MINIDOCK_REGISTRY`` names a default one.

For cross-repository mounts the store remembers where each blob came from or went to,
in ``images/distribution.json`` (``{digest: ["host/repo", …]}``, newest first).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import ipaddress
import json
import os
import re
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

import httpx

from minidock import __version__, store
from minidock.archive import INDEX_MEDIA_TYPES
from minidock.auth import Credentials, RegistryAuth, credentials_for, registry_key, save_credentials
from minidock.errors import ImageNotFound, InvalidArgument, MinidockError, NotFound
from minidock.images import (
    ARCHITECTURE,
    CONFIG_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    Image,
    ImageStore,
    layer_media_type,
    normalize_ref,
)

if TYPE_CHECKING:
    from minidock.engine import Engine

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MANIFEST_TYPES = (MANIFEST_MEDIA_TYPE, DOCKER_MANIFEST)
CONFIG_TYPES = (CONFIG_MEDIA_TYPE, DOCKER_CONFIG)
LAYER_TYPES = (*(layer_media_type(c) for c in (None, "gzip", "zstd")), DOCKER_LAYER)
#: What a pull accepts, best first: image manifests and the indexes that list them.
ACCEPT = ", ".join((*MANIFEST_TYPES, *INDEX_MEDIA_TYPES))
DEFAULT_PLATFORM = f"linux/{ARCHITECTURE}"
#: Blobs moved at once; moby's defaults (max-concurrent-downloads 3, -uploads 5).
DOWNLOADS, UPLOADS = 3, 5
MAX_MANIFEST = 4 << 20  # the distribution registry's own limit
_CHUNK = 1 << 20

_HOST = re.compile(r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?|\[[0-9a-fA-F:]+\])(?::\d+)?")
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class RegistryError(MinidockError):
    """A registry could not be reached, refused a request, or sent something wrong."""


class Unauthorized(RegistryError):
    """The registry wants credentials we do not have, or refused the ones we gave."""


class RemoteNotFound(NotFound):
    """The registry has no such repository, tag, manifest or blob."""


class _Cancelled(Exception):
    """Raised in a transfer thread after another transfer of the same operation failed."""


class _Cancellation:
    """Shared by the transfers of one operation. Once set (a transfer failed, or Ctrl-C),
    each stops at its next chunk; one waiting for a registry that sends nothing is woken
    by shutting down its socket (closing it would not wake a thread blocked reading it)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.lock = threading.Lock()
        self.sockets: set[socket.socket] = set()

    def check(self) -> None:
        if self.event.is_set():
            raise _Cancelled

    def set(self) -> None:
        with self.lock:
            self.event.set()
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    @contextlib.contextmanager
    def watching(self, response: httpx.Response) -> Iterator[None]:
        """Let :meth:`set` wake the thread reading ``response``'s body."""
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        with self.lock:
            self.check()
            if sock is not None:
                self.sockets.add(sock)
        try:
            yield
        finally:
            with self.lock:
                self.sockets.discard(sock)


# --- references --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reference:
    """``registry/repository[:tag][@digest]``, split. ``local`` is the store's name for it
    (as the user wrote it, with ``:latest`` added); None for a reference by digest only."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None
    local: str | None

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str:
        """What ``/manifests/<reference>`` takes: the digest if there is one, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        tag = f":{self.tag}" if self.tag else ""
        return f"{self.name}{tag}@{self.digest}" if self.digest else f"{self.name}{tag}"


def parse_reference(text: str, default_registry: str | None = None) -> Reference:
    """Split an image reference. As in Docker, the first ``/``-separated component is the
    registry when it has a ``.`` or a ``:`` or is ``localhost``; otherwise the reference
    is relative to ``default_registry`` (``$MINIDOCK_REGISTRY``), and refused without one.
    A reference with neither tag nor digest means ``:latest``."""
    name, at, digest = text.partition("@")
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, rest
    elif default_registry:
        registry, path = registry_key(default_registry), name
    else:
        raise InvalidArgument(
            f'"{text}" names no registry: there is no Docker Hub here, so write '
            "HOST[:PORT]/REPOSITORY[:TAG] or set MINIDOCK_REGISTRY"
        )
    repository, colon, tag = path.rpartition(":") if ":" in path else (path, "", "")
    if not _HOST.fullmatch(registry):
        raise InvalidArgument(f'invalid reference format: bad registry host in "{text}"')
    if not all(_COMPONENT.fullmatch(c) for c in repository.split("/")):
        raise InvalidArgument(
            f'invalid reference format: "{text}" (repository names are lowercase '
            "letters, digits and separators . _ __ -, in /-separated components)"
        )
    if colon and not _TAG.fullmatch(tag):
        raise InvalidArgument(f'invalid reference format: bad tag in "{text}"')
    if at and not _DIGEST.fullmatch(digest):
        raise InvalidArgument(f'invalid reference format: bad digest in "{text}" (sha256: only)')
    if not colon and not at:
        tag = "latest"
    local = None if at else normalize_ref(name if colon else f"{name}:latest")
    return Reference(registry, repository, tag or None, digest or None, local)


def plain_http(registry: str) -> bool:
    """Is ``registry`` spoken to over plain HTTP? Only loopback ones and those listed in
    ``$MINIDOCK_INSECURE_REGISTRIES``; everything else gets verified TLS."""
    if registry.startswith("["):  # [::1]:5000
        host = registry[1:].partition("]")[0]
    else:
        host = registry.partition(":")[0]
    if host == "localhost":
        return True
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).is_loopback:
            return True
    listed = os.environ.get("MINIDOCK_INSECURE_REGISTRIES", "").split(",")
    return registry in {registry_key(r) for r in listed if r.strip()}


# --- media types ---------------------------------------------------------------------------------
def _checked_digest(value: object, what: str) -> str:
    """A digest from a manifest, checked before it names a file or a URL."""
    if not isinstance(value, str) or not _DIGEST.fullmatch(value):
        raise RegistryError(f"{what}: invalid digest {value!r}")
    return value


def check_manifest(manifest: dict, media_type: str, what: str) -> None:
    """Refuse what is not a container image we can run: schema 1, OCI artifacts (a Helm
    chart's config is not an image config), foreign layers, malformed digests."""
    if media_type not in MANIFEST_TYPES:
        if "distribution.manifest.v1" in media_type:
            raise RegistryError(f"{what}: schema 1 manifests are not supported (push it again)")
        raise RegistryError(f"{what}: unsupported manifest type {media_type or '(none)'}")
    config = manifest.get("config") or {}
    if config.get("mediaType") not in CONFIG_TYPES:
        raise RegistryError(
            f"{what}: not a container image (its config is {config.get('mediaType')})"
        )
    _checked_digest(config.get("digest"), what)
    for layer in manifest.get("layers", []):
        if layer.get("mediaType") not in LAYER_TYPES:
            raise RegistryError(f"{what}: unsupported layer type {layer.get('mediaType')}")
        _checked_digest(layer.get("digest"), what)


def choose_platform(index: dict, platform: str) -> dict:
    """The entry of an index (OCI) or manifest list (Docker) for ``os/arch[/variant]``."""
    wanted = platform.split("/")
    if len(wanted) not in (2, 3) or not all(wanted):
        raise InvalidArgument(f'invalid platform "{platform}": expected OS/ARCH[/VARIANT]')
    offered = []
    for entry in index.get("manifests", []):
        p = entry.get("platform") or {}
        have = [p.get("os", ""), p.get("architecture", ""), p.get("variant", "")]
        if have[:2] == wanted[:2] and (len(wanted) == 2 or have[2] == wanted[2]):
            return entry
        offered.append("/".join(filter(None, have)))
    raise RemoteNotFound(f"no image for {platform} here: there are {', '.join(offered) or 'none'}")


# --- the registry -------------------------------------------------------------------------------
class Registry:
    """One registry, for one operation: an httpx client on its base URL whose auth flow
    answers the registry's challenge for the ``scopes`` the operation needs."""

    def __init__(self, host: str, scopes: list[str], credentials: Credentials | None) -> None:
        self.host = host
        self.credentials = credentials
        self.client = httpx.Client(
            base_url=f"{'http' if plain_http(host) else 'https'}://{host}",
            auth=RegistryAuth(credentials, scopes),
            headers={"User-Agent": f"minidock/{__version__}"},
            timeout=httpx.Timeout(60, connect=10),
            follow_redirects=True,  # blobs are often served from elsewhere (S3, a CDN)
        )

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    @contextlib.contextmanager
    def stream(
        self, method: str, url: str | httpx.URL, what: str, ok: tuple[int, ...] = (200,), **kw: Any
    ) -> Iterator[httpx.Response]:
        """Send a request and yield its response, body unread; a status not in ``ok``, or
        a connection failing before or while the body is read, raises one clear error."""
        try:
            with self.client.stream(method, url, **kw) as response:
                if response.status_code not in ok:
                    response.read()
                    raise self._refusal(response, what)
                yield response
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise RegistryError(f"registry {self.host} is unreachable: {exc}") from None
        except httpx.TransportError as exc:
            raise RegistryError(
                f"{what}: the transfer was interrupted ({str(exc) or type(exc).__name__}); "
                "run the command again"
            ) from None

    def request(
        self, method: str, url: str | httpx.URL, what: str, ok: tuple[int, ...] = (200,), **kw: Any
    ) -> httpx.Response:
        with self.stream(method, url, what, ok, **kw) as response:
            response.read()
        return response

    def _refusal(self, response: httpx.Response, what: str) -> MinidockError:
        """The error for a refused request, in the registry's words when it gave some
        (``{"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}``)."""
        try:
            errors = response.json().get("errors") or []
            said = "; ".join(e.get("message") or e.get("code", "") for e in errors)
        except (ValueError, AttributeError):
            said = ""
        status, denied = response.status_code, "requested access to the resource is denied"
        if status == 401 and self.credentials is None:
            return Unauthorized(
                f"{what}: unauthorized: authentication required (minidock login {self.host})"
            )
        if status == 401 and "insufficient_scope" in response.headers.get("WWW-Authenticate", ""):
            return Unauthorized(f"{what}: denied: {denied}")  # who we are is known, not allowed
        if status == 401:
            return Unauthorized(f"{what}: unauthorized: incorrect username or password")
        if status == 403:
            return Unauthorized(f"{what}: denied: {said or denied}")
        if status == 404:
            return RemoteNotFound(f"{what} not found: {said or 'unknown to the registry'}")
        return RegistryError(f"{what}: {status} {response.reason_phrase}: {said}".rstrip(": "))

    def ping(self, what: str = "") -> None:
        """GET /v2/: is this a v2 registry? Authentication happens here, so the scopes'
        token is in hand (or wrong credentials are reported) before anything moves."""
        self.request("GET", "/v2/", what or f"registry {self.host}")

    def _document(
        self, url: str, what: str, expected: str | None, **kw: Any
    ) -> tuple[bytes, dict, httpx.Response]:
        """A small JSON document (manifest, index or config), read whole — 4 MiB at most —
        and checked against the ``expected`` digest, else the one the registry announces."""
        with self.stream("GET", url, what, **kw) as response:
            body = b""
            for data in response.iter_bytes():
                body += data
                if len(body) > MAX_MANIFEST:
                    raise RegistryError(f"{what} is larger than 4 MiB")
        digest = f"sha256:{hashlib.sha256(body).hexdigest()}"
        if digest != (expected or response.headers.get("Docker-Content-Digest", digest)):
            raise RegistryError(f"{what} is corrupt: its content is {digest}")
        try:
            document = json.loads(body)
        except ValueError as exc:
            raise RegistryError(f"{what} is not JSON: {exc}") from None
        if not isinstance(document, dict):
            raise RegistryError(f"{what} is not a JSON object")
        return body, document, response

    def manifest(self, repository: str, reference: str, what: str) -> tuple[bytes, dict, str, str]:
        """A manifest or index as the registry keeps it: its bytes, their JSON, its media
        type and its digest (checked: see :meth:`_document`)."""
        body, manifest, response = self._document(
            f"/v2/{repository}/manifests/{reference}",
            f"manifest for {what}",
            reference if reference.startswith("sha256:") else None,
            headers={"Accept": ACCEPT},
        )
        content_type = response.headers.get("Content-Type", "").partition(";")[0]
        media_type = manifest.get("mediaType") or content_type
        return body, manifest, media_type, f"sha256:{hashlib.sha256(body).hexdigest()}"

    def config(self, repository: str, digest: str) -> tuple[bytes, dict]:
        """An image config: its bytes (checked against ``digest``) and their JSON."""
        what = f"config {digest} of {self.host}/{repository}"
        body, config, _ = self._document(f"/v2/{repository}/blobs/{digest}", what, digest)
        return body, config

    def download(
        self,
        images: ImageStore,
        repository: str,
        layer: dict,
        progress: Progress,
        cancelled: _Cancellation,
    ) -> None:
        """Stream a blob into the store: ``new_blob`` renames it into ``blobs/`` only if
        its sha256 is the one asked for, and deletes it otherwise (or on any error)."""
        digest, size = layer["digest"], layer["size"]
        what = f"blob {digest} of {self.host}/{repository}"
        progress.begin(digest, size, "Downloading")
        try:
            with (
                images.new_blob(digest) as blob,
                self.stream("GET", f"/v2/{repository}/blobs/{digest}", what) as response,
                cancelled.watching(response),
            ):
                for data in response.iter_bytes():
                    cancelled.check()
                    blob.write(data)
                    if blob.size > size:
                        raise RegistryError(f"{what}: larger than the {size} bytes it should be")
                    progress.advance(digest, len(data))
        except InvalidArgument as exc:  # new_blob's digest check: nothing was kept
            raise RegistryError(f"{exc} (sent by {self.host}/{repository})") from None
        except RegistryError:
            cancelled.check()  # the socket was shut down by a cancellation: not our failure
            raise

    def upload(
        self,
        images: ImageStore,
        repository: str,
        layer: dict,
        source: str | None,
        progress: Progress,
        cancelled: _Cancellation,
    ) -> str:
        """Make the registry have a blob under ``repository``; return what was done."""
        digest, size = layer["digest"], layer["size"]
        what = f"blob {digest} to {self.host}/{repository}"
        uploads = f"/v2/{repository}/blobs/uploads/"
        progress.begin(digest, size, "Preparing")
        if self.request("HEAD", f"/v2/{repository}/blobs/{digest}", what, ok=(200, 404)).is_success:
            return "Layer already exists"
        params = {"mount": digest, "from": source} if source else None
        started = self.request("POST", uploads, what, ok=(201, 202), params=params)
        if started.status_code == 201:
            return f"Mounted from {source}"
        # The registry gives a session URL (maybe with state in its query): the blob goes
        # there in one PUT, with the digest the registry will check it against.
        url = started.url.join(started.headers["Location"])

        def chunks() -> Iterator[bytes]:
            with open(images.blob_path(digest), "rb") as f:
                while data := f.read(_CHUNK):
                    cancelled.check()
                    yield data
                    progress.advance(digest, len(data))

        self.request(
            "PUT", url.copy_merge_params({"digest": digest}), what, ok=(201,), content=chunks(),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        )  # fmt: skip
        return "Pushed"

    def put_manifest(self, repository: str, tag: str, body: bytes, media_type: str) -> str:
        """PUT the manifest under ``tag``; return its digest (the registry must agree)."""
        digest = f"sha256:{hashlib.sha256(body).hexdigest()}"
        what = f"manifest for {self.host}/{repository}:{tag}"
        response = self.request(
            "PUT", f"/v2/{repository}/manifests/{tag}", what, ok=(201,), content=body,
            headers={"Content-Type": media_type},
        )  # fmt: skip
        if response.headers.get("Docker-Content-Digest", digest) != digest:
            raise RegistryError(f"{what}: the registry stored it as something else")
        return digest


def _in_parallel(
    jobs: int, work: Callable[[Any], None], items: list[Any], cancelled: _Cancellation
) -> None:
    """``work(item)`` for every item on ``jobs`` threads. The first failure (or a Ctrl-C)
    sets ``cancelled``, which stops the other transfers; that first error is raised once
    all have stopped."""
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        futures = [pool.submit(work, item) for item in items]
        try:
            concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
        finally:
            if any(not f.done() or f.exception() for f in futures):
                cancelled.set()
                for f in futures:
                    f.cancel()
    errors = [f.exception() for f in futures if not f.cancelled() and f.exception()]
    first = next((e for e in errors if not isinstance(e, _Cancelled)), None)
    if first is not None:
        raise first


# --- where blobs came from ------------------------------------------------------------------------
def _sources_path(images: ImageStore) -> str:
    return os.path.join(images.dir, "distribution.json")


def _sources(images: ImageStore) -> dict[str, list[str]]:
    try:
        return store.read_json(_sources_path(images))
    except FileNotFoundError:
        return {}


def _remember(images: ImageStore, name: str, digests: list[str]) -> None:
    """Note that the repository ``name`` (``host/repo``) has these blobs (at most five
    repositories per blob, newest first)."""
    with store.locked(images.lock):
        sources = _sources(images)
        for digest in digests:
            sources[digest] = [name, *(s for s in sources.get(digest, []) if s != name)][:5]
        store.write_json(_sources_path(images), sources)


def _mount_source(images: ImageStore, ref: Reference, digest: str) -> str | None:
    """Another repository of the same registry that has this blob, as far as we know."""
    for name in _sources(images).get(digest, []):
        registry, _, repository = name.partition("/")
        if registry == ref.registry and repository != ref.repository:
            return repository
    return None


def _have_image(images: ImageStore, config_digest: str) -> bool:
    """Is the image with this config (so this ID) in the store already?"""
    try:
        images.get(config_digest)
    except ImageNotFound:
        return False
    return True


# --- pull and push -------------------------------------------------------------------------------
def _image_manifest(
    registry: Registry, ref: Reference, platform: str
) -> tuple[bytes, dict, str, str]:
    """The manifest ``ref`` names, through its index if it names one: the manifest's
    bytes, JSON and digest, and the digest ``ref`` resolved to (the index's, if any)."""
    body, manifest, media_type, digest = registry.manifest(ref.repository, ref.reference, str(ref))
    resolved = digest
    if media_type in INDEX_MEDIA_TYPES:
        digest = _checked_digest(choose_platform(manifest, platform).get("digest"), str(ref))
        body, manifest, media_type, _ = registry.manifest(ref.repository, digest, str(ref))
    check_manifest(manifest, media_type, str(ref))
    return body, manifest, digest, resolved


def _fetch_layers(
    images: ImageStore,
    registry: Registry,
    ref: Reference,
    layers: list[dict],
    diff_ids: list[str],
    progress: Progress,
) -> None:
    """Download the layers several at a time, each unpacked as soon as it is in; blobs
    already in the store are not fetched again, nor layers unpacked again."""
    cancelled = _Cancellation()
    if len(diff_ids) != len(layers):
        raise RegistryError(
            f"{ref}: the manifest lists {len(layers)} layers, the config {len(diff_ids)}"
        )

    def fetch(item: tuple[dict, str]) -> None:
        layer, diff_id = item
        if os.path.exists(images.blob_path(layer["digest"])):
            status = "Already exists"
        else:
            registry.download(images, ref.repository, layer, progress, cancelled)
            status = "Pull complete"
        images.unpack_layer(layer["digest"], diff_id)
        progress.end(layer["digest"], status)

    # A layer listed twice is fetched once.
    unique = {layer["digest"]: (layer, d) for layer, d in zip(layers, diff_ids, strict=True)}
    _in_parallel(DOWNLOADS, fetch, list(unique.values()), cancelled)


def pull_image(
    images: ImageStore, ref: Reference, platform: str, progress: Progress
) -> tuple[Image, str, bool]:
    """Pull ``ref`` into the store. Returns the image, the digest the reference resolved
    to (an index's, for a multi-platform image) and whether the image is new here.

    The config is kept in memory and written with the manifest after the layers: a pull
    that fails leaves at most the layer blobs that arrived whole (a rerun skips those;
    the next ``rmi`` or ``prune`` sweeps them), and no image, tag or partial file."""
    scopes = [f"repository:{ref.repository}:pull"]
    with (
        images.adding(),
        Registry(ref.registry, scopes, credentials_for(ref.registry)) as registry,
    ):
        registry.ping()
        body, manifest, digest, resolved = _image_manifest(registry, ref, platform)
        progress.line(f"{ref.tag or ref.digest}: Pulling from {ref.repository}")
        config, layers = manifest["config"]["digest"], manifest["layers"]
        new = not _have_image(images, config)
        if not new:
            # The same image (same config), here under another name or pushed with its
            # layers compressed otherwise: nothing to fetch, and it keeps its manifest.
            for layer in layers:
                progress.end(layer["digest"], "Already exists")
        else:
            config_body, image_config = registry.config(ref.repository, config)
            diff_ids = image_config.get("rootfs", {}).get("diff_ids", [])
            _fetch_layers(images, registry, ref, layers, diff_ids, progress)
            with images.new_blob(config) as blob:
                blob.write(config_body)
        if not os.path.exists(images.blob_path(digest)):
            with images.new_blob(digest) as blob:
                blob.write(body)
        _remember(images, ref.name, [config, *(layer["digest"] for layer in layers)])
        image = images.register(digest, tags=[ref.local] if ref.local else [])
    return image, resolved, new


def push_image(images: ImageStore, ref: Reference, progress: Progress) -> tuple[str, int]:
    """Push the local image ``ref`` names; return the manifest's digest and size."""
    if ref.digest or not ref.tag or not ref.local:
        raise InvalidArgument(f"cannot push {ref}: push takes a tag, not a digest")
    cancelled = _Cancellation()
    with images.adding():
        image = images.get(ref.local)
        with open(images.blob_path(image.manifest_digest), "rb") as f:
            body = f.read()
        listed = [*image.manifest["layers"], image.manifest["config"]]
        blobs = list({b["digest"]: b for b in listed}.values())
        sources = {b["digest"]: _mount_source(images, ref, b["digest"]) for b in blobs}
        scopes = [f"repository:{ref.repository}:pull,push"]
        scopes += [f"repository:{s}:pull" for s in dict.fromkeys(sources.values()) if s]
        with Registry(ref.registry, scopes, credentials_for(ref.registry)) as registry:
            registry.ping()

            def send(blob: dict) -> None:
                source = sources[blob["digest"]]
                status = registry.upload(images, ref.repository, blob, source, progress, cancelled)
                progress.end(blob["digest"], status)

            _in_parallel(UPLOADS, send, blobs, cancelled)
            media_type = image.manifest.get("mediaType") or MANIFEST_MEDIA_TYPE
            digest = registry.put_manifest(ref.repository, ref.tag, body, media_type)
        _remember(images, ref.name, [b["digest"] for b in blobs])
    return digest, len(body)


def login(registry: str, credentials: Credentials) -> str:
    """Check the credentials against the registry's ``/v2/`` (through its token server,
    for Bearer auth), then store them; return the config file's path."""
    host = registry_key(registry)
    with Registry(host, [], credentials) as client:
        client.ping(f"login to {host} failed")
    return save_credentials(host, credentials)


def pull(
    engine: Engine,
    ref: str,
    *,
    quiet: bool = False,
    platform: str | None = None,
    out: TextIO | None = None,
) -> Image:
    """Pull ``ref`` into the engine's image store and return the image: ``minidock pull``,
    and what ``run --pull`` calls for an image that is missing. Progress goes to ``out``
    (standard error by default: a ``run``'s standard output is its container's)."""
    reference = parse_reference(ref, os.environ.get("MINIDOCK_REGISTRY"))
    with reporter(out or sys.stderr, quiet) as progress:
        image, digest, new = pull_image(
            engine.images, reference, platform or DEFAULT_PLATFORM, progress
        )
        progress.line(f"Digest: {digest}")
        name = reference.local or f"{reference.name}@{digest}"
        progress.line(f"Status: {'Downloaded newer image' if new else 'Image is up to date'} "
                      f"for {name}")  # fmt: skip
    return image


def push(engine: Engine, ref: str, *, quiet: bool = False, out: TextIO | None = None) -> str:
    """Push the local image ``ref`` to its registry; return the manifest's digest.
    Ends with Docker's summary line, ``TAG: digest: sha256:… size: N``."""
    reference = parse_reference(ref, os.environ.get("MINIDOCK_REGISTRY"))
    with reporter(out or sys.stderr, quiet) as progress:
        progress.line(f"The push refers to repository [{reference.name}]")
        digest, size = push_image(engine.images, reference, progress)
        progress.line(f"{reference.tag}: digest: {digest} size: {size}")
    return digest


# --- progress ------------------------------------------------------------------------------------
class Progress:
    """How a transfer is reported: this base class says nothing (``--quiet``)."""

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def line(self, text: str) -> None:
        """A whole line: a heading or the summary."""

    def begin(self, digest: str, total: int, status: str) -> None:
        """A blob starts moving; ``total`` bytes are expected."""

    def advance(self, digest: str, done: int) -> None:
        """``done`` more bytes of the blob have moved."""

    def end(self, digest: str, status: str) -> None:
        """The blob is done: "Pull complete", "Already exists", "Pushed", …"""


class Lines(Progress):
    """One line per blob when it is done, as Docker prints when its output is no terminal."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.lock = threading.Lock()

    def line(self, text: str) -> None:
        with self.lock:
            print(text, file=self.out, flush=True)

    def end(self, digest: str, status: str) -> None:
        self.line(f"{digest.removeprefix('sha256:')[:12]}: {status}")


class Bars(Lines):
    """A live progress bar per blob (rich), for a terminal."""

    def __init__(self, out: TextIO) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, TextColumn, TransferSpeedColumn
        from rich.progress import Progress as RichProgress

        super().__init__(out)
        self.bars = RichProgress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
            TransferSpeedColumn(), console=Console(file=out),
        )  # fmt: skip
        self.tasks: dict[str, tuple[Any, int]] = {}  # digest → (rich's task ID, total)

    def __enter__(self) -> Progress:
        self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.stop()

    def line(self, text: str) -> None:
        self.bars.console.print(text, highlight=False, markup=False)

    def begin(self, digest: str, total: int, status: str) -> None:
        label = f"{digest.removeprefix('sha256:')[:12]}: {status}"
        self.tasks[digest] = (self.bars.add_task(label, total=total), total)

    def advance(self, digest: str, done: int) -> None:
        self.bars.advance(self.tasks[digest][0], done)

    def end(self, digest: str, status: str) -> None:
        """Fill the blob's bar (adding one for a blob that never moved) and say why."""
        if digest not in self.tasks:
            self.begin(digest, 0, status)
        task, total = self.tasks[digest]
        label = f"{digest.removeprefix('sha256:')[:12]}: {status}"
        self.bars.update(task, description=label, completed=total)


def reporter(out: TextIO, quiet: bool) -> Progress:
    """Nothing when quiet, bars on a terminal, else plain lines."""
    if quiet:
        return Progress()
    return Bars(out) if out.isatty() else Lines(out)
