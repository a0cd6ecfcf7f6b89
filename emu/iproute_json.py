"""The emulator's tables in the JSON shapes of iproute2's `-j` output.

Why: a test that checks a node's tables should compare them with what it
knows from the real tool, key for key: `ip -j route show`, `ip -j neigh
show`, `bridge -j fdb show`. The emulator keeps its tables as the text
lines `ip`/`bridge` print (the lines of stats.json); this module turns each
line into the dict iproute2 6.x prints for it (checked on this project's
machine in namespaces):

- route: ``{"dst": "10.244.2.0/24" | "default" | "10.0.0.1", "gateway": ...,
  "dev": ..., "protocol": "kernel", "scope": "link", "prefsrc": ...,
  "metric": N, "flags": ["onlink"]}`` (absent keys are not printed);
- neighbour: ``{"dst": ..., "dev": ..., "lladdr": ..., "state": ["REACHABLE"]}``
  (no lladdr while INCOMPLETE/FAILED);
- fdb: ``{"mac": ..., "ifname": ..., "flags": [], "master": "cni0",
  "state": "permanent" | "static" | ""}`` for a bridge entry (a learned one
  has state ""), ``{"mac": ..., "ifname": "flannel.1", "dst": ...,
  "flags": ["self"], "state": "permanent"}`` for a VXLAN entry.
"""

from __future__ import annotations

_ROUTE_KEYS = {"via": "gateway", "dev": "dev", "proto": "protocol", "scope": "scope", "src": "prefsrc",
               "metric": "metric"}
_ROUTE_ORDER = ("dst", "gateway", "dev", "protocol", "scope", "prefsrc", "metric", "flags")
_ROUTE_FLAGS = ("onlink",)


def route_json(line: str) -> dict:
    """One `ip route` line as `ip -j route` prints it."""
    words = line.split()
    found: dict = {"dst": words[0], "flags": []}
    index = 1
    while index < len(words):
        word = words[index]
        if word in _ROUTE_FLAGS:
            found["flags"].append(word)
            index += 1
            continue
        if word not in _ROUTE_KEYS or index + 1 >= len(words):
            raise ValueError(f"route line {line!r}: unexpected {word!r}")
        value = words[index + 1]
        found[_ROUTE_KEYS[word]] = int(value) if word == "metric" else value
        index += 2
    return {key: found[key] for key in _ROUTE_ORDER if key in found}


def neighbour_json(line: str) -> dict:
    """One `ip neigh` line (`IP dev DEV [lladdr MAC] STATE`) as `ip -j neigh` prints it."""
    words = line.split()
    if len(words) not in (4, 6) or words[1] != "dev" or (len(words) == 6 and words[3] != "lladdr"):
        raise ValueError(f"neighbour line {line!r}: not IP dev DEV [lladdr MAC] STATE")
    found = {"dst": words[0], "dev": words[2]}
    if len(words) == 6:
        found["lladdr"] = words[4]
    found["state"] = [words[-1]]
    return found


def fdb_json(line: str) -> dict:
    """One `bridge fdb` line as `bridge -j fdb` prints it (bridge or VXLAN entry)."""
    words = line.split(" ")
    if len(words) < 3 or words[1] != "dev":
        raise ValueError(f"fdb line {line!r}: not MAC dev DEV ...")
    found: dict = {"mac": words[0], "ifname": words[2]}
    rest = words[3:]
    if rest[:1] == ["dst"]:
        found["dst"] = rest[1]
        rest = rest[2:]
    flags = [word for word in rest if word == "self"]
    found["flags"] = flags
    if "master" in rest:
        found["master"] = rest[rest.index("master") + 1]
    states = [word for word in rest if word in ("permanent", "static")]
    found["state"] = states[0] if states else ""
    return found
