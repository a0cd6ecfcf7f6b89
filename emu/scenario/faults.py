"""The `faults:` key: deterministic frame loss at chosen capture points.

``faults: [{at: n2/eth0, drop: {direction: in, nth: 3}}]`` drops the 3rd
frame entering n2's eth0 (``out``: leaving it), counted as the device's
``fault-injected`` drop (see emu.net.fault). ``at`` names a node or pod and
one of its veth devices (a node's eth0 or a pod's host-side veth, a pod's
eth0): the devices where the kernel export's nftables netdev rule sees
exactly the frames the emulator counts. The device is checked when the
cluster is built (its name may be a CNI default).
"""

from __future__ import annotations

from emu.scenario.errors import ScenarioError
from emu.scenario.model import FaultSpec, NodeSpec

_FAULT_KEYS = ("at", "drop")
_DROP_KEYS = ("direction", "nth")
_DIRECTIONS = ("in", "out")
_MAX_NTH = 2**31 - 2


def read_fault(value: object, path: str, nodes: list[NodeSpec]) -> FaultSpec:
    """One `faults:` entry, checked (the device itself: `check_fault_device`)."""
    if not isinstance(value, dict) or set(value) - set(_FAULT_KEYS) or "at" not in value or "drop" not in value:
        raise ScenarioError(path, "expected {at: NODE_OR_POD/IFNAME, drop: {direction: in|out, nth: N}}")
    at = value["at"]
    if not isinstance(at, str) or at.count("/") != 1:
        raise ScenarioError(f"{path}.at", f"expected NODE_OR_POD/IFNAME, got {at!r}")
    namespace, device = at.split("/")
    names = {node.name for node in nodes} | {pod.name for node in nodes for pod in node.pods}
    if namespace not in names:
        raise ScenarioError(f"{path}.at", f"no node or pod named {namespace!r}")
    drop = value["drop"]
    if not isinstance(drop, dict) or set(drop) != set(_DROP_KEYS):
        raise ScenarioError(f"{path}.drop", "expected {direction: in|out, nth: N}")
    direction, nth = drop["direction"], drop["nth"]
    if direction not in _DIRECTIONS:
        raise ScenarioError(f"{path}.drop.direction", f"expected in or out, got {direction!r}")
    if isinstance(nth, bool) or not isinstance(nth, int) or not 1 <= nth <= _MAX_NTH:
        raise ScenarioError(f"{path}.drop.nth", f"expected an integer 1..{_MAX_NTH}, got {nth!r}")
    return FaultSpec(namespace, device, direction, nth, path)


def check_faults(faults: tuple[FaultSpec, ...]) -> None:
    """One fault per device and direction: two nftables rules in one hook
    would not both count the frame the first one drops."""
    seen: dict[tuple[str, str, str], str] = {}
    for fault in faults:
        key = (fault.namespace, fault.device, fault.direction)
        if key in seen:
            raise ScenarioError(fault.path, f"{fault.namespace}/{fault.device} already drops a frame going "
                                f"{fault.direction} ({seen[key]}); one fault per device and direction")
        seen[key] = fault.path
