"""Netfilter rules for bridge networks, made with iptables: NAT, isolation, published ports.

Containers have private addresses, so traffic leaving a network is rewritten to the
host's address on the way out (MASQUERADE in ``nat POSTROUTING``), and a published port
is a DNAT rule rewriting the destination of connections to ``host_ip:host_port`` into
``container_ip:container_port`` (``nat PREROUTING`` for packets arriving from outside,
``nat OUTPUT`` for connections the host itself makes). The ``filter FORWARD`` hook keeps
different networks apart.

minidock keeps its rules in its own chains, reached by one jump rule from each built-in
chain, as Docker does (DOCKER, DOCKER-ISOLATION-STAGE-1/2)::

    nat    POSTROUTING → MINIDOCK-POSTROUTING   MASQUERADE
    nat    PREROUTING, OUTPUT → MINIDOCK-DNAT   DNAT (destination is a local address)
    filter FORWARD → MINIDOCK-ISOLATION-1 → MINIDOCK-ISOLATION-2   DROP between networks
    raw    PREROUTING → MINIDOCK-LOCALNET       DROP loopback-addressed packets from bridges

Every rule carries ``-m comment --comment minidock:<root hash>:<network or container id>``
(its *tag*), so the rules of one network, one container or one state root are found and
deleted exactly; a chain left empty is deleted with its jumps. Changes are serialised
host-wide by an flock, and each iptables call waits for the xtables lock (``-w``).
"""

from __future__ import annotations

import errno
import shlex
import socket
import subprocess
from dataclasses import dataclass

from minidock import store, syscalls
from minidock.errors import Conflict, MinidockError
from minidock.network.bridge import write_sysctl

IPTABLES = "/usr/sbin/iptables"
#: Serialises every minidock change to the rule set, across all state roots.
LOCK = "/run/minidock-iptables.lock"
#: The comment on the jump rules from the built-in chains, which all roots share.
JUMP_TAG = "minidock"


@dataclass(frozen=True)
class _Chain:
    table: str
    name: str
    #: The rules that send packets here: (built-in chain, *matches).
    jumps: tuple[tuple[str, ...], ...] = ()


POSTROUTING = _Chain("nat", "MINIDOCK-POSTROUTING", (("POSTROUTING",),))
DNAT = _Chain(
    "nat",
    "MINIDOCK-DNAT",
    (
        ("PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL"),
        ("OUTPUT", "-m", "addrtype", "--dst-type", "LOCAL"),
    ),
)
ISOLATION_2 = _Chain("filter", "MINIDOCK-ISOLATION-2")
ISOLATION_1 = _Chain("filter", "MINIDOCK-ISOLATION-1", (("FORWARD",),))
LOCALNET = _Chain("raw", "MINIDOCK-LOCALNET", (("PREROUTING",),))
#: Each chain after the chains its rules jump to; torn down in reverse.
CHAINS = (POSTROUTING, DNAT, ISOLATION_2, ISOLATION_1, LOCALNET)
_OURS = {chain.name for chain in CHAINS}


def _iptables(table: str, *args: str, reason: str = "") -> subprocess.CompletedProcess[str]:
    """Run ``iptables -w -t TABLE ARGS``; changes (``reason`` given) are narrated and must
    succeed, queries just return the result."""
    if reason:
        syscalls.narrate(lambda: shlex.join(["iptables", "-t", table, *args]), reason)
    proc = subprocess.run(
        [IPTABLES, "-w", "-t", table, *args], capture_output=True, text=True, check=False
    )
    if reason and proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()
        raise MinidockError(
            f"iptables -t {table} {shlex.join(args)}: {detail[-1] if detail else 'failed'}"
        )
    return proc


def _rules(table: str, chain: str = "") -> list[list[str]]:
    """The table's (or one chain's) rules as ``iptables -S`` prints them, split into words."""
    out = _iptables(table, "-S", *([chain] if chain else [])).stdout
    return [shlex.split(line) for line in out.splitlines()]


def _comment(rule: list[str]) -> str:
    return rule[rule.index("--comment") + 1] if "--comment" in rule else ""


