"""Worlds: self-contained tasks that plug into nativerl by name (docs/ADDING_A_WORLD.md).

A world is one folder, `worlds/<name>/`: its data, model builders, committed checkpoints, exact checker, rewards,
SFT and evaluation. Its `__init__.py` declares `WORLD = World(...)` (`worlds/manifest.py`): the prompt formats,
presets, renderer/tokenizer classes, rewards, detectors and recipe kinds it provides, as lazy "module:attr" names.

Generic code (`rl/`, `rollouts/`, `rewards/`, ...) never imports a world's modules. Its registries ask this index
for a name they do not know (`lookup("presets", "shapes")`); the index finds the `worlds/` subpackages with
pkgutil, reads each manifest once (a manifest imports nothing heavy) and answers with the "module:attr" string,
which `load_object` imports. Two worlds registering the same name is an error naming both.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from typing import Any

from worlds.manifest import CONTRIBUTION_KINDS, RecipeKind, World

__all__ = ["RecipeKind", "World", "WorldError", "contributions", "get_world", "load_object", "lookup", "refresh",
           "world_names"]


class WorldError(ValueError):
    """A world that cannot be found or read, or two worlds claiming one name."""


_manifests: dict[str, World] | None = None


def refresh() -> None:
    """Forget what was discovered (after a world folder is added at run time, e.g. to `__path__` in a test)."""
    global _manifests
    _manifests = None


def _discover() -> dict[str, World]:
    global _manifests
    if _manifests is None:
        found: dict[str, World] = {}
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
            if not info.ispkg:
                continue  # manifest.py and other plain modules of the index
            module = importlib.import_module(f"{__name__}.{info.name}")
            world = getattr(module, "WORLD", None)
            if not isinstance(world, World):
                raise WorldError(f"worlds/{info.name}/__init__.py defines no WORLD = World(...) "
                                 "(worlds/manifest.py); every subpackage of worlds/ is a world")
            if world.name != info.name:
                raise WorldError(f"worlds/{info.name}/__init__.py: WORLD.name is {world.name!r}; it must be the "
                                 f"folder's name, {info.name!r}")
            found[info.name] = world
        _manifests = found
    return _manifests


def world_names() -> list[str]:
    return sorted(_discover())


def get_world(name: str) -> World:
    """The manifest of world `name`; an unknown name is an error listing the known worlds."""
    worlds = _discover()
    if name not in worlds:
        close = difflib.get_close_matches(name, worlds, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise WorldError(f"unknown world {name!r}{hint}; worlds: {sorted(worlds)} (folders under worlds/)")
    return worlds[name]


def contributions(kind: str) -> dict[str, Any]:
    """Every world's entries of one kind ("presets", "rewards", ...: `CONTRIBUTION_KINDS`), merged: name → value."""
    if kind not in CONTRIBUTION_KINDS:
        raise ValueError(f"unknown contribution kind {kind!r}; kinds: {list(CONTRIBUTION_KINDS)}")
    merged: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for world in _discover().values():
        for key, value in getattr(world, kind).items():
            if key in merged and merged[key] != value:
                raise WorldError(f"{kind} name {key!r} is registered by two worlds, {owner[key]!r} "
                                 f"({merged[key]}) and {world.name!r} ({value}); rename one in its __init__.py")
            merged[key], owner[key] = value, world.name
    return merged


def lookup(kind: str, key: str) -> Any | None:
    """The entry a world registered under `key` for `kind`, or None when no world did."""
    return contributions(kind).get(key)


def load_object(target: str) -> Any:
    """Import the object a "module:attr" string names (the module a world's manifest points at)."""
    module_name, _, attr = target.partition(":")
    if not attr:
        raise WorldError(f"{target!r}: a world's entry is 'package.module:attr'")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise WorldError(f"{target!r}: module {module_name!r} has no attribute {attr!r}") from None
