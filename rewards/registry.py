"""Name → reward class. Built-ins are listed here (imported lazily, so an unused reward's heavy dependencies
are never loaded); anything else is a user's dotted path `pkg.module:function_or_class`.

To add a built-in: write `rewards/<name>.py` with a class that has `name`, `version`/`VERSIONS` and
`__call__(images, prompts, metadata) -> RewardOutput`, then add one line to `BUILTIN_REWARDS`. A world's own reward
(e.g. `shapes_edit`) lives in its folder and is named in its manifest (`rewards`, worlds/manifest.py); it is found
here by name like a built-in (`known_rewards`).
"""

from __future__ import annotations

import asyncio
import difflib
import importlib
import importlib.util
import inspect
import os
import sys
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
}


def known_rewards() -> dict[str, str]:
    """Name → "module:Class" of every reward a recipe can name without a dotted path: built-ins and the worlds'."""
    import worlds

    return {**worlds.contributions("rewards"), **BUILTIN_REWARDS}


def import_target(target: str, module_dir: str | None = None) -> Any:
    """The object `pkg.module:attr` names. `module_dir` (the recipe's folder, see RewardSpec.module_dir) goes on
    sys.path first, so a user's `myrewards.py` beside the recipe imports without PYTHONPATH."""
    module_name, _, attr = target.partition(":")
    if not attr:
        raise ValueError(f"reward {target!r}: a user reward is named 'pkg.module:function'")
    if module_dir and module_dir not in sys.path:
        sys.path.insert(0, module_dir)
    top = module_name.split(".")[0]
    if not module_dir and importlib.util.find_spec(top) is None and os.getcwd() not in sys.path:
        # Named on the command line (`--reward myrewards:fn`): the current directory, as `python -m` would.
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name.split(".")[0]:
            raise ValueError(f"reward {target!r}: importing module {module_name!r} failed: {exc}") from exc
        raise ValueError(f"reward {target!r}: cannot import module {module_name!r}: no {exc.name}.py (or package) "
                         "in the recipe's folder or the current directory, nor installed; put it beside the recipe, "
                         "run from its folder, or set PYTHONPATH") from exc
    except ImportError as exc:
        raise ValueError(f"reward {target!r}: importing module {module_name!r} failed: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"reward {target!r}: module {module_name!r} has no attribute {attr!r}") from None


NATIVE_SIGNATURE = "fn(images, prompts, metadata, **options) -> list[float] | RewardOutput"
TRL_SIGNATURE = "fn(prompts, completions, **kwargs) -> list[float]   (TRL style: completions = the images)"


def function_style(fn: Any, options: dict[str, Any], target: str = "reward") -> str:
    """'native' or 'trl': how a user reward function is called. TRL's reward functions take keyword arguments
    `prompts` and `completions` (plus the dataset columns as `**kwargs`); ours take (images, prompts, metadata)
    positionally. Anything else is an error that shows both signatures."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return "native"  # a builtin or C callable: nothing to inspect
    params = sig.parameters
    if "completions" in params and "images" not in params:
        try:
            sig.bind(prompts=[], completions=[], **options)
        except TypeError as exc:
            raise ValueError(f"reward {target!r}: TRL-style signature, but it cannot take the options "
                             f"{sorted(options)}: {exc}; expected {TRL_SIGNATURE}") from None
        return "trl"
    try:
        sig.bind([], [], [], **options)
    except TypeError as exc:
        raise ValueError(f"reward {target!r} has the signature {getattr(fn, '__name__', 'fn')}{sig}, which cannot "
                         f"be called as {NATIVE_SIGNATURE} ({exc}); write it like that, or TRL style as "
                         f"{TRL_SIGNATURE}") from None
    return "native"


class FunctionReward:
    """Wraps a user function: `fn(images, prompts, metadata, **options) -> list[float] | RewardOutput`, or TRL
    style `fn(prompts=..., completions=images, **metadata columns, **options) -> list[float]`: each metadata key
    becomes a keyword argument holding one value per image, as TRL passes the dataset's columns."""

    def __init__(self, fn: Any, target: str, options: dict[str, Any]):
        self.fn, self.options = fn, options
        self.name = target
        self.version = str(getattr(fn, "version", "user"))
        self.style = function_style(fn, options, target)

    def __call__(self, images: Sequence[np.ndarray], prompts: Sequence[str],
                 metadata: Sequence[dict[str, Any]]) -> RewardOutput:
        if self.style == "trl":
            columns = {k: [row.get(k) for row in metadata] for k in dict.fromkeys(k for r in metadata for k in r)}
            columns = {k: v for k, v in columns.items() if k not in ("prompts", "completions")}
            out = self.fn(prompts=list(prompts), completions=list(images), **{**columns, **self.options})
        else:
            out = self.fn(images, prompts, metadata, **self.options)
        if inspect.isawaitable(out):
            out = asyncio.run(_await(out))
        return out if isinstance(out, RewardOutput) else RewardOutput(scores=out)  # numbers only (base.py)


async def _await(x: Any) -> Any:
    return await x


def _close(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_reward(spec: RewardSpec) -> list[str]:
    """Every problem with a reward spec that can be found without building it (building may load large weights):
    the name, the module and signature of a user reward, the version, and the option names and types. Imports the
    reward's module (so a missing package shows here), never its weights."""
    try:
        if ":" in spec.name:
            target = import_target(spec.name, spec.module_dir)
            if not inspect.isclass(target):
                function_style(target, spec.options, spec.name)
            else:
                _check_options(spec, target)
            return []
        base = spec.base_name
        known = known_rewards()
        if base not in known:
            raise ValueError(f"unknown reward {spec.name!r}{_close(base, known)}; built-ins: "
                             f"{sorted(known)}, or a dotted path 'pkg.module:function'")
        cls = import_target(known[base])
    except ValueError as exc:
        return [str(exc)]
    versions = tuple(getattr(cls, "VERSIONS", ()) or ())
    problems = []
    version = spec.pinned_version or spec.options.get("version")
    if versions and isinstance(version, str) and version.split("+", 1)[0] not in versions:
        problems.append(f"reward {spec.name!r}: unknown version {version!r}{_close(version, versions)}; "
                        f"{base} has versions {list(versions)}")
        return problems
    return problems + _check_options(spec, cls)


def _check_options(spec: RewardSpec, cls: type) -> list[str]:
    from pydantic import BaseModel, ValidationError

    kwargs = dict(spec.options)
    if spec.pinned_version is not None:
        kwargs["version"] = spec.pinned_version
    label = f"reward {spec.name!r}"
    model = getattr(cls, "OPTIONS", None)
    if isinstance(model, type) and issubclass(model, BaseModel):
        try:
            model.model_validate(kwargs)
        except ValidationError as exc:
            out = []
            for e in exc.errors():
                key = ".".join(str(p) for p in e["loc"])
                if e["type"] == "extra_forbidden":
                    out.append(f"{label}: unknown option {key!r}{_close(e['loc'][-1], model.model_fields)}; "
                               f"options: {sorted(model.model_fields)}")
                else:
                    out.append(f"{label}: option {key!r}: {e['msg']}")
            return out
        return []
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []  # takes anything: checked when built
    names = [n for n, p in params.items() if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [k for k in kwargs if k not in names]
    return [f"{label}: unknown option {k!r}{_close(k, names)}; options: {names}" for k in unknown]


def build_reward(spec: RewardSpec) -> Any:
    """Instantiate the reward a spec names, pinning its version when the name carries `@version`."""
    if ":" in spec.name:
        target = import_target(spec.name, spec.module_dir)
        if inspect.isclass(target):
            return target(**spec.options)
        return FunctionReward(target, spec.name, spec.options)
    base = spec.base_name
    known = known_rewards()
    if base not in known:
        raise ValueError(f"unknown reward {spec.name!r}{_close(base, known)}; built-ins: "
                         f"{sorted(known)}, or give a dotted path 'pkg.module:function'")
    cls = import_target(known[base])
    kwargs = dict(spec.options)
    if spec.pinned_version is not None:
        kwargs["version"] = spec.pinned_version
    return cls(**kwargs)
