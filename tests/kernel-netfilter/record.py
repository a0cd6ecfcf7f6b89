"""Record the kernel's behaviour for netfilter in the data path (run as root,
under `flock /tmp/emu-kernel.lock`): a client, a router and a server in
network namespaces (emunfC, emunfR, emunfS), iptables-restore rules in the
router, one traffic command per case, tcpdump on the client's and the
server's eth0, then `iptables-save -c` and `conntrack -L` of the router.

    C eth0 10.0.1.2/24 -- r0 10.0.1.1/24 [R] r1 10.0.2.1/24 -- eth0 10.0.2.2/24 S

Cases with `"topology": "bridge"` (br_netfilter) use instead A and P on
bridge br0 of B (emunfA/B/P), with A's and P's eth0 captured as C_eth0 and
S_eth0 and B's rules:

    A eth0 10.0.5.2 -- vA (hairpin) [B: br0 10.0.5.1/24] vP -- eth0 10.0.5.3 P

A case with `"frames": False` runs real programs on both ends in the
emulator too (`emulated`: the nc lines), and only counters and conntrack
entries are compared (TCP's sequence numbers are the kernel's draw).

Writes tests/kernel-netfilter/<case>/{C_eth0.pcap, S_eth0.pcap,
iptables-save.txt, conntrack.txt, case.json}. tests/test_netfilter_kernel.py
replays the client's (and, for output-dnat, the router's) packets into the
same topology built in the emulator and compares every frame field by field.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
C, R, S = "emunfC", "emunfR", "emunfS"
A, B, P = "emunfA", "emunfB", "emunfP"
BRIDGE_MACS = {"A": "02:00:00:00:05:02", "vA": "02:00:00:00:05:0a", "P": "02:00:00:00:05:03",
               "vP": "02:00:00:00:05:0b", "br0": "02:00:00:00:05:01"}
MACS = {"C": "02:00:00:00:01:02", "r0": "02:00:00:00:01:01", "r1": "02:00:00:00:02:01", "S": "02:00:00:00:02:02"}


def nat(rules: str) -> str:
    return "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n" \
           ":POSTROUTING ACCEPT [0:0]\n" + rules + "COMMIT\n"


def filt(rules: str, forward: str = "ACCEPT") -> str:
    return f"*filter\n:INPUT ACCEPT [0:0]\n:FORWARD {forward} [0:0]\n:OUTPUT ACCEPT [0:0]\n" + rules + "COMMIT\n"


CASES = {
    "forward-drop": {"rules": filt("", forward="DROP"), "from": "C", "run": "ping -c 1 -W 1 10.0.2.2"},
    "forward-reject-udp": {"rules": filt("-A FORWARD -p udp -m udp --dport 9999 -j REJECT\n"), "from": "C",
                           "run": "echo hello | nc -u -w 1 -p 40000 10.0.2.2 9999"},
    "forward-reject-tcp": {"rules": filt("-A FORWARD -p tcp -m tcp --dport 80 -j REJECT --reject-with tcp-reset\n"),
                           "from": "C", "run": "nc -w 1 -p 40002 10.0.2.2 80"},
    "input-reject-prohibited": {"rules": filt("-A INPUT -p udp -j REJECT --reject-with icmp-host-prohibited\n"),
                                "from": "C", "run": "echo hello | nc -u -w 1 -p 40000 10.0.1.1 9999"},
    "dnat-ping": {"rules": nat("-A PREROUTING -d 10.0.9.9/32 -j DNAT --to-destination 10.0.2.2\n"),
                  "from": "C", "run": "ping -c 1 -W 1 10.0.9.9"},
    "dnat-udp-unreachable": {"rules": nat("-A PREROUTING -d 10.0.9.9/32 -p udp -m udp --dport 53 "
                                          "-j DNAT --to-destination 10.0.2.2:5353\n"),
                             "from": "C", "run": "echo hello | nc -u -w 1 -p 40000 10.0.9.9 53"},
    "masquerade": {"rules": nat("-A POSTROUTING -o r1 -j MASQUERADE\n"), "from": "C",
                   "run": "ping -c 1 -W 1 10.0.2.2; echo hello | nc -u -w 1 -p 40000 10.0.2.2 9999"},
    "output-dnat": {"rules": nat("-A OUTPUT -d 10.0.9.9/32 -j DNAT --to-destination 10.0.2.2\n"), "from": "R",
                    "run": "ping -c 1 -W 1 10.0.9.9"},
    "dnat-fragments": {"rules": nat("-A PREROUTING -d 10.0.9.9/32 -j DNAT --to-destination 10.0.2.2\n"),
                       "from": "C", "run": "ping -c 1 -W 1 -s 2000 10.0.9.9", "r1_mtu": 1000},
    "masquerade-tcp": {"rules": nat("-A POSTROUTING -o r1 -j MASQUERADE\n"), "from": "C", "frames": False,
                       "server": "nc -l -p 8080", "run": "echo hello | nc -N -w 1 -p 40004 10.0.2.2 8080",
                       "emulated": {"client": "nc -N -w 1 -p 40004 10.0.2.2 8080", "stdin": "hello\n"}},
    "masquerade-tcp-refused": {"rules": nat("-A POSTROUTING -o r1 -j MASQUERADE\n"), "from": "C", "frames": False,
                               "run": "nc -w 1 -p 40006 10.0.2.2 8081",
                               "emulated": {"client": "nc -w 1 -p 40006 10.0.2.2 8081", "stdin": ""}},
    "bridge-forward-drop": {"topology": "bridge", "rules": filt("", forward="DROP"), "from": "A",
                            "run": "ping -c 1 -W 1 10.0.5.3"},
    "bridge-physdev": {"topology": "bridge", "from": "A",
                       "rules": filt("-A FORWARD -m physdev --physdev-in vA --physdev-is-bridged -j DROP\n"),
                       "run": "ping -c 1 -W 1 10.0.5.3; echo hello | nc -u -w 1 -p 40000 10.0.5.1 9999"},
    "bridge-hairpin-dnat": {"topology": "bridge", "from": "A",
                            "rules": nat("-A PREROUTING -d 10.96.0.10/32 -p udp -m udp --dport 80 "
                                         "-j DNAT --to-destination 10.0.5.2:8080\n"
                                         "-A POSTROUTING -s 10.0.5.2/32 -d 10.0.5.2/32 -j MASQUERADE\n"),
                            "run": "echo hello | nc -u -w 1 -p 40000 10.96.0.10 80"},
    "bridge-hairpin-promisc": {"topology": "bridge", "from": "A", "promisc": True,
                               "rules": filt("-A FORWARD -m conntrack --ctstate INVALID -j DROP\n"
                                             "-A FORWARD -m physdev --physdev-is-bridged -j ACCEPT\n")
                               + nat("-A PREROUTING -d 10.96.0.10/32 -p udp -m udp --dport 80 "
                                     "-j DNAT --to-destination 10.0.5.2:8080\n"
                                     "-A POSTROUTING -s 10.0.5.2/32 -d 10.0.5.2/32 -j MASQUERADE\n"),
                               "run": "echo hello | nc -u -w 1 -p 40000 10.96.0.10 80"},
    "masquerade-clash": {"rules": nat("-A POSTROUTING -o r1 -j MASQUERADE\n"), "from": "C", "frames": False,
                         "c_extra": "10.0.1.3/24",
                         "run": "echo a | nc -u -w 1 -s 10.0.1.2 -p 40000 10.0.2.2 9999; "
                                "echo b | nc -u -w 1 -s 10.0.1.3 -p 40000 10.0.2.2 9999"},
    "dnat-then-reject": {"rules": filt("-A FORWARD -p udp -m udp --dport 5353 -j REJECT\n")
                         + nat("-A PREROUTING -d 10.0.9.9/32 -p udp -m udp --dport 53 "
                               "-j DNAT --to-destination 10.0.2.2:5353\n"),
                         "from": "C", "run": "echo hello | nc -u -w 1 -p 40000 10.0.9.9 53"},
    "defrag-timeout": {"rules": nat("-A PREROUTING -d 10.0.9.9/32 -j DNAT --to-destination 10.0.2.2\n"),
                       "from": "C", "wait": 33,
                       "run": f"python3 {HERE}/first_fragments.py 10.0.9.9 10.0.1.1"},
}


def sh(ns: str | None, command: str, check: bool = True) -> str:
    full = command if ns is None else f"ip netns exec {ns} {command}"
    done = subprocess.run(full, shell=True, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"{full}: {done.stderr.strip()}")
    return done.stdout


def cleanup() -> None:
    for ns in (C, R, S, A, B, P):
        sh(None, f"ip netns del {ns}", check=False)


def build(r1_mtu: int) -> None:
    """The three namespaces; the R-S link has MTU `r1_mtu` at both ends."""
    for ns in (C, R, S):
        sh(None, f"ip netns add {ns}")
        sh(ns, "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 "
               "net.ipv4.igmp_link_local_mcast_reports=0")
        sh(ns, "ip link set lo up")
    sh(None, f"ip link add eth0 netns {C} address {MACS['C']} type veth peer r0 netns {R} address {MACS['r0']}")
    sh(None, f"ip link add eth0 netns {S} address {MACS['S']} type veth peer r1 netns {R} address {MACS['r1']}")
    sh(C, "ip addr add 10.0.1.2/24 dev eth0")
    sh(C, "ip link set eth0 up")
    sh(C, "ip route add default via 10.0.1.1")
    sh(S, "ip addr add 10.0.2.2/24 dev eth0")
    sh(S, "ip link set eth0 up")
    sh(S, "ip route add default via 10.0.2.1")
    sh(R, "ip addr add 10.0.1.1/24 dev r0")
    sh(R, "ip addr add 10.0.2.1/24 dev r1")
    sh(R, f"ip link set r1 mtu {r1_mtu}")
    sh(S, f"ip link set eth0 mtu {r1_mtu}")
    sh(R, "ip link set r0 up")
    sh(R, "ip link set r1 up")
    sh(R, "ip route add 10.0.9.0/24 via 10.0.1.2 dev r0")
    sh(R, "sysctl -qw net.ipv4.ip_forward=1")


def build_bridge() -> None:
    """A and P on bridge br0 of B (10.0.5.1/24), A's port vA in hairpin mode,
    bridge-nf-call-iptables=1 in B."""
    for ns in (A, B, P):
        sh(None, f"ip netns add {ns}")
        sh(ns, "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 "
               "net.ipv4.igmp_link_local_mcast_reports=0")
        sh(ns, "ip link set lo up")
    m = BRIDGE_MACS
    sh(B, f"ip link add br0 address {m['br0']} type bridge")
    for pod, port, address in ((A, "vA", "10.0.5.2"), (P, "vP", "10.0.5.3")):
        key = "A" if pod == A else "P"
        sh(None, f"ip link add eth0 netns {pod} address {m[key]} type veth peer {port} netns {B} "
                 f"address {m[port]}")
        sh(pod, f"ip addr add {address}/24 dev eth0")
        sh(pod, "ip link set eth0 up")
        sh(pod, "ip route add default via 10.0.5.1")
        sh(B, f"ip link set {port} master br0")
        sh(B, f"ip link set {port} up")
    sh(B, "ip link set vA type bridge_slave hairpin on")
    sh(B, "ip addr add 10.0.5.1/24 dev br0")
    sh(B, "ip link set br0 up")
    sh(B, "sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1")


def record(name: str, case: dict) -> None:
    out = HERE / name
    out.mkdir(exist_ok=True)
    bridged = case.get("topology") == "bridge"
    router, left, right = (B, A, P) if bridged else (R, C, S)
    if bridged:
        build_bridge()
        if case.get("promisc"):
            sh(B, "ip link set br0 promisc on")  # as a capture on br0 sets it
    else:
        build(case.get("r1_mtu", 1500))
        if "c_extra" in case:
            sh(C, f"ip addr add {case['c_extra']} dev eth0")
    try:
        subprocess.run(f"ip netns exec {router} iptables-restore", shell=True, input=case["rules"], text=True,
                       check=True)
        dumps = [subprocess.Popen(["ip", "netns", "exec", ns, "tcpdump", "-i", "eth0", "-U", "-n", "-w",
                                   str(out / f"{label}_eth0.pcap")], stderr=subprocess.DEVNULL)
                 for ns, label in ((left, "C"), (right, "S"))]
        if case.get("promisc"):  # tcpdump on br0 (it sets promisc itself)
            dumps.append(subprocess.Popen(["ip", "netns", "exec", B, "tcpdump", "-i", "br0", "-U", "-n", "-w",
                                           str(out / "B_br0.pcap")], stderr=subprocess.DEVNULL))
        server = None
        if "server" in case:
            server = subprocess.Popen(["ip", "netns", "exec", S, "sh", "-c", case["server"]],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        ns = {"C": C, "R": R, "S": S, "A": A, "B": B, "P": P}[case["from"]]
        sh(ns, f"sh -c '{case['run']}'", check=False)
        time.sleep(case.get("wait", 1.5))
        for dump in dumps + ([server] if server is not None else []):
            dump.terminate()
            dump.wait()
        (out / "iptables-save.txt").write_text(
            "\n".join(line for line in sh(router, "iptables-save -c").splitlines() if not line.startswith("#")) + "\n")
        (out / "conntrack.txt").write_text(sh(router, "conntrack -L", check=False))
        (out / "case.json").write_text(json.dumps(case, indent=1) + "\n")
    finally:
        cleanup()


def main() -> None:
    cleanup()
    for name in sys.argv[1:] or CASES:
        record(name, CASES[name])
        print("recorded", name)


if __name__ == "__main__":
    main()
