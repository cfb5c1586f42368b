"""``minidock build``: run a Dockerfile, one step at a time, into an image.

This is Docker's classic builder. Every instruction turns the current image into a new
one, recorded in the store (untagged: an *intermediate* image):

* ENV, CMD, WORKDIR, … change the config only (``dockerfile.apply_instruction``);
* RUN starts a real container from the current image through the engine, with host
  networking; when it exits, the container's overlay upper directory holds exactly what
  the command changed, and becomes the step's layer;
* COPY and ADD mount a (never started) container's root filesystem, copy the files in,
  and take the upper directory as the layer the same way, so parent directories keep the
  owner and mode the image gave them (overlayfs copies them up).

Each step is looked up in the build cache first, keyed on the image it starts from, the
instruction after substitution (for RUN, with the build arguments it sees), and for
COPY/ADD a hash of the copied files' names, modes and contents. An unchanged rebuild
therefore finds every step; touching one copied file rebuilds from that COPY on.
"""

from __future__ import annotations

import contextlib
import copy
import glob
import hashlib
import os
import posixpath
import re
import shutil
import signal
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from minidock import dockerfile, layers, users
from minidock.container import Container
from minidock.dockerfile import Dockerfile, Instruction, Stage
from minidock.engine import Engine, RunOptions
from minidock.errors import MinidockError
from minidock.images import ARCHITECTURE, Image, canonical_json, normalize_ref
from minidock.logfile import format_timestamp
from minidock.monitor import PROXIED_SIGNALS, Attach
from minidock.runtime.rootfs import resolve_in_root

#: What the runtime creates in a container's root as mount points (spec.py's mounts and
#: the engine's /etc files). They show up in a RUN's upper directory but are no part of
#: what the command did — Docker keeps them in a separate "init" layer for that reason.
MOUNT_TARGETS = ("etc/hostname", "etc/hosts", "etc/resolv.conf", "proc", "sys", "dev")


class BuildError(MinidockError):
    """A build step failed (a RUN exited non-zero, a COPY source is missing, …)."""

    exit_code = 1


@dataclass
class BuildOptions:
    context: str
    dockerfile: str | None = None  # default: Dockerfile in the context
    tags: list[str] = field(default_factory=list)
    build_args: dict[str, str] = field(default_factory=dict)
    no_cache: bool = False
    target: str | None = None


@dataclass
class _StageState:
    """A stage being built: its current image, and the ARGs it has declared."""

    image: Image
    args: dict[str, str] = field(default_factory=dict)
    cmd_set: bool = False  # CMD given in this stage (ENTRYPOINT then keeps it)


class DockerIgnore:
    """``.dockerignore``: Go ``filepath.Match`` patterns plus ``**`` (any number of
    directories); ``!pattern`` re-includes. As in moby's patternmatcher, the last pattern
    that matches a path or one of its parent directories decides."""

    def __init__(self, lines: list[str]) -> None:
        self.rules: list[tuple[re.Pattern[str], bool]] = []
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pattern = posixpath.normpath(line.removeprefix("!").strip()).lstrip("/")
            self.rules.append((re.compile(_pattern_regex(pattern)), negate))

    @classmethod
    def read(cls, context: str) -> DockerIgnore:
        try:
            with open(os.path.join(context, ".dockerignore")) as f:
                return cls(f.read().splitlines())
        except FileNotFoundError:
            return cls([])

    def __call__(self, path: str) -> bool:
        """Is ``path`` (relative to the context, ``/``-separated) excluded?"""
        parts = path.split("/")
        candidates = ["/".join(parts[:n]) for n in range(len(parts), 0, -1)]
        excluded = False
        for regex, negate in self.rules:
            if any(regex.fullmatch(c) for c in candidates):
                excluded = not negate
        return excluded


