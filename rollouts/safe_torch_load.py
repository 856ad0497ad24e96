"""Torch files from run directories are untrusted: read them without running code, write them so they can be read so.

Run directories (checkpoints, archived rollouts) are shared between people and copied from clusters. A pickle can
name any callable (`__reduce__` → `os.system`), and a full unpickling (torch.load without weights_only) calls it.
Every torch file the project reads goes through `safe_torch_load`: `torch.load(weights_only=True)`, whose unpickler
builds only tensors, numbers, strings, bytes, None and lists / tuples / dicts (plus torch's own allow-list, e.g.
DTensor for FSDP2 optimizer shards). Anything else is refused with `UnsafeFileError` naming the file and the refused
global.

Writers keep to those types: `to_plain` turns the metadata and reward details of a rollout batch into them (numpy
arrays become tagged tensors, numpy scalars Python numbers, other objects their `repr`), and `from_plain` restores
the numpy arrays on load.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

_NDARRAY = "__ndarray__"


class UnsafeFileError(ValueError):
    """A torch file that pickles more than data (code, or objects outside the weights-only allow-list)."""


def safe_torch_load(path: str | Path, what: str) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU; a pickle that needs anything else raises UnsafeFileError."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        detail = next((line.strip() for line in text.splitlines() if "Unsupported" in line or "GLOBAL" in line),
                      text.splitlines()[0] if text else type(exc).__name__)
        detail = detail.replace("WeightsUnpickler error: ", "").split(" was not an allowed global")[0]
        raise UnsafeFileError(
            f"{path}: refused to load this {what}: it pickles more than tensors and plain data ({detail}). nativerl "
            "reads run files with torch.load(weights_only=True) and never runs code from them; a file like this was "
            "not written by nativerl (or by an older version) and may be an attack.") from None


def to_plain(value: Any) -> Any:
    """`value` with only weights-only-loadable types (module docstring)."""
    if value is None or isinstance(value, (bool, int, float, str, bytes, torch.Tensor)):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "biuf":
            return {_NDARRAY: torch.from_numpy(np.ascontiguousarray(value).copy())}
        return to_plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k if isinstance(k, (str, int)) else str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_plain(v) for v in value)
    if isinstance(value, Path):
        return str(value)
    return repr(value)  # an object only the reward knows how to build: kept readable, never re-created


def from_plain(value: Any) -> Any:
    """Inverse of `to_plain` for what it changed reversibly (numpy arrays)."""
    if isinstance(value, dict):
        if set(value) == {_NDARRAY} and isinstance(value[_NDARRAY], torch.Tensor):
            return value[_NDARRAY].numpy()
        return {k: from_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(from_plain(v) for v in value)
    return value
