"""The local image store, in its first form: images imported from a root filesystem.

An image here is a read-only directory tree (the future container's ``/``) plus an OCI
image config (``Env``, ``Cmd``, ``Entrypoint``, ``WorkingDir``…). Containers never write
to it: each one gets an overlayfs whose lower layer is this tree (see ``engine.py``).

Layout under ``ROOT/images``::

    repositories.json     "name:tag" → image id
    <id>/rootfs/          the tree
    <id>/config.json      the OCI image config

A new image is unpacked into a temporary directory and renamed into place in one step,
so a crash never leaves a half-imported image visible.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass

from minidock import store
from minidock.errors import Conflict, ImageNotFound, InvalidArgument
from minidock.logfile import format_timestamp


@dataclass
class Image:
    id: str
    repo_tags: list[str]
    rootfs: str
    config: dict  # the OCI image config's "config" section: Env, Cmd, Entrypoint, …
    created: str

    @property
    def lowerdirs(self) -> list[str]:
        """The overlayfs lower layers, topmost first (as ``lowerdir=`` takes them)."""
        return [self.rootfs]


def normalize_ref(ref: str) -> str:
    """``busybox`` means ``busybox:latest``; a tag is what follows the last ``:`` after the
    last ``/`` (so ``127.0.0.1:5000/app`` has no tag yet)."""
    if not ref or any(c.isspace() for c in ref) or ref != ref.lower():
        raise InvalidArgument(f'invalid reference format: "{ref}"')
    name, _, tag = ref.rpartition(":")
    if not name or "/" in tag:
        return f"{ref}:latest"
    return ref


def parse_changes(changes: list[str]) -> dict:
    """``--change`` instructions for ``import``: CMD, ENTRYPOINT, ENV, WORKDIR, USER."""
    config: dict = {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}
    for change in changes:
        keyword, _, arg = change.strip().partition(" ")
        keyword, arg = keyword.upper(), arg.strip()
        if keyword in ("CMD", "ENTRYPOINT"):
            value = json.loads(arg) if arg.startswith("[") else ["/bin/sh", "-c", arg]
            config["Cmd" if keyword == "CMD" else "Entrypoint"] = value
        elif keyword == "ENV":
            key, _, value = arg.partition("=")
            config["Env"] = [e for e in config["Env"] if not e.startswith(f"{key}=")]
            config["Env"].append(f"{key}={shlex.split(value)[0] if value else ''}")
        elif keyword == "WORKDIR":
            config["WorkingDir"] = arg
        elif keyword == "USER":
            config["User"] = arg
        else:
            raise InvalidArgument(f"unsupported --change instruction: {keyword}")
    return config


def _keep_mode_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """tarfile's ``tar`` filter refuses absolute and ``..`` names and writes through
    symlinks that leave ``dest``; unlike ``data`` it keeps absolute symlinks, which OS trees
    have. It strips setuid bits, though, which OS trees also need: restore the mode."""
    checked = tarfile.tar_filter(member, dest)
    return checked.replace(mode=member.mode, deep=False)


class ImageStore:
    def __init__(self, paths: store.Paths) -> None:
        self.dir = paths.images
        self.index = os.path.join(self.dir, "repositories.json")
        self.lock = os.path.join(self.dir, "lock")

    def _tags(self) -> dict[str, str]:
        try:
            return store.read_json(self.index)
        except FileNotFoundError:
            return {}

    def import_rootfs(self, source: str, ref: str, changes: list[str]) -> Image:
        """Make an image from a directory or a tarball (``-`` is not supported)."""
        ref = normalize_ref(ref)
        config = parse_changes(changes)
        os.makedirs(self.dir, mode=0o711, exist_ok=True)
        tmp = os.path.join(self.dir, f".import-{os.getpid()}-{time.monotonic_ns()}")
        os.makedirs(os.path.join(tmp, "rootfs"))
        try:
            rootfs = os.path.join(tmp, "rootfs")
            if os.path.isdir(source):
                subprocess.run(["cp", "-a", "--", f"{source}/.", rootfs], check=True)
            elif os.path.isfile(source):
                try:
                    with tarfile.open(source) as tar:
                        tar.extractall(rootfs, filter=_keep_mode_filter)
                except (tarfile.TarError, OSError) as exc:
                    raise InvalidArgument(f"cannot import {source}: {exc}") from None
            else:
                raise InvalidArgument(f"{source}: no such file or directory")
            created = format_timestamp(time.time_ns())
            image_config = {
                "architecture": "amd64",
                "os": "linux",
                "created": created,
                "config": config,
            }
            blob = json.dumps(image_config, sort_keys=True).encode()
            image_id = hashlib.sha256(blob + tmp.encode()).hexdigest()
            store.write_json(os.path.join(tmp, "config.json"), image_config)
            with store.locked(self.lock):
                os.rename(tmp, os.path.join(self.dir, image_id))
                tags = self._tags()
                tags[ref] = image_id
                store.write_json(self.index, tags)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.get(image_id)

    def get(self, ref: str) -> Image:
        """Find an image by ``name[:tag]``, full ID, ``sha256:`` ID or unique ID prefix."""
        tags = self._tags()
        image_id = tags.get(normalize_ref(ref)) if not ref.startswith("sha256:") else None
        if image_id is None:
            wanted = ref.removeprefix("sha256:")
            matches = [d for d in self._ids() if d.startswith(wanted)] if len(wanted) >= 4 else []
            if len(matches) > 1:
                raise InvalidArgument(f"image ID prefix {ref} is ambiguous")
            if not matches:
                raise ImageNotFound(f"No such image: {ref}")
            image_id = matches[0]
        data = store.read_json(os.path.join(self.dir, image_id, "config.json"))
        return Image(
            id=image_id,
            repo_tags=sorted(t for t, i in tags.items() if i == image_id),
            rootfs=os.path.join(self.dir, image_id, "rootfs"),
            config=data.get("config", {}),
            created=data.get("created", ""),
        )

    def _ids(self) -> list[str]:
        if not os.path.isdir(self.dir):
            return []
        return [d for d in os.listdir(self.dir) if len(d) == 64]

    def list(self) -> list[Image]:
        return [self.get(i) for i in sorted(self._ids())]

    def remove(self, ref: str, in_use: set[str]) -> Image:
        """Delete an image (or just one of its tags, when others remain)."""
        image = self.get(ref)
        with store.locked(self.lock):
            tags = self._tags()
            named = normalize_ref(ref) if normalize_ref(ref) in tags else None
            if named and len(image.repo_tags) > 1:
                del tags[named]
                store.write_json(self.index, tags)
                return image
            if image.id in in_use:
                raise Conflict(f"unable to remove image {ref}: it is used by a container")
            for tag in image.repo_tags:
                tags.pop(tag, None)
            store.write_json(self.index, tags)
            trash = os.path.join(self.dir, f".remove-{image.id}")
            os.rename(os.path.join(self.dir, image.id), trash)
        shutil.rmtree(trash)
        return image
