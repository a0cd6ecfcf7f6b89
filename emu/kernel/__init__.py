"""The real Linux kernel as the emulator's oracle.

Any scenario can be exported to network namespaces (``export_netns``, the
``emu export --netns`` script), run there with real devices, flanneld's udp
proxy on a real TUN (``emu flanneld-udp``) and the real iputils ping, and
captured on every interface (``run_kernel``); ``verify_kernel`` holds the
emulator's run of the same scenario against it, point by point. This
package sits at the scenario level: nothing below it imports it.
"""

from emu.kernel.export import NetnsExport, export_netns
from emu.kernel.live import KernelError, KernelRun, kernel_unavailable, run_kernel, verify_kernel

__all__ = [
    "KernelError",
    "KernelRun",
    "NetnsExport",
    "export_netns",
    "kernel_unavailable",
    "run_kernel",
    "verify_kernel",
]
