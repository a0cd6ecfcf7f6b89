"""Hold a node's netfilter state after a run against the kernel's.

Two more "points" per node with rules, next to the capture points:

- ``<node> iptables``: every rule's packet and byte counters, rule by rule
  (table, chain, position), from the kernel's `iptables-save -c` and the
  emulator's stats.json (``namespaces.<node>.iptables``). Rules are matched
  by position, not text: iptables-save prints rules canonically (`/32`
  added, matches reordered), the position is what both loaded. Policy
  counters are not compared: iptables 1.8's nf_tables backend keeps none
  (its `:CHAIN POLICY [p:b]` stays what iptables-restore set, here [0:0]),
  while stats.json counts packets a policy decided, as the legacy backend.
- ``<node> conntrack``: the connections `conntrack -L` lists, as a multiset
  of lines with what the kernel draws at random masked: the timeout
  (seconds left, on the wall clock), the original direction's source port
  (a client's ephemeral port), the reply direction's destination port (the
  same port, or the one SNAT/MASQUERADE --random-fully chose) and ICMP ids.
"""

from __future__ import annotations

import re
from collections import Counter

from emu.verify.compare import PointResult

_COUNTED_RULE = re.compile(r"\[(\d+):(\d+)\]\s+-A\s+(\S+)")
_MAX_PROBLEMS = 10


def save_counters(text: str) -> dict[tuple[str, str], list[tuple[int, int]]]:
    """(table, chain) -> [(packets, bytes) per rule] from `iptables-save -c`."""
    counters: dict[tuple[str, str], list[tuple[int, int]]] = {}
    table = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":"):
            counters.setdefault((table, line[1:].split()[0]), [])
        elif match := _COUNTED_RULE.match(line):
            counters.setdefault((table, match.group(3)), []).append((int(match.group(1)), int(match.group(2))))
    return counters


def stats_counters(iptables: dict) -> dict[tuple[str, str], list[tuple[int, int]]]:
    """The same shape from stats.json's ``iptables`` of one namespace."""
    return {(table, chain): [(rule["packets"], rule["bytes"]) for rule in entry["rules"]]
            for table, chains in iptables.items() for chain, entry in chains.items()}


def rule_texts(iptables: dict) -> dict[tuple[str, str], list[str]]:
    return {(table, chain): [rule["rule"] for rule in entry["rules"]]
            for table, chains in iptables.items() for chain, entry in chains.items()}


def compare_counters(node: str, kernel_save: str, iptables: dict) -> PointResult:
    """The ``<node> iptables`` point: same chains, same rule count, same counters."""
    kernel, emu, texts = save_counters(kernel_save), stats_counters(iptables), rule_texts(iptables)
    problems: list[str] = []
    for key in sorted(kernel.keys() | emu.keys()):
        table, chain = key
        if key not in emu or key not in kernel:
            side = "kernel" if key in kernel else "emu"
            problems.append(f"{table} {chain}: only in the {side}'s rules")
            continue
        if len(kernel[key]) != len(emu[key]):
            problems.append(f"{table} {chain}: kernel {len(kernel[key])} rules, emu {len(emu[key])}")
            continue
        for index, (theirs, ours) in enumerate(zip(kernel[key], emu[key])):
            if theirs != ours:
                problems.append(f"{table} {texts[key][index]}: kernel {theirs[0]} packets/{theirs[1]} bytes, "
                                f"emu {ours[0]}/{ours[1]}")
    rules = sum(len(value) for value in emu.values())
    return PointResult(f"{node} iptables", not problems, sum(len(v) for v in kernel.values()), rules,
                       problems[:_MAX_PROBLEMS], unit="rules")


def conntrack_key(line: str) -> str:
    """A `conntrack -L` line without what the kernel chooses at random."""
    words = line.split()
    if len(words) < 3:
        return line.strip()
    words = words[:2] + words[3:]  # the timeout
    seen_src = 0
    masked = []
    for word in words:
        name, _, _ = word.partition("=")
        if name == "src":
            seen_src += 1
        if name == "id" or (name == "sport" and seen_src == 1) or (name == "dport" and seen_src == 2):
            word = f"{name}=*"
        masked.append(word)
    return " ".join(masked)


def compare_conntrack(node: str, kernel_lines: list[str], emu_lines: list[str]) -> PointResult:
    """The ``<node> conntrack`` point: the same connections, masked as above."""
    kernel = Counter(conntrack_key(line) for line in kernel_lines if line.strip())
    emu = Counter(conntrack_key(line) for line in emu_lines)
    problems = [f"kernel only: {line}" + (f" (x{n})" if n > 1 else "") for line, n in sorted((kernel - emu).items())]
    problems += [f"emu only: {line}" + (f" (x{n})" if n > 1 else "") for line, n in sorted((emu - kernel).items())]
    return PointResult(f"{node} conntrack", not problems, sum(kernel.values()), sum(emu.values()),
                       problems[:_MAX_PROBLEMS], unit="entries")


def compare_netfilter(kernel_state: dict[str, dict], stats: dict) -> list[PointResult]:
    """Both points of every node the kernel run read (`kernel_state`: node ->
    {"iptables_save": text, "conntrack": lines}) against stats.json."""
    points = []
    for node, state in sorted(kernel_state.items()):
        entry = stats["namespaces"].get(node, {})
        points.append(compare_counters(node, state["iptables_save"], entry.get("iptables", {})))
        points.append(compare_conntrack(node, state["conntrack"], entry.get("conntrack", [])))
    return points
