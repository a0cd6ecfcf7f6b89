"""`emu export --netns`: the script that builds a scenario in real namespaces.

These tests read the script (no root needed); tests/test_kernel_live.py runs it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from emu.flannel.udp_backend import net_unreachable, proxy_ttl
from emu.kernel import export_netns
from emu.kernel.flanneld_udp import parse_route
from emu.scenario import load_scenario, load_scenario_text
from emu.scenario.run import run_scenario
from emu.wire.checksum import internet_checksum

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def emu(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emu.cli", *args], capture_output=True,
                          text=True, cwd=ROOT)


def script_of(example: str) -> str:
    return export_netns(load_scenario(ROOT / "examples" / f"{example}.yaml"), "t-").script


def scenario_text(backend: str, underlay_mtu: int = 1500, cni: str = "{}", n2_pods: str = "[{name: b}]",
                  traffic: str = "[{from: a, run: ping -c 1 10.244.2.2}]") -> str:
    return f"""
name: t
net-conf: {{Network: 10.244.0.0/16, SubnetLen: 24, Backend: {backend}}}
underlay: {{subnet: 172.18.0.0/24, mtu: {underlay_mtu}}}
cni: {cni}
nodes:
  - {{name: n1, subnet: 10.244.1.0/24, pods: [{{name: a}}]}}
  - {{name: n2, subnet: 10.244.2.0/24, pods: {n2_pods}}}
