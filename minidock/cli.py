"""``minidock``: Docker's command line, as a thin layer over :class:`minidock.engine.Engine`.

Each command parses its flags (``parse.py`` turns values into numbers), calls one engine
method and prints the result. Errors are raised as :class:`MinidockError` and turned into
one line on stderr and Docker's exit code in :func:`main`.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import termios
import time
import tty
from collections.abc import Callable
from typing import Any

import click

from minidock import parse
from minidock.errors import MinidockError

_CONTEXT = {"help_option_names": ["--help"], "max_content_width": 100}


def _engine(ctx: click.Context) -> Any:
    from minidock.engine import Engine

    return Engine(ctx.obj["root"])


@click.group(context_settings=_CONTEXT)
@click.option(
    "--root",
    envvar="MINIDOCK_ROOT",
    default=None,
    help="State directory (default /var/lib/minidock).",
)
@click.option(
    "--explain",
    type=click.Choice(["text", "json"]),
    is_flag=False,
    flag_value="text",
    default=None,
    help="Narrate every kernel step on stderr (--explain=json: one JSON per line).",
)
@click.pass_context
def cli(ctx: click.Context, root: str | None, explain: str | None) -> None:
    """A container engine and runtime for Linux, written to be read."""
    from minidock import explain as narration

    if explain:
        narration.enable(explain)
    else:
        narration.from_environment()
    ctx.ensure_object(dict)
    ctx.obj["root"] = root


# --- run / create ------------------------------------------------------------------------------
def _container_options(func: Callable) -> Callable:
    """The flags ``run`` and ``create`` share."""
    options = [
        click.option("--name", help="Assign a name to the container."),
        click.option("-e", "--env", multiple=True, help="Set environment variables."),
        click.option("--env-file", multiple=True, help="Read environment variables from a file."),
        click.option("-w", "--workdir", help="Working directory inside the container."),
        click.option("-u", "--user", help="Username or UID (format: <name|uid>[:<group|gid>])."),
        click.option("-h", "--hostname", help="Container host name."),
        click.option("--entrypoint", help="Overwrite the default ENTRYPOINT of the image."),
        click.option("-i", "--interactive", is_flag=True, help="Keep STDIN open."),
        click.option("-t", "--tty", is_flag=True, help="Allocate a pseudo-TTY."),
        click.option("-v", "--volume", multiple=True, help="Bind mount HOST:CONTAINER[:ro]."),
        click.option("-m", "--memory", help="Memory limit (e.g. 64m)."),
        click.option("--memory-swap", help="Memory plus swap limit; -1 for unlimited swap."),
        click.option("--cpus", help="Number of CPUs (e.g. 0.5)."),
        click.option("-c", "--cpu-shares", help="CPU shares (relative weight)."),
        click.option("--pids-limit", help="Tune container pids limit (-1 for unlimited)."),
        click.option("--cap-add", multiple=True, help="Add Linux capabilities."),
        click.option("--cap-drop", multiple=True, help="Drop Linux capabilities."),
        click.option("--privileged", is_flag=True, help="Give extended privileges."),
        click.option(
            "--security-opt",
            multiple=True,
            help="no-new-privileges, seccomp=unconfined or seccomp=PROFILE.json.",
        ),
        click.option(
            "--network",
            "--net",
            default="bridge",
            show_default=True,
            help="bridge, a network's name, none, host or container:NAME.",
        ),
        click.option("--network-alias", multiple=True, help="Another name on the network."),
        click.option(
            "-p",
            "--publish",
            multiple=True,
            help="Publish a port: [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/udp].",
        ),
        click.option("-P", "--publish-all", is_flag=True, help="Publish all exposed ports."),
        click.option(
            "--pull",
            type=click.Choice(["missing", "always", "never"]),
            default="missing",
            show_default=True,
            help="Pull the image before running.",
        ),
        click.option(
            "--init",
            is_flag=True,
            help="Run an init inside the container that forwards signals and reaps processes.",
        ),
        click.option(
            "--rm",
            "auto_remove",
            is_flag=True,
            help="Automatically remove the container when it exits.",
        ),
        click.option("--log-opt", multiple=True, help="Log driver options (max-size, max-file)."),
        click.option("--ulimit", multiple=True, help="Ulimit options (e.g. nofile=1024:2048)."),
        click.option("--read-only", is_flag=True, help="Mount the root filesystem read-only."),
        click.option("--tmpfs", multiple=True, help="Mount a tmpfs: PATH[:OPTIONS]."),
        click.option("--stop-signal", help="Signal to stop the container."),
        click.option("--stop-timeout", type=int, help="Timeout (in seconds) to stop it."),
        click.option(
            "--userns",
            default="",
            help="User namespace: host (none, the default), auto or auto:size=N.",
        ),
        click.option("--uidmap", multiple=True, help="Map uids: CONTAINER_ID:HOST_ID:SIZE."),
        click.option("--gidmap", multiple=True, help="Map gids: CONTAINER_ID:HOST_ID:SIZE."),
        click.option(
            "--restart",
            default="no",
            show_default=True,
            help="Restart policy: no, on-failure[:N], always or unless-stopped.",
        ),
        click.option("--health-cmd", help="Command to run to check health (by /bin/sh -c)."),
        click.option("--health-interval", help="Time between checks (ms|s|m|h; default 30s)."),
        click.option("--health-timeout", help="Longest a check may run (default 30s)."),
        click.option("--health-retries", help="Failures in a row that mean unhealthy (3)."),
        click.option(
            "--health-start-period",
            help="Time after the start during which failed checks don't count (default 0s).",
        ),
        click.option("--no-healthcheck", is_flag=True, help="Disable the image's HEALTHCHECK."),
        click.option(
            "--health-on-failure",
            default="none",
            show_default=True,
            help="When unhealthy: none, kill, restart or stop.",
        ),
        click.argument("image"),
        click.argument("command", nargs=-1, type=click.UNPROCESSED),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _run_options(kw: dict[str, Any]) -> Any:
    from minidock import health
    from minidock.engine import RunOptions

    env: list[str] = []
    for path in kw["env_file"]:
        env += parse.parse_env_file(path)
    env += parse.parse_env(list(kw["env"]))
    memory = parse.parse_size(kw["memory"], "--memory") if kw["memory"] else None
    max_size, max_files = parse.parse_log_opts(list(kw["log_opt"]))
    if kw["stop_signal"]:
        parse.parse_signal(kw["stop_signal"])
    if kw["user"]:
        parse.parse_user(kw["user"])
    return RunOptions(
        image=kw["image"],
        command=list(kw["command"]),
        name=kw["name"],
        entrypoint=kw["entrypoint"],
        env=env,
        workdir=kw["workdir"],
        user=kw["user"],
        hostname=kw["hostname"],
        tty=kw["tty"],
        interactive=kw["interactive"],
        volumes=[parse.parse_volume(v) for v in kw["volume"]],
        memory=memory,
        memory_swap=parse.parse_memory_swap(kw["memory_swap"], memory)
        if kw["memory_swap"]
        else None,
        nano_cpus=parse.parse_cpus(kw["cpus"]) if kw["cpus"] else None,
        cpu_shares=parse.parse_cpu_shares(kw["cpu_shares"]) if kw["cpu_shares"] else None,
        pids_limit=parse.parse_pids_limit(kw["pids_limit"]) if kw["pids_limit"] else None,
        cap_add=list(kw["cap_add"]),
        cap_drop=list(kw["cap_drop"]),
        privileged=kw["privileged"],
        network=kw["network"],
        network_aliases=list(kw["network_alias"]),
        publish=[parse.parse_publish(p) for p in kw["publish"]],
        publish_all=kw["publish_all"],
        pull=kw["pull"],
        init=kw["init"],
        auto_remove=kw["auto_remove"],
        log_max_size=max_size,
        log_max_files=max_files,
        ulimits=[parse.parse_ulimit(u) for u in kw["ulimit"]],
        read_only=kw["read_only"],
        tmpfs=dict(_tmpfs(t) for t in kw["tmpfs"]),
        security_opt=[_security_opt(o) for o in kw["security_opt"]],
        stop_signal=kw["stop_signal"],
        stop_timeout=kw["stop_timeout"],
        restart=kw["restart"],
        userns=kw["userns"],
        uidmap=list(kw["uidmap"]),
        gidmap=list(kw["gidmap"]),
        healthcheck=_healthcheck(kw),
        health_on_failure=health.on_failure_action(kw["health_on_failure"]),
    )


def _healthcheck(kw: dict[str, Any]) -> dict | None:
    """The ``--health-*`` flags as Docker's Config.Healthcheck (None: none given)."""
    from minidock import health

    def duration(name: str) -> int:
        text = kw[f"health_{name.replace('-', '_')}"]
        return parse.parse_duration(text, f"--health-{name}") if text else 0

    retries = kw["health_retries"]
    return health.user_config(
        kw["health_cmd"] or "",
        interval=duration("interval"),
        timeout=duration("timeout"),
        start_period=duration("start-period"),
        retries=parse.parse_health_retries(retries) if retries else 0,
        disabled=kw["no_healthcheck"],
    )


