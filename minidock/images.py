"""The local image store: content-addressed blobs, layers unpacked once, and tags.

An image is what the OCI image spec says it is: a *manifest* listing a *config* (the JSON
with ``Env``, ``Cmd``, ``Entrypoint``… and the layers' DiffIDs) and the *layers* (tar
archives of filesystem changes, applied bottom to top). As in Docker, an image's ID is the
digest of its config. Layout under ``ROOT/images``::

    blobs/sha256/<hex>     layer tarballs, configs and manifests, named by their digest
    layers/<diffid hex>/   each layer unpacked once (overlayfs's format), shared by every
                           image and container that uses it: these are the lowerdirs
    index.json             "tags" ("name:tag" → manifest digest), "images" (image ID →
                           manifest digest and parent image), "cache" (build cache key → ID)
    empty/                 the lower layer of an image without layers (FROM scratch)
    tmp/                   work in progress: nothing here is part of any image

Nothing half-written is ever visible. A blob is written to ``tmp/``, fsynced, its digest
checked, then renamed into ``blobs/``; a layer is unpacked into ``tmp/`` and renamed into
``layers/``; the index is rewritten atomically, under ``lock``, only after everything it
names exists. A command killed half-way leaves only files in ``tmp/`` that no image names.

Garbage (blobs and layers no image names, leftovers in ``tmp/``) is swept by ``rmi`` and
``image prune``. Commands that add objects (build, load, import) hold ``gc.lock`` shared
while they work; a sweep needs it exclusively, so it never deletes a layer that a build
has just made but not yet recorded in the index.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from minidock import store
from minidock.errors import Conflict, ImageNotFound, InvalidArgument
from minidock.logfile import format_timestamp

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
#: The OCI names of Go's GOARCH values, which image configs use.
ARCHITECTURE = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)


@dataclass
class Image:
    id: str  # hex digest of the config blob
    repo_tags: list[str]
    manifest_digest: str
    manifest: dict
    image_config: dict  # the whole config blob: created, config, rootfs, history…
    parent: str  # the image this one was built on, locally ("" if unknown)
    lowerdirs: list[str]  # the overlayfs lower layers, topmost first (as lowerdir= takes them)

    @property
    def config(self) -> dict:
        """The config blob's ``config`` section: Env, Cmd, Entrypoint, WorkingDir, …"""
        return self.image_config.get("config") or {}

    @property
    def created(self) -> str:
        return self.image_config.get("created", "")

    @property
    def diff_ids(self) -> list[str]:
        return list(self.image_config.get("rootfs", {}).get("diff_ids", []))

    @property
    def history(self) -> list[dict]:
        return list(self.image_config.get("history", []))

    @property
    def size(self) -> int:
        """Bytes of its layer blobs (as stored: compressed if they came compressed)."""
        return sum(layer["size"] for layer in self.manifest.get("layers", []))


def normalize_ref(ref: str) -> str:
    """``busybox`` means ``busybox:latest``; a tag is what follows the last ``:`` after the
    last ``/`` (so ``127.0.0.1:5000/app`` has no tag yet). Docker Hub's long forms
    (``docker.io/library/busybox``) mean the short one."""
    if not ref or any(c.isspace() for c in ref) or ref != ref.lower() or "@" in ref:
        raise InvalidArgument(f'invalid reference format: "{ref}"')
    ref = ref.removeprefix("docker.io/").removeprefix("library/")
    name, _, tag = ref.rpartition(":")
    if not name or "/" in tag:
        return f"{ref}:latest"
    return ref


