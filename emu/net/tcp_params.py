"""TCP sysctls of a namespace and the window arithmetic Linux derives from them.

Why a module of its own: every number TCP puts on the wire before any
feedback (the SYN's window and scale, the MSS, the SYN-ACK's window, the
first advertised windows) follows from these settings by Linux's formulas
(net/ipv4/tcp_output.c tcp_select_initial_window, __tcp_select_window,
tcp_input.c tcp_init_buffer_space, tcp_grow_window), so they are computed,
not written down. The defaults are Linux 6.18's on a machine with a few GB
of memory (tcp_rmem[2] 32 MB, hence window scale 10); the kernel export
writes the same values into every namespace.

Congestion control: the namespaces run Reno (`tcp_congestion_control`),
which the kernel export sets too: a namespace inherits the host's default
(bbr on the reference machine), whose pacing timers and model make bulk
transfers differ run to run; Reno's slow start (cwnd += acked) and
congestion avoidance are what this emulator implements.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

TCP_MAX_WSCALE = 14
RMEM_TO_WIN_SCALE = 8
DEFAULT_SCALING_RATIO = 1 << (RMEM_TO_WIN_SCALE - 1)  # 50 %
TCP_INIT_CWND = 10
TCP_MSS_DEFAULT = 536
TCP_MIN_MSS = 88
TCP_MIN_RCVMSS = 536
TCPOLEN_TSTAMP_ALIGNED = 12
GSO_MAX_SIZE = 65536
MAX_QUICKACKS = 16
# SKB_TRUESIZE of the linear part of a TCP skb (tcp_stream_alloc_skb: a
# kmalloc-1024 head plus struct sk_buff); data sits in page fragments on top.
SKB_HEAD_TRUESIZE = 1280


@dataclass
class TcpSysctls:
    """net.ipv4.tcp_* (and net.core.rmem_max) of one namespace (the port range
    is the namespace's `ip_local_port_range`, shared with UDP)."""

    tcp_rmem: tuple[int, int, int] = (4096, 131072, 33554432)
    tcp_wmem: tuple[int, int, int] = (4096, 16384, 4194304)
    rmem_max: int = 212992
    tcp_sack: int = 1
    tcp_timestamps: int = 1
    tcp_window_scaling: int = 1
    tcp_syn_retries: int = 6
    tcp_synack_retries: int = 5
    tcp_syn_linear_timeouts: int = 4
    tcp_retries2: int = 15
    tcp_fin_timeout: int = 60
    tcp_app_win: int = 31
    tcp_pingpong_thresh: int = 1
    tcp_tso_win_divisor: int = 3
    tcp_workaround_signed_windows: int = 0
    tcp_congestion_control: str = "reno"

    def exported(self) -> list[str]:
        """`sysctl -w` arguments that set these values in a real namespace
        (rmem_max is not per namespace: it only matters above tcp_rmem[2])."""
        settings = []
        for item in fields(self):
            if item.name == "rmem_max":
                continue
            value = getattr(self, item.name)
            text = " ".join(map(str, value)) if isinstance(value, tuple) else str(value)
            settings.append(f"net.ipv4.{item.name}={text}")
        return settings


def win_from_space(ratio: int, space: int) -> int:
    """__tcp_win_from_space: the part of a buffer that is payload."""
    return (space * ratio) >> RMEM_TO_WIN_SCALE


def space_from_win(ratio: int, win: int) -> int:
    """__tcp_space_from_win."""
    return (win << RMEM_TO_WIN_SCALE) // ratio


def align(value: int, unit: int) -> int:
    return (value + unit - 1) // unit * unit


def select_initial_window(sysctls: TcpSysctls, space: int, mss: int, window_clamp: int,
                          wscale_ok: bool) -> tuple[int, int, int]:
    """tcp_select_initial_window: (rcv_wnd, window_clamp, rcv_wscale)."""
    space = max(space, 0)
    if window_clamp == 0:
        window_clamp = 0xFFFF << TCP_MAX_WSCALE
    space = min(window_clamp, space)
    if space > mss:
        space = space // mss * mss
    if sysctls.tcp_workaround_signed_windows:
        rcv_wnd = min(space, 32767)
    else:
        rcv_wnd = min(space, 0xFFFF)
    wscale = 0
    if wscale_ok:
        space = max(space, sysctls.tcp_rmem[2], sysctls.rmem_max)
        space = min(space, window_clamp)
        wscale = min(max(space.bit_length() - 1 - 15, 0), TCP_MAX_WSCALE)
    return rcv_wnd, min(0xFFFF << wscale, window_clamp), wscale


def initial_rcv_mss(advmss: int, mss_cache: int, rcv_wnd: int) -> int:
    """tcp_initialize_rcv_mss: a guess of the peer's MSS, at most 536."""
    hint = min(advmss, mss_cache, rcv_wnd // 2, TCP_MIN_RCVMSS)
    return max(hint, TCP_MIN_MSS)