def _tmpfs(value: str) -> tuple[str, str]:
    """``--tmpfs /run:size=64m,mode=755`` → ("/run", "size=64m,mode=755"), as Docker's CLI."""
    destination, _, options = value.partition(":")
    if not destination.startswith("/") or destination.rstrip("/") == "":
        raise MinidockError(f"invalid --tmpfs {value}: the destination must be an absolute path")
    return destination, options


def _security_opt(value: str) -> str:
    """Like Docker's CLI, read a ``seccomp=PROFILE.json`` here and pass on its content: the
    container then doesn't depend on the file, and a relative path means what the user meant."""
    key, _, path = value.partition("=" if "=" in value else ":")
    if key != "seccomp" or path in ("unconfined", "builtin"):
        return value
    try:
        with open(path) as f:
            return f"seccomp={json.dumps(json.load(f), separators=(',', ':'))}"
    except (OSError, ValueError) as exc:
        raise MinidockError(f"opening seccomp profile ({path}) failed: {exc}") from None


def _attach(interactive: bool, use_tty: bool) -> Any:
    from minidock.monitor import Attach

    if interactive and use_tty and not os.isatty(0):
        raise MinidockError("the input device is not a TTY")
    return Attach(
        stdout=sys.stdout.fileno(),
        stderr=sys.stderr.fileno(),
        stdin=sys.stdin.fileno() if interactive else None,
    )


