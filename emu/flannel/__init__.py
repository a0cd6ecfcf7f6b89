"""flannel: the subnet lease store (etcd key layout), flanneld and its backends.

This package configures `emu.net` the way flanneld configures the kernel.
The lease side (store, leases, subnet_env) takes plain values only.
"""

from emu.flannel.leases import Lease, LeaseError, LeaseEvent, SubnetManager
from emu.flannel.store import Entry, KeyExists, KeyValueStore, MemoryStore, WatchEvent
from emu.flannel.subnet_env import backend_mtu, parse_subnet_env, render_subnet_env

__all__ = [
    "Entry",
    "KeyExists",
    "KeyValueStore",
    "Lease",
    "LeaseError",
    "LeaseEvent",
    "MemoryStore",
    "SubnetManager",
    "WatchEvent",
    "backend_mtu",
    "parse_subnet_env",
    "render_subnet_env",
]
