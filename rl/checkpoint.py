"""Atomic training checkpoints: everything a run needs to continue exactly where it stopped.

Layout of `RUN_DIR/checkpoints/step-000N/`:
- `policy/`: the LoRA adapter in standard PEFT format, or the LM's `save_pretrained` (full weights);
- `trainer_state.pt`: optimizer and scheduler state;
- `rng.pt`: python, numpy and torch RNG states;
- `state.json`: step, policy version, prompt-stream position.
A checkpoint is written into `.tmp-step-000N` and renamed into place, so a crash mid-write leaves no half
checkpoint that `latest_checkpoint` could pick.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

STEP_DIR = "step-{:06d}"


@dataclass
class TrainingState:
    step: int  # steps completed
    policy_version: int
    prompt_stream: dict[str, Any]


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


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
        {"step": state.step, "policy_version": state.policy_version, "prompt_stream": state.prompt_stream}, indent=1))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    if keep_last:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old)
    return final


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
    trainer_state = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=False)
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
        optimizer.load_state_dict(torch.load(shard, map_location="cpu", weights_only=False)["optimizer"])
    else:
        policy.load(path / "policy")
        optimizer.load_state_dict(trainer_state["optimizer"])
    scheduler.load_state_dict(trainer_state["scheduler"])
    restore_rng(torch.load(path / "rng.pt", weights_only=False))
    return TrainingState(step=state["step"], policy_version=state["policy_version"],
                         prompt_stream=state["prompt_stream"])
