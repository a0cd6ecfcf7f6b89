"""A wire with latency between a node and the underlay switch, on a real kernel.

Why: the emulator's `underlay: {latency: D}` delays every frame the switch
hands to a node; Linux does that with `tc qdisc ... netem delay D`, but
netem is not in every kernel (CONFIG_NET_SCH_NETEM; the VMs this project
runs on lack it). So the exported script puts a second veth pair between
the node's veth peer (`ulN`, not enslaved) and the switch port: frames
from the node are redirected onto it in the kernel (tc ingress + mirred),
and this relay reads what the switch sends towards the node and writes it
to `ulN` D later, in order, as netem would.

Frames are read and written with PACKET_VNET_HDR, so a frame whose
checksum the sending stack left to offload (CHECKSUM_PARTIAL on a veth)
keeps that state and the kernel completes it on the way out; our own sends
are not read back (PACKET_IGNORE_OUTGOING).
"""

from __future__ import annotations

import collections
import select
import socket
import sys
import time

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
PACKET_OUTGOING = 4
MAX_FRAME = 65536 + 10
SPIN_NS = 200_000  # the last 0.2 ms before a frame is due are waited for by spinning


def _open(ifname: str, receive: bool = True) -> socket.socket:
    """A packet socket on `ifname` (protocol 0: one that only sends)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL) if receive else 0)
    sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    sock.bind((ifname, ETH_P_ALL if receive else 0))
    sock.setblocking(False)
    return sock


def run_wire(node_side: str, switch_side: str, delay_ns: int) -> None:
    """Relay what arrives on `switch_side` to `node_side`, `delay_ns` later,
    until killed; print "ready" once both sockets are bound (the script
    waits for it)."""
    node, switch = _open(node_side, receive=False), _open(switch_side)
    towards_node: collections.deque[tuple[int, bytes]] = collections.deque()
    print("ready", flush=True)
    while True:
        timeout = None
        if towards_node:
            wait_ns = towards_node[0][0] - time.monotonic_ns()
            timeout = max(0.0, (wait_ns - SPIN_NS) / 1e9)
        if select.select([switch], [], [], timeout)[0]:
            while True:
                try:
                    data, address = switch.recvfrom(MAX_FRAME)
                except BlockingIOError:
                    break
                if address[2] != PACKET_OUTGOING:
                    towards_node.append((time.monotonic_ns() + delay_ns, data))
        while towards_node:
            due, data = towards_node[0]
            now = time.monotonic_ns()
            if due - now > SPIN_NS:
                break
            while time.monotonic_ns() < due:
                pass
            node.send(data)
            towards_node.popleft()


def main(argv: list[str]) -> None:  # pragma: no cover - run by the exported script
    run_wire(argv[0], argv[1], int(argv[2]))


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
