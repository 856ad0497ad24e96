"""Supervised pre-training of the shapes *editing* generator (`recipes/shapes_edit_sft.yaml`).

Starts from the committed **text-to-image** checkpoint (`worlds/shapes/pretrained`, `init_from`), widened to the
editing tokenizer (`worlds.shapes_edit.model.edit_generator_from_text_to_image`). Its renderer already draws
what the tokens say (99.5% of ground-truth scenes); a renderer trained from scratch on editing pairs did not (the
first attempt here: 0–11% of ground-truth edits, held-out editing accuracy 4.7%). So the renderer stays **frozen**
by default and only the AR learns to edit: cross-entropy on the edited image's N tokens given
`instruction <|vision_start|> reference tokens <|vision_end|> <im_start><S0>`.

What keeps the frozen renderer able to read the AR once the AR sees a new context (reference tokens before the
window): the two losses that made the text-to-image renderer work, imported from `worlds/shapes/sft.py`:
- `window_readout_loss` with the **same** frozen readouts (`window_readout(..., readout_seed)`, the text-to-image
  SFT's seed): window rows must keep saying "slot k, code c" along the directions the renderer learned to read.
- `flow_matching_loss` (sigma biased to [0.7, 1]) through the frozen renderer, its gradient reaching the AR only:
  the AR's hidden states are pulled toward what this renderer can draw.
Measured (2-core CPU, 600 AR steps, 192 held-out ground-truth edits rendered through the frozen renderer): before
any step 0% (the new context moves the hidden states); CE alone 0% (CE fell to 0.05, yet the renderer could read
none of it: readout loss 4.7, flow matching 3.7); CE + readout 45%; CE + readout + flow matching 100%.

`ar_steps` is the one knob of how good the editor is, kept small on purpose so GRPO has room. An optional phase 2
(`renderer_steps`, 0 by default) fine-tunes the renderer on the frozen AR as `worlds/shapes/sft.py` does.

Data: `num_examples` (row, result) pairs: rows of the *train* split drawn uniformly, each result a correct edit
(`worlds.shapes_edit.edits.apply_edit`, random valid cell for `add`), tokenized by the checkpoint's VQ; latents
from its PCA VAE. Seeded end to end. Run: `nativerl train recipes/shapes_edit_sft.yaml` (or
`python -m worlds.shapes_edit.sft recipes/shapes_edit_sft.yaml`).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from rollouts.conditioning import conditioning_window
from rollouts.lm_parts import LogitHead, decoder_of, positions_from_mask, run_decoder
from worlds.shapes.sft import _lr_factor, flow_matching_loss, window_readout, window_readout_loss


class ShapesEditSFTConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    output_dir: str = Field("runs/shapes_edit_sft", description="metrics.jsonl, summary.json, checkpoint/.")
    save_to: str | None = Field(None, description="Also copy the final checkpoint here.")
    init_from: str = Field("worlds/shapes/pretrained", description="The text-to-image shapes checkpoint whose "
                           "AR, renderer, VAE and VQ the editor starts from.")
    seed: int = 0
    num_examples: int = Field(12000, ge=1)
    batch_size: int = Field(64, ge=1)
    ar_steps: int = Field(150, ge=0, description="Phase 1: AR only (CE + readout + flow matching through the "
                          "frozen renderer). Small on purpose.")
    renderer_steps: int = Field(0, ge=0, description="Optional phase 2: renderer only, frozen AR.")
    ar_lr: float = Field(1e-3, gt=0)
    renderer_lr: float = Field(3e-3, gt=0, description="worlds/shapes/sft.py's value (1e-3 plateaued there).")
    warmup_steps: int = Field(20, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    ce_weight: float = Field(1.0, ge=0)
    window_readout_weight: float = Field(1.0, ge=0, description="worlds/shapes/sft.py's auxiliary readout loss "
                                         "(0 disables).")
    readout_seed: int = Field(0, description="Seed of the text-to-image SFT that trained `init_from`: its "
                              "readouts are the directions the renderer reads.")
    fm_weight: float = Field(1.0, ge=0, description="Flow matching through the frozen renderer, into the AR.")
    condition_drop_prob: float = Field(0.1, ge=0, lt=1, description="BLIP3o-NEXT: 0.1.")
    high_sigma_fraction: float = Field(0.5, ge=0, le=1)
    high_sigma_min: float = Field(0.7, ge=0, lt=1)
    eval_rows_per_tag: int = Field(64, ge=1)
    eval_seed: int = 4321
    log_every: int = Field(25, ge=1)
    num_threads: int = Field(1, ge=1)


def load_config(path: str | Path) -> ShapesEditSFTConfig:
    """The YAML at `path` as a ShapesEditSFTConfig, with the recipes' key checking."""
    from rl.recipe import load_recipe

    return load_recipe(path, schema=ShapesEditSFTConfig)


def make_examples(gen, vq, cfg: ShapesEditSFTConfig) -> dict[str, Any]:
    from worlds.shapes.model import images_to_latents
    from worlds.shapes_edit.edits import apply_edit, render_objects
    from worlds.shapes_edit.prompts import shapes_edit_rows

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


