"""Images and containers as tar archives: ``save``, ``load`` and ``export``.

``save`` writes what Docker 25 and later write, so every tool reads it: an OCI image
layout (``oci-layout``, ``index.json``, ``blobs/sha256/…``) and, beside it, Docker's own
``manifest.json`` (``Config``, ``RepoTags``, ``Layers``) and ``repositories``, both naming
the same blobs. ``skopeo inspect docker-archive:F`` and ``oci-archive:F`` both work.

``load`` reads either kind: a Docker archive (``docker save``, ``skopeo copy …
docker-archive:F``) by its ``manifest.json``, an OCI layout (``skopeo copy …
oci-archive:F``, ``umoci``) by its ``index.json``. Every blob's digest is checked as it is
copied into the store, every layer is unpacked by the safe extractor and its DiffID checked
against the image config, and only then is the image named in the index.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tarfile
from typing import IO, BinaryIO

from minidock import layers
from minidock.engine import Engine
from minidock.errors import InvalidArgument
from minidock.images import (
    ARCHITECTURE,
    CONFIG_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    Image,
    ImageStore,
    canonical_json,
    descriptor,
    layer_media_type,
    normalize_ref,
)

INDEX_MEDIA_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
#: Where Docker and containerd keep an image's full name in an OCI index.
NAME_ANNOTATION = "io.containerd.image.name"
REF_ANNOTATION = "org.opencontainers.image.ref.name"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def _blob_name(digest: str) -> str:
    return f"blobs/sha256/{digest.removeprefix('sha256:')}"


def _add_json(tar: tarfile.TarFile, name: str, data: object) -> None:
    encoded = canonical_json(data)
    _add(tar, name, io.BytesIO(encoded), len(encoded))


def _add(tar: tarfile.TarFile, name: str, data: BinaryIO, size: int) -> None:
    """One file, with fixed owner, mode and time: the archive says only what the blobs say."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    tar.addfile(info, data)


# --- save --------------------------------------------------------------------------------------
def save(images: ImageStore, refs: list[str], out: BinaryIO) -> None:
    """Write the images ``refs`` name (with the tags used to name them) as one archive."""
    chosen: list[tuple[Image, list[str]]] = []
    for ref in refs:
        image = images.get(ref)
        tag = None if ref.startswith("sha256:") else normalize_ref(ref)
        chosen.append((image, [tag] if tag in image.repo_tags else []))
    index_entries, docker_manifest, repositories = [], [], {}
    written: set[str] = set()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for image, tags in chosen:
            blobs = [image.manifest_digest, image.manifest["config"]["digest"]]
            blobs += [layer["digest"] for layer in image.manifest["layers"]]
            for digest in blobs:
                if digest not in written:
                    written.add(digest)
                    with open(images.blob_path(digest), "rb") as f:
                        _add(tar, _blob_name(digest), f, os.fstat(f.fileno()).st_size)
            manifest = descriptor(
                image.manifest.get("mediaType", MANIFEST_MEDIA_TYPE),
                image.manifest_digest,
                os.path.getsize(images.blob_path(image.manifest_digest)),
            )
            for tag in tags or [None]:
                entry = dict(manifest)
                if tag is not None:
                    entry["annotations"] = {
                        NAME_ANNOTATION: tag if "/" in tag else f"docker.io/library/{tag}",
                        REF_ANNOTATION: tag.rpartition(":")[2],
                    }
                    repo, _, version = tag.rpartition(":")
                    repositories.setdefault(repo, {})[version] = image.id
                index_entries.append(entry)
            docker_manifest.append(
                {
                    "Config": _blob_name(image.manifest["config"]["digest"]),
                    "RepoTags": tags or None,
                    "Layers": [_blob_name(layer["digest"]) for layer in image.manifest["layers"]],
                }
            )
        _add_json(tar, "oci-layout", {"imageLayoutVersion": "1.0.0"})
        _add_json(
            tar,
            "index.json",
            {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPES[0], "manifests": index_entries},
        )
        _add_json(tar, "manifest.json", docker_manifest)
        _add_json(tar, "repositories", repositories)


