"""kube-proxy in iptables mode: the iptables-restore text it writes for a node.

Written after kube-proxy's pkg/proxy/iptables/proxier.go (syncProxyRules,
writeServiceToEndpointRules, the jump chains it ensures): chain names are
sha256 + base32 of "namespace/name:port" + protocol (KUBE-SVC-, KUBE-EXT-,
KUBE-SEP- with the endpoint), endpoints are picked with
`-m statistic --mode random --probability 1/(n-i)` ("%0.10f"), traffic from
outside the cluster CIDR to a ClusterIP is marked for masquerade (the
local-traffic detector in cluster-cidr mode), NodePort traffic always is,
an endpoint reaching itself through its Service is marked by its KUBE-SEP
chain (hairpin), and KUBE-POSTROUTING masquerades marked packets with
--random-fully. The mark is 1 << masquerade-bit (14: 0x4000).

What this generator leaves out, as a cluster of this emulator has no use
for it: session affinity (-m recent), LoadBalancer and external IPs,
Local traffic policies, health-check node ports, and the nfacct counters
(`-m nfacct`) kube-proxy adds where the kernel has nfnetlink_acct.
Services and endpoints are written in a stable order (by service port
name, endpoints by address); the real kube-proxy iterates a Go map, so its
rule order among services varies, which changes nothing a packet sees.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network


@dataclass(frozen=True)
class ServicePort:
    port: int
    target_port: int
    protocol: str = "TCP"       # TCP or UDP
    name: str = ""
    node_port: int | None = None


@dataclass(frozen=True)
class Service:
    name: str
    cluster_ip: IPv4Address
    ports: tuple[ServicePort, ...]
    endpoints: tuple[IPv4Address, ...]
    namespace: str = "default"
    type: str = "ClusterIP"     # or NodePort


def _hash(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def service_port_name(service: Service, port: ServicePort) -> str:
    """proxy.ServicePortName.String(): namespace/name, plus :port-name if it has one."""
    return f"{service.namespace}/{service.name}" + (f":{port.name}" if port.name else "")


def svc_chain(service: Service, port: ServicePort) -> str:
    return "KUBE-SVC-" + _hash(service_port_name(service, port) + port.protocol.lower())


def ext_chain(service: Service, port: ServicePort) -> str:
    return "KUBE-EXT-" + _hash(service_port_name(service, port) + port.protocol.lower())


def sep_chain(service: Service, port: ServicePort, endpoint: str) -> str:
    return "KUBE-SEP-" + _hash(service_port_name(service, port) + port.protocol.lower() + endpoint)


def kube_proxy_rules(services: list[Service], cluster_cidr: IPv4Network, masquerade_all: bool = False,
                     masquerade_bit: int = 14, random_fully: bool = True) -> str:
    """The iptables-restore input of one sync (plus the jump rules kube-proxy
    ensures in the built-in chains, which it adds with `iptables -I`)."""
    mark = f"{1 << masquerade_bit:#08x}"  # Go's %#08x: 0x004000
    filter_chains = ["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS",
                     "KUBE-PROXY-FIREWALL", "KUBE-FIREWALL"]
    filter_rules = [
        '-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 '
        '! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP']
    nat_chains = ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"]
    masquerade = '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE'
    nat_rules = [f"-A KUBE-POSTROUTING -m mark ! --mark {mark}/{mark} -j RETURN",
                 f"-A KUBE-POSTROUTING -j MARK --xor-mark {mark}",
                 masquerade + (" --random-fully" if random_fully else ""),
                 f"-A KUBE-MARK-MASQ -j MARK --or-mark {mark}"]
    service_rules: list[str] = []
    chain_rules: list[str] = []
    for service, port in sorted(((s, p) for s in services for p in s.ports),
                                key=lambda item: (service_port_name(*item), item[1].protocol)):
        name = service_port_name(service, port)
        protocol = port.protocol.lower()
        match = f"-m {protocol} -p {protocol}"
        if not service.endpoints:
            filter_rules.append(f'-A KUBE-SERVICES -m comment --comment "{name} has no endpoints" {match} '
                                f"-d {service.cluster_ip} --dport {port.port} -j REJECT")
            if service.type == "NodePort" and port.node_port:
                filter_rules.append(f'-A KUBE-EXTERNAL-SERVICES -m comment --comment "{name} has no endpoints" '
                                    f"-m addrtype --dst-type LOCAL {match} --dport {port.node_port} -j REJECT")
            continue
        svc = svc_chain(service, port)
        cluster_ip = f'-m comment --comment "{name} cluster IP" {match} -d {service.cluster_ip} --dport {port.port}'
        service_rules.append(f"-A KUBE-SERVICES {cluster_ip} -j {svc}")
        nat_chains.append(svc)
        if masquerade_all:
            chain_rules.append(f"-A {svc} {cluster_ip} -j KUBE-MARK-MASQ")
        else:
            chain_rules.append(f"-A {svc} {cluster_ip} ! -s {cluster_cidr} -j KUBE-MARK-MASQ")
        if service.type == "NodePort" and port.node_port:
            ext = ext_chain(service, port)
            nat_chains.append(ext)
            nat_rules.append(f'-A KUBE-NODEPORTS -m comment --comment {name} {match} --dport {port.node_port} '
                             f"-j {ext}")
            chain_rules.append(f'-A {ext} -m comment --comment "masquerade traffic for {name} external '
                               f'destinations" -j KUBE-MARK-MASQ')
            chain_rules.append(f"-A {ext} -j {svc}")
        endpoints = sorted(service.endpoints)
        for index, address in enumerate(endpoints):
            endpoint = f"{address}:{port.target_port}"
            sep = sep_chain(service, port, endpoint)
            statistic = ""
            if index < len(endpoints) - 1:
                statistic = f" -m statistic --mode random --probability {1.0 / (len(endpoints) - index):0.10f}"
            chain_rules.append(f'-A {svc} -m comment --comment "{name} -> {endpoint}"{statistic} -j {sep}')
        for address in endpoints:
            endpoint = f"{address}:{port.target_port}"
            sep = sep_chain(service, port, endpoint)
            nat_chains.append(sep)
            chain_rules.append(f"-A {sep} -m comment --comment {name} -s {address} -j KUBE-MARK-MASQ")
            chain_rules.append(f"-A {sep} -m comment --comment {name} {match} -j DNAT --to-destination {endpoint}")
    nat_rules = service_rules + nat_rules + chain_rules
    nat_rules.append('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the '
                     'last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS')
    filter_rules += ["-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
                     f'-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark {mark}/{mark} '
                     "-j ACCEPT",
                     '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack '
                     "--ctstate RELATED,ESTABLISHED -j ACCEPT"]
    lines = ["*filter", *[f":{name} - [0:0]" for name in filter_chains], *_filter_jumps(), *filter_rules, "COMMIT",
             "*nat", *[f":{name} - [0:0]" for name in nat_chains], *_nat_jumps(), *nat_rules, "COMMIT"]
    return "\n".join(lines) + "\n"


def _filter_jumps() -> list[str]:
    """The jumps kube-proxy (and kubelet, for KUBE-FIREWALL) insert at the top of
    the built-in chains, in the order repeated `iptables -I` leaves them."""
    new = "-m conntrack --ctstate NEW"
    return [
        "-A INPUT -j KUBE-FIREWALL",
        f'-A INPUT {new} -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL',
        '-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS',
        f'-A INPUT {new} -m comment --comment "kubernetes externally-visible service portals" '
        "-j KUBE-EXTERNAL-SERVICES",
        f'-A FORWARD {new} -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL',
        '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD',
        f'-A FORWARD {new} -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        f'-A FORWARD {new} -m comment --comment "kubernetes externally-visible service portals" '
        "-j KUBE-EXTERNAL-SERVICES",
        "-A OUTPUT -j KUBE-FIREWALL",
        f'-A OUTPUT {new} -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL',
        f'-A OUTPUT {new} -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
    ]


def _nat_jumps() -> list[str]:
    return [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
    ]