def _ensure_chain(chain: _Chain) -> None:
    """Create ``chain`` and its jumps unless they exist (call with LOCK held)."""
    created = _iptables(chain.table, "-N", chain.name)
    if created.returncode != 0 and "exists" not in created.stderr:
        raise MinidockError(f"iptables -t {chain.table} -N {chain.name}: {created.stderr.strip()}")
    for builtin, *matches in chain.jumps:
        rule = [*matches, "-m", "comment", "--comment", JUMP_TAG, "-j", chain.name]
        if _iptables(chain.table, "-C", builtin, *rule).returncode != 0:
            _iptables(chain.table, "-I", builtin, "1", *rule, reason=f"{builtin} → minidock")


def _append(chain: _Chain, rule: list[str], tag: str, reason: str) -> None:
    """Append ``rule`` tagged ``tag`` to ``chain`` unless it is there (call with LOCK held)."""
    _ensure_chain(chain)
    tagged = [*rule, "-m", "comment", "--comment", tag]
    if _iptables(chain.table, "-C", chain.name, *tagged).returncode != 0:
        _iptables(chain.table, "-A", chain.name, *tagged, reason=reason)


def add_masquerade(subnet: str, bridge: str, tag: str) -> None:
    """Outbound NAT: packets from ``subnet`` leaving by any interface but ``bridge`` get
    the outgoing interface's address as their source (MASQUERADE: SNAT to whatever
    address that interface has now), so replies find their way back to the host."""
    with store.locked(LOCK):
        _append(
            POSTROUTING,
            ["-s", subnet, "!", "-o", bridge, "-j", "MASQUERADE"],
            tag,
            "containers reach out with the host's address",
        )


def add_isolation(bridge: str, tag: str, internal: bool = False) -> None:
    """Keep ``bridge``'s network apart from every other minidock network.

    Two stages, as Docker does: in ISOLATION-1 a packet coming from this bridge and
    leaving by another interface goes on to ISOLATION-2, where it is dropped if that
    interface is any minidock bridge. Packets to the outside world and within one
    network pass. An ``internal`` network reaches nothing beyond its bridge at all.
    """
    with store.locked(LOCK):
        _append(ISOLATION_2, ["-o", bridge, "-j", "DROP"], tag, "no entry from other networks")
        if internal:
            _append(ISOLATION_1, ["-i", bridge, "!", "-o", bridge, "-j", "DROP"], tag, "internal")
            _append(ISOLATION_1, ["!", "-i", bridge, "-o", bridge, "-j", "DROP"], tag, "internal")
        else:
            _append(
                ISOLATION_1,
                ["-i", bridge, "!", "-o", bridge, "-j", ISOLATION_2.name],
                tag,
                "leaving this network: is it entering another?",
            )


def add_localnet(bridge: str, tag: str) -> None:
    """Let published ports answer clients on 127.0.0.1, safely.

    After DNAT a connection from 127.0.0.1 would leave by ``bridge`` with a loopback
    source, which the kernel drops as martian unless ``route_localnet`` is set on the
    bridge (the MASQUERADE from :func:`add_dnat` then gives it the gateway's address).
    That setting would also let containers send packets *to* the host's 127.0.0.1
    services (CVE-2020-8558), so the raw table drops those before routing sees them;
    genuine replies are addressed to the gateway, not to 127.0.0.1, at that point.
    """
    with store.locked(LOCK):
        _append(
            LOCALNET,
            ["-i", bridge, "-d", "127.0.0.0/8", "-j", "DROP"],
            tag,
            "containers may not reach the host's loopback",
        )
        write_sysctl(f"net.ipv4.conf.{bridge}.route_localnet", "1")


def add_dnat(
    host_ip: str, host_port: int, proto: str, container_ip: str, container_port: int, tag: str
) -> None:
    """Publish ``container_ip:container_port`` at ``host_ip:host_port`` in the kernel.

    The DNAT rule matches connections to a local address (the jump's ``--dst-type
    LOCAL``), arriving (PREROUTING) or made by the host (OUTPUT); ``0.0.0.0`` means any
    local address. Remote clients keep their source address. Clients on 127.0.0.0/8 are
    masqueraded to the bridge's address, because the container could not answer a
    loopback address (see :func:`add_localnet`). Raises Conflict if the port is taken.
    """
    with store.locked(LOCK):
        if port_in_use(host_ip, host_port, proto):
            raise Conflict(port_allocated(host_ip, host_port, proto))
        destination = [] if host_ip == "0.0.0.0" else ["-d", host_ip]
        _append(
            DNAT,
            ["-p", proto, *destination, "--dport", str(host_port),
             "-j", "DNAT", "--to-destination", f"{container_ip}:{container_port}"],
            tag,
            f"publish {host_ip}:{host_port}/{proto}",
        )  # fmt: skip
        if host_ip == "0.0.0.0" or host_ip.startswith("127."):
            _append(
                POSTROUTING,
                ["-s", "127.0.0.0/8", "-d", container_ip, "-p", proto,
                 "--dport", str(container_port), "-j", "MASQUERADE"],
                tag,
                "loopback clients of the published port",
            )  # fmt: skip