def canonical_json(data: Any) -> bytes:
    """The bytes minidock stores for a JSON blob: sorted keys, no spaces (a stable digest)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def descriptor(media_type: str, digest: str, size: int) -> dict:
    """An OCI content descriptor: what a manifest or index says about one blob."""
    return {"mediaType": media_type, "digest": digest, "size": size}


def layer_media_type(compression: str | None) -> str:
    return f"{LAYER_MEDIA_TYPE}+{compression}" if compression else LAYER_MEDIA_TYPE


class BlobWriter:
    """A temporary file in ``tmp/`` that hashes what is written to it (see
    :meth:`ImageStore.new_blob`); ``digest`` is set once it has become a blob."""

    def __init__(self, directory: str) -> None:
        fd, self.path = tempfile.mkstemp(dir=directory, prefix="blob-")
        self.file = os.fdopen(fd, "wb")
        self.hash = hashlib.sha256()
        self.size = 0
        self.digest = ""

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.file.write(data)


class ImageStore:
    def __init__(self, paths: store.Paths) -> None:
        self.dir = paths.images
        self.blobs = os.path.join(self.dir, "blobs", "sha256")
        self.layers = os.path.join(self.dir, "layers")
        self.tmp = os.path.join(self.dir, "tmp")
        self.empty = os.path.join(self.dir, "empty")
        self.index_path = os.path.join(self.dir, "index.json")
        self.lock = os.path.join(self.dir, "lock")
        self.gc_lock = os.path.join(self.dir, "gc.lock")
        for d in (self.blobs, self.layers, self.tmp, self.empty):
            os.makedirs(d, mode=0o711, exist_ok=True)

    # --- the index ----------------------------------------------------------------------------
    def _index(self) -> dict:
        try:
            index = store.read_json(self.index_path)
        except FileNotFoundError:
            index = {}
        for key in ("tags", "images", "cache"):
            index.setdefault(key, {})
        return index

    @contextlib.contextmanager
    def _changing_index(self) -> Iterator[dict]:
        """Read-modify-write the index under its lock (one writer at a time)."""
        with store.locked(self.lock):
            index = self._index()
            yield index
            store.write_json(self.index_path, index)

    def adding(self) -> contextlib.AbstractContextManager[None]:
        """Hold while adding blobs and layers that the index does not name yet: a garbage
        sweep waits for (``prune``) or skips (``rmi``) the store until it is released."""
        return store.locked(self.gc_lock, shared=True)

    # --- blobs and layers ---------------------------------------------------------------------
    def blob_path(self, digest: str) -> str:
        return os.path.join(self.blobs, digest.removeprefix("sha256:"))

    def layer_dir(self, diff_id: str) -> str:
        return os.path.join(self.layers, diff_id.removeprefix("sha256:"))

    def read_json_blob(self, digest: str) -> dict:
        return store.read_json(self.blob_path(digest))

    @contextlib.contextmanager
    def new_blob(self, expected: str | None = None) -> Iterator[BlobWriter]:
        """Write a blob: the ``with`` body writes to the yielded file; at the end it is
        fsynced, its digest checked against ``expected`` (when given) and renamed into
        ``blobs/``. An exception, or a digest that does not match, leaves no blob."""
        blob = BlobWriter(self.tmp)
        try:
            yield blob
            blob.file.flush()
            os.fsync(blob.file.fileno())
            blob.file.close()
            digest = f"sha256:{blob.hash.hexdigest()}"
            if expected is not None and digest != expected:
                raise InvalidArgument(f"blob {expected} is corrupt: its content is {digest}")
            os.rename(blob.path, self.blob_path(digest))
            blob.digest = digest
        finally:
            blob.file.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(blob.path)

    def put_json(self, data: Any, media_type: str) -> dict:
        """Store ``data`` as a JSON blob; return its descriptor."""
        with self.new_blob() as blob:
            blob.write(canonical_json(data))
        return descriptor(media_type, blob.digest, blob.size)

    def unpack_layer(self, blob_digest: str, diff_id: str | None = None) -> str:
        """Unpack the layer blob into ``layers/<diffid>`` unless a layer with that DiffID is
        there already; return the DiffID. With ``diff_id`` given, the unpacked content
        must match it."""
        from minidock import layers  # tar and decompressors: only for adding images

        if diff_id is not None and os.path.isdir(self.layer_dir(diff_id)):
            return diff_id
        work = tempfile.mkdtemp(dir=self.tmp, prefix="layer-")
        try:
            os.chmod(work, 0o755)
            with layers.open_uncompressed(self.blob_path(blob_digest)) as stream:
                found = layers.unpack(stream, work)
            if diff_id is not None and found != diff_id:
                raise layers.LayerError(
                    f"layer {blob_digest} unpacks to {found}, but the image says {diff_id}"
                )
            try:
                os.rename(work, self.layer_dir(found))
            except OSError as exc:  # another command unpacked the same layer first
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return found

    def add_layer_from_dir(self, directory: str) -> tuple[dict, str] | None:
        """Make a layer of a directory tree (an overlay upper dir, or a whole root
        filesystem): its descriptor and DiffID, or None when the tree is empty."""
        from minidock import layers

        if not os.listdir(directory):
            return None
        with self.new_blob() as blob:
            layers.write_layer(directory, blob)  # type: ignore[arg-type]
        return (
            descriptor(LAYER_MEDIA_TYPE, blob.digest, blob.size),
            self.unpack_layer(blob.digest, blob.digest),
        )

    # --- images -------------------------------------------------------------------------------
    def commit(
        self,
        image_config: dict,
        layer_descriptors: list[dict],
        parent: str = "",
        tags: list[str] | None = None,
        cache_key: str | None = None,
    ) -> Image:
        """Record a new image whose layers are already in the store: write its config and
        manifest, then the index (tags and build-cache entry included)."""
        config = self.put_json(image_config, CONFIG_MEDIA_TYPE)
        manifest = self.put_json(
            {
                "schemaVersion": 2,
                "mediaType": MANIFEST_MEDIA_TYPE,
                "config": config,
                "layers": layer_descriptors,
            },
            MANIFEST_MEDIA_TYPE,
        )
        return self.register(manifest["digest"], parent, tags or [], cache_key)

    def register(
        self,
        manifest_digest: str,
        parent: str = "",
        tags: list[str] | None = None,
        cache_key: str | None = None,
    ) -> Image:
        """Name an image whose manifest, config and layers are all stored: the last step
        of adding one, after which it is visible. An image already here (the same config,
        so the same ID) keeps the manifest it has."""
        manifest = self.read_json_blob(manifest_digest)
        image_id = manifest["config"]["digest"].removeprefix("sha256:")
        refs = [normalize_ref(t) for t in tags or []]
        with self._changing_index() as index:
            record = index["images"].setdefault(
                image_id, {"manifest": manifest_digest, "parent": parent}
            )
            manifest_digest = record["manifest"]
            for ref in refs:
                index["tags"][ref] = manifest_digest
            if cache_key is not None:
                index["cache"][cache_key] = image_id
        return self.get(image_id)

    def _image(self, index: dict, image_id: str) -> Image:
        record = index["images"][image_id]
        manifest = self.read_json_blob(record["manifest"])
        image_config = self.read_json_blob(manifest["config"]["digest"])
        diff_ids = image_config.get("rootfs", {}).get("diff_ids", [])
        # Topmost first; a layer listed twice needs only its topmost place (overlayfs
        # refuses the same directory twice, and the lower copy could show nothing anyway).
        lowerdirs = list(dict.fromkeys(self.layer_dir(d) for d in reversed(diff_ids)))
        return Image(
            id=image_id,
            repo_tags=sorted(t for t, m in index["tags"].items() if m == record["manifest"]),
            manifest_digest=record["manifest"],
            manifest=manifest,
            image_config=image_config,
            parent=record.get("parent", ""),
            lowerdirs=lowerdirs or [self.empty],
        )

    def _resolve(self, index: dict, ref: str) -> str:
        """The image ID ``ref`` names: ``name[:tag]``, ID, ``sha256:``ID or a unique prefix."""
        if not ref.startswith("sha256:"):
            manifest = index["tags"].get(normalize_ref(ref))
            if manifest is not None:
                return next(i for i, r in index["images"].items() if r["manifest"] == manifest)
        wanted = ref.removeprefix("sha256:")
        matches = [i for i in index["images"] if i.startswith(wanted)] if len(wanted) >= 4 else []
        if len(matches) > 1:
            raise InvalidArgument(f"image ID prefix {ref} is ambiguous")
        if not matches:
            raise ImageNotFound(f"No such image: {ref}")
        return matches[0]

    def get(self, ref: str) -> Image:
        """Find an image by ``name[:tag]``, full ID, ``sha256:`` ID or unique ID prefix."""
        index = self._index()
        return self._image(index, self._resolve(index, ref))

    def cached(self, key: str) -> Image | None:
        """The image a build step with this cache key made before, if it is still here."""
        index = self._index()
        image_id = index["cache"].get(key)
        return self._image(index, image_id) if image_id in index["images"] else None

    def list(self, all_images: bool = False) -> list[Image]:
        """Images, newest first. Like ``docker images``, intermediate images of a build
        (untagged, and the parent of another image) are left out unless ``all_images``."""
        index = self._index()
        parents = {r.get("parent") for r in index["images"].values()}
        tagged = set(index["tags"].values())
        found = [
            self._image(index, i)
            for i, r in index["images"].items()
            if all_images or r["manifest"] in tagged or i not in parents
        ]
        return sorted(found, key=lambda image: image.created, reverse=True)

    def tag(self, source: str, target: str) -> Image:
        """Give the image ``source`` names the name ``target`` too (moving it if taken)."""
        ref = normalize_ref(target)
        with self._changing_index() as index:
            image_id = self._resolve(index, source)
            index["tags"][ref] = index["images"][image_id]["manifest"]
        return self.get(image_id)

    def import_rootfs(self, source: str, ref: str, changes: list[str]) -> Image:
        """Make a one-layer image from a root filesystem directory or tarball (``import``).
        ``changes`` are Dockerfile instructions (CMD, ENV, …) applied to its config."""
        from minidock import layers
        from minidock.dockerfile import apply_changes

        ref = normalize_ref(ref)
        config = apply_changes(
            {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
            changes,
        )
        with self.adding():
            if os.path.isdir(source):
                layer = self.add_layer_from_dir(source)
                found = [layer] if layer else []
            elif os.path.isfile(source):
                with self.new_blob() as blob, open(source, "rb") as f:
                    shutil.copyfileobj(f, blob, 1 << 20)  # type: ignore[misc]
                media_type = layer_media_type(layers.compression(self.blob_path(blob.digest)))
                found = [
                    (descriptor(media_type, blob.digest, blob.size), self.unpack_layer(blob.digest))
                ]
            else:
                raise InvalidArgument(f"{source}: no such file or directory")
            created = format_timestamp(time.time_ns())
            image_config = {
                "architecture": ARCHITECTURE,
                "os": "linux",
                "created": created,
                "config": config,
                "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id in found]},
                "history": [{"created": created, "comment": f"Imported from {source}"}],
            }
            return self.commit(image_config, [d for d, _ in found], tags=[ref])

    # --- removing -----------------------------------------------------------------------------
    @staticmethod
    def _children(index: dict, image_id: str) -> list[str]:
        return [i for i, r in index["images"].items() if r.get("parent") == image_id]

    @staticmethod
    def _forget(index: dict, image_id: str) -> None:
        """Drop an image from the index: its record, tags and build-cache entries."""
        manifest = index["images"].pop(image_id)["manifest"]
        index["tags"] = {t: m for t, m in index["tags"].items() if m != manifest}
        index["cache"] = {k: i for k, i in index["cache"].items() if i != image_id}

    def remove(self, ref: str, in_use: set[str]) -> Image:
        """``rmi``: untag ``ref``; delete the image when no tag is left, then its untagged
        parents that nothing else needs (as Docker does), then sweep unused layers.

        Refuses an image in ``in_use`` (IDs of containers' images). An image other images
        were built on keeps existing (untagged) as long as they do."""
        with self._changing_index() as index:
            image_id = self._resolve(index, ref)
            image = self._image(index, image_id)
            named = None if ref.startswith("sha256:") else normalize_ref(ref)
            if named in index["tags"] and len(image.repo_tags) > 1:
                del index["tags"][named]
                return image
            if image_id in in_use:
                raise Conflict(f"unable to remove image {ref}: it is used by a container")
            if self._children(index, image_id):
                if not image.repo_tags:
                    raise Conflict(
                        f"unable to delete {image_id[:12]}: image has dependent child images"
                    )
                index["tags"] = {t: m for t, m in index["tags"].items() if t not in image.repo_tags}
                return image
            while image_id and image_id in index["images"]:
                parent = index["images"][image_id].get("parent", "")
                self._forget(index, image_id)
                keep = (
                    parent not in index["images"]
                    or parent in in_use
                    or self._children(index, parent)
                    or any(m == index["images"][parent]["manifest"] for m in index["tags"].values())
                )
                image_id = "" if keep else parent
        self._sweep_if_idle()
        return image

    def prune(self, in_use: set[str]) -> tuple[list[str], int]:
        """``image prune``: delete dangling images (untagged, with no child images, used by
        no container), then every blob and layer no image needs. Returns the deleted image
        IDs and the bytes freed. Waits for running builds and loads to finish."""
        deleted: list[str] = []
        with store.locked(self.gc_lock):
            with self._changing_index() as index:
                while True:
                    tagged = set(index["tags"].values())
                    parents = {r.get("parent") for r in index["images"].values()}
                    dangling = [
                        i
                        for i, r in index["images"].items()
                        if r["manifest"] not in tagged and i not in parents and i not in in_use
                    ]
                    if not dangling:
                        break
                    for image_id in dangling:
                        self._forget(index, image_id)
                    deleted += dangling
            return deleted, self._sweep()

    def _sweep_if_idle(self) -> None:
        """Sweep now unless a build or load is adding objects (then the next one does)."""
        fd = os.open(self.gc_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return
        try:
            self._sweep()
        finally:
            os.close(fd)

    def _sweep(self) -> int:
        """Delete blobs and layers that no image names, and everything in ``tmp/`` (the
        caller holds ``gc.lock`` exclusively, so nobody is writing there). Returns bytes
        freed. A layer is renamed into ``tmp/`` first, so it disappears in one step."""
        index = self._index()
        blobs: set[str] = set()
        diff_ids: set[str] = set()
        for image_id, record in index["images"].items():
            manifest = self.read_json_blob(record["manifest"])
            blobs |= {record["manifest"], manifest["config"]["digest"]}
            blobs |= {layer["digest"] for layer in manifest["layers"]}
            diff_ids |= set(self._image(index, image_id).diff_ids)
        freed = 0
        for name in os.listdir(self.blobs):
            if f"sha256:{name}" not in blobs:
                path = os.path.join(self.blobs, name)
                freed += os.lstat(path).st_size
                os.unlink(path)
        for name in os.listdir(self.layers):
            if f"sha256:{name}" not in diff_ids:
                trash = tempfile.mkdtemp(dir=self.tmp, prefix="removed-")
                os.rename(os.path.join(self.layers, name), os.path.join(trash, name))
        for name in os.listdir(self.tmp):
            path = os.path.join(self.tmp, name)
            freed += _disk_usage(path)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        return freed

    # --- looking at images --------------------------------------------------------------------
    def inspect(self, ref: str) -> dict:
        """``docker image inspect``-shaped JSON."""
        image = self.get(ref)
        c = image.image_config
        return {
            "Id": f"sha256:{image.id}",
            "RepoTags": image.repo_tags,
            "RepoDigests": [],
            "Parent": f"sha256:{image.parent}" if image.parent else "",
            "Comment": next((h.get("comment", "") for h in reversed(image.history)), ""),
            "Created": image.created,
            "Author": c.get("author", ""),
            "Config": image.config,
            "Architecture": c.get("architecture", ""),
            "Os": c.get("os", ""),
            "Size": image.size,
            "GraphDriver": {
                "Name": "overlay",
                "Data": {"LowerDir": ":".join(image.lowerdirs)},
            },
            "RootFS": {"Type": "layers", "Layers": image.diff_ids},
            "Descriptor": descriptor(
                MANIFEST_MEDIA_TYPE,
                image.manifest_digest,
                os.path.getsize(self.blob_path(image.manifest_digest)),
            ),
        }

    def history(self, ref: str) -> list[dict]:
        """The image's history, newest first: which step made each layer, and its size.
        Steps of images built here carry the ID of the image that step made."""
        image = self.get(ref)
        index = self._index()
        ids: dict[int, str] = {}
        walk: Image | None = image
        while walk is not None:
            ids[len(walk.history) - 1] = walk.id
            walk = self._image(index, walk.parent) if walk.parent in index["images"] else None
        layer_sizes = iter(layer["size"] for layer in image.manifest.get("layers", []))
        rows = []
        for n, step in enumerate(image.history):
            rows.append(
                {
                    "Id": f"sha256:{ids[n]}" if n in ids else "<missing>",
                    "Created": step.get("created", ""),
                    "CreatedBy": step.get("created_by", ""),
                    "Size": 0 if step.get("empty_layer") else next(layer_sizes, 0),
                    "Comment": step.get("comment", ""),
                }
            )
        return rows[::-1]


def _disk_usage(path: str) -> int:
    """Bytes of the files under ``path`` (or of ``path`` itself), symlinks not followed."""
    if not os.path.isdir(path) or os.path.islink(path):
        return os.lstat(path).st_size
    total = 0
    for top, dirs, files in os.walk(path):
        total += sum(os.lstat(os.path.join(top, n)).st_size for n in dirs + files)
    return total