def _in_raw_mode(enabled: bool, body: Callable[[], int]) -> int:
    """Put our terminal in raw mode while ``body`` runs, so keys reach the container's pty
    unprocessed (Ctrl-C becomes a byte the container's terminal turns into SIGINT)."""
    if not enabled:
        return body()
    saved = termios.tcgetattr(0)
    tty.setraw(0)
    try:
        return body()
    finally:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)


@cli.command(context_settings={**_CONTEXT, "allow_interspersed_args": False})
@click.option("-d", "--detach", is_flag=True, help="Run in the background and print its ID.")
@_container_options
@click.pass_context
def run(ctx: click.Context, detach: bool, **kw: Any) -> None:
    """Create and run a new container from an image."""
    engine = _engine(ctx)
    opts = _run_options(kw)
    if detach:
        c, _ = engine.run(opts)
        click.echo(c.id)
        return
    attach = _attach(opts.interactive, opts.tty)
    raw = opts.tty and opts.interactive and os.isatty(0)
    code = _in_raw_mode(raw, lambda: engine.run(opts, attach)[1])
    ctx.exit(code)


@cli.command(context_settings={**_CONTEXT, "allow_interspersed_args": False})
@_container_options
@click.pass_context
def create(ctx: click.Context, **kw: Any) -> None:
    """Create a new container (without starting it)."""
    click.echo(_engine(ctx).create(_run_options(kw)).id)


# --- lifecycle ---------------------------------------------------------------------------------
@cli.command(context_settings=_CONTEXT)
@click.option("-a", "--attach", "attach_", is_flag=True, help="Attach STDOUT/STDERR.")
@click.option(
    "--boot",
    is_flag=True,
    help="Start what a restart policy brings back after a reboot (for the init system).",
)
@click.argument("containers", nargs=-1)
@click.pass_context
def start(ctx: click.Context, attach_: bool, boot: bool, containers: tuple[str, ...]) -> None:
    """Start one or more stopped containers."""
    engine = _engine(ctx)
    if boot == bool(containers):
        raise click.UsageError("give container names, or --boot")
    if boot:
        for c in engine.start_on_boot():
            click.echo(c.name)
        return
    if attach_:
        ctx.exit(engine.start(containers[0], _attach(False, False)))
    for ref in containers:
        engine.start(ref)
        click.echo(ref)


@cli.command(context_settings=_CONTEXT)
@click.option("-t", "--time", "timeout", type=int, help="Seconds to wait before killing it.")
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def stop(ctx: click.Context, timeout: int | None, containers: tuple[str, ...]) -> None:
    """Stop one or more running containers (SIGTERM, then SIGKILL after the timeout)."""
    engine = _engine(ctx)
    for ref in containers:
        engine.stop(ref, timeout)
        click.echo(ref)


@cli.command(context_settings=_CONTEXT)
@click.option("-t", "--time", "timeout", type=int, help="Seconds to wait before killing it.")
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def restart(ctx: click.Context, timeout: int | None, containers: tuple[str, ...]) -> None:
    """Restart one or more containers."""
    engine = _engine(ctx)
    for ref in containers:
        engine.restart(ref, timeout)
        click.echo(ref)


@cli.command(context_settings=_CONTEXT)
@click.option("-s", "--signal", "sig", default="KILL", show_default=True, help="Signal to send.")
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def kill(ctx: click.Context, sig: str, containers: tuple[str, ...]) -> None:
    """Send a signal to the PID 1 of one or more running containers."""
    engine = _engine(ctx)
    number = parse.parse_signal(sig)
    for ref in containers:
        engine.kill(ref, number)
        click.echo(ref)


