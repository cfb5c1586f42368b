"""IP address allocation: the rules, and many processes allocating at once."""

from __future__ import annotations

import multiprocessing
import threading
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from minidock.errors import MinidockError
from minidock.network.ipam import Ipam, next_address

NET = IPv4Network("10.89.0.0/24")
GATEWAY = IPv4Address("10.89.0.1")


def test_first_address_follows_the_gateway() -> None:
    assert next_address(NET, {GATEWAY}, None) == IPv4Address("10.89.0.2")


def test_never_the_network_or_broadcast_address() -> None:
    small = IPv4Network("10.89.0.0/30")  # .0 network, .1 gateway, .2 free, .3 broadcast
    assert next_address(small, {IPv4Address("10.89.0.1")}, None) == IPv4Address("10.89.0.2")
    full = {IPv4Address("10.89.0.1"), IPv4Address("10.89.0.2")}
    assert next_address(small, full, IPv4Address("10.89.0.2")) is None


def test_round_robin_from_the_last_allocated_and_wrapping() -> None:
    assert next_address(NET, {GATEWAY}, IPv4Address("10.89.0.7")) == IPv4Address("10.89.0.8")
    last = IPv4Address("10.89.0.254")
    assert next_address(NET, {GATEWAY}, last) == IPv4Address("10.89.0.2")


def test_a_released_address_is_reused_last(tmp_path: Path) -> None:
    ipam = Ipam(str(tmp_path), str(NET), str(GATEWAY))
    assert ipam.allocate("a") == "10.89.0.2"
    assert ipam.allocate("b") == "10.89.0.3"
    ipam.release("a")
    assert ipam.allocate("c") == "10.89.0.4"  # not .2, which "a" just gave back
    assert ipam.allocated() == {"b": "10.89.0.3", "c": "10.89.0.4"}


def test_allocate_is_idempotent_per_container(tmp_path: Path) -> None:
    ipam = Ipam(str(tmp_path), str(NET), str(GATEWAY))
    assert ipam.allocate("a") == ipam.allocate("a") == "10.89.0.2"
    ipam.release("a")
    ipam.release("a")  # releasing twice is harmless
    assert ipam.allocated() == {}


def test_exhaustion_is_an_error(tmp_path: Path) -> None:
    ipam = Ipam(str(tmp_path), "10.89.0.0/29", "10.89.0.1")  # .2 … .6
    for n in range(5):
        ipam.allocate(f"c{n}")
    with pytest.raises(MinidockError, match="no available IPv4 addresses"):
        ipam.allocate("one-too-many")


def test_the_table_survives_as_json(tmp_path: Path) -> None:
    Ipam(str(tmp_path), str(NET), str(GATEWAY)).allocate("a")
    again = Ipam(str(tmp_path), str(NET), str(GATEWAY))
    assert again.allocated() == {"a": "10.89.0.2"}
    assert again.allocate("b") == "10.89.0.3"


def _allocate(directory: str, cid: str, start: threading.Event) -> str:
    """One process's allocation, started at the same moment as all the others."""
    start.wait()
    return Ipam(directory, str(NET), str(GATEWAY)).allocate(cid)


def test_twenty_processes_at_once_get_twenty_addresses(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    with context.Manager() as manager:
        start = manager.Event()
        with context.Pool(20) as pool:
            pending = [
                pool.apply_async(_allocate, (str(tmp_path), f"c{n}", start)) for n in range(20)
            ]
            start.set()
            addresses = [p.get(timeout=30) for p in pending]
    assert len(set(addresses)) == 20
    assert Ipam(str(tmp_path), str(NET), str(GATEWAY)).allocated() == {
        f"c{n}": a for n, a in enumerate(addresses)
    }
