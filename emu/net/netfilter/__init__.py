"""Netfilter as Linux has it, knowing nothing of Kubernetes: iptables tables and
chains (rules.py: the iptables-restore format), their traversal (engine.py),
connection tracking with NAT (conntrack.py), the hooks of a namespace in
Linux's order (hooks.py) and the counters as iptables lists them (listing.py).
kube-proxy and flannel only write rules, as the real ones run iptables-restore."""

from emu.net.netfilter.conntrack import Conntrack
from emu.net.netfilter.engine import Evaluator, PacketInfo, Verdict, address_type_of
from emu.net.netfilter.hooks import HookResult, Netfilter, PacketState
from emu.net.netfilter.rules import Chain, Match, Rule, Ruleset, RulesError, Table, Target, parse_rules

__all__ = ["Chain", "Conntrack", "Evaluator", "HookResult", "Netfilter", "PacketState", "Match", "PacketInfo", "Rule", "Ruleset", "RulesError", "Table", "Target",
           "Verdict", "address_type_of", "parse_rules"]
