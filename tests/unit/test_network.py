"""Bridge networking's pure parts: names, subnet choice, MACs, the hosts-file block."""

from __future__ import annotations

from ipaddress import IPv4Network
from pathlib import Path

from minidock import store
from minidock.network import hosts
from minidock.network.bridge import IFNAMSIZ, mac_address
from minidock.network.networks import (
    NetworkStore,
    choose_subnet,
    default_bridge_name,
    root_hash,
    tag,
    user_bridge_name,
    veth_name,
)

NET_ID = "0123456789abcdef" * 4
CID = "fedcba9876543210" * 4


def test_interface_names_fit_ifnamsiz() -> None:
    for name in (
        default_bridge_name("/tmp/some/root"),
        user_bridge_name(NET_ID),
        veth_name(CID, NET_ID),
        "minidock0",
    ):
        assert len(name) < IFNAMSIZ, name


def test_the_standard_root_has_minidock0_and_others_their_own_bridge() -> None:
    assert default_bridge_name("/var/lib/minidock") == "minidock0"
    a, b = default_bridge_name("/tmp/a"), default_bridge_name("/tmp/b")
    assert a.startswith("mdb") and b.startswith("mdb") and a != b
    assert a == default_bridge_name("/tmp/a/")  # the same root, however spelled


def test_user_bridges_and_veths_are_derived_from_ids() -> None:
    assert user_bridge_name(NET_ID) == "mdn0123456789ab"
    assert veth_name(CID, NET_ID) == veth_name(CID, NET_ID)
    assert veth_name(CID, NET_ID) != veth_name(CID, "1" * 64)
    assert veth_name(CID, NET_ID).startswith("veth")


def test_rule_tags_name_the_root_and_the_object() -> None:
    assert tag("/tmp/a", NET_ID) == f"minidock:{root_hash('/tmp/a')}:{NET_ID}"
    assert len(root_hash("/tmp/a")) == 8


def test_mac_is_derived_from_the_address() -> None:
    assert mac_address("172.17.0.2") == "02:42:ac:11:00:02"


def test_subnet_choice_skips_whatever_overlaps_a_route() -> None:
    assert choose_subnet([]) == IPv4Network("10.89.0.0/24")
    taken = [IPv4Network("10.89.0.0/24"), IPv4Network("10.89.1.128/25")]
    assert choose_subnet(taken) == IPv4Network("10.89.2.0/24")
    # A wide route (a VPN's 10.0.0.0/8, say) rules out the whole first pool.
    assert choose_subnet([IPv4Network("10.0.0.0/8")]) == IPv4Network("172.30.0.0/24")
    assert choose_subnet([IPv4Network("0.0.0.0/1"), IPv4Network("128.0.0.0/1")]) is None


def test_subnet_choice_with_other_pools_and_sizes() -> None:
    assert choose_subnet([], ("192.168.0.0/16",), 20) == IPv4Network("192.168.0.0/20")


def test_the_hosts_block_follows_the_engines_lines() -> None:
    base = "127.0.0.1\tlocalhost\n127.0.1.1\tweb\n"
    text = hosts.render(base, [("10.89.0.2", ["web", "www"]), ("10.89.0.3", ["db"])])
    assert text == (base + f"{hosts.BEGIN}\n10.89.0.2\tweb www\n10.89.0.3\tdb\n{hosts.END}\n")
    again = hosts.render(text, [("10.89.0.3", ["db"])])
    assert again == base + f"{hosts.BEGIN}\n10.89.0.3\tdb\n{hosts.END}\n"
    assert hosts.render(again, []) == base
    assert hosts.strip_block(again) == base


def test_hosts_lines_are_not_repeated() -> None:
    text = hosts.render("", [("10.89.0.2", ["a"]), ("10.89.0.2", ["a"]), ("10.89.0.9", [])])
    assert text == f"{hosts.BEGIN}\n10.89.0.2\ta\n{hosts.END}\n"


def test_endpoint_names_put_the_container_name_first() -> None:
    assert hosts.endpoint_names({"name": "web", "aliases": ["www", "web"]}) == ["web", "www"]
    assert hosts.endpoint_names({"name": None, "aliases": ["www"]}) == ["www"]


def _network(root: Path, net_id: str, name: str) -> None:
    (root / "networks" / net_id / "endpoints").mkdir(parents=True)
    store.write_json(
        str(root / "networks" / net_id / "network.json"),
        {"id": net_id, "name": name, "driver": "bridge", "subnet": "10.89.0.0/24",
         "gateway": "10.89.0.1", "bridge": "x", "created": ""},
    )  # fmt: skip


def _endpoint(root: Path, net_id: str, cid: str, ip: str, name: str) -> None:
    record = {"cid": cid, "ip": ip, "name": name, "aliases": [], "mac": "", "veth": ""}
    store.write_json(str(root / "networks" / net_id / "endpoints" / f"{cid}.json"), record)


def test_refresh_rewrites_in_place_and_hides_neighbours_on_the_default_network(
    tmp_path: Path,
) -> None:
    _network(tmp_path, "1" * 64, "bridge")
    _network(tmp_path, "2" * 64, "back")
    _endpoint(tmp_path, "1" * 64, "a", "10.89.0.2", "web")
    _endpoint(tmp_path, "1" * 64, "b", "10.89.0.3", "other")
    _endpoint(tmp_path, "2" * 64, "a", "10.89.1.2", "web")
    _endpoint(tmp_path, "2" * 64, "c", "10.89.1.3", "db")
    for cid in "abc":
        (tmp_path / "containers" / cid).mkdir(parents=True)
        (tmp_path / "containers" / cid / "hosts").write_text("127.0.0.1\tlocalhost\n")
    inode = (tmp_path / "containers" / "a" / "hosts").stat().st_ino

    hosts.refresh(NetworkStore(str(tmp_path)), ["a", "b", "c", "gone"])

    a = (tmp_path / "containers" / "a" / "hosts").read_text()
    assert "10.89.0.2\tweb\n" in a and "10.89.1.3\tdb\n" in a and "other" not in a
    b = (tmp_path / "containers" / "b" / "hosts").read_text()
    assert "10.89.0.3\tother\n" in b and "web" not in b  # default network: itself only
    c = (tmp_path / "containers" / "c" / "hosts").read_text()
    assert "10.89.1.2\tweb\n" in c and "10.89.0.2" not in c
    assert (tmp_path / "containers" / "a" / "hosts").stat().st_ino == inode
    assert not (tmp_path / "containers" / "gone").exists()