traffic: {traffic}
"""


def test_vxlan_reference_cluster_commands():
    script = script_of("vxlan-cross-node")
    expected = [
        'ip -n "${P}n1" link add flannel.1 address 6e:2d:54:00:01:01 mtu 1450 type vxlan id 1 '
        "local 172.18.0.11 dstport 8472 nolearning",
        'ip -n "${P}n1" addr add 10.244.1.0/32 dev flannel.1',
        'ip -n "${P}n1" neigh add 10.244.2.0 lladdr 6e:2d:54:00:02:02 dev flannel.1 nud permanent',
        'bridge -n "${P}n1" fdb append 6e:2d:54:00:02:02 dev flannel.1 dst 172.18.0.12',
        'ip -n "${P}n1" route add 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink',
        'ip -n "${P}n2" route add 10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink',
        'ip -n "${P}n1" link add cni0 address 0a:58:0a:f4:01:01 mtu 1450 type bridge',
        'ip -n "${P}n1" addr add 10.244.1.1/24 dev cni0',
        'ip -n "${P}n1" link add veth1a address ee:ee:00:00:01:0a mtu 1450 type veth peer name eth0 '
        'address 0a:58:0a:f4:01:02 mtu 1450 netns "${P}p1a"',
        'ip -n "${P}n1" link set veth1a type bridge_slave hairpin on',
        'ip -n "${P}p1a" addr add 10.244.1.2/24 dev eth0',
        'ip -n "${P}p1a" route add default via 10.244.1.1 dev eth0',
        'ip -n "${P}n1" addr add 172.18.0.11/24 dev eth0',
        'ip netns exec "${P}n1" sysctl -qw net.ipv4.ip_forward=1',
    ]
    lines = {line.strip() for line in script.splitlines()}
    for line in expected:
        assert line in lines, line
    assert "P=${EMU_PREFIX:-t-}" in script


def test_host_gw_routes_and_mtu():
    script = script_of("host-gw-cross-node")
    assert 'ip -n "${P}n1" route add 10.244.2.0/24 via 172.18.0.12 dev eth0' in script
    assert 'ip -n "${P}n2" route add 10.244.1.0/24 via 172.18.0.11 dev eth0' in script
    assert "flannel" not in script.split("up() {")[1]
    assert "mtu 1500 type bridge" in script


def test_udp_tun_route_and_proxy():
    script = script_of("udp-cross-node")
    assert 'ip -n "${P}n1" tuntap add dev flannel0 mode tun' in script
    assert 'ip -n "${P}n1" link set flannel0 mtu 1472 up' in script
    assert 'ip -n "${P}n1" route add 10.244.0.0/16 dev flannel0 scope global' in script
    assert "start_flanneld_udp n1 flannel0 8285 --route 10.244.2.0/24=172.18.0.12" in script
    assert "wait_flanneld_udp n2 flannel0" in script
    assert "mtu 1472 type bridge" in script


@pytest.mark.parametrize("backend, underlay, flannel_mtu", [
    ("{Type: vxlan}", 9000, 8950), ("{Type: udp}", 9000, 8972), ("{Type: host-gw}", 9000, None),
    ("{Type: vxlan}", 576, 526),
])
def test_mtus_follow_the_underlay(backend, underlay, flannel_mtu):
    script = export_netns(load_scenario_text(scenario_text(backend, underlay)), "t-").script
    pod_mtu = flannel_mtu or underlay
    assert f"mtu {underlay} type veth peer name ul0" in script
    assert f"mtu {pod_mtu} type bridge" in script
    assert f"peer name eth0 address 0a:58:0a:f4:01:02 mtu {pod_mtu} " in script
    if "vxlan" in backend:
        assert f"mtu {flannel_mtu} type vxlan" in script
    if "udp" in backend:
        assert f"link set flannel0 mtu {flannel_mtu} up" in script


def test_cni_settings_override():
    text = scenario_text("{Type: vxlan, VNI: 42, Port: 4789}",
                         cni="{bridge: kube-bridge, mtu: 1300, hairpinMode: false}")
    script = export_netns(load_scenario_text(text), "t-").script
    assert "mtu 1300 type bridge" in script and "link add kube-bridge" in script
    assert "mtu 1450 type vxlan id 42 local 172.18.0.1 dstport 4789 nolearning" in script
    assert "hairpin off" in script and "hairpin on" not in script
    assert re.search(r"peer name eth0 address \S+ mtu 1300 ", script)


def test_node_without_pods_has_no_bridge():
    text = scenario_text("{Type: host-gw}", n2_pods="[]")
    script = export_netns(load_scenario_text(text), "t-").script
    assert 'ip -n "${P}n1" link add cni0' in script
    assert 'ip -n "${P}n2" link add cni0' not in script


def test_values_chosen_by_the_emulator_are_exported():
    """Leases and VTEP MACs nobody wrote in the file: the script must use the emulator's."""
    text = """
name: chosen
seed: 7
net-conf: {Network: 10.244.0.0/16, SubnetLen: 24, Backend: {Type: vxlan}}
nodes:
  - {name: n1, pods: [{name: a}]}
  - {name: n2, pods: [{name: b}]}
traffic: [{from: n1, run: ping -c 1 172.18.0.2}]
"""
    scenario = load_scenario_text(text)
    stats = run_scenario(scenario, None).stats
    script = export_netns(scenario, "t-").script
    leases = stats["flannel"]["leases"]
    assert len(leases) == 2
    other_node = {"172.18.0.1": "n2", "172.18.0.2": "n1"}  # node IPs by file order
    for key, lease in leases.items():
        network = key.rsplit("/", 1)[-1].replace("-", "/")
        gateway = network.split("/")[0]
        vtep_mac = lease["BackendData"]["VtepMAC"]
        remote = other_node[lease["PublicIP"]]
        assert (f'ip -n "${{P}}{remote}" neigh add {gateway} lladdr {vtep_mac} dev flannel.1 '
                "nud permanent") in script
        assert f'ip -n "${{P}}{remote}" route add {network} via {gateway} dev flannel.1 onlink' in script
    for pod in ("a", "b"):
        address = stats["namespaces"][pod]["addresses"][1].removeprefix("eth0: inet ")
        assert f'ip -n "${{P}}{pod}" addr add {address} dev eth0' in script


def test_ipv6_and_link_local_igmp_are_off_before_any_device():
    script = script_of("vxlan-cross-node")
    body = script.split("up() {")[1]
    for ns in ("ul", "n1", "n2", "p1a", "p1b", "p2a"):
        add = body.index(f'ip netns add "${{P}}{ns}"')
        sysctl = body.index(f'ip netns exec "${{P}}{ns}" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 '
                            "net.ipv6.conf.default.disable_ipv6=1 "
                            "net.ipv4.igmp_link_local_mcast_reports=0")
        first_device = body.index(f'ip -n "${{P}}{ns}" link add') if ns in ("ul", "n1", "n2") else None
        assert add < sysctl
        assert first_device is None or sysctl < first_device


def test_every_namespace_carries_the_prefix():
    script = script_of("udp-cross-node")
    body = script.split("up() {")[1]
    assert re.findall(r"ip -n (\S+)", body) and all(
        word.startswith('"${P}') for word in re.findall(r"(?:ip -n|bridge -n|netns exec|netns add|netns) (\S+)",
                                                       body) if word not in ("$ns", '"$P$ns"'))
    assert "NAMESPACES=(ul n1 p1a p1b n2 p2a)" in script


