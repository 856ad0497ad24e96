"""Atomic training checkpoints: everything a run needs to continue exactly where it stopped.

Layout of `RUN_DIR/checkpoints/step-000N/`:
- `policy/`: the LoRA adapter in standard PEFT format, or the LM's `save_pretrained` (full weights);
- `trainer_state.pt`: optimizer and scheduler state;
- `rng.pt`: python, numpy and torch RNG states;
- `state.json`: step, policy version, prompt-stream position.
A checkpoint is written into `.tmp-step-000N` and renamed into place, so a crash mid-write leaves no half
checkpoint that `latest_checkpoint` could pick. A write that fails (disk full, quota) removes the half-written
folder and raises `CheckpointWriteError` naming the checkpoint, the cause and the free space.

Checkpoints are untrusted input (run directories are shared and copied): the `.pt` files hold only tensors and
plain data and are read with `torch.load(weights_only=True)` (`rollouts/safe_torch_load.py`); a file that pickles
anything else is refused, naming it. Retention (`keep_last`) never deletes the newest checkpoint whose weights are
finite (`state.json` records `weights_finite`), so a run whose weights went NaN still has good weights to go back to.
"""

from __future__ import annotations

import errno
import json
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rollouts.safe_torch_load import safe_torch_load

STEP_DIR = "step-{:06d}"
ABANDONED_DIR = "abandoned-{}"


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, quota, permissions); nothing half-written is left behind."""


@dataclass
class TrainingState:
    step: int  # steps completed
    policy_version: int
    prompt_stream: dict[str, Any]


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as tensors, numbers and tuples only (loadable with weights_only=True)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])


def _weights_finite(policy: Any, lm_state: dict[str, torch.Tensor] | None) -> bool:
    tensors = lm_state.values() if lm_state is not None else policy.trainable_parameters()
    return all(bool(torch.isfinite(t.detach()).all()) for t in tensors if t.is_floating_point())


def _write_failed(final: Path, tmp: Path, exc: BaseException) -> CheckpointWriteError:
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        free = f"{shutil.disk_usage(final.parent).free / 2**20:.0f} MiB free there"
    except OSError:
        free = "free space unknown"
    text = f"{type(exc).__name__}: {exc}"
    full = getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or any(
        s in text for s in ("unexpected pos", "failed writing", "No space left", "File too large", "os error 28",
                            "Disk quota"))
    hint = "; the disk (or quota) is probably full" if full else ""
    err = CheckpointWriteError(getattr(exc, "errno", None) or errno.EIO,
                               f"could not write checkpoint {final} ({text}){hint}; {free}. The half-written "
                               "checkpoint was removed; earlier checkpoints are intact.")
    return err


def save_checkpoint(run_dir: str | Path, state: TrainingState, policy: Any, optimizer: torch.optim.Optimizer,
                    scheduler: Any, keep_last: int | None = None, *, sharded: bool = False,
                    is_main: bool = True) -> Path | None:
    """sharded (FSDP2): every rank must call this. The full LM is gathered (a collective) and rank 0 (`is_main`)
    writes it as an unsharded run would; each rank adds its own optimizer shard (`optimizer-rank{r}.pt`)."""
    import torch.distributed as dist

    root = Path(run_dir) / "checkpoints"
    final = root / STEP_DIR.format(state.step)
    tmp = root / (".tmp-" + final.name)
    lm_state = None
    if sharded:
        lm_state = policy.state_for_sync()  # the full LM, gathered on rank 0
        if is_main:
            root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        dist.barrier()
        # Each rank keeps its own optimizer shard (DTensor state), to be reloaded with the same world size.
        torch.save({"optimizer": optimizer.state_dict()}, tmp / f"optimizer-rank{dist.get_rank()}.pt")
        dist.barrier()
    if not is_main:
        return None
    finite = _weights_finite(policy, lm_state if sharded else None)
    try:
        if not sharded:
            root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        if sharded:
            (tmp / "policy").mkdir()
            policy.lm.save_pretrained(tmp / "policy", state_dict=lm_state)
        else:
            policy.save(tmp / "policy")
        torch.save({"optimizer": None if sharded else optimizer.state_dict(), "sharded": sharded,
                    "scheduler": scheduler.state_dict()}, tmp / "trainer_state.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps(
            {"step": state.step, "policy_version": state.policy_version, "prompt_stream": state.prompt_stream,
             "weights_finite": finite}, indent=1))
    except Exception as exc:  # torch reports a full disk as RuntimeError "unexpected pos", safetensors as its own
        raise _write_failed(final, tmp, exc) from exc
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    if keep_last:
        for old in checkpoints_to_delete(list_checkpoints(run_dir), keep_last):
            shutil.rmtree(old)
    return final


def weights_finite(path: Path) -> bool:
    """Whether a checkpoint's weights are all finite: `state.json`'s record, else (older checkpoints) a scan of the
    policy's safetensors files."""
    try:
        recorded = json.loads((path / "state.json").read_text()).get("weights_finite")
    except (OSError, ValueError):
        return False
    if isinstance(recorded, bool):
        return recorded
    from safetensors import safe_open

    try:
        for f in sorted((path / "policy").glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as handle:
                for key in handle.keys():
                    t = handle.get_tensor(key)
                    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                        return False
    except Exception:  # noqa: BLE001 - an unreadable checkpoint is not a good one
        return False
    return True


def checkpoints_to_delete(checkpoints: list[Path], keep_last: int) -> list[Path]:
    """The checkpoints `keep_last` retires: all but the newest `keep_last`, except the newest one with finite
    weights when none of the kept ones has them (a run whose weights went NaN keeps its last good weights)."""
    old, kept = checkpoints[:-keep_last], checkpoints[-keep_last:]
    if old and not any(weights_finite(p) for p in kept):
        good = next((p for p in reversed(old) if weights_finite(p)), None)
        if good is not None:
            old = [p for p in old if p != good]
    return old


def abandon_checkpoints_after(run_dir: str | Path, step: int) -> Path | None:
    """Move every checkpoint newer than `step` into `checkpoints/abandoned-<UTC time>/` (resuming from an earlier
    step starts a new branch of the run; its checkpoints must never mix with the abandoned branch's). Returns the
    folder, or None when there was nothing newer."""
    newer = [p for p in list_checkpoints(run_dir) if int(p.name.split("-", 1)[1]) > step]
    if not newer:
        return None
    root = Path(run_dir) / "checkpoints"
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target, n = root / ABANDONED_DIR.format(stamp), 1
    while target.exists():
        n += 1
        target = root / ABANDONED_DIR.format(f"{stamp}-{n}")
    target.mkdir()
    for p in newer:
        p.rename(target / p.name)
    return target


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-")
                  and (p / "state.json").is_file())


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def checkpoint_for_step(run_dir: str | Path, step: int | None) -> Path:
    if step is None:
        found = latest_checkpoint(run_dir)
        if found is None:
            raise FileNotFoundError(f"{run_dir}: no checkpoints/step-* directory with a state.json")
        return found
    path = Path(run_dir) / "checkpoints" / STEP_DIR.format(step)
    if not (path / "state.json").is_file():
        have = [p.name for p in list_checkpoints(run_dir)]
        raise FileNotFoundError(f"{path}: no such checkpoint; this run has {have or 'none'}")
    return path


