"""Name → reward class. Built-ins are listed here (imported lazily, so an unused reward's heavy dependencies
are never loaded); anything else is a user's dotted path `pkg.module:function_or_class`.

To add a built-in: write `rewards/<name>.py` with a class that has `name`, `version`/`VERSIONS` and
`__call__(images, prompts, metadata) -> RewardOutput`, then add one line to `BUILTIN_REWARDS`.
"""

from __future__ import annotations

import asyncio
import difflib
import importlib
import inspect
from typing import Any, Sequence

import numpy as np

from rewards.base import RewardOutput
from rewards.spec import RewardSpec

BUILTIN_REWARDS: dict[str, str] = {
    "ocr": "rewards.ocr:OCRReward",
    "geneval": "rewards.geneval:GenEvalReward",
    "clipscore": "rewards.clipscore:CLIPScoreReward",
    "aesthetic": "rewards.aesthetic:AestheticReward",
    "jpeg_compressibility": "rewards.jpeg_compressibility:JPEGCompressibilityReward",
    "pickscore": "rewards.pickscore:PickScoreReward",
    "hpsv2": "rewards.hpsv2:HPSv2Reward",
    "remote": "rewards.remote:RemoteReward",
    "image_consistency": "rewards.image_consistency:ImageConsistencyReward",
    "edit_judge": "rewards.edit_judge:EditJudgeReward",
    "shapes_edit": "rewards.shapes_edit:ShapesEditReward",
}


def _import(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    if not attr:
        raise ValueError(f"reward {target!r}: a user reward is named 'pkg.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"reward {target!r}: cannot import module {module_name!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"reward {target!r}: module {module_name!r} has no attribute {attr!r}") from None


class FunctionReward:
    """Wraps a user function `fn(images, prompts, metadata, **options) -> list[float] | RewardOutput`."""

    def __init__(self, fn: Any, target: str, options: dict[str, Any]):
        self.fn, self.options = fn, options
        self.name = target
        self.version = str(getattr(fn, "version", "user"))

    def __call__(self, images: Sequence[np.ndarray], prompts: Sequence[str],
                 metadata: Sequence[dict[str, Any]]) -> RewardOutput:
        out = self.fn(images, prompts, metadata, **self.options)
        if inspect.isawaitable(out):
            out = asyncio.run(_await(out))
        return out if isinstance(out, RewardOutput) else RewardOutput(scores=out)  # numbers only (base.py)


async def _await(x: Any) -> Any:
    return await x


def build_reward(spec: RewardSpec) -> Any:
    """Instantiate the reward a spec names, pinning its version when the name carries `@version`."""
    if ":" in spec.name:
        target = _import(spec.name)
        if inspect.isclass(target):
            return target(**spec.options)
        return FunctionReward(target, spec.name, spec.options)
    base = spec.base_name
    if base not in BUILTIN_REWARDS:
        close = difflib.get_close_matches(base, BUILTIN_REWARDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown reward {spec.name!r}{hint}; built-ins: {sorted(BUILTIN_REWARDS)}, "
                         "or give a dotted path 'pkg.module:function'")
    cls = _import(BUILTIN_REWARDS[base])
    kwargs = dict(spec.options)
    if spec.pinned_version is not None:
        kwargs["version"] = spec.pinned_version
    return cls(**kwargs)
