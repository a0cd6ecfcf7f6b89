"""emu: a Kubernetes pod-network emulator that works on raw frames.

`emu.Cluster` is the Python entry point (emu/api.py): build a cluster from a
scenario or in code, send bytes or scapy packets, run it on its virtual
clock, read every interface's frames. Layers point down only:
wire <- net <- flannel/k8s <- scenario <- api/cli.
"""

__version__ = "0.1.0"

from emu.api import Capture, Cluster, Command, Interface, Node, Pod  # noqa: E402
from emu.scenario import ScenarioError  # noqa: E402
from emu.sim import SettleError  # noqa: E402

__all__ = ["Capture", "Cluster", "Command", "Interface", "Node", "Pod", "ScenarioError", "SettleError",
           "__version__"]
