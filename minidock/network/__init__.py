"""Bridge networking, the way Docker's default ``bridge`` driver does it.

A *network* is a Linux bridge (a software switch) on the host that owns one IPv4 subnet;
the bridge carries the subnet's first address, so for its containers the host is the
gateway. A container joins a network through a *veth pair*, two virtual NICs wired back
to back: one end is a port of the bridge, the other lives in the container's network
namespace as ``eth0``. Packets leaving the subnet are routed by the host
(``net.ipv4.ip_forward``) and rewritten by netfilter (MASQUERADE) to the host's own
address; published ports are either forwarded by a userland shim or DNAT-ed by the
kernel.

Modules:

* ``networks`` — the network store under ``ROOT/networks/`` (create, get, remove, prune)
  and the choice of a free subnet;
* ``ipam`` — per-network IP address allocation;
* ``bridge`` — bridges and veth pairs over rtnetlink (pyroute2);
* ``nat`` — iptables chains: MASQUERADE, isolation between networks, DNAT for ports;
* ``hosts`` — ``/etc/hosts`` entries so containers on a network find each other by name;
* ``hook`` — the OCI hooks (``createRuntime`` and ``poststop``) that wire a container in
  and out;
* ``proxy`` — the userland port-forwarding shim.
"""