def test_default_prefixes_are_fresh():
    scenario = load_scenario(ROOT / "examples" / "host-gw-same-node.yaml")
    first, second = export_netns(scenario).prefix, export_netns(scenario).prefix
    assert re.fullmatch(r"emu[0-9a-f]{6}-", first) and first != second


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is missing")
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_scripts_are_valid_bash(example, tmp_path):
    proc = emu("export", "--netns", str(example), "--prefix", "t-")
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "s.sh").write_text(proc.stdout)
    assert subprocess.run(["bash", "-n", str(tmp_path / "s.sh")]).returncode == 0


def test_cli_errors_are_one_line():
    for args, needle in [
        (("export", str(EXAMPLES[0])), "--netns"),
        (("export", "--netns", str(EXAMPLES[0]), "--prefix", "bad prefix"), "--prefix"),
        (("flanneld-udp", "--route", "10.244.2.0/24"), "SUBNET=PUBLIC_IP"),
        (("flanneld-udp", "--route", "10.244.2.0/24=300.1.1.1"), "--route"),
        (("verify",), "KERNEL_DIR"),
    ]:
        proc = emu(*args)
        assert proc.returncode == 2, args
        assert proc.stderr.count("\n") == 1 and needle in proc.stderr, proc.stderr


def test_export_writes_a_function_per_event(tmp_path):
    path = tmp_path / "events.yaml"
    path.write_text(scenario_text("{Type: host-gw}") + "events: [{at: 1, remove-node: n2}]\n")
    proc = emu("export", "--netns", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "\nevent_1() {\n" in proc.stdout and "    remove_netns n2\n" in proc.stdout


def test_parse_route():
    subnet, ip = parse_route("10.244.3.0/24=172.18.0.13")
    assert (str(subnet), str(ip)) == ("10.244.3.0/24", "172.18.0.13")
    with pytest.raises(ValueError, match="--route"):
        parse_route("10.244.3.1/24=172.18.0.13")  # host bits set


def _ipv4(ttl: int, protocol: int = 17, frag: int = 0) -> bytes:
    header = bytearray(20)
    header[0], header[8], header[9] = 0x45, ttl, protocol
    header[2:4] = (28).to_bytes(2, "big")
    header[6:8] = frag.to_bytes(2, "big")
    header[12:16], header[16:20] = bytes([10, 244, 1, 2]), bytes([10, 244, 9, 9])
    header[10:12] = internet_checksum(bytes(header)).to_bytes(2, "big")
    return bytes(header) + bytes(8)


def test_proxy_ttl_decrements_and_patches_the_checksum():
    aged = proxy_ttl(_ipv4(64))
    assert aged[8] == 63 and internet_checksum(aged[:20]) == 0
    assert proxy_ttl(_ipv4(1)) == "FLANNELD_TTL_ZERO"
    assert proxy_ttl(b"\x45" * 10) == "FLANNELD_SHORT_PACKET"


def test_net_unreachable_quotes_the_offender():
    reply = net_unreachable(_ipv4(63), bytes([10, 244, 1, 0]))
    assert reply[8] == 8 and reply[12:16] == bytes([10, 244, 1, 0]) and reply[16:20] == bytes([10, 244, 1, 2])
    assert reply[20:22] == b"\x03\x00" and reply[28:56] == _ipv4(63)
    assert net_unreachable(_ipv4(63, protocol=1), bytes(4)) is None
    assert net_unreachable(_ipv4(63, frag=5), bytes(4)) is None


def test_live_commands_get_addresses_for_name_destinations():
    from emu.kernel.processes import command_words as _command_words
    from emu.scenario import load_scenario_text

    text = ("name: n\nnet-conf: {Network: 10.244.0.0/16, Backend: {Type: host-gw}}\n"
            "nodes: [{name: n1, pods: [{name: a1}]}, {name: n2, pods: [{name: b1}]}]\n"
            "traffic:\n  - {from: a1, run: ping -c 1 -W 1 b1}\n"
            "  - {from: b1, run: ping -I eth0 -c 1 10.244.9.9}\n"
            "  - {from: b1, run: nc -u -q 0 a1 5000 &}\n")
    scenario = load_scenario_text(text)
    hosts = {"b1": "10.244.7.2", "eth0": "should-not-be-used"}
    assert _command_words(scenario.traffic[0], hosts) == ["ping", "-c", "1", "-W", "1", "10.244.7.2"]
    assert _command_words(scenario.traffic[1], hosts) == ["ping", "-I", "eth0", "-c", "1", "10.244.9.9"]
    hosts["a1"] = "10.244.3.2"
    assert _command_words(scenario.traffic[2], hosts) == ["nc", "-u", "-q", "0", "10.244.3.2", "5000"]
