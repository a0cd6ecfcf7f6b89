"""Each node's iptables as one iptables-restore text, composed at build time.

A real node's rules come from several programs, each running
iptables-restore (or iptables) in turn: kube-proxy (whose jumps it inserts
at the top of the built-in chains), flanneld (which appends its own), the
FORWARD policy an admin or Docker set, and whatever the user adds. They are
merged in that order (emu.net.netfilter.merge_restore) into the one text the
emulator loads into the node's namespace and the kernel export feeds to
iptables-restore, so both run exactly the same rules.
"""

from __future__ import annotations

from emu.flannel.iptables_rules import flannel_rules
from emu.k8s.cluster import Cluster
from emu.k8s.kube_proxy import Service, ServicePort, kube_proxy_rules
from emu.net.netfilter.rules import merge_restore
from emu.scenario.model import NetfilterSpec, NodeSpec


def kube_proxy_services(spec: NetfilterSpec, cluster: Cluster) -> list[Service]:
    """The scenario's Services as kube-proxy sees them: endpoints by pod IP."""
    return [Service(service.name, service.cluster_ip,
                    tuple(ServicePort(port.port, port.target_port, port.protocol, port.name, port.node_port)
                          for port in service.ports),
                    tuple(cluster.pods[pod].ip for pod in service.endpoints if pod in cluster.pods),
                    type=service.type)
            for service in spec.services]


def node_rules(spec: NetfilterSpec, node: NodeSpec, cluster: Cluster, pod_subnet, network) -> str:
    """The merged iptables-restore text of `node` ("" when it has no rule at all)."""
    if not spec.enabled:
        return ""
    texts = []
    if spec.kube_proxy is not None:
        texts.append(kube_proxy_rules(kube_proxy_services(spec, cluster), spec.kube_proxy.cluster_cidr,
                                      spec.kube_proxy.masquerade_all))
    texts.append(flannel_rules(network, pod_subnet, ip_masq=spec.ip_masq, forward=spec.forward_rules))
    policy = node.forward_policy or spec.forward_policy
    if policy != "ACCEPT":
        texts.append(f"*filter\n:FORWARD {policy} [0:0]\nCOMMIT\n")
    texts.append(node.iptables)
    merged = merge_restore(*(text for text in texts if text))
    return "" if merged.strip() == "" else merged
