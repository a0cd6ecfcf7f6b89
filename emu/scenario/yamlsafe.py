"""A PyYAML loader that reads plain scalars the YAML 1.2 way.

PyYAML implements YAML 1.1, where an unquoted MAC such as 10:11:22:33:44:55
is a base-60 integer, ``010`` is octal, ``on``/``no`` are booleans and
``2024-01-01`` is a date. Scenario files are full of MACs, names and
addresses, so :class:`Yaml12Loader` resolves implicit scalars with the YAML
1.2 core schema only (null, true/false, decimal/0o/0x integers, floats) and
constructs nothing but the JSON data model (dict, list, str, int, float,
bool, None). Every other tag, a duplicate mapping key or a malformed
explicitly tagged scalar is a ``yaml.YAMLError`` with a position, so callers
need to catch that one exception type only.
"""

import math
import re

import yaml
from yaml.constructor import ConstructorError

_TAG = "tag:yaml.org,2002:"

_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_MERGE = re.compile(r"^(?:<<)$")


class Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core-schema scalars and JSON-model values."""

    yaml_implicit_resolvers: dict = {}
    yaml_constructors: dict = {}

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        """Reject a key written twice in one mapping (PyYAML keeps the last)."""
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == _TAG + "merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                if key_node.value in seen:
                    raise ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def _scalar_error(node: yaml.ScalarNode, kind: str) -> ConstructorError:
    shown = node.value if len(node.value) <= 40 else node.value[:37] + "..."
    return ConstructorError(None, None, f"{shown!r} is not {kind}", node.start_mark)


def _construct_null(loader: Yaml12Loader, node: yaml.ScalarNode) -> None:
    if not _NULL.match(loader.construct_scalar(node)):
        raise _scalar_error(node, "null")
    return None


def _construct_bool(loader: Yaml12Loader, node: yaml.ScalarNode) -> bool:
    text = loader.construct_scalar(node)
    if not _BOOL.match(text):
        raise _scalar_error(node, "a boolean")
    return text.lower() == "true"


def _construct_int(loader: Yaml12Loader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node)
    if not _INT.match(text):
        raise _scalar_error(node, "an integer")
    base = {"0o": 8, "0x": 16}.get(text[:2], 10)
    try:
        return int(text[2:] if base != 10 else text, base)
    except ValueError:  # more digits than Python converts
        raise _scalar_error(node, "an integer of sensible size") from None


def _construct_float(loader: Yaml12Loader, node: yaml.ScalarNode) -> float:
    text = loader.construct_scalar(node)
    if not _FLOAT.match(text):
        raise _scalar_error(node, "a number")
    lowered = text.lower()
    if lowered.endswith(".inf"):
        return -math.inf if lowered.startswith("-") else math.inf
    if lowered == ".nan":
        return math.nan
    return float(text)


def _construct_unknown(loader: Yaml12Loader, node: yaml.Node) -> None:
    raise ConstructorError(None, None, f"tag {node.tag!r} is not allowed here", node.start_mark)


for _tag, _regexp, _first in (
    ("null", _NULL, ["~", "n", "N", ""]),
    ("bool", _BOOL, list("tTfF")),
    ("int", _INT, list("-+0123456789")),
    ("float", _FLOAT, list("-+.0123456789")),
    ("merge", _MERGE, ["<"]),
):
    Yaml12Loader.add_implicit_resolver(_TAG + _tag, _regexp, _first)

Yaml12Loader.add_constructor(_TAG + "null", _construct_null)
Yaml12Loader.add_constructor(_TAG + "bool", _construct_bool)
Yaml12Loader.add_constructor(_TAG + "int", _construct_int)
Yaml12Loader.add_constructor(_TAG + "float", _construct_float)
Yaml12Loader.add_constructor(_TAG + "str", yaml.SafeLoader.construct_yaml_str)
Yaml12Loader.add_constructor(_TAG + "seq", yaml.SafeLoader.construct_yaml_seq)
Yaml12Loader.add_constructor(_TAG + "map", yaml.SafeLoader.construct_yaml_map)
Yaml12Loader.add_constructor(None, _construct_unknown)


def load_yaml(text: str) -> object:
    """Parse one YAML document into JSON-model values (raises yaml.YAMLError)."""
    return yaml.load(text, Loader=Yaml12Loader)