def save_to_file(images: ImageStore, refs: list[str], path: str) -> None:
    """``save -o``: written beside ``path`` and renamed over it, so it is whole or absent."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            save(images, refs, f)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# --- load --------------------------------------------------------------------------------------
class _Archive:
    """An image archive opened for reading members by name (never extracted as is)."""

    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar = tar
        self.members = {m.name.removeprefix("./"): m for m in tar.getmembers()}

    def open(self, name: str) -> IO[bytes]:
        member = self.members.get(name.removeprefix("./"))
        stream = self.tar.extractfile(member) if member is not None else None
        if stream is None:
            raise InvalidArgument(f"invalid image archive: {name} is missing")
        return stream

    def json(self, name: str) -> object:
        try:
            return json.load(self.open(name))
        except ValueError as exc:
            raise InvalidArgument(f"invalid image archive: {name}: {exc}") from None


def _checked(digest: object) -> str:
    """A digest from the archive, before it is used in a path."""
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise InvalidArgument(f"invalid image archive: bad digest {digest!r}")
    return digest


def _copy_blob(images: ImageStore, archive: _Archive, name: str, expected: str | None) -> dict:
    """Copy one member into the store as a blob (verified against ``expected`` when
    known); return its descriptor, with a layer media type by its compression."""
    if expected is not None and os.path.exists(images.blob_path(expected)):
        digest, size = expected, os.path.getsize(images.blob_path(expected))
    else:
        with images.new_blob(expected) as blob:
            shutil.copyfileobj(archive.open(name), blob, 1 << 20)  # type: ignore[misc]
        digest, size = blob.digest, blob.size
    return descriptor(layer_media_type(layers.compression(images.blob_path(digest))), digest, size)


def _load_layers(
    images: ImageStore, archive: _Archive, names: list[str], diff_ids: list[str]
) -> list[dict]:
    if len(names) != len(diff_ids):
        raise InvalidArgument(
            f"invalid image archive: {len(names)} layers but the config lists {len(diff_ids)}"
        )
    found = []
    for name, diff_id in zip(names, diff_ids, strict=True):
        known = re.fullmatch(r"blobs/sha256/([0-9a-f]{64})", name.removeprefix("./"))
        layer = _copy_blob(images, archive, name, f"sha256:{known.group(1)}" if known else None)
        images.unpack_layer(layer["digest"], _checked(diff_id))
        found.append(layer)
    return found


def _load_docker(images: ImageStore, archive: _Archive) -> list[tuple[Image, list[str]]]:
    """Docker's format: ``manifest.json`` names each image's config and layer files."""
    loaded = []
    entries = archive.json("manifest.json")
    if not isinstance(entries, list):
        raise InvalidArgument("invalid image archive: manifest.json is not a list")
    for entry in entries:
        config = _copy_blob(images, archive, entry["Config"], None)
        image_config = images.read_json_blob(config["digest"])
        found = _load_layers(
            images, archive, entry["Layers"], image_config.get("rootfs", {}).get("diff_ids", [])
        )
        manifest = images.put_json(
            {
                "schemaVersion": 2,
                "mediaType": MANIFEST_MEDIA_TYPE,
                "config": descriptor(CONFIG_MEDIA_TYPE, config["digest"], config["size"]),
                "layers": found,
            },
            MANIFEST_MEDIA_TYPE,
        )
        tags = [normalize_ref(t) for t in entry.get("RepoTags") or []]
        loaded.append((images.register(manifest["digest"], tags=tags), tags))
    return loaded


def _image_manifests(archive: _Archive, index: dict) -> list[tuple[dict, str | None]]:
    """The image manifests an OCI index lists, with the name each is given: for a nested
    index (several platforms), the manifest for this machine's architecture."""
    found = []
    for entry in index.get("manifests", []):
        annotations = entry.get("annotations") or {}
        name = annotations.get(NAME_ANNOTATION) or annotations.get(REF_ANNOTATION)
        if entry.get("mediaType") in INDEX_MEDIA_TYPES:
            nested = archive.json(_blob_name(_checked(entry["digest"])))
            candidates = [
                m
                for m in nested.get("manifests", [])  # type: ignore[union-attr]
                if m.get("platform", {}).get("architecture") in (None, ARCHITECTURE)
            ]
            if not candidates:
                raise InvalidArgument(f"the archive has no image for {ARCHITECTURE}")
            entry = candidates[0]
        found.append((entry, name))
    return found


def _load_oci(images: ImageStore, archive: _Archive) -> list[tuple[Image, list[str]]]:
    """The OCI image layout: ``index.json`` → manifests → config and layers, by digest."""
    loaded = []
    index = archive.json("index.json")
    if not isinstance(index, dict):
        raise InvalidArgument("invalid image archive: index.json is not an object")
    for entry, name in _image_manifests(archive, index):
        digest = _checked(entry["digest"])
        _copy_blob(images, archive, _blob_name(digest), digest)
        manifest = images.read_json_blob(digest)
        config = _checked(manifest["config"]["digest"])
        _copy_blob(images, archive, _blob_name(config), config)
        layer_digests = [_checked(layer["digest"]) for layer in manifest.get("layers", [])]
        _load_layers(
            images,
            archive,
            [_blob_name(d) for d in layer_digests],
            images.read_json_blob(config).get("rootfs", {}).get("diff_ids", []),
        )
        tags = [normalize_ref(name)] if name else []
        loaded.append((images.register(digest, tags=tags), tags))
    return loaded


def load(images: ImageStore, path: str) -> list[tuple[Image, list[str]]]:
    """Load every image in the archive at ``path`` (tar, possibly gzip-compressed);
    return each image with the names it was given."""
    try:
        with tarfile.open(path) as tar, images.adding():
            archive = _Archive(tar)
            if "manifest.json" in archive.members:
                return _load_docker(images, archive)
            if "index.json" in archive.members:
                return _load_oci(images, archive)
    except (OSError, tarfile.TarError) as exc:
        raise InvalidArgument(f"cannot read image archive {path}: {exc}") from None
    raise InvalidArgument(f"{path} is not an image archive: no manifest.json or index.json")


# --- export ------------------------------------------------------------------------------------
def export_container(engine: Engine, ref: str, out: BinaryIO) -> None:
    """``export``: a container's whole filesystem, its image and its changes merged, as
    one tar. A container that is not running has its root mounted for the while (under
    its operation lock, so it cannot start meanwhile)."""
    c = engine.find(ref)
    with c.operation_lock():
        mount_here = not os.path.ismount(c.rootfs)
        if mount_here:
            c.mount_rootfs(engine.images.get(c.record()["Image"]).lowerdirs)
        try:
            layers.write_layer(c.rootfs, out)
        finally:
            if mount_here:
                c.unmount_rootfs()