def load_checkpoint(path: Path, policy: Any, optimizer: torch.optim.Optimizer, scheduler: Any) -> TrainingState:
    for name in ("state.json", "trainer_state.pt", "rng.pt", "policy"):
        if not (path / name).exists():
            raise FileNotFoundError(f"checkpoint {path} is incomplete: {name} is missing")
    state = json.loads((path / "state.json").read_text())
    trainer_state = safe_torch_load(path / "trainer_state.pt", "checkpoint's optimizer and scheduler state")
    if trainer_state.get("sharded"):
        # FSDP2: every rank reads the full states rank 0 wrote and keeps its own shards.
        import torch.distributed as dist
        from safetensors.torch import load_file
        from torch.distributed.tensor import DTensor, distribute_tensor

        lm_state: dict[str, torch.Tensor] = {}
        for f in sorted((path / "policy").glob("*.safetensors")):
            lm_state.update(load_file(str(f)))
        with torch.no_grad():
            for name, p in policy.lm.named_parameters():
                if name not in lm_state:
                    if name == "lm_head.weight":  # tied to the embeddings, not saved separately
                        continue
                    raise KeyError(f"{path / 'policy'}: no weights for {name}")
                full = lm_state[name].to(device=p.device, dtype=p.dtype)
                p.copy_(distribute_tensor(full, p.device_mesh, p.placements) if isinstance(p, DTensor) else full)
        shard = path / f"optimizer-rank{dist.get_rank()}.pt"
        if not shard.is_file():
            raise FileNotFoundError(f"{shard} is missing: a sharded (FSDP2) checkpoint resumes with the same "
                                    "number of processes it was written with")
        optimizer.load_state_dict(safe_torch_load(shard, "checkpoint's optimizer shard")["optimizer"])
    else:
        policy.load(path / "policy")
        optimizer.load_state_dict(trainer_state["optimizer"])
    scheduler.load_state_dict(trainer_state["scheduler"])
    restore_rng(safe_torch_load(path / "rng.pt", "checkpoint's RNG state"))
    return TrainingState(step=state["step"], policy_version=state["policy_version"],
                         prompt_stream=state["prompt_stream"])
