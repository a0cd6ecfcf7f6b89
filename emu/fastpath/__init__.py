"""The flow cache: walk the slow path once per flow, replay the walk for the rest.

Why: a datagram's hop-by-hop walk (veths, bridge, routing, VXLAN or flannel
encapsulation, delivery) costs tens of microseconds in Python, but every
datagram of a flow takes the same decisions. This package sits above
emu.net and reaches it through two seams only: it is the simulation's
offload (`Scheduler.offload`, asked by `UdpSocket.sendto_batch` for every
step of a burst) and, while it records, an observer (emu.net.observe).
Nothing in emu.net refers to it; without it every burst walks the slow path.

A burst is a process: `sendto_batch` runs as process-context steps (see
emu.sim), and each datagram's whole same-instant chain (every hop, every
queue) runs before the process sends the next one, as in Linux, where the
softirq backlog runs when the send system call re-enables bottom halves.
So one datagram's walk is a closed unit, and M walks of a flow are M copies
of it, one after the other.

Recording (recorder.py): every frame shown to a device's taps, in order,
the counters each event changed, the IP identifiers each stack consumed,
FDB entries learned and looked up, neighbour entries used, the terminal
delivery, and the generation of every piece of state the walk read
(namespaces, FDBs, neighbour tables, sockets). Replay by whitelist: only a
walk whose every step the recorder knows how to reproduce is cached.

Replay of M datagrams, in one step (cache.py, replay.py): counters += M x
the recorded change, each stack's identifier counter advances as M walks in
a row would, FDB entries and neighbours are refreshed, taps get the exact
frames datagram after datagram (templates.py: payload, identifiers and
IPv4/UDP checksums recomputed with numpy over the batch, from the split
sums of emu.wire.partial_checksum), the terminal socket gets the datagrams.
A replay is valid while every generation it read is unchanged and, at the
batch's instant, every looked-up FDB entry is live (ageing is lazy) and
every neighbour used is in a state where the slow path just sends. When
other events are due at the same instant, a step replays one datagram only
and lets them run in between, as the slow path would.

Taps (emu.net.device.Tap) are called ``tap(ts_ns, frame)`` (with
``outgoing`` as a third argument for a tap whose ``with_direction`` is
true, as the slow path calls it). A tap that
also has a ``batch_sink`` attribute (not None) may take a whole replay
instead: the cache calls ``sink.record_interleaved(ts_ns, frames)`` once
per sink and replay, ``frames`` being the (tap, matrix, outgoing) triples of
that sink's taps in the order one datagram meets them, each matrix the (M, length)
uint8 rows (read-only) of one template; the sink must leave exactly the
trace of calling ``tap(ts_ns, bytes(matrix[j]))`` for each row j, for each
pair in order (``ts_ns`` may also be an integer array, one instant per
row). A sink with ``defer(batch, points)`` may take a replay's frames to
write later (deferred.py): it calls ``batch.write()``, which hands them to
``record_interleaved``, before anything else reaches it. emu.capture's
capture points are such taps, their capture set such a sink.

Install it with `flow_cache(sim)` (emu.scenario's build_cluster does);
`flow_cache(sim).enabled = False` gives the slow reference.
"""

from emu.fastpath.cache import MAX_REPLAY, FastPathStats, FlowCache, flow_cache
from emu.fastpath.errors import Unsupported

__all__ = ["flow_cache", "FlowCache", "FastPathStats", "Unsupported", "MAX_REPLAY"]