@cli.command("exec", context_settings={**_CONTEXT, "allow_interspersed_args": False})
@click.option("-d", "--detach", is_flag=True, help="Run the command in the background.")
@click.option("-i", "--interactive", is_flag=True, help="Keep STDIN open.")
@click.option("-t", "--tty", is_flag=True, help="Allocate a pseudo-TTY.")
@click.option("-e", "--env", multiple=True, help="Set environment variables.")
@click.option("-w", "--workdir", help="Working directory inside the container.")
@click.option("-u", "--user", help="Username or UID (format: <name|uid>[:<group|gid>]).")
@click.argument("container")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def exec_(ctx: click.Context, detach: bool, interactive: bool, tty: bool, env: tuple[str, ...],
          workdir: str | None, user: str | None, container: str,
          command: tuple[str, ...]) -> None:  # fmt: skip
    """Run a command in a running container."""
    engine = _engine(ctx)
    options = {"env": parse.parse_env(list(env)), "workdir": workdir, "user": user, "tty": tty}
    if detach:
        engine.exec(container, list(command), None, **options)
        return
    attach = _attach(interactive, tty)
    raw = tty and interactive and os.isatty(0)
    ctx.exit(_in_raw_mode(raw, lambda: engine.exec(container, list(command), attach, **options)))


@cli.command(context_settings=_CONTEXT)
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def pause(ctx: click.Context, containers: tuple[str, ...]) -> None:
    """Freeze all processes of one or more containers (cgroup freezer)."""
    engine = _engine(ctx)
    for ref in containers:
        engine.pause(ref)
        click.echo(ref)


@cli.command(context_settings=_CONTEXT)
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def unpause(ctx: click.Context, containers: tuple[str, ...]) -> None:
    """Thaw all processes of one or more paused containers."""
    engine = _engine(ctx)
    for ref in containers:
        engine.unpause(ref)
        click.echo(ref)


@cli.command(context_settings=_CONTEXT)
@click.option("-f", "--force", is_flag=True, help="Kill and remove a running container.")
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def rm(ctx: click.Context, force: bool, containers: tuple[str, ...]) -> None:
    """Remove one or more containers."""
    engine = _engine(ctx)
    for ref in containers:
        engine.remove(ref, force)
        click.echo(ref)


@cli.command(context_settings=_CONTEXT)
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def wait(ctx: click.Context, containers: tuple[str, ...]) -> None:
    """Block until containers stop, then print their exit codes."""
    engine = _engine(ctx)
    for ref in containers:
        click.echo(engine.wait(ref))


