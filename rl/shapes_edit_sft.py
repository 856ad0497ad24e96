"""Supervised pre-training of the shapes *editing* generator (`recipes/shapes_edit_sft.yaml`).

The BLIP3o-NEXT objective (shared notes §1) on editing pairs: cross-entropy on the edited image's N tokens given
`instruction + <|vision_start|> reference tokens <|vision_end|> <im_start><S0>`, plus the renderer's flow-matching
loss on the conditioning window (condition dropped 10%, for CFG). As in `rl/sft.py` for text-to-image:
phase 1 (`ar_steps`) trains both; phase 2 (`renderer_steps`) trains the renderer alone on the frozen AR; the
flow-matching gradient stops at the hidden states, so the AR learns only from the token CE and `ar_steps` is the
one knob of how good the AR is (kept small on purpose: GRPO needs room). Phase 1 also trains a throw-away linear
probe to read each window row's slot (0..N) from its hidden state, as `rl/sft.py` does: a 4×4 latent with
sin-cos positions otherwise cannot tell which of the N+1 conditioning vectors belongs to its cell (measured here:
without it the renderer drew 0% of ground-truth edits correctly).

Data: `num_examples` (row, result) pairs: rows of the *train* split drawn uniformly, each result a correct edit
(`rollouts.shapes_edit.edits.apply_edit`, random valid cell for `add`), tokenized by the world's exact VQ; latents
from its PCA VAE. Seeded end to end. Run: `python -m rl.shapes_edit_sft recipes/shapes_edit_sft.yaml`.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rollouts.conditioning import conditioning_window
from rollouts.lm_parts import LogitHead, decoder_of, positions_from_mask, run_decoder


class ShapesEditSFTConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    output_dir: str = Field("runs/shapes_edit_sft", description="metrics.jsonl, summary.json, checkpoint/.")
    save_to: str | None = Field(None, description="Also copy the final checkpoint here.")
    seed: int = 0
    num_examples: int = Field(12000, ge=1)
    codec_fit_scenes: int = Field(1000, ge=10)
    batch_size: int = Field(64, ge=1)
    ar_steps: int = Field(150, ge=0, description="Phase 1: CE + flow matching. Small on purpose.")
    renderer_steps: int = Field(1500, ge=0, description="Phase 2: renderer only, frozen AR.")
    ar_lr: float = Field(1e-3, gt=0)
    renderer_lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(50, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    condition_drop_prob: float = Field(0.1, ge=0, lt=1, description="BLIP3o-NEXT: 0.1.")
    position_loss_weight: float = Field(1.0, ge=0, description="Phase 1 auxiliary loss: a linear probe must read "
                                        "each window row's slot from its hidden state (0 disables).")
    eval_rows_per_tag: int = Field(64, ge=1)
    eval_seed: int = 4321
    log_every: int = Field(25, ge=1)
    num_threads: int = Field(1, ge=1)


def load_config(path: str | Path) -> ShapesEditSFTConfig:
    path = Path(path)
    raw = yaml.safe_load(path.read_text()) or {}
    raw.pop("kind", None)
    try:
        return ShapesEditSFTConfig(**raw)
    except ValidationError as exc:
        raise ValueError(f"{path}: invalid shapes-edit SFT config:\n{exc}") from None


def make_examples(gen, vq, cfg: ShapesEditSFTConfig) -> dict[str, Any]:
    from rollouts.shapes.model import images_to_latents
    from rollouts.shapes_edit.edits import apply_edit, render_objects
    from rollouts.shapes_edit.prompts import shapes_edit_rows

    rng = np.random.default_rng(cfg.seed + 1)
    rows = shapes_edit_rows("train")
    picks = rng.integers(len(rows), size=cfg.num_examples)
    refs = np.stack([rows[int(i)]["reference_image"] for i in picks])
    results = np.stack([render_objects(apply_edit(rows[int(i)], rng)) for i in picks])
    return {"instructions": [rows[int(i)]["instruction"] for i in picks],
            "ref_codes": torch.from_numpy(vq.encode(refs)), "tokens": torch.from_numpy(vq.encode(results)),
            "latents": images_to_latents(gen, results)}


def ar_forward(gen, instructions: list[str], ref_codes: torch.Tensor, tokens: torch.Tensor, with_grad: bool):
    """Teacher-forced pass over edit prompt + result tokens → (CE on the result tokens, window [B, N+1, H])."""
    from rollouts.reference_image import ReferenceMarkers, encode_edit_prompts

    ids, mask = encode_edit_prompts(instructions, ref_codes, gen.tokenizer, gen.vocab,
                                    ReferenceMarkers.from_tokenizer(gen.tokenizer), gen.edit_template)
    n = tokens.shape[1]
    input_ids = torch.cat([ids, gen.vocab.to_ids(tokens)], dim=1)
    full_mask = torch.cat([mask, torch.ones_like(tokens)], dim=1)
    with torch.set_grad_enabled(with_grad):
        hidden = run_decoder(decoder_of(gen.lm), input_ids, full_mask, positions_from_mask(full_mask))
        window = hidden[:, conditioning_window(ids.shape[1], n)]
        logits = LogitHead(gen.lm, gen.vocab.image_id_range)(window[:, :n])  # row j predicts token j+1
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1))
    return ce, window


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def run(cfg: ShapesEditSFTConfig, progress: bool = True) -> dict[str, Any]:
    from rollouts.shapes_edit.evaluate import evaluate_edits
    from rollouts.shapes_edit.model import build_shapes_edit_generator

    torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    log_file = (out / "metrics.jsonl").open("w")
    t0 = time.perf_counter()

    def log(rec: dict[str, Any]) -> None:
        rec["elapsed_s"] = round(time.perf_counter() - t0, 2)
        log_file.write(json.dumps(rec) + "\n")
        log_file.flush()
        if progress:
            print(json.dumps(rec), flush=True)

    gen, vq = build_shapes_edit_generator(cfg.seed, codec_fit_scenes=cfg.codec_fit_scenes)
    ex = make_examples(gen, vq, cfg)
    log({"event": "data", "examples": cfg.num_examples})
    renderer = gen.renderer
    r_params = [p for name, p in renderer.named_parameters() if not name.startswith("vae.")]
    for p in r_params:
        p.requires_grad_(True)
    renderer.train()
    n_window = gen.tokens_per_image + 1
    probe = torch.nn.Linear(gen.lm.config.hidden_size, n_window)
    ar_params = list(gen.lm.parameters()) + list(probe.parameters())
    ar_opt = torch.optim.AdamW(ar_params, lr=cfg.ar_lr, weight_decay=0.0)
    r_opt = torch.optim.AdamW(r_params, lr=cfg.renderer_lr, weight_decay=0.0)
    data_rng = torch.Generator().manual_seed(cfg.seed + 2)
    noise_rng = torch.Generator().manual_seed(cfg.seed + 3)
    total = cfg.ar_steps + cfg.renderer_steps
    for step in range(total):
        joint = step < cfg.ar_steps
        factor = _lr_factor(step if joint else step - cfg.ar_steps, cfg.ar_steps if joint else cfg.renderer_steps,
                            cfg.warmup_steps)
        idx = torch.randint(cfg.num_examples, (cfg.batch_size,), generator=data_rng)
        gen.lm.train(joint)
        ce, window = ar_forward(gen, [ex["instructions"][int(i)] for i in idx], ex["ref_codes"][idx],
                                ex["tokens"][idx], with_grad=joint)
        fm = renderer.training_loss(window.detach(), ex["latents"][idx], generator=noise_rng,
                                    drop_prob=cfg.condition_drop_prob)
        loss = fm + ce if joint else fm
        if joint and cfg.position_loss_weight > 0:
            slots = probe(window)  # [B, N+1, N+1]: which window row is this?
            pos = F.cross_entropy(slots.reshape(-1, n_window), torch.arange(n_window).repeat(slots.shape[0]))
            loss = loss + cfg.position_loss_weight * pos
        ar_opt.zero_grad(set_to_none=True)
        r_opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt, lr, params in ((r_opt, cfg.renderer_lr, r_params), (ar_opt, cfg.ar_lr, None)):
            if params is None and not joint:
                continue
            for group in opt.param_groups:
                group["lr"] = lr * factor
            torch.nn.utils.clip_grad_norm_(params or ar_params, cfg.grad_clip)
            opt.step()
        if step % cfg.log_every == 0 or step == total - 1:
            log({"step": step, "phase": "joint" if joint else "renderer", "ce": round(float(ce.detach()), 4),
                 "fm": round(float(fm.detach()), 4)})
    train_s = time.perf_counter() - t0
    gen.lm.eval()
    renderer.requires_grad_(False)
    renderer.eval()
    t_eval = time.perf_counter()
    heldout = evaluate_edits(gen, rows_per_tag=cfg.eval_rows_per_tag, seed=cfg.eval_seed)
    summary = {"train_wall_s": round(train_s, 1), "eval_wall_s": round(time.perf_counter() - t_eval, 1),
               "ar_steps": cfg.ar_steps, "renderer_steps": cfg.renderer_steps, "threads": cfg.num_threads,
               "heldout": heldout}
    log({"event": "summary", **summary})
    log_file.close()
    ckpt = out / "checkpoint"
    gen.save_pretrained(ckpt)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if cfg.save_to:
        if Path(cfg.save_to).exists():
            shutil.rmtree(cfg.save_to)
        shutil.copytree(ckpt, cfg.save_to)
    return summary


if __name__ == "__main__":
    run(load_config(sys.argv[1]))