def run(cfg: ShapesEditSFTConfig, progress: bool = True) -> dict[str, Any]:
    from worlds.shapes.model import IMAGE_TOKENIZER_SUBDIR
    from worlds.shapes_edit.evaluate import evaluate_edits, evaluate_ground_truth_edits
    from worlds.shapes_edit.model import edit_generator_from_text_to_image

    torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sft_config.json").write_text(cfg.model_dump_json(indent=2))
    log_file = (out / "metrics.jsonl").open("w")
    t0 = time.perf_counter()

    def log(rec: dict[str, Any]) -> None:
        rec["elapsed_s"] = round(time.perf_counter() - t0, 2)
        log_file.write(json.dumps(rec) + "\n")
        log_file.flush()
        if progress:
            print(json.dumps(rec), flush=True)

    if not Path(cfg.init_from).is_dir():
        raise FileNotFoundError(f"init_from: {cfg.init_from} is not a directory (the text-to-image checkpoint)")
    gen, vq = edit_generator_from_text_to_image(cfg.init_from)
    ex = make_examples(gen, vq, cfg)
    log({"event": "data", "examples": cfg.num_examples, "new_tokens": gen.load_report["new_tokens"]})
    before = evaluate_ground_truth_edits(gen, vq, rows_per_tag=cfg.eval_rows_per_tag, seed=cfg.eval_seed)
    log({"event": "renderer_on_ground_truth_before", **before})

    renderer = gen.renderer
    r_params = [p for name, p in renderer.named_parameters() if not name.startswith("vae.")]
    renderer.requires_grad_(False)
    renderer.eval()  # frozen in phase 1: its gradient flows into the AR only
    n_window = gen.tokens_per_image + 1
    readout = window_readout(gen.lm.config.hidden_size, n_window, gen.vocab.num_image_tokens, cfg.readout_seed)
    ar_params = list(gen.lm.parameters())
    ar_opt = torch.optim.AdamW(ar_params, lr=cfg.ar_lr, weight_decay=0.0)
    r_opt = torch.optim.AdamW(r_params, lr=cfg.renderer_lr, weight_decay=0.0)
    data_rng = torch.Generator().manual_seed(cfg.seed + 2)
    noise_rng = torch.Generator().manual_seed(cfg.seed + 3)
    total = cfg.ar_steps + cfg.renderer_steps
    for step in range(total):
        joint = step < cfg.ar_steps  # phase 1: the AR learns; phase 2: the renderer does
        if step == cfg.ar_steps:
            for p in r_params:
                p.requires_grad_(True)
            renderer.train()
        factor = _lr_factor(step if joint else step - cfg.ar_steps, cfg.ar_steps if joint else cfg.renderer_steps,
                            cfg.warmup_steps)
        idx = torch.randint(cfg.num_examples, (cfg.batch_size,), generator=data_rng)
        tokens = ex["tokens"][idx]
        gen.lm.train(joint)
        ce, window = ar_forward(gen, [ex["instructions"][int(i)] for i in idx], ex["ref_codes"][idx], tokens,
                                with_grad=joint)
        fm = flow_matching_loss(renderer, window, ex["latents"][idx], generator=noise_rng,
                                drop_prob=cfg.condition_drop_prob, high_sigma_fraction=cfg.high_sigma_fraction,
                                high_sigma_min=cfg.high_sigma_min)
        readout_loss = window_readout_loss(window, tokens, readout) if joint else torch.zeros(())
        if joint:
            loss = cfg.ce_weight * ce + cfg.window_readout_weight * readout_loss + cfg.fm_weight * fm
            opt, lr, params = ar_opt, cfg.ar_lr, ar_params
        else:
            loss, opt, lr, params = fm, r_opt, cfg.renderer_lr, r_params
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for group in opt.param_groups:
            group["lr"] = lr * factor
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        if step % cfg.log_every == 0 or step == total - 1:
            log({"step": step, "phase": "ar" if joint else "renderer", "ce": round(float(ce.detach()), 4),
                 "fm": round(float(fm.detach()), 4), "readout_loss": round(float(readout_loss.detach()), 4)})
    train_s = time.perf_counter() - t0
    gen.lm.eval()
    renderer.requires_grad_(False)
    renderer.eval()
    t_eval = time.perf_counter()
    summary = {"init_from": cfg.init_from, "train_wall_s": round(train_s, 1), "ar_steps": cfg.ar_steps,
               "renderer_steps": cfg.renderer_steps, "threads": cfg.num_threads,
               "renderer_on_ground_truth_before": before,
               "renderer_on_ground_truth": evaluate_ground_truth_edits(gen, vq, rows_per_tag=cfg.eval_rows_per_tag,
                                                                       seed=cfg.eval_seed),
               "heldout": evaluate_edits(gen, rows_per_tag=cfg.eval_rows_per_tag, seed=cfg.eval_seed)}
    summary["eval_wall_s"] = round(time.perf_counter() - t_eval, 1)
    log({"event": "summary", **summary})
    log_file.close()
    ckpt = out / "checkpoint"
    gen.save_pretrained(ckpt)  # also writes image_tokenizer/ (the VQ), which editing rollouts need
    if not (ckpt / IMAGE_TOKENIZER_SUBDIR).is_dir():
        vq.save_pretrained(ckpt / IMAGE_TOKENIZER_SUBDIR)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if cfg.save_to:
        if Path(cfg.save_to).exists():
            shutil.rmtree(cfg.save_to)
        shutil.copytree(ckpt, cfg.save_to)
        (Path(cfg.save_to) / "sft_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run_recipe(cfg: ShapesEditSFTConfig, progress: bool = True) -> Path:
    """`nativerl train` on a `kind: shapes_edit_sft` recipe (the world's RecipeKind): train, return the run folder."""
    run(cfg, progress=progress)
    return Path(cfg.output_dir)


if __name__ == "__main__":
    run(load_config(sys.argv[1]))