# --- looking -----------------------------------------------------------------------------------
def _ago(timestamp: str) -> str:
    from minidock.logs import parse_timestamp

    seconds = max(0, (time.time_ns() - parse_timestamp(timestamp)) // 1_000_000_000)
    return f"{_duration(seconds)} ago"


def _duration(seconds: int) -> str:
    """Docker's human durations: "Less than a second", "3 seconds", "5 minutes", …"""
    if seconds < 1:
        return "Less than a second"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= size:
            n = seconds // size
            if unit == "second" or n > 1:
                return f"{n} {unit}s" if n != 1 else f"1 {unit}"
            return f"About {'an' if unit == 'hour' else 'a'} {unit}"
    return f"{seconds} seconds"


def _status_text(state: dict) -> str:
    from minidock.logs import parse_timestamp

    status = state["Status"]
    if status == "created":
        return "Created"
    if status == "restarting":
        return f"Restarting ({state['ExitCode']}) {_ago(state['FinishedAt'])}"
    if status in ("running", "paused"):
        up = (time.time_ns() - parse_timestamp(state["StartedAt"])) // 1_000_000_000
        if status == "paused":
            return f"Up {_duration(up)} (Paused)"
        if "Health" in state:  # "Up 5 seconds (healthy)", "(health: starting)"…
            from minidock import health

            return f"Up {_duration(up)} ({health.describe(state['Health'])})"
        return f"Up {_duration(up)}"
    return f"Exited ({state['ExitCode']}) {_ago(state['FinishedAt'])}"


def _render(template: str, row: dict[str, str]) -> str:
    """A small subset of Docker's Go templates: ``{{.Field}}`` and ``{{json .}}``."""
    out = template.replace("{{json .}}", json.dumps(row)).replace("\\t", "\t")
    for key, value in row.items():
        out = out.replace(f"{{{{.{key}}}}}", value).replace(f"{{{{ .{key} }}}}", value)
    return out


def _table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    for line in [headers, *rows]:
        click.echo("   ".join(str(v).ljust(w) for v, w in zip(line, widths, strict=False)).rstrip())


@cli.command(context_settings=_CONTEXT)
@click.option("-a", "--all", "show_all", is_flag=True, help="Show all containers.")
@click.option("-q", "--quiet", is_flag=True, help="Only display container IDs.")
@click.option("--no-trunc", is_flag=True, help="Don't truncate output.")
@click.option("--format", "fmt", help="Format output using a template, e.g. '{{.Names}}'.")
@click.pass_context
def ps(ctx: click.Context, show_all: bool, quiet: bool, no_trunc: bool, fmt: str | None) -> None:
    """List containers."""
    engine = _engine(ctx)
    rows = []
    for c in engine.containers():
        try:
            c.repair()
            record, state = c.record(), c.state()
        except FileNotFoundError:
            continue
        if not show_all and state["Status"] not in ("running", "paused", "restarting"):
            continue
        command = " ".join([record["Path"], *record["Args"]])
        if not no_trunc and len(command) > 20:
            command = command[:19] + "…"
        rows.append(
            {
                "ID": c.id if no_trunc else c.id[:12],
                "Image": record["Config"]["Image"],
                "Command": f'"{command}"',
                "CreatedAt": record["Created"],
                "RunningFor": _ago(record["Created"]),
                "Status": _status_text(state),
                "State": state["Status"],
                "Names": record["Name"].lstrip("/"),
                "Ports": ", ".join(
                    f"{b['HostIp']}:{b['HostPort']}->{port}"
                    for port, bs in engine.ports(c).items()
                    for b in bs
                ),
            }
        )
    if quiet:
        for row in rows:
            click.echo(row["ID"])
    elif fmt:
        for row in rows:
            click.echo(_render(fmt.removeprefix("table "), row))
    else:
        _table(
            ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"],
            [
                [
                    r["ID"],
                    r["Image"],
                    r["Command"],
                    r["RunningFor"],
                    r["Status"],
                    r["Ports"],
                    r["Names"],
                ]
                for r in rows
            ],
        )


@cli.command(context_settings=_CONTEXT)
@click.argument("container")
@click.argument("private_port", required=False)
@click.pass_context
def port(ctx: click.Context, container: str, private_port: str | None) -> None:
    """List a container's published ports, or the host address of one of them."""
    for key, bindings in _engine(ctx).ports(container).items():
        if private_port and key not in (private_port, f"{private_port}/tcp"):
            continue
        for b in bindings:
            address = f"{b['HostIp']}:{b['HostPort']}"
            click.echo(address if private_port else f"{key} -> {address}")


@cli.group(context_settings=_CONTEXT)
def network() -> None:
    """Manage networks (Linux bridges with their own subnet)."""


@network.command("create", context_settings=_CONTEXT)
@click.option("--subnet", help="Subnet in CIDR form (default: a free /24).")
@click.option("--internal", is_flag=True, help="No route out of the network.")
@click.argument("name")
@click.pass_context
def network_create(ctx: click.Context, subnet: str | None, internal: bool, name: str) -> None:
    """Create a network."""
    click.echo(_engine(ctx).networks.create(name, subnet, internal=internal).id)


@network.command("ls", context_settings=_CONTEXT)
@click.option("-q", "--quiet", is_flag=True, help="Only display network IDs.")
@click.pass_context
def network_ls(ctx: click.Context, quiet: bool) -> None:
    """List networks."""
    engine = _engine(ctx)
    engine.networks.default()
    nets = engine.networks.list()
    if quiet:
        for n in nets:
            click.echo(n.id[:12])
        return
    _table(["NETWORK ID", "NAME", "DRIVER", "SUBNET", "BRIDGE"],
           [[n.id[:12], n.name, n.driver, n.subnet, n.bridge] for n in nets])  # fmt: skip


@network.command("inspect", context_settings=_CONTEXT)
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def network_inspect(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Show networks as JSON, with the containers connected to them."""
    store = _engine(ctx).networks
    result = []
    for name in names:
        n = store.default() if name == "bridge" else store.get(name)
        result.append({
            "Name": n.name, "Id": n.id, "Created": n.created, "Driver": n.driver,
            "Internal": n.internal, "Options": {"bridge": n.bridge},
            "IPAM": {"Config": [{"Subnet": n.subnet, "Gateway": n.gateway}]},
            "Containers": {e["cid"]: {"Name": e.get("name"), "IPv4Address": e["ip"],
                                      "MacAddress": e["mac"]} for e in store.endpoints(n)},
        })  # fmt: skip
    click.echo(json.dumps(result, indent=4))


@network.command("connect", context_settings=_CONTEXT)
@click.option("--alias", multiple=True, help="Another name for the container on this network.")
@click.argument("name")
@click.argument("container")
@click.pass_context
def network_connect(ctx: click.Context, alias: tuple[str, ...], name: str, container: str) -> None:
    """Connect a container to a network (at once if it runs)."""
    _engine(ctx).network_connect(name, container, list(alias))


@network.command("disconnect", context_settings=_CONTEXT)
@click.argument("name")
@click.argument("container")
@click.pass_context
def network_disconnect(ctx: click.Context, name: str, container: str) -> None:
    """Disconnect a container from a network."""
    _engine(ctx).network_disconnect(name, container)


@network.command("rm", context_settings=_CONTEXT)
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def network_rm(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Remove networks (not while containers are connected)."""
    store = _engine(ctx).networks
    for name in names:
        store.remove(name)
        click.echo(name)


@network.command("prune", context_settings=_CONTEXT)
@click.pass_context
def network_prune(ctx: click.Context) -> None:
    """Remove every user network no container is connected to."""
    for n in _engine(ctx).networks.prune():
        click.echo(n.name)


@cli.command(context_settings=_CONTEXT)
@click.option("-f", "--format", "fmt", help="Format output using a template.")
@click.argument("targets", nargs=-1, required=True)
@click.pass_context
def inspect(ctx: click.Context, fmt: str | None, targets: tuple[str, ...]) -> None:
    """Return low-level information on containers."""
    engine = _engine(ctx)
    echo_inspected([engine.inspect(t) for t in targets], fmt)


def echo_inspected(results: list[dict], fmt: str | None) -> None:
    """Print ``inspect`` output: a JSON array, or each object through a ``--format``."""
    if fmt:
        for r in results:
            click.echo(_render_path(fmt, r))
    else:
        click.echo(json.dumps(results, indent=4))


def _render_path(template: str, data: dict) -> str:
    """``{{.State.Pid}}``-style look-ups into inspect output (a subset of Go templates)."""
    import re

    def lookup(match: re.Match[str]) -> str:
        value: Any = data
        for key in match.group(2).split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if match.group(1):
            return json.dumps(value)
        if isinstance(value, bool):
            return str(value).lower()
        return "<no value>" if value is None else str(value)

    return re.sub(r"\{\{\s*(json\s+)?\.([\w.]+)\s*\}\}", lookup, template)


@cli.command(context_settings=_CONTEXT)
@click.option("-f", "--follow", is_flag=True, help="Follow log output.")
@click.option("-n", "--tail", default="all", help="Number of lines to show from the end.")
@click.option("-t", "--timestamps", is_flag=True, help="Show timestamps.")
@click.option("--since", help="Show logs since a timestamp or relative time (e.g. 10m).")
@click.option("--until", help="Show logs before a timestamp or relative time.")
@click.argument("container")
@click.pass_context
def logs(
    ctx: click.Context,
    follow: bool,
    tail: str,
    timestamps: bool,
    since: str | None,
    until: str | None,
    container: str,
) -> None:
    """Fetch the logs of a container."""
    from minidock.logs import render

    now_ns = time.time_ns()
    if tail != "all" and not tail.lstrip("-").isdigit():
        raise MinidockError(f'invalid value "{tail}" for --tail')
    n = None if tail == "all" or int(tail) < 0 else int(tail)
    records = _engine(ctx).logs(
        container,
        tail=n,
        follow=follow,
        since_ns=parse.parse_duration_or_timestamp(since, now_ns) if since else None,
        until_ns=parse.parse_duration_or_timestamp(until, now_ns) if until else None,
    )
    for record in records:
        stream = sys.stderr if record.stream == "stderr" else sys.stdout
        stream.write(render(record, timestamps))
        stream.flush()


@cli.command(context_settings=_CONTEXT)
@click.option("-m", "--memory", help="Memory limit (e.g. 64m).")
@click.option("--memory-swap", help="Memory plus swap limit; -1 for unlimited swap.")
@click.option("--cpus", help="Number of CPUs (e.g. 0.5).")
@click.option("-c", "--cpu-shares", help="CPU shares (relative weight).")
@click.option("--pids-limit", help="Tune container pids limit (-1 for unlimited).")
@click.option("--restart", "restart_policy", help="Restart policy to apply when it exits.")
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def update(ctx: click.Context, memory: str | None, memory_swap: str | None, cpus: str | None,
           cpu_shares: str | None, pids_limit: str | None, restart_policy: str | None,
           containers: tuple[str, ...]) -> None:  # fmt: skip
    """Update the limits or restart policy of one or more containers, running or not."""
    engine = _engine(ctx)
    mem = parse.parse_size(memory, "--memory") if memory else None
    for ref in containers:
        swap = None
        if memory_swap:  # checked against the new memory limit, or else the current one
            current = mem or engine.inspect(ref)["HostConfig"]["Memory"]
            swap = parse.parse_memory_swap(memory_swap, current)
        engine.update(
            ref,
            memory=mem,
            memory_swap=swap,
            nano_cpus=parse.parse_cpus(cpus) if cpus else None,
            cpu_shares=parse.parse_cpu_shares(cpu_shares) if cpu_shares else None,
            pids_limit=parse.parse_pids_limit(pids_limit) if pids_limit else None,
            restart_policy=restart_policy,
        )
        click.echo(ref)


@cli.command(context_settings=_CONTEXT)
@click.option("--since", help="Show events since a timestamp or relative time (e.g. 10m).")
@click.option("--until", help="Stream events until this timestamp or relative time.")
@click.option("-f", "--filter", "filters", multiple=True,
              help="container=NAME, event=ACTION, image=IMAGE or type=container.")  # fmt: skip
@click.option("--format", "fmt", help="json, or a template such as '{{.Action}} {{.Actor.ID}}'.")
@click.pass_context
def events(ctx: click.Context, since: str | None, until: str | None, filters: tuple[str, ...],
           fmt: str | None) -> None:  # fmt: skip
    """Stream what happens to containers: create, start, die, oom, stop, destroy, …"""
    from minidock import events as journal
    from minidock.store import state_root

    now_ns = time.time_ns()
    until_ns = parse.parse_duration_or_timestamp(until, now_ns, "--until") if until else None
    stream = journal.read_events(
        state_root(ctx.obj["root"]),
        since_ns=parse.parse_duration_or_timestamp(since, now_ns) if since else None,
        until_ns=until_ns,
        event_filter=journal.EventFilter.parse(list(filters)),
    )
    for event in stream:
        if fmt == "json":
            line = json.dumps(event)
        elif fmt:
            line = _render_path(fmt, event)
        else:
            line = journal.format_event(event)
        click.echo(line)  # flushed at once: a pipe reader sees each event as it happens


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.4g}{unit}"
        n /= 1024
    return f"{n}B"


@cli.command(context_settings=_CONTEXT)
@click.option("--no-stream", is_flag=True, help="Print one sample and exit.")
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def stats(ctx: click.Context, no_stream: bool, containers: tuple[str, ...]) -> None:
    """Show containers' resource usage, read from their cgroups."""
    engine = _engine(ctx)
    before = {ref: (time.monotonic_ns(), engine.stats(ref)[1]) for ref in containers}
    while True:
        time.sleep(0.5 if no_stream else 1.0)
        rows = []
        for ref in containers:
            c, s = engine.stats(ref)
            t0, s0 = before[ref]
            t1 = time.monotonic_ns()
            cpu = 100.0 * (s.cpu_usage_ns - s0.cpu_usage_ns) / max(1, t1 - t0)
            before[ref] = (t1, s)
            limit = s.memory_limit or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            rows.append(
                [
                    c.id[:12],
                    c.name,
                    f"{cpu:.2f}%",
                    f"{_human_bytes(s.memory_current)} / {_human_bytes(limit)}",
                    f"{100.0 * s.memory_current / limit:.2f}%",
                    f"{s.cpu_nr_throttled}/{s.cpu_nr_periods}",
                    str(s.pids_current),
                ]
            )
        _table(
            [
                "CONTAINER ID",
                "NAME",
                "CPU %",
                "MEM USAGE / LIMIT",
                "MEM %",
                "THROTTLED/PERIODS",
                "PIDS",
            ],
            rows,
        )
        if no_stream:
            return


@cli.command(context_settings=_CONTEXT)
@click.argument("container")
@click.pass_context
def top(ctx: click.Context, container: str) -> None:
    """Display the running processes of a container (host PIDs, as docker top shows)."""
    import psutil

    rows = []
    for pid in _engine(ctx).top(container):
        try:
            p = psutil.Process(pid)
            with p.oneshot():
                cpu = p.cpu_times()
                rows.append(
                    [
                        p.username(),
                        str(pid),
                        str(p.ppid()),
                        time.strftime("%H:%M", time.localtime(p.create_time())),
                        time.strftime("%H:%M:%S", time.gmtime(cpu.user + cpu.system)),
                        " ".join(p.cmdline()) or f"[{p.name()}]",
                    ]
                )
        except psutil.NoSuchProcess:
            continue
    _table(["UID", "PID", "PPID", "STIME", "TIME", "CMD"], rows)


# --- images ------------------------------------------------------------------------------------
@cli.command("import", context_settings=_CONTEXT)
@click.option("-c", "--change", multiple=True, help="Apply a Dockerfile instruction (CMD, ENV…).")
@click.argument("source")
@click.argument("reference")
@click.pass_context
def import_(ctx: click.Context, change: tuple[str, ...], source: str, reference: str) -> None:
    """Create an image from a root filesystem directory or tarball."""
    image = _engine(ctx).images.import_rootfs(source, reference, list(change))
    click.echo(f"sha256:{image.id}")


# --- the OCI runtime, runc-style -----------------------------------------------------------------
@cli.group(context_settings=_CONTEXT)
@click.option(
    "--state-dir",
    default="/run/minidock-runtime",
    show_default=True,
    help="Where the runtime keeps its state.",
)
@click.pass_context
def runtime(ctx: click.Context, state_dir: str) -> None:
    """The OCI runtime alone: create/start/state/kill/delete a bundle, like runc."""
    ctx.obj["runtime_root"] = state_dir


@runtime.command("create", context_settings=_CONTEXT)
@click.option("-b", "--bundle", default=".", help="Path to the bundle directory.")
@click.option("--pid-file", help="File to write the container's PID to.")
@click.argument("container_id")
@click.pass_context
def runtime_create(
    ctx: click.Context, bundle: str, pid_file: str | None, container_id: str
) -> None:
    """Create a container from a bundle; it waits for `start` (the program inherits our stdio)."""
    from minidock import runtime as rt

    rt.create(ctx.obj["runtime_root"], container_id, bundle, pid_file=pid_file)


@runtime.command("start", context_settings=_CONTEXT)
@click.argument("container_id")
@click.pass_context
def runtime_start(ctx: click.Context, container_id: str) -> None:
    """Run the program of a created container."""
    from minidock import runtime as rt

    rt.start(ctx.obj["runtime_root"], container_id)


@runtime.command("state", context_settings=_CONTEXT)
@click.argument("container_id")
@click.pass_context
def runtime_state(ctx: click.Context, container_id: str) -> None:
    """Print the container's OCI state as JSON."""
    from minidock import runtime as rt

    click.echo(json.dumps(rt.state(ctx.obj["runtime_root"], container_id).to_oci(), indent=2))


@runtime.command("kill", context_settings=_CONTEXT)
@click.option("-a", "--all", "all_", is_flag=True, help="Signal every process of the container.")
@click.argument("container_id")
@click.argument("signal", default="TERM")
@click.pass_context
def runtime_kill(ctx: click.Context, all_: bool, container_id: str, signal: str) -> None:
    """Send a signal (name without SIG, e.g. TERM) to the container."""
    from minidock import runtime as rt

    rt.kill(ctx.obj["runtime_root"], container_id, parse.parse_signal(signal), all_)


@runtime.command("delete", context_settings=_CONTEXT)
@click.option("-f", "--force", is_flag=True, help="Kill the container first if it runs.")
@click.argument("container_id")
@click.pass_context
def runtime_delete(ctx: click.Context, force: bool, container_id: str) -> None:
    """Delete a stopped (or, with --force, any) container."""
    from minidock import runtime as rt

    rt.delete(ctx.obj["runtime_root"], container_id, force)


def main() -> None:
    """Console entry point: run the CLI and map errors to Docker's exit codes."""
    # A bare "--explain" would take the next word ("run") as its value: spell it out
    # (only among the options before the command, never in the container's arguments).
    args = sys.argv[1:]
    for i, arg in enumerate(args):
        if arg == "--explain":
            args[i] = "--explain=text"
        elif not arg.startswith("-") and (i == 0 or args[i - 1] != "--root"):
            break
    try:
        code = cli.main(args, prog_name="minidock", standalone_mode=False)
    except MinidockError as exc:
        click.echo(f"minidock: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(125)
    except click.exceptions.Abort:
        sys.exit(130)
    finally:
        # The process is about to exit, and the interpreter's shutdown would still walk
        # every object we made (click, the engine, parsed JSON…) in search of reference
        # cycles to free: ~15 ms here, for memory the kernel reclaims anyway. Moving them
        # all into the collector's permanent generation lets the shutdown skip them.
        gc.freeze()
    sys.exit(code if isinstance(code, int) else 0)


# The image commands (build, save, load, tag, history, image …) live in cli_images.py,
# which uses this module's helpers, so they are attached here at the end.
from minidock.cli_images import COMMANDS  # noqa: E402

for _name, _command in COMMANDS.items():
    cli.add_command(_command, _name)
cli.add_command(COMMANDS["image"].commands["ls"], "images")
from minidock.cli_registry import COMMANDS as _REGISTRY_COMMANDS  # noqa: E402

for _name, _command in _REGISTRY_COMMANDS.items():
    cli.add_command(_command, _name)
