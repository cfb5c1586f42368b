"""The engine: Docker's verbs as a library (``run``, ``stop``, ``logs``, …).

It owns images and container records, and turns a ``run`` into an OCI bundle — an overlay
root filesystem plus ``config.json`` (``spec.py``) — which the runtime executes under a
monitor. The CLI (``cli.py``) is a thin layer over this class; anything the CLI can do, a
Python program can do with ``Engine(root).run(RunOptions(image="busybox", …))``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import resource
import secrets
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cgroups
from minidock import (
    caps,
    health,
    logfile,
    logs,
    parse,
    restart,
    runtime,
    spec,
    store,
    userns,
    users,
)
from minidock.container import Container, initial_state, now
from minidock.errors import (
    Conflict,
    ContainerNotFound,
    ImageNotFound,
    InvalidArgument,
    MinidockError,
)
from minidock.images import Image, ImageStore
from minidock.monitor import Attach, Monitor, remove_if_auto, restart_stage_argv
from minidock.parse import PortSpec, VolumeSpec
from minidock.state import Operation, Status, require

if TYPE_CHECKING:
    from minidock.network.networks import NetworkStore

_NAME_RE = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
DEFAULT_STOP_TIMEOUT = 10
#: Network modes that are not bridge networks (``network create`` makes more of those).
SPECIAL_NETWORKS = ("none", "host")


@dataclass
class RunOptions:
    """Everything ``minidock run``/``create`` accepts, already parsed and validated."""

    image: str
    command: list[str] = field(default_factory=list)
    name: str | None = None
    entrypoint: str | None = None
    env: list[str] = field(default_factory=list)
    workdir: str | None = None
    user: str | None = None
    hostname: str | None = None
    tty: bool = False
    interactive: bool = False
    volumes: list[VolumeSpec] = field(default_factory=list)
    memory: int | None = None
    memory_swap: int | None = None
    nano_cpus: int | None = None
    cpu_shares: int | None = None
    pids_limit: int | None = None
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    privileged: bool = False
    network: str = "bridge"
    network_aliases: list[str] = field(default_factory=list)
    publish: list[PortSpec] = field(default_factory=list)
    publish_all: bool = False
    pull: str = "missing"
    init: bool = False
    auto_remove: bool = False
    log_max_size: int = logfile.DEFAULT_MAX_SIZE
    log_max_files: int = logfile.DEFAULT_MAX_FILES
    ulimits: list[tuple[str, int, int]] = field(default_factory=list)
    read_only: bool = False
    tmpfs: dict[str, str] = field(default_factory=dict)
    security_opt: list[str] = field(default_factory=list)
    stop_signal: str | None = None
    stop_timeout: int | None = None
    restart: str = "no"
    #: ``--health-*`` as Docker's Config.Healthcheck, None if no flag was given (then the
    #: image's HEALTHCHECK applies); merged with the image's at create (health.merge).
    healthcheck: dict | None = None
    health_on_failure: str = "none"
    #: ``--userns`` (host, auto, auto:size=N) and ``--uidmap``/``--gidmap`` (CONTAINER:HOST:SIZE).
    userns: str = ""
    uidmap: list[str] = field(default_factory=list)
    gidmap: list[str] = field(default_factory=list)


def port_bindings(publish: list[PortSpec]) -> dict[str, list[dict[str, str]]]:
    """``-p`` flags in the shape of Docker's HostConfig.PortBindings."""
    bindings: dict[str, list[dict[str, str]]] = {}
    for p in publish:
        bindings.setdefault(f"{p.container_port}/{p.proto}", []).append(
            {"HostIp": "" if p.host_ip == "0.0.0.0" else p.host_ip,
             "HostPort": str(p.host_port) if p.host_port else ""})  # fmt: skip
    return bindings


