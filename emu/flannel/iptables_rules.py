"""The iptables rules flanneld installs on a node (pkg/trafficmngr/iptables).

With --ip-masq (kube-flannel's default): FLANNEL-POSTRTG in nat POSTROUTING
leaves kube-proxy's marked packets and pod-network-internal traffic alone and
masquerades pod traffic leaving the pod network (and host traffic entering
it), with --random-fully; and FLANNEL-FWD (--iptables-forward-rules, on by
default) in filter FORWARD accepting
the pod network both ways, so a FORWARD policy of DROP (as Docker sets it)
does not break cross-node pod traffic (flannel-io/flannel#872). flanneld
appends its jumps (`iptables -A`), after the ones kube-proxy inserts.
The rules and their order are masqRules and forwardRules of flannel's
pkg/trafficmngr/iptables/iptables.go (v0.28).
"""

from __future__ import annotations

from ipaddress import IPv4Network

KUBE_PROXY_MARK = "0x4000/0x4000"


def flannel_rules(network: IPv4Network, pod_subnet: IPv4Network, ip_masq: bool = True,
                  random_fully: bool = True, forward: bool = True) -> str:
    """iptables-restore text of flanneld's masquerade (--ip-masq) and forward
    (--iptables-forward-rules, flanneld's default) rules for one node."""
    masquerade = "MASQUERADE --random-fully" if random_fully else "MASQUERADE"
    comment = '-m comment --comment "flanneld masq"'
    lines = []
    if ip_masq:
        lines += ["*nat", ":FLANNEL-POSTRTG - [0:0]",
                  f"-A POSTROUTING {comment} -j FLANNEL-POSTRTG",
                  f"-A FLANNEL-POSTRTG -m mark --mark {KUBE_PROXY_MARK} {comment} -j RETURN",
                  f"-A FLANNEL-POSTRTG -s {pod_subnet} -d {network} {comment} -j RETURN",
                  f"-A FLANNEL-POSTRTG -s {network} -d {pod_subnet} {comment} -j RETURN",
                  f"-A FLANNEL-POSTRTG ! -s {network} -d {pod_subnet} {comment} -j RETURN",
                  f"-A FLANNEL-POSTRTG -s {network} ! -d 224.0.0.0/4 {comment} -j {masquerade}",
                  f"-A FLANNEL-POSTRTG ! -s {network} -d {network} {comment} -j {masquerade}",
                  "COMMIT"]
    if forward:
        comment = '-m comment --comment "flanneld forward"'
        lines += ["*filter", ":FLANNEL-FWD - [0:0]",
                  f"-A FORWARD {comment} -j FLANNEL-FWD",
                  f"-A FLANNEL-FWD -s {network} {comment} -j ACCEPT",
                  f"-A FLANNEL-FWD -d {network} {comment} -j ACCEPT",
                  "COMMIT"]
    return "\n".join(lines) + ("\n" if lines else "")
