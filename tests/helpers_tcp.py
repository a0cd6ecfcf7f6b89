"""TCP test helpers: an nc-like transfer over emulated sockets, and a pcap
reader that keeps the TCP fields Linux does not randomise.

Why: the tests hold the emulator's frames against kernel captures taken
with netcat-openbsd in namespaces (tests/kernel-tcp/); both sides
are decoded here by dpkt, independently of emu.wire.tcp, and compared as
the verifier would: sequence and acknowledgement numbers relative to each
direction's ISN, IP ids relative to each direction's first, timestamps
dropped.
"""

from __future__ import annotations

from pathlib import Path

import dpkt

from emu.net.tcp import TcpSocket
from emu.scenario import load_scenario_text
from emu.scenario.build import EmulatedCluster, build_cluster
from emu.wire.addr import ip_from_str

KERNEL_TCP = Path(__file__).parent / "kernel-tcp"
EXAMPLES = Path(__file__).parent.parent / "examples"


def cluster(backend: str) -> EmulatedCluster:
    """The reference two-node cluster of examples/<backend>-cross-node.yaml, no traffic."""
    text = (EXAMPLES / f"{backend}-cross-node.yaml").read_text()
    text = text[:text.index("\ntraffic:")] + "\ntraffic: []\n"
    return build_cluster(load_scenario_text(text))


def transfer(emulated: EmulatedCluster, size: int, client: str = "p1a", server: str = "p2a",
             server_ip: str = "10.244.2.2", port: int = 5000, start_ns: int = 300_000_000,
             setup_ns: int = 2_000_000, listen: bool = True) -> dict:
    """`nc -l PORT` on `server`, `nc -N SERVER_IP PORT < SIZE bytes` on `client`,
    as netcat-openbsd does them: 16384-byte blocking writes ~2 ms after the
    connection is up, shutdown(SHUT_WR) at the end of input, each side closes
    at EOF (no listener with `listen` False). Returns what the server read and
    the client's error."""
    sim = emulated.sim
    data = bytes(i & 0xFF for i in range(size))
    result = {"received": bytearray(), "error": None}

    def serve() -> None:
        listener = TcpSocket(emulated.cluster.namespace(server))
        listener.reuseaddr = True
        listener.bind(None, port)
        listener.listen(1)

        def on_listener() -> None:
            child = listener.accept()
            if child is None:
                return
            listener.close()

            def on_child() -> None:
                while (chunk := child.recv(16384)) is not None:
                    if not chunk:
                        child.close()
                        return
                    result["received"] += chunk

            child.on_wake = on_child
            on_child()

        listener.on_wake = on_listener

    def connect() -> None:
        sock = TcpSocket(emulated.cluster.namespace(client))
        state = {"offset": 0, "up": False}

        def write() -> None:
            if state["offset"] >= size:
                sock.shutdown_write()
                return
            taken = sock.send(data[state["offset"]:state["offset"] + 16384])
            state["offset"] += taken
            if taken:
                sim.call_process(write)

        def on_wake() -> None:
            if sock.error:
                result["error"] = sock.error
                sock.close()
                return
            if not state["up"]:
                if sock.connected:
                    state["up"] = True
                    sim.call_process_at(sim.now_ns + setup_ns, write)
                return
            while (chunk := sock.recv(16384)) is not None:
                if not chunk:
                    sock.close()
                    return
            if state["offset"] < size and sock.writable:
                write()

        sock.on_wake = on_wake
        sock.connect((ip_from_str(server_ip), port))

    if listen:
        sim.call_process_at(0, serve)
    sim.call_process_at(start_ns, connect)
    return result


def tcp_shape(frames: list[bytes]) -> list[tuple]:
    """Per TCP frame: (source, flags, relative seq, relative ack, data length,
    window, option kinds in order, MSS, window scale, DF, TTL, frame length,
    IP id relative to the direction's first non-zero id, or 0)."""
    isn: dict[bytes, int] = {}
    first_id: dict[bytes, int] = {}
    shape = []
    for frame in frames:
        ip = dpkt.ethernet.Ethernet(frame).data
        if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, dpkt.tcp.TCP):
            continue
        tcp = ip.data
        isn.setdefault(ip.src, tcp.seq)
        peer = isn.get(ip.dst)
        options = dpkt.tcp.parse_opts(tcp.opts)
        kinds = tuple(kind for kind, _ in options)
        values = dict(options)
        ident = 0
        if ip.id:
            ident = (ip.id - first_id.setdefault(ip.src, ip.id)) & 0xFFFF
        shape.append((ip.src, tcp.flags, (tcp.seq - isn[ip.src]) & 0xFFFFFFFF,
                      (tcp.ack - peer) & 0xFFFFFFFF if peer is not None and tcp.flags & 0x10 else 0,
                      len(tcp.data), tcp.win, kinds,
                      int.from_bytes(values[2], "big") if 2 in values else None,
                      values[3][0] if 3 in values else None,
                      bool(ip.df), ip.ttl, len(frame), ident))
    return shape


def pcap_frames(path: Path) -> list[tuple[float, bytes]]:
    with open(path, "rb") as handle:
        return [(ts, bytes(buf)) for ts, buf in dpkt.pcap.Reader(handle)]