def _package_parent() -> str:
    """The directory holding the ``minidock`` and ``cgroups`` packages (for the monitor)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Engine:
    def __init__(self, root: str | None = None, cgroup_parent: str | None = None,
                 port_mode: str | None = None) -> None:  # fmt: skip
        self.paths = store.Paths(store.state_root(root))
        self.paths.ensure()
        self.images = ImageStore(self.paths)
        self.port_mode = port_mode or os.environ.get("MINIDOCK_PORT_MODE") or "shim"
        self.cgroup_parent = (
            cgroup_parent or os.environ.get("MINIDOCK_CGROUP_PARENT") or "minidock"
        ).strip("/")

    @functools.cached_property
    def networks(self) -> NetworkStore:
        """The bridge networks, opened on first use: a container started with ``--network
        none`` or ``host`` needs neither them nor the modules they import."""
        from minidock.network.networks import NetworkStore

        return NetworkStore(self.paths.root)

    # --- finding containers -------------------------------------------------------------------
    def _ids(self) -> list[str]:
        return [d for d in os.listdir(self.paths.containers) if len(d) == 64]

    def containers(self) -> list[Container]:
        """Every container, newest first."""
        found = []
        for cid in self._ids():
            c = Container(self.paths, cid)
            try:
                created = c.record()["Created"]
            except (FileNotFoundError, ValueError):
                continue  # being created or removed right now
            found.append((created, c))
        return [c for _, c in sorted(found, key=lambda x: x[0], reverse=True)]

    def find(self, ref: str) -> Container:
        """A container by full ID, name, or unique ID prefix (as Docker resolves them)."""
        ref = ref.lstrip("/")
        if not ref:
            raise ContainerNotFound("No such container: (empty name)")
        ids = self._ids()
        if ref in ids and Container(self.paths, ref).exists():
            return self._repaired(Container(self.paths, ref))
        for c in self.containers():
            if c.name == ref:
                return self._repaired(c)
        matches = [cid for cid in ids if cid.startswith(ref)]
        if len(matches) > 1:
            raise Conflict(f"multiple containers found with provided prefix: {ref}")
        if not matches or not Container(self.paths, matches[0]).exists():
            raise ContainerNotFound(f"No such container: {ref}")
        return self._repaired(Container(self.paths, matches[0]))

    @staticmethod
    def _repaired(c: Container) -> Container:
        c.repair()
        return c

    # --- create -------------------------------------------------------------------------------
    def create(self, opts: RunOptions) -> Container:
        """Record a new container (Docker's ``create``): no process, no mount yet."""
        image = self._image_to_run(opts.image, opts.pull)
        if opts.network.startswith("container:"):
            self.find(opts.network.removeprefix("container:"))
        elif opts.network == "bridge":
            self.networks.default()  # made on first use
        elif opts.network not in SPECIAL_NETWORKS:
            self.networks.get(opts.network)  # NotFound unless it was created
        if (opts.publish or opts.publish_all) and not self._is_bridge(opts.network):
            raise InvalidArgument(f"ports can't be published with --network {opts.network}")
        spec.security_options(opts.security_opt)  # refuse unknown options now, not at start
        userns_size = self._check_userns(opts)
        restart_policy = restart.parse_policy(opts.restart)
        if opts.auto_remove and restart_policy["Name"] != "no":
            raise InvalidArgument("conflicting options: --restart and --rm")
        cid = secrets.token_hex(32)
        hostname = opts.hostname or (socket.gethostname() if opts.network == "host" else cid[:12])
        config = {
            "Hostname": hostname,
            "User": opts.user or image.config.get("User", ""),
            "Env": opts.env,
            "Cmd": opts.command or None,
            "Entrypoint": [opts.entrypoint] if opts.entrypoint is not None else None,
            "WorkingDir": opts.workdir or "",
            "Tty": opts.tty,
            "OpenStdin": opts.interactive,
            "AttachStdin": opts.interactive,
            "Image": opts.image,
            "StopSignal": opts.stop_signal or image.config.get("StopSignal", "SIGTERM"),
            "StopTimeout": opts.stop_timeout,
            "Healthcheck": health.merge(opts.healthcheck, image.config.get("Healthcheck")),
            "HealthcheckOnFailureAction": opts.health_on_failure,
        }
        if opts.entrypoint == "":
            config["Entrypoint"] = []
        host_config = {
            "Binds": [
                f"{v.source}:{v.destination}{':ro' if v.read_only else ''}" for v in opts.volumes
            ],
            "NetworkMode": opts.network,
            "PortBindings": port_bindings(opts.publish),
            "PublishAllPorts": opts.publish_all,
            "AutoRemove": opts.auto_remove,
            "RestartPolicy": restart_policy,
            "Privileged": opts.privileged,
            "CapAdd": opts.cap_add,
            "CapDrop": opts.cap_drop,
            "Memory": opts.memory or 0,
            # Docker: without --memory-swap a container may swap as much as its --memory.
            "MemorySwap": opts.memory_swap or (2 * opts.memory if opts.memory else 0),
            "NanoCpus": opts.nano_cpus or 0,
            "CpuShares": opts.cpu_shares or 0,
            "PidsLimit": opts.pids_limit,
            "Init": opts.init,
            "ReadonlyRootfs": opts.read_only,
            "Tmpfs": opts.tmpfs,
            "SecurityOpt": opts.security_opt,
            "Ulimits": [{"Name": n, "Soft": s, "Hard": h} for n, s, h in opts.ulimits],
            "LogConfig": {
                "Type": "json-file",
                "Config": {"max-size": str(opts.log_max_size), "max-file": str(opts.log_max_files)},
            },
        }
        config["ExposedPorts"] = {
            **(image.config.get("ExposedPorts") or {}),
            **{f"{p.container_port}/{p.proto}": {} for p in opts.publish},
        }
        config["NetworkAliases"] = opts.network_aliases
        # The bridge networks to join, in order (``network connect`` adds more).
        networks = [{"name": opts.network, "aliases": opts.network_aliases}]
        host_config["Networks"] = networks if self._is_bridge(opts.network) else []
        argv = spec.command_line(config, image.config)
        if not argv:
            raise InvalidArgument("no command specified")
        host_config["UsernsMode"] = opts.userns
        with store.locked(self.paths.lock):
            name = self._allocate_name(opts.name)
            host_config["IDMappings"] = self._id_mappings(opts, userns_size)
            c = Container(self.paths, cid)
            os.makedirs(c.dir, mode=0o711)
            store.write_json(c.path("state.json"), initial_state())
            store.write_json(
                c.path("container.json"),
                {
                    "Id": cid,
                    "Name": f"/{name}",
                    "Created": now(),
                    "Image": image.id,
                    "Path": argv[0],
                    "Args": argv[1:],
                    "Config": config,
                    "HostConfig": host_config,
                },
            )
        c.emit("create")
        return c

    @staticmethod
    def _check_userns(opts: RunOptions) -> int | None:
        """Validate the user namespace flags; the size of the block ``--userns=auto`` wants.
        As in Docker, a user namespace rules out --privileged and the host's (or another
        container's) network namespace, which the container's root could not own."""
        size = userns.parse_mode(opts.userns)
        if size is not None and (opts.uidmap or opts.gidmap):
            raise InvalidArgument("--userns can't be combined with --uidmap or --gidmap")
        if size is None and not (opts.uidmap or opts.gidmap):
            return None
        if opts.privileged:
            raise InvalidArgument("privileged mode is incompatible with user namespaces")
        if opts.network == "host" or opts.network.startswith("container:"):
            raise InvalidArgument(f"--network {opts.network} can't be shared with a user namespace")
        return size

    def _id_mappings(self, opts: RunOptions, size: int | None) -> dict:
        """HostConfig.IDMappings: ``--uidmap``/``--gidmap`` as given (one alone serves for
        both), or a free block for ``--userns=auto``. Called under the state root's lock,
        which makes choosing a block and recording it one step."""
        if size is not None:
            in_use = []
            for other in self.containers():
                with contextlib.suppress(FileNotFoundError):  # being removed right now
                    in_use.append(other.record()["HostConfig"].get("IDMappings") or {})
            return userns.allocate(size, in_use)
        uids = [userns.format_mapping(userns.parse_mapping(m)) for m in opts.uidmap or opts.gidmap]
        gids = [userns.format_mapping(userns.parse_mapping(m)) for m in opts.gidmap or opts.uidmap]
        mappings = {"UidMap": uids, "GidMap": gids} if uids else {}
        userns.IdMaps.from_host_config({"IDMappings": mappings})  # refuses maps without root
        return mappings

    def _image_to_run(self, ref: str, policy: str) -> Image:
        """``--pull``: "missing" (the default) pulls an image that is not here, "always"
        pulls first, "never" only looks here."""
        # registry is imported only when needed: it costs ~200 ms (httpx), and it imports
        # archive, which imports this module.
        if policy == "always" or (policy == "missing" and "@" in ref):
            from minidock import registry

            return registry.pull(self, ref)  # the store can't look an image up by digest
        try:
            return self.images.get(ref)
        except ImageNotFound:
            if policy == "never":
                raise
            from minidock import registry

            try:
                registry.parse_reference(ref, os.environ.get("MINIDOCK_REGISTRY"))
            except MinidockError:
                raise ImageNotFound(f"No such image: {ref}") from None  # nowhere to pull from
            print(f"Unable to find image '{ref}' locally", file=sys.stderr, flush=True)
            return registry.pull(self, ref)

    def _allocate_name(self, wanted: str | None) -> str:
        taken = {c.name for c in self.containers()}
        if wanted is None:
            while (name := parse.generate_name()) in taken:
                pass
            return name
        if not _NAME_RE.match(wanted):
            raise InvalidArgument(
                f'invalid container name "{wanted}": two or more of [a-zA-Z0-9][a-zA-Z0-9_.-]'
            )
        name = wanted.lstrip("/")
        if name in taken:
            raise Conflict(f'the container name "/{name}" is already in use')
        return name

    # --- start --------------------------------------------------------------------------------
    def _prepare(self, c: Container) -> None:
        """Mount the root filesystem and write the bundle's ``config.json``."""
        record = c.record()
        image = self._image_of(record)
        id_maps = userns.IdMaps.from_host_config(record["HostConfig"])
        if id_maps is not None:
            userns.check_reachable(c.dir, *id_maps.root)
        c.mount_rootfs(image.lowerdirs, id_maps)
        etc = self._write_etc_files(c, record)
        for path in etc.values() if id_maps is not None else []:
            os.chown(path, *id_maps.root)  # the container's root may edit its /etc/hosts
        network_path = None
        mode = record["HostConfig"]["NetworkMode"]
        if mode.startswith("container:"):
            other = self.find(mode.removeprefix("container:"))
            st = other.state()
            if not other.init_alive(st):
                raise Conflict(f"cannot join network of a non running container: {other.name}")
            network_path = f"/proc/{st['Pid']}/ns/net"
        hard = {
            name: resource.getrlimit(getattr(resource, name))[1]
            for name in dir(resource)
            if name.startswith("RLIMIT_")
        }
        config = spec.build(
            record,
            image.config,
            rootfs="rootfs",
            cgroup_path=f"{self.cgroup_parent}/{c.id}",
            identity=users.resolve(c.rootfs, record["Config"]["User"]),
            etc_files=etc,
            network_path=network_path,
            host_caps=caps.bounding_set(),
            host_hard_limits={
                k: (-1 if v == resource.RLIM_INFINITY else v) for k, v in hard.items()
            },
        )
        if self._is_bridge(mode):
            config["hooks"] = self._network_hooks(c, record)
        # Written anew before every start: it needn't survive a power cut (no fsync).
        store.write_json(os.path.join(c.bundle, "config.json"), config, durable=False)

    @staticmethod
    def _is_bridge(mode: str) -> bool:
        return mode not in SPECIAL_NETWORKS and not mode.startswith("container:")

    def _network_hooks(self, c: Container, record: dict) -> dict:
        """Bridge networking is plugged in by OCI hooks, as CNI plugins are under other
        runtimes: once the container's namespaces exist (``createRuntime``) a veth pair is
        wired into its network namespace and its ports published; after it is gone
        (``poststop``) all of that is taken down. ``network.json`` says what to do."""
        config, host = record["Config"], record["HostConfig"]
        ports = [{"host_ip": b["HostIp"] or "0.0.0.0", "host_port": int(b["HostPort"] or 0),
                  "container_port": int(key.split("/")[0]), "proto": key.split("/")[1]}
                 for key, bindings in host["PortBindings"].items() for b in bindings]  # fmt: skip
        if host.get("PublishAllPorts"):
            bound = {(p["container_port"], p["proto"]) for p in ports}
            for key in config.get("ExposedPorts") or {}:
                port, _, proto = key.partition("/")
                if (int(port), proto or "tcp") not in bound:
                    ports.append({"host_ip": "0.0.0.0", "host_port": 0, "proto": proto or "tcp",
                                  "container_port": int(port)})  # fmt: skip
        name = record["Name"].lstrip("/")
        store.write_json(c.path("network.json"), {
            "name": name,
            "networks": [{"name": n["name"], "aliases": [name, *n["aliases"]]}
                         for n in host["Networks"]],
            "ports": ports,
            "port_mode": self.port_mode,
        })  # fmt: skip
        env = [f"PATH={os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
               f"PYTHONPATH={_package_parent()}"]  # fmt: skip
        if os.environ.get("MINIDOCK_EXPLAIN"):
            env.append(f"MINIDOCK_EXPLAIN={os.environ['MINIDOCK_EXPLAIN']}")
        hook = [sys.executable, "-m", "minidock.network.hook"]
        return {
            "createRuntime": [{"path": sys.executable, "args": [*hook, "setup", self.paths.root],
                               "env": env}],
            "poststop": [{"path": sys.executable, "args": [*hook, "teardown", self.paths.root],
                          "env": env}],
        }  # fmt: skip

    def network_connect(self, network: str, ref: str, aliases: list[str]) -> Container:
        """Join another network: recorded for every later start, and plugged in at once
        (one more veth) if the container is running."""
        from minidock.network import hook

        c = self.find(ref)
        net = self.networks.default() if network == "bridge" else self.networks.get(network)
        with c.operation_lock():
            record = c.record()
            host = record["HostConfig"]
            if not self._is_bridge(host["NetworkMode"]):
                raise Conflict(f"container {c.name} uses --network {host['NetworkMode']}: "
                               "it can't be connected to a network")  # fmt: skip
            if any(n["name"] == net.name for n in host["Networks"]):
                raise Conflict(f"container {c.name} is already connected to {net.name}")
            st = c.state()
            if st["Status"] == Status.RUNNING:
                name = record["Name"].lstrip("/")
                hook.connect(self.paths.root, c.id, st["Pid"], name,
                             {"name": net.name, "aliases": [name, *aliases]})  # fmt: skip
            host["Networks"].append({"name": net.name, "aliases": aliases})
            store.write_json(c.path("container.json"), record)
        return c

    def network_disconnect(self, network: str, ref: str) -> Container:
        from minidock.network import hook

        c = self.find(ref)
        with c.operation_lock():
            record = c.record()
            host = record["HostConfig"]
            kept = [n for n in host["Networks"] if n["name"] != network]
            if len(kept) == len(host["Networks"]):
                raise Conflict(f"container {c.name} is not connected to network {network}")
            if c.status() is Status.RUNNING:
                hook.disconnect(self.paths.root, c.id, network)
            host["Networks"] = kept
            store.write_json(c.path("container.json"), record)
        return c

    def _image_of(self, record: dict) -> Image:
        return self.images.get(record["Image"])

    @staticmethod
    def _write_etc_files(c: Container, record: dict) -> dict[str, str]:
        """/etc/hostname, /etc/hosts and /etc/resolv.conf are files the engine owns and binds
        into the container (as Docker does), so the image's copies are left untouched."""
        hostname = record["Config"]["Hostname"]
        host_network = record["HostConfig"]["NetworkMode"] == "host"
        if host_network:
            with open("/etc/hosts") as f:
                hosts = f.read()
        else:
            hosts = (
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                f"127.0.1.1\t{hostname}\n"
            )
        try:
            with open("/etc/resolv.conf") as f:
                resolv = "".join(
                    line
                    for line in f
                    if not (
                        line.startswith("nameserver")
                        and not host_network
                        and line.split()[1:2]
                        and line.split()[1].startswith(("127.", "::1"))
                    )
                )
        except OSError:
            resolv = ""
        files = {"/etc/hostname": f"{hostname}\n", "/etc/hosts": hosts, "/etc/resolv.conf": resolv}
        result = {}
        for dest, content in files.items():
            path = c.path(os.path.basename(dest))
            with open(path, "w") as f:
                f.write(content)
            result[dest] = path
        return result

    def start(self, ref: str | Container, attach: Attach | None = None) -> int | None:
        """Start a created or exited container. Detached (``attach`` is None): spawn its
        monitor and return once the program runs. Attached: be the monitor, return the
        exit code when the container exits."""
        c = ref if isinstance(ref, Container) else self.find(ref)
        with c.operation_lock():
            require(c.status(), Operation.START, c.name)
            # A start by the user resets what the restart policy counts (as Docker does).
            c.update_state(ManuallyStopped=False, RestartCount=0, RestartDelay=0)
            self.prepare_bundle(c)
            if attach is None:
                self._spawn_monitor(c)
                return None
        return self._run_attached(c, attach)

    def prepare_bundle(self, c: Container) -> None:
        """Everything before the monitor takes over: forget a previous run's runtime state,
        mount the root filesystem, write ``config.json``. Called under the operation lock."""
        with contextlib.suppress(ContainerNotFound):  # left over from a previous run
            runtime.delete(c.runtime_root, c.id, force=True)
        try:
            self._prepare(c)
        except BaseException:
            c.unmount_rootfs()
            raise

    def _spawn_monitor(self, c: Container) -> None:
        """Start ``python -m minidock.monitor`` in its own session and wait for its word.
        ``-S`` skips site-packages: the monitor needs only the standard library and us."""
        read_end, write_end = os.pipe()
        argv = [sys.executable, "-S", "-m", "minidock.monitor", self.paths.root, c.id,
                str(write_end)]  # fmt: skip
        self._spawn_detached(c, argv, pass_fds=(write_end,))
        os.close(write_end)
        with os.fdopen(read_end, "rb") as f:
            line = f.readline()
        if not line:
            log = c.path("monitor.log")
            line = json.dumps({"error": f"monitor exited before the container ran (see {log})"})
        message = json.loads(line)
        if "error" in message:
            self._raise(message)

    def _spawn_detached(self, c: Container, argv: list[str], pass_fds: tuple[int, ...] = ()
                        ) -> int:  # fmt: skip
        """Start a monitor stage in a session of its own (no terminal, so the user's
        Ctrl-C or logout doesn't reach it), its errors going to ``monitor.log``. Its
        environment lets it find our packages, and when it restarts the container
        (restart policy) it builds an engine like this one. Returns its PID."""
        env = {**os.environ, "PYTHONPATH": _package_parent(),
               "MINIDOCK_CGROUP_PARENT": self.cgroup_parent, "MINIDOCK_PORT_MODE": self.port_mode}
        with open(c.path("monitor.log"), "ab") as errors:
            return subprocess.Popen(
                argv, pass_fds=pass_fds, start_new_session=True, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, cwd="/", env=env,
                # --explain: narrate the container's creation on our stderr too.
                stderr=None if os.environ.get("MINIDOCK_EXPLAIN") else errors,
            ).pid  # fmt: skip

    @staticmethod
    def _raise(message: dict) -> None:
        error = MinidockError(message["error"])
        error.exit_code = message.get("exit_code", 125)
        raise error

    def _run_attached(self, c: Container, attach: Attach) -> int:
        failure: dict = {}

        def ready(message: dict) -> None:
            failure.update(message if "error" in message else {})

        code = Monitor(c, attach).run(ready)
        if failure:
            self._raise(failure)
        if c.status() is Status.RESTARTING:  # we return; a detached monitor restarts it
            pid = self._spawn_detached(c, restart_stage_argv(self.paths.root, c.id))
            c.update_state(MonitorPid=pid, MonitorPidStart=runtime.process_start_time(pid))
        remove_if_auto(c)
        return code

    # --- run ----------------------------------------------------------------------------------
    def run(self, opts: RunOptions, attach: Attach | None = None) -> tuple[Container, int | None]:
        """create + start. A ``run`` that fails to start leaves nothing behind."""
        c = self.create(opts)
        try:
            code = self.start(c, attach)
        except BaseException:
            if c.exists():
                self.remove(c, force=True)
            raise
        return c, code

    # --- stop, kill, restart, wait ------------------------------------------------------------
    def kill(self, ref: str, sig: int = signal.SIGKILL) -> Container:
        """Send ``sig`` to PID 1. SIGKILL or the stop signal count as the user stopping the
        container, so the restart policy leaves it stopped (Docker's rule)."""
        c = self.find(ref)
        require(c.status(), Operation.KILL, c.name)
        if sig in (signal.SIGKILL, self._stop_signal(c.record())):
            c.update_state(ManuallyStopped=True)
        c.emit("kill", signal=str(int(sig)))
        runtime.kill(c.runtime_root, c.id, sig)
        return c

    @staticmethod
    def _stop_signal(record: dict) -> int:
        return parse.parse_signal(record["Config"].get("StopSignal") or "SIGTERM")

    def stop(self, ref: str | Container, timeout: int | None = None) -> Container:
        """Ask PID 1 to stop (its StopSignal, SIGTERM by default), wait ``timeout`` seconds,
        then SIGKILL — which, unlike SIGTERM, PID 1 cannot ignore."""
        c = ref if isinstance(ref, Container) else self.find(ref)
        with c.operation_lock():
            status = c.status()
            require(status, Operation.STOP, c.name)
            if status is Status.RESTARTING:
                self._cancel_restart(c)
                c.emit("stop")
            if status not in (Status.RUNNING, Status.PAUSED):
                return c
            c.update_state(ManuallyStopped=True)  # before the signal: the policy must see it
            if status is Status.PAUSED:  # a frozen process can't act on a signal: thaw first
                self._cgroup(c).thaw()
                c.update_state(Status=Status.RUNNING.value)
            record = c.record()
            if timeout is None:
                timeout = record["Config"].get("StopTimeout")
            if timeout is None:
                timeout = DEFAULT_STOP_TIMEOUT
            sig = self._stop_signal(record)
            st = c.state()
            c.emit("kill", signal=str(int(sig)))
            with contextlib.suppress(MinidockError):  # it may have exited already
                runtime.kill(c.runtime_root, c.id, sig)
            if not self._wait_exit(c, st, timeout):
                c.emit("kill", signal=str(int(signal.SIGKILL)))
                with contextlib.suppress(MinidockError):
                    runtime.kill(c.runtime_root, c.id, signal.SIGKILL)
            if self._wait_recorded(c).get("Status") == Status.RESTARTING:
                self._cancel_restart(c)  # it exited on its own just before our signal
            c.emit("stop")
        return c

    @staticmethod
    def _cancel_restart(c: Container) -> None:
        """A ``restarting`` container's monitor sleeps out its back-off: end it, and record
        the container as stopped by the user. Called under the operation lock, which the
        monitor needs before it may start the container again."""
        st = c.state()
        c.update_state(Status=Status.EXITED.value, MonitorPid=0, ManuallyStopped=True)
        if c.monitor_alive(st):
            with contextlib.suppress(ProcessLookupError):
                os.kill(st["MonitorPid"], signal.SIGKILL)

    @staticmethod
    def _wait_exit(c: Container, st: dict, timeout: float | None) -> bool:
        """Wait until PID 1 has exited (a pidfd turns readable), at most ``timeout`` s."""
        if not c.init_alive(st):
            return True
        try:
            pidfd = os.pidfd_open(st["Pid"])
        except ProcessLookupError:
            return True
        try:
            readable, _, _ = select.select([pidfd], [], [], timeout)
            return bool(readable) or not c.init_alive(st)
        finally:
            os.close(pidfd)

    @staticmethod
    def _wait_recorded(c: Container, timeout: float = 120) -> dict:
        """Wait for the monitor to record the exit (or repair the record if the monitor
        died). Returns the last state seen — the exited one, unless ``--rm`` removed the
        container before we looked. Recording includes the poststop hooks (network
        teardown), which on a slow machine take seconds, so the timeout is generous: it
        only guards against a monitor that hangs."""
        deadline = time.monotonic() + timeout
        last: dict = {}
        pause = 0.005
        while True:
            try:
                last = c.state()
            except FileNotFoundError:
                return last
            if last["Status"] not in (Status.RUNNING, Status.PAUSED):
                return last
            if time.monotonic() > deadline:
                raise MinidockError(f"container {c.id[:12]} did not record its exit")
            c.repair()
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def pause(self, ref: str) -> Container:
        """Freeze every process of the container (the cgroup freezer: v2 ``cgroup.freeze``,
        v1 ``freezer.state``). Frozen tasks are not scheduled at all, and can't notice."""
        c = self.find(ref)
        with c.operation_lock():
            require(c.status(), Operation.PAUSE, c.name)
            self._cgroup(c).freeze()
            c.update_state(Status=Status.PAUSED.value)
        c.emit("pause")
        return c

    def unpause(self, ref: str) -> Container:
        c = self.find(ref)
        with c.operation_lock():
            require(c.status(), Operation.UNPAUSE, c.name)
            self._cgroup(c).thaw()
            c.update_state(Status=Status.RUNNING.value)
        c.emit("unpause")
        return c

    def restart(self, ref: str, timeout: int | None = None) -> Container:
        c = self.stop(ref, timeout)
        self.start(c)
        c.emit("restart")
        return c

    def update(
        self,
        ref: str,
        *,
        memory: int | None = None,
        memory_swap: int | None = None,
        nano_cpus: int | None = None,
        cpu_shares: int | None = None,
        pids_limit: int | None = None,
        restart_policy: str | None = None,
    ) -> Container:
        """``docker update``: change a container's limits or restart policy. The record
        changes for every later start; a running container's cgroup changes at once
        (``runtime.update``), and only if the kernel accepts the new values is the record
        rewritten. ``None`` leaves a value as it is."""
        c = self.find(ref)
        with c.operation_lock():
            status = c.status()
            require(status, Operation.UPDATE, c.name)
            record = c.record()
            host = record["HostConfig"]
            if restart_policy is not None:
                policy = restart.parse_policy(restart_policy)
                if host["AutoRemove"] and policy["Name"] != "no":
                    raise InvalidArgument("conflicting options: --restart and --rm")
                host["RestartPolicy"] = policy
            if memory is not None:
                host["Memory"] = memory
                host["MemorySwap"] = 2 * memory  # run's default, unless given below
            changes = {"MemorySwap": memory_swap, "NanoCpus": nano_cpus,
                       "CpuShares": cpu_shares, "PidsLimit": pids_limit}  # fmt: skip
            host.update({k: v for k, v in changes.items() if v is not None})
            if host["MemorySwap"] > 0 and host["MemorySwap"] < host["Memory"]:
                raise InvalidArgument("memory+swap limit should be larger than the memory limit")
            if status in (Status.RUNNING, Status.PAUSED):
                runtime.update(c.runtime_root, c.id, spec.resources(host))
            store.write_json(c.path("container.json"), record)
        c.emit("update")
        return c

    def start_on_boot(self) -> list[Container]:
        """What Docker's daemon does when it comes up, for an init system to run at boot
        (``minidock start --boot``): start every stopped container whose restart policy
        says it should be running — ``always``, and ``unless-stopped`` unless the user
        stopped it. The kernel forgot everything at reboot, so each record is repaired
        first (its processes are gone, whatever state.json says)."""
        started = []
        for c in self.containers():
            c.repair()
            st = c.state()
            policy = c.record()["HostConfig"].get("RestartPolicy") or {}
            if st["Status"] == Status.EXITED and restart.starts_on_boot(
                policy, st.get("ManuallyStopped", False)
            ):
                self.start(c)
                started.append(c)
        return started

    def wait(self, ref: str) -> int:
        """Block until the container stops running; return its exit code. A container that
        is only ``created`` is waited for too: it may be started by another command."""
        c = self.find(ref)
        while True:
            st = c.state()
            if st["Status"] in (Status.EXITED, Status.RESTARTING):
                return st["ExitCode"]
            if st["Status"] in (Status.RUNNING, Status.PAUSED):
                self._wait_exit(c, st, None)
                last = self._wait_recorded(c)
                if last.get("Status") in (Status.EXITED, Status.RESTARTING) or not c.exists():
                    return last.get("ExitCode", 0)
            else:
                time.sleep(0.05)

    # --- exec ---------------------------------------------------------------------------------
    def exec(self, ref: str, command: list[str], attach: Attach | None, *,
             env: list[str] | None = None, workdir: str | None = None,
             user: str | None = None, tty: bool = False) -> int | None:  # fmt: skip
        """Run ``command`` in the running container. Attached, relay its output (and
        input with ``attach.stdin``) and return its exit code; detached, return None."""
        from minidock.runtime.exec import exec_process, process_of

        c = self.find(ref)
        status = c.status()
        if status is not Status.RUNNING:
            why = "is paused: unpause it first" if status is Status.PAUSED else "is not running"
            raise Conflict(f"container {c.name} {why}")
        if not command:
            raise InvalidArgument("no command specified")
        process = process_of(c.bundle, command, env)
        process["terminal"] = tty and attach is not None
        if workdir:
            process["cwd"] = workdir
        if user:
            uid, gid, groups = users.resolve(c.rootfs, user)
            process["user"] = {"uid": uid, "gid": gid, "additionalGids": groups}
        if attach is None:
            null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            try:
                exec_process(c.runtime_root, c.id, process, stdio=(null, null, null))
            finally:
                os.close(null)
            return None
        return self._exec_attached(c, process, attach)

    @staticmethod
    def _exec_attached(c: Container, process: dict, attach: Attach) -> int:
        from minidock.relay import relay
        from minidock.runtime.exec import exec_process
        from minidock.runtime.reaper import exit_status

        if process["terminal"]:
            console, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            with console, peer:
                pid = exec_process(c.runtime_root, c.id, process, console=peer)
                _, fds, _, _ = socket.recv_fds(console, 16, 1)
            sources, target = {fds[0]: "pty"}, fds[0]
        else:
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            in_r, in_w = os.pipe() if attach.stdin is not None else (os.open(os.devnull, 0), -1)
            try:
                pid = exec_process(c.runtime_root, c.id, process, stdio=(in_r, out_w, err_w))
            finally:
                for fd in (in_r, out_w, err_w):
                    os.close(fd)
            sources, target = {out_r: "stdout", err_r: "stderr"}, (in_w if in_w >= 0 else None)
        status = relay(sources, pid, None, terminal_out=(attach.stdout, attach.stderr),
                       stdin=attach.stdin, stdin_target=target)  # fmt: skip
        return exit_status(status)

    # --- remove -------------------------------------------------------------------------------
    def remove(self, ref: str | Container, force: bool = False) -> Container:
        """Delete a container. With ``force`` a live one is killed first (SIGKILL to every
        process of its cgroup) and its restart policy ignored. The operation lock is held
        throughout, so nothing (a ``restart``, a healthcheck's restart) starts it again
        between the kill and the removal."""
        c = ref if isinstance(ref, Container) else self.find(ref)
        with c.operation_lock():
            if not c.exists():
                return c
            status = c.status()
            if status in (Status.RUNNING, Status.PAUSED, Status.RESTARTING):
                if not force:
                    require(status, Operation.REMOVE, c.name)
                st = c.update_state(ManuallyStopped=True)  # no restart policy brings it back
                if status is not Status.RESTARTING:
                    with contextlib.suppress(MinidockError):
                        runtime.kill(c.runtime_root, c.id, signal.SIGKILL, all_processes=True)
                    self._wait_exit(c, st, 10)
                if self._wait_recorded(c).get("Status") == Status.RESTARTING:
                    self._cancel_restart(c)
            c.cleanup_after_exit()
            c.remove_files()
        return c

    # --- looking at containers ----------------------------------------------------------------
    def inspect(self, ref: str) -> dict:
        """``docker inspect``-shaped JSON for a container."""
        c = self.find(ref)
        record, st = c.record(), c.state()
        status = st["Status"]
        return {
            "Id": c.id,
            "Created": record["Created"],
            "Path": record["Path"],
            "Args": record["Args"],
            "State": {
                "Status": status,
                "Running": status in ("running", "paused", "restarting"),
                "Paused": status == "paused",
                "Restarting": status == "restarting",
                "OOMKilled": st["OOMKilled"],
                "Dead": False,
                "Pid": st["Pid"],
                "ExitCode": st["ExitCode"],
                "Error": st["Error"],
                "StartedAt": st["StartedAt"],
                "FinishedAt": st["FinishedAt"],
                # Status, FailingStreak and the last results, with a healthcheck only.
                **({"Health": st["Health"]} if "Health" in st else {}),
            },
            "Image": f"sha256:{record['Image']}",
            "Name": record["Name"],
            "ResolvConfPath": c.path("resolv.conf"),
            "HostnamePath": c.path("hostname"),
            "HostsPath": c.path("hosts"),
            "LogPath": c.log_path,
            "RestartCount": st.get("RestartCount", 0),
            "Driver": "overlay",
            "Platform": "linux",
            "HostConfig": record["HostConfig"],
            "Config": record["Config"],
            "GraphDriver": {
                "Name": "overlay",
                "Data": {
                    "LowerDir": ":".join(self._image_of(record).lowerdirs),
                    "UpperDir": c.path("upper"),
                    "WorkDir": c.path("work"),
                    "MergedDir": c.rootfs,
                },
            },
            "Mounts": [
                {
                    "Type": "bind",
                    "Source": b.split(":")[0],
                    "Destination": b.split(":")[1],
                    "RW": not b.endswith(":ro"),
                }
                for b in record["HostConfig"]["Binds"]
            ],
            "NetworkSettings": self._network_settings(c, record),
        }

    @staticmethod
    def network_state(c: Container) -> dict:
        """What the network hook set up for the running container (empty when stopped)."""
        try:
            return store.read_json(c.path("network-state.json"))
        except FileNotFoundError:
            return {}

    def _network_settings(self, c: Container, record: dict) -> dict:
        state = self.network_state(c)
        networks = {n["name"]: {"NetworkID": n["id"], "IPAddress": n["ip"],
                                "IPPrefixLen": n["prefix_len"], "Gateway": n["gateway"],
                                "MacAddress": n["mac"], "Aliases": n["aliases"]}
                    for n in state.get("networks", [])}  # fmt: skip
        first = next(iter(networks.values()), {})
        return {
            "IPAddress": first.get("IPAddress", ""), "Gateway": first.get("Gateway", ""),
            "MacAddress": first.get("MacAddress", ""), "Ports": self.ports(c),
            "Networks": networks or {record["HostConfig"]["NetworkMode"]: {}},
        }  # fmt: skip

    def ports(self, ref: str | Container) -> dict[str, list[dict[str, str]]]:
        """Published ports as bound (``docker port``): ``{"80/tcp": [{HostIp, HostPort}]}``."""
        c = ref if isinstance(ref, Container) else self.find(ref)
        result: dict[str, list[dict[str, str]]] = {}
        for p in self.network_state(c).get("ports", []):
            result.setdefault(f"{p['container_port']}/{p['proto']}", []).append(
                {"HostIp": p["host_ip"], "HostPort": str(p["host_port"])})  # fmt: skip
        return result

    def logs(
        self,
        ref: str,
        *,
        tail: int | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
        follow: bool = False,
    ) -> Iterator[logs.LogRecord]:
        c = self.find(ref)

        def finished() -> bool:
            return not c.exists() or c.status() not in (Status.RUNNING, Status.PAUSED)

        return logs.read_logs(
            c.log_path,
            tail=tail,
            since_ns=since_ns,
            until_ns=until_ns,
            follow=follow,
            stop_following=finished,
        )

    def _cgroup(self, c: Container) -> cgroups.Cgroup:
        if c.status() not in (Status.RUNNING, Status.PAUSED):
            raise Conflict(f"container {c.name} is not running")
        return cgroups.open_cgroup(f"{self.cgroup_parent}/{c.id}")

    def stats(self, ref: str) -> tuple[Container, cgroups.Stats]:
        c = self.find(ref)
        return c, self._cgroup(c).stats()

    def top(self, ref: str) -> list[int]:
        """Host PIDs of every process in the container (its cgroup's ``cgroup.procs``)."""
        c = self.find(ref)
        return sorted(self._cgroup(c).pids())
