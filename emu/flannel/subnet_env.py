"""flanneld's /run/flannel/subnet.env: the hand-off from flanneld to the CNI plugin.

flanneld writes the cluster Network, its node's subnet (as the first host
address, the bridge's gateway), the pod MTU left after the backend's
encapsulation, and whether flanneld masquerades; the flannel CNI plugin reads
it back to configure the bridge plugin.  The text matches flannel's
`WriteSubnetFile` (pkg/subnet/subnet.go) byte for byte.
"""

from __future__ import annotations

from ipaddress import IPv4Network

ENCAP_OVERHEAD = {
    "vxlan": 50,  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8 (pkg/backend/vxlan/device.go: MTU - 50)
    "udp": 28,  # IPv4 20 + UDP 8 (pkg/backend/udp: encapOverhead = 28)
    "host-gw": 0,  # plain routing, no encapsulation: the external interface's MTU
}


def backend_mtu(backend_type: str, underlay_mtu: int) -> int:
    """The pod-side MTU flannel advertises for a backend over an underlay of `underlay_mtu`."""
    if backend_type not in ENCAP_OVERHEAD:
        raise ValueError(f"backend_type {backend_type!r} is not one of {', '.join(sorted(ENCAP_OVERHEAD))}")
    if isinstance(underlay_mtu, bool) or not isinstance(underlay_mtu, int):
        raise ValueError(f"underlay_mtu must be an integer, got {underlay_mtu!r}")
    mtu = underlay_mtu - ENCAP_OVERHEAD[backend_type]
    if mtu <= 0:
        raise ValueError(f"underlay_mtu {underlay_mtu} is too small for {backend_type} (overhead {ENCAP_OVERHEAD[backend_type]})")
    return mtu


def render_subnet_env(network: IPv4Network, subnet: IPv4Network, mtu: int, ipmasq: bool) -> str:
    """The subnet.env text: FLANNEL_NETWORK, FLANNEL_SUBNET (first host
    address / prefix, as flannel's `sn.IncrementIP()` writes it), FLANNEL_MTU,
    FLANNEL_IPMASQ (Go's %t: true/false), one per line."""
    if not isinstance(network, IPv4Network):
        raise ValueError(f"network must be an IPv4Network, got {network!r}")
    if not isinstance(subnet, IPv4Network):
        raise ValueError(f"subnet must be an IPv4Network, got {subnet!r}")
    if isinstance(mtu, bool) or not isinstance(mtu, int) or mtu <= 0:
        raise ValueError(f"mtu must be a positive integer, got {mtu!r}")
    gateway = subnet.network_address + 1
    return (
        f"FLANNEL_NETWORK={network}\n"
        f"FLANNEL_SUBNET={gateway}/{subnet.prefixlen}\n"
        f"FLANNEL_MTU={mtu}\n"
        f"FLANNEL_IPMASQ={'true' if ipmasq else 'false'}\n"
    )


def parse_subnet_env(text: str) -> dict[str, str]:
    """KEY=VALUE lines of a subnet.env, as the flannel CNI plugin reads them (blank lines skipped)."""
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, separator, value = line.partition("=")
        if not separator or not key:
            raise ValueError(f"subnet.env line {number} is not KEY=VALUE: {line!r}")
        values[key] = value
    return values
