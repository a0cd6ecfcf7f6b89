"""Linux networking on raw frames: namespaces, devices, IPv4/ARP/ICMP/UDP.

Knows nothing of Kubernetes; `emu.k8s` and `emu.flannel` configure it the
way the CNI plugin and flanneld configure the kernel.
"""

from emu.net.bridge import Bridge
from emu.net.device import LINKTYPE_ETHERNET, LINKTYPE_RAW, NetDevice
from emu.net.loopback import Loopback
from emu.net.namespace import Address, Namespace
from emu.net.ping import Ping, PingResult
from emu.net.tun import Tun
from emu.net.udp import UdpSocket
from emu.net.veth import Veth, veth_pair

__all__ = ["Namespace", "Address", "NetDevice", "Bridge", "Veth", "veth_pair", "Loopback", "Tun",
           "UdpSocket", "Ping", "PingResult", "LINKTYPE_ETHERNET", "LINKTYPE_RAW"]