def _pattern_regex(pattern: str) -> str:
    """A ``.dockerignore`` pattern as a regular expression over ``/``-separated paths."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[" and (end := pattern.find("]", i + 1)) > i:
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body[:1] in ("^", "!") else body) + "]")
            i = end + 1
        elif c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def _walk(top: str) -> Iterator[str]:
    """Paths under ``top`` relative to it, parents before children, sorted, ``""`` for
    ``top`` itself; symlinks are not followed."""
    yield ""
    if not os.path.isdir(top) or os.path.islink(top):
        return
    for root, dirs, files in os.walk(top):
        dirs.sort()
        rel = os.path.relpath(root, top)
        for name in sorted(dirs + files):
            yield name if rel == "." else f"{rel}/{name}"
        # os.walk visits directories in the sorted order set above, after this one


def _in_image(image: Image, path: str) -> os.stat_result | None:
    """lstat of ``path`` in the topmost layer that has it (whiteouts are not resolved)."""
    for lower in image.lowerdirs:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            return os.lstat(os.path.join(lower, path))
    return None


def _forget_mount_targets(upper: str, image: Image) -> None:
    """Remove from a RUN's upper directory what the runtime made there as mount points,
    and ``etc/`` too when it is there only for them."""
    for target in MOUNT_TARGETS:
        path = os.path.join(upper, target)
        with contextlib.suppress(FileNotFoundError, OSError):
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_size == 0:
                os.unlink(path)
            elif stat.S_ISDIR(st.st_mode):
                os.rmdir(path)  # fails, and stays, unless empty
    etc = os.path.join(upper, "etc")
    with contextlib.suppress(OSError):
        st, below = os.lstat(etc), _in_image(image, "etc")
        same = below is None or (st.st_mode, st.st_uid, st.st_gid) == (
            below.st_mode,
            below.st_uid,
            below.st_gid,
        )
        opaque = layers.OPAQUE_XATTR in os.listxattr(etc)  # then etc/ was really replaced
        if same and not opaque:
            os.rmdir(etc)


class Builder:
    def __init__(
        self,
        engine: Engine,
        opts: BuildOptions,
        log: Callable[[str], None],
        attach: Attach,
    ) -> None:
        self.engine = engine
        self.images = engine.images
        self.opts = opts
        self.log = log
        self.attach = attach  # where RUN steps' output goes
        self.context = os.path.realpath(opts.context)
        self.ignored = DockerIgnore.read(self.context)
        self.stages: dict[str, Image] = {}  # finished stages by name and by index
        self.used_args: set[str] = set()
        self.global_args: dict[str, str] = {}  # ARGs before the first FROM
        self.step = 0
        self.total = 0

    # --- the whole build ----------------------------------------------------------------------
    def build(self) -> Image:
        """Build, tag, and return the final image."""
        if not os.path.isdir(self.context):
            raise BuildError(f"unable to prepare context: path {self.opts.context!r} not found")
        path = self.opts.dockerfile or os.path.join(self.opts.context, "Dockerfile")
        try:
            with open(path) as f:
                parsed = dockerfile.parse(f.read(), path)
        except OSError as exc:
            raise BuildError(f"cannot read the Dockerfile: {exc}") from None
        for tag in self.opts.tags:
            normalize_ref(tag)  # refuse a bad tag before building for minutes
        stages = self._selected_stages(parsed)
        self.total = sum(1 + len(s.instructions) for s in stages)
        self.global_args = self._global_args(parsed)
        with self.images.adding():
            for stage in stages:
                state = _StageState(self._from(stage))
                for inst in stage.instructions:
                    self._announce(inst)
                    self._step(state, inst)
                    self.log(f" ---> {state.image.id[:12]}")
                self.stages[str(stage.index)] = state.image
                if stage.name:
                    self.stages[stage.name] = state.image
            for tag in self.opts.tags:
                self.images.tag(state.image.id, tag)
        unused = sorted(set(self.opts.build_args) - self.used_args)
        if unused:
            self.log(f"[Warning] One or more build-args {unused} were not consumed")
        self.log(f"Successfully built {state.image.id[:12]}")
        for tag in self.opts.tags:
            self.log(f"Successfully tagged {normalize_ref(tag)}")
        return self.images.get(state.image.id)

    def _selected_stages(self, parsed: Dockerfile) -> list[Stage]:
        if self.opts.target is None:
            return parsed.stages
        for stage in parsed.stages:
            if stage.name == self.opts.target.lower():
                return parsed.stages[: stage.index + 1]
        raise BuildError(f"failed to reach build target {self.opts.target} in Dockerfile")

    def _global_args(self, parsed: Dockerfile) -> dict[str, str]:
        """ARGs before the first FROM: only FROM lines see them (and stages that redeclare)."""
        values: dict[str, str] = {}
        for inst in parsed.global_args:
            for name, default in dockerfile.arg_declarations(inst, values):
                if name in self.opts.build_args:
                    values[name] = self.opts.build_args[name]
                    self.used_args.add(name)
                elif default is not None:
                    values[name] = default
        return values

    def _announce(self, inst: Instruction) -> None:
        self.step += 1
        self.log(f"Step {self.step}/{self.total} : {inst.text}")

    def _from(self, stage: Stage) -> Image:
        self._announce(stage.origin)
        base = stage.origin.expand(stage.base, self.global_args)
        if base.lower() == "scratch":
            image = self._scratch()
        elif base.lower() in self.stages:
            image = self.stages[base.lower()]
        else:
            try:
                image = self.images.get(base)
            except MinidockError as exc:
                raise stage.origin.fail(f"FROM {base}: {exc}") from None
        self.log(f" ---> {image.id[:12]}")
        return image

    def _scratch(self) -> Image:
        """The empty image. Its config is always the same (created at the epoch), so its ID
        is too, and the cache keys of the steps on top of it stay valid."""
        return self.images.commit(
            {
                "architecture": ARCHITECTURE,
                "os": "linux",
                "created": format_timestamp(0),
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": []},
            },
            [],
        )

    # --- one step -----------------------------------------------------------------------------
    def _step(self, state: _StageState, inst: Instruction) -> None:
        env = {**state.args, **dockerfile.env_of(state.image.config)}  # ENV beats ARG
        if inst.keyword == "ARG":
            self._arg(state, inst, env)
        elif inst.keyword in dockerfile.CONFIG_KEYWORDS:
            config = copy.deepcopy(state.image.config)
            dockerfile.apply_instruction(config, inst, env, state.cmd_set)
            state.cmd_set = state.cmd_set or inst.keyword == "CMD"
            key = self._cache_key(state, inst.text, canonical_json(config).decode())
            if not self._from_cache(state, key):
                self._commit(state, inst.text, config, None, key)
        elif inst.keyword == "RUN":
            self._run(state, inst)
        else:
            self._copy(state, inst, env)

    def _arg(self, state: _StageState, inst: Instruction, env: dict[str, str]) -> None:
        """``ARG NAME[=default]``: a --build-arg wins, then the default, then the global
        ARG of the same name."""
        for name, default in dockerfile.arg_declarations(inst, env):
            if name in self.opts.build_args:
                state.args[name] = self.opts.build_args[name]
                self.used_args.add(name)
            elif default is not None:
                state.args[name] = default
            elif name in self.global_args:
                state.args[name] = self.global_args[name]

    def _cache_key(self, state: _StageState, created_by: str, extra: str = "") -> str:
        return hashlib.sha256(f"{state.image.id}\n{created_by}\n{extra}".encode()).hexdigest()

    def _from_cache(self, state: _StageState, key: str) -> bool:
        if self.opts.no_cache:
            return False
        hit = self.images.cached(key)
        if hit is None:
            return False
        self.log(" ---> Using cache")
        state.image = hit
        return True

    def _commit(
        self,
        state: _StageState,
        created_by: str,
        config: dict,
        layer: tuple[dict, str] | None,
        key: str,
    ) -> None:
        """Record the step's image: the parent's config with ``config``, one more history
        entry, and the new layer (if the step changed any file) on top of its layers."""
        parent = state.image
        image_config = copy.deepcopy(parent.image_config)
        for stale in ("container", "container_config"):  # Docker's notes on the base's build
            image_config.pop(stale, None)
        created = format_timestamp(time.time_ns())
        entry: dict = {"created": created, "created_by": created_by, "comment": "minidock build"}
        if layer is None:
            entry["empty_layer"] = True
        image_config.update(
            created=created,
            config=config,
            rootfs={"type": "layers", "diff_ids": parent.diff_ids + ([layer[1]] if layer else [])},
            history=parent.history + [entry],
        )
        layer_descriptors = parent.manifest["layers"] + ([layer[0]] if layer else [])
        state.image = self.images.commit(
            image_config, layer_descriptors, parent=parent.id, cache_key=key
        )

    # --- RUN ----------------------------------------------------------------------------------
    def _run(self, state: _StageState, inst: Instruction) -> None:
        """Run the command in a container of the current image; its changes are the layer."""
        argv = dockerfile.command(inst, state.image.config)
        image_env = dockerfile.env_of(state.image.config)
        build_env = {k: v for k, v in state.args.items() if k not in image_env}
        # Docker's notation for the build arguments a RUN saw: "|2 A=1 B=2 /bin/sh -c …".
        seen = f"|{len(build_env)} " + " ".join(f"{k}={v}" for k, v in build_env.items()) + " "
        created_by = (seen if build_env else "") + " ".join(argv)
        key = self._cache_key(state, created_by)
        if self._from_cache(state, key):
            return
        c = self.engine.create(
            RunOptions(
                image=state.image.id,
                command=argv,
                entrypoint="",
                env=[f"{k}={v}" for k, v in build_env.items()],
                network="host",
            )
        )
        self.log(f" ---> Running in {c.id[:12]}")
        handlers = {sig: signal.getsignal(sig) for sig in PROXIED_SIGNALS}
        try:
            try:
                code = self.engine.start(c, self.attach)
            except MinidockError as exc:  # e.g. the command is not in the image
                raise BuildError(f"{inst.location}: RUN: {exc}") from None
            if code != 0:
                raise BuildError(
                    f"{inst.location}: The command '{' '.join(argv)}' returned a non-zero "
                    f"code: {code}"
                )
            _forget_mount_targets(c.path("upper"), state.image)
            layer = self.images.add_layer_from_dir(c.path("upper"))
        finally:
            for sig, handler in handlers.items():  # the monitor forwarded them to the command
                signal.signal(sig, handler)
            self.engine.remove(c, force=True)
        self.log(f" ---> Removed intermediate container {c.id[:12]}")
        self._commit(state, created_by, copy.deepcopy(state.image.config), layer, key)

    # --- COPY and ADD -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _mounted(self, image: Image) -> Iterator[Container]:
        """A container of ``image`` that is never started: only its root filesystem is
        mounted, for COPY to write into (or read from, for ``--from``)."""
        c = self.engine.create(RunOptions(image=image.id, command=["true"], network="none"))
        try:
            c.mount_rootfs(image.lowerdirs)
            try:
                yield c
            finally:
                c.unmount_rootfs()
        finally:
            self.engine.remove(c, force=True)

    def _copy(self, state: _StageState, inst: Instruction, env: dict[str, str]) -> None:
        words = inst.words(env)
        sources, dest = words[:-1], words[-1]
        flags = {name: inst.expand(value, env) for name, value in inst.flags.items()}
        mode = None
        if "chmod" in flags:
            if not re.fullmatch(r"[0-7]{3,4}", flags["chmod"]):
                raise inst.fail(f"{inst.keyword}: --chmod={flags['chmod']} is not an octal mode")
            mode = int(flags["chmod"], 8)
        source_image = None
        if "from" in flags:
            source_image = self.stages.get(flags["from"].lower())
            if source_image is None:
                try:
                    source_image = self.images.get(flags["from"])
                except MinidockError as exc:
                    raise inst.fail(f"COPY --from={flags['from']}: {exc}") from None
            extra = source_image.id
        else:
            if inst.keyword == "ADD" and any(re.match(r"[a-z]+://", s) for s in sources):
                raise inst.fail("ADD from a URL is not supported (download it, then COPY)")
            matches = [self._context_matches(inst, s) for s in sources]
            extra = self._context_digest([m for found in matches for m in found])
        created_by = " ".join(
            [inst.keyword, *(f"--{k}={v}" for k, v in sorted(flags.items())), *words]
        )
        key = self._cache_key(state, created_by, extra)
        if self._from_cache(state, key):
            return
        workdir = state.image.config.get("WorkingDir") or "/"
        target = posixpath.normpath(posixpath.join(workdir, dest))
        into = dest.endswith(("/", "/.")) or dest == "." or len(sources) > 1
        with self._mounted(state.image) as c:
            copier = _Copier(c.rootfs, self._owner(c, flags.get("chown")), mode)
            if source_image is not None:
                with self._mounted(source_image) as source:
                    for s in sources:
                        found = resolve_in_root(source.rootfs, s)
                        if not os.path.lexists(found):
                            raise inst.fail(f"COPY --from: {s}: no such file or directory")
                        copier.copy(found, posixpath.basename(s), target, into)
            else:
                into = into or sum(len(m) for m in matches) > 1
                for rel in (rel for found in matches for rel in found):
                    path = os.path.realpath(os.path.join(self.context, rel))
                    if inst.keyword == "ADD" and layers.is_tar(path):
                        copier.unpack(path, target)
                        continue
                    copier.copy(
                        path,
                        posixpath.basename(rel),
                        target,
                        into,
                        lambda inner, rel=rel: self.ignored(posixpath.join(rel, inner)),
                    )
            c.unmount_rootfs()
            layer = self.images.add_layer_from_dir(c.path("upper"))
        self._commit(state, created_by, copy.deepcopy(state.image.config), layer, key)

    @staticmethod
    def _owner(c: Container, chown: str | None) -> tuple[int, int]:
        """``--chown=user[:group]`` as numbers, names looked up in the image's /etc files.
        Without a group, the group ID is the user ID (Docker's rule); without --chown, 0:0."""
        if chown is None:
            return 0, 0
        uid, gid, _ = users.resolve(c.rootfs, chown)
        return uid, gid if ":" in chown else uid

    def _context_matches(self, inst: Instruction, pattern: str) -> list[str]:
        """Paths in the context (relative, sorted) that a COPY source names: wildcards
        expanded, .dockerignore applied; none may lead outside the context."""
        rel = posixpath.normpath(pattern.lstrip("/")) if pattern.strip("/") else "."
        if rel == ".." or rel.startswith("../"):
            raise inst.fail(f"{inst.keyword}: forbidden path outside the build context: {pattern}")
        found = sorted(glob.glob(rel, root_dir=self.context)) if glob.has_magic(rel) else [rel]
        found = [f for f in found if f == "." or not self.ignored(f)]
        for f in found:
            real = os.path.realpath(os.path.join(self.context, f))
            if real != self.context and not real.startswith(self.context + "/"):
                raise inst.fail(f"{inst.keyword}: {f} leads outside the build context")
        if not found or not all(os.path.lexists(os.path.join(self.context, f)) for f in found):
            raise inst.fail(
                f"{inst.keyword} failed: file not found in build context or excluded by "
                f".dockerignore: {pattern}"
            )
        return found

    def _context_digest(self, sources: list[str]) -> str:
        """A hash of the files COPY would copy: names, modes, contents, link targets."""
        h = hashlib.sha256()
        for source in sources:
            top = os.path.realpath(os.path.join(self.context, source))
            for rel in _walk(top):
                if rel and self.ignored(posixpath.normpath(posixpath.join(source, rel))):
                    continue
                path = os.path.join(top, rel) if rel else top
                st = os.lstat(path)
                h.update(f"{source}/{rel}\0{st.st_mode:o}\0".encode())
                if stat.S_ISREG(st.st_mode):
                    with open(path, "rb") as f:
                        h.update(hashlib.file_digest(f, "sha256").digest())
                elif stat.S_ISLNK(st.st_mode):
                    h.update(os.readlink(path).encode())
        return h.hexdigest()


class _Copier:
    """Copies files into a container's root filesystem as COPY does: new files and
    directories get ``owner`` (0:0 unless ``--chown``) and, with ``--chmod``, ``mode``;
    modes and mtimes otherwise come from the source. Paths are resolved inside the root
    (symlinks followed as the container would); the last component is never followed."""

    def __init__(self, root: str, owner: tuple[int, int], mode: int | None) -> None:
        self.root = root
        self.owner = owner
        self.mode = mode

    def _directory(self, path: str) -> str:
        """Make the container directory ``path`` and its missing parents (a file in the
        way is replaced); return its host path."""
        host = resolve_in_root(self.root, path)
        if os.path.isdir(host):  # resolve_in_root followed every link: host has none
            return host
        self._directory(posixpath.dirname(path))
        host = resolve_in_root(self.root, path)
        if os.path.lexists(host):
            os.unlink(host)
        os.mkdir(host, 0o755)
        os.chown(host, *self.owner)
        return host

    def copy(
        self,
        source: str,
        name: str,
        target: str,
        into: bool,
        skip: Callable[[str], bool] = lambda rel: False,
    ) -> None:
        """Copy the host path ``source`` to the container path ``target``: a directory's
        contents go into ``target``; a file becomes ``target``, or ``target/name`` when
        ``into`` or ``target`` is a directory. ``skip`` says which paths inside a
        directory to leave out (.dockerignore)."""
        if os.path.isdir(source):
            top = self._directory(target)
        elif into or os.path.isdir(resolve_in_root(self.root, target)):
            top = os.path.join(self._directory(target), name)
        else:
            top = os.path.join(
                self._directory(posixpath.dirname(target)), posixpath.basename(target)
            )
        directories = []
        for rel in _walk(source):
            if (not rel and os.path.isdir(source)) or (rel and skip(rel)):
                continue  # a directory's own metadata is not copied, only its contents
            src = os.path.join(source, rel) if rel else source
            dst = os.path.join(top, rel) if rel else top
            if self._copy_one(src, dst):
                directories.append((src, dst))
        for src, dst in reversed(directories):  # after their contents changed their mtimes
            st = os.lstat(src)
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))

    def _copy_one(self, src: str, dst: str) -> bool:
        """One entry, without following links at either end. True for a directory."""
        st = os.lstat(src)
        try:
            existing = os.lstat(dst)
        except FileNotFoundError:
            existing = None
        if stat.S_ISDIR(st.st_mode):
            if existing is not None and not stat.S_ISDIR(existing.st_mode):
                os.unlink(dst)
                existing = None
            if existing is None:
                os.mkdir(dst, 0o700)
        else:
            if existing is not None:
                if stat.S_ISDIR(existing.st_mode):
                    shutil.rmtree(dst)
                else:
                    os.unlink(dst)
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(src), dst)
                os.chown(dst, *self.owner, follow_symlinks=False)
                return False
            if not stat.S_ISREG(st.st_mode):
                return False  # sockets, fifos, devices are not copied
            shutil.copyfile(src, dst, follow_symlinks=False)
        os.chown(dst, *self.owner)
        os.chmod(dst, self.mode if self.mode is not None else stat.S_IMODE(st.st_mode))
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
        return stat.S_ISDIR(st.st_mode)

    def unpack(self, archive: str, target: str) -> None:
        """ADD of a local tarball: unpack it into the directory ``target`` (owners kept)."""
        with layers.open_uncompressed(archive) as stream:
            layers.unpack(stream, self._directory(target), whiteouts=False)
