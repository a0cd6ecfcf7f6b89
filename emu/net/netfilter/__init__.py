"""Netfilter as Linux has it, knowing nothing of Kubernetes: iptables tables and
chains (rules.py: the iptables-restore format), their traversal (engine.py).
kube-proxy and flannel only write rules, as the real ones run iptables-restore."""

from emu.net.netfilter.engine import Evaluator, PacketInfo, Verdict, address_type_of
from emu.net.netfilter.rules import Chain, Match, Rule, Ruleset, RulesError, Table, Target, parse_rules

__all__ = ["Chain", "Evaluator", "Match", "PacketInfo", "Rule", "Ruleset", "RulesError", "Table", "Target",
           "Verdict", "address_type_of", "parse_rules"]
