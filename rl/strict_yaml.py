"""YAML for recipes and run files: safe types only, no duplicate keys, no alias bombs.

PyYAML's `safe_load` already refuses tags that build Python objects, but it keeps the *last* of two equal keys
(`learning_rate` written twice: the first silently loses) and expands aliases without a bound: nine anchors of nine
aliases each ("billion laughs") load as shared references, and pydantic then walks 10^9 nodes. `load_yaml` refuses
both, naming the file and line:
- a key that appears twice in one mapping (merge keys `<<` may still be overridden, as YAML intends);
- a document whose nodes, with every alias expanded, exceed `MAX_EXPANDED_NODES`, or that uses more than
  `MAX_ALIASES` aliases. Recipes need neither many aliases nor a large expansion; a hand-written recipe has a few
  hundred nodes.
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_ALIASES = 100
MAX_EXPANDED_NODES = 200_000


class StrictYAMLError(yaml.YAMLError):
    """A YAML document refused by `load_yaml` (duplicate key, alias bomb); the message names the place."""


class _StrictLoader(yaml.SafeLoader):
    def __init__(self, stream: Any):
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise StrictYAMLError(f"more than MAX_ALIASES={MAX_ALIASES} aliases (line {mark.line + 1}); a "
                                      "recipe does not need that many")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    continue  # the base constructor reports unhashable keys
                if key in seen:
                    raise StrictYAMLError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1} (first at "
                                          f"line {seen[key].start_mark.line + 1}): which value is meant?")
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: Any, limit: int) -> int:
    """Nodes of the document with every alias expanded (shared nodes are counted once per use), stopping at limit."""
    sizes: dict[int, int] = {}

    def size(n: Any) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        if isinstance(n, yaml.SequenceNode):
            total = 1 + sum(size(c) for c in n.value)
        elif isinstance(n, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in n.value)
        else:
            total = 1
        total = min(total, limit + 1)  # saturate: the exact size of a bomb does not matter
        sizes[id(n)] = total
        return total

    return size(node)


def load_yaml(text: str, source: str = "<yaml>") -> Any:
    """Like `yaml.safe_load`, plus the refusals of the module docstring (StrictYAMLError naming `source`)."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, MAX_EXPANDED_NODES) > MAX_EXPANDED_NODES:
            raise StrictYAMLError(f"{source}: expands to more than MAX_EXPANDED_NODES={MAX_EXPANDED_NODES} nodes "
                                  "through aliases (an alias bomb?)")
        return loader.construct_document(node)
    except RecursionError:
        raise StrictYAMLError(f"{source}: nested too deeply") from None
    except StrictYAMLError as exc:
        message = str(exc)
        raise StrictYAMLError(message if message.startswith(source) else f"{source}: {message}") from None
    finally:
        loader.dispose()