def remove_rules(tag: str, prefix: bool = False) -> None:
    """Delete every rule tagged ``tag`` (or, with ``prefix``, every tag starting with it,
    e.g. ``minidock:<root hash>:`` for a whole state root), then every minidock chain
    left empty, with its jumps. Rules of other tags and roots are untouched."""
    with store.locked(LOCK):
        for table in dict.fromkeys(chain.table for chain in CHAINS):
            rules = _rules(table)
            kept = []
            for rule in rules:
                comment = _comment(rule)
                mine = comment.startswith(tag) if prefix else comment == tag
                if rule[0] == "-A" and rule[1] in _OURS and mine:
                    _iptables(table, "-D", *rule[1:], reason="remove a minidock rule")
                else:
                    kept.append(rule)
            _drop_empty_chains(table, kept)


def _drop_empty_chains(table: str, rules: list[list[str]]) -> None:
    """Delete the table's minidock chains that hold no rule, once nothing but the jumps
    from built-in chains point at them (iptables refuses to delete a referenced chain)."""
    for chain in reversed([c for c in CHAINS if c.table == table]):
        if ["-N", chain.name] not in rules or any(
            r[0] == "-A" and r[1] == chain.name for r in rules
        ):
            continue
        jumps = [r for r in rules if r[0] == "-A" and r[-2:] == ["-j", chain.name]]
        if any(r[1] in _OURS for r in jumps):
            continue
        for jump in jumps:
            _iptables(table, "-D", *jump[1:], reason=f"{chain.name} is empty")
            rules.remove(jump)
        _iptables(table, "-X", chain.name, reason=f"{chain.name} is empty")
        rules.remove(["-N", chain.name])


# --- host ports -------------------------------------------------------------------------------
def port_allocated(host_ip: str, port: int, proto: str) -> str:
    """The one-line message for a host port someone else holds."""
    return f"port {port}/{proto} is already allocated on {host_ip}"


def bind_port(host_ip: str, port: int, proto: str) -> socket.socket:
    """A socket bound to ``host_ip:port`` (and listening, for TCP): holding it is what
    keeps the port ours. Port 0 asks the kernel for a free one (see getsockname()).

    TCP sockets set SO_REUSEADDR, so connections of a previous owner lingering in
    TIME_WAIT don't block the port while a listener still does. UDP sockets must not:
    there it would let two sockets share the port.
    """
    tcp = proto == "tcp"
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
    try:
        if tcp:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host_ip, port))
        if tcp:
            sock.listen(socket.SOMAXCONN)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise Conflict(port_allocated(host_ip, port, proto)) from None
        raise MinidockError(f"cannot bind {host_ip}:{port}/{proto}: {exc.strerror}") from None
    return sock


def published(host_ip: str, port: int, proto: str) -> bool:
    """Whether a DNAT rule of any minidock root already publishes ``host_ip:port/proto``
    (``0.0.0.0`` on either side overlaps every address)."""
    for rule in _rules(DNAT.table, DNAT.name):
        if rule[0] != "-A" or "--dport" not in rule:
            continue
        same_port = rule[rule.index("--dport") + 1] == str(port) and proto in rule
        destination = rule[rule.index("-d") + 1].removesuffix("/32") if "-d" in rule else ""
        if same_port and (not destination or host_ip in ("0.0.0.0", destination)):
            return True
    return False


def port_in_use(host_ip: str, port: int, proto: str) -> bool:
    """Whether ``host_ip:port/proto`` is taken: a socket holds it (we try to bind it) or
    a DNAT rule publishes it (DNAT holds no socket)."""
    try:
        bind_port(host_ip, port, proto).close()
    except Conflict:
        return True
    return published(host_ip, port, proto)
