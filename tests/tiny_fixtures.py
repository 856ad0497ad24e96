"""Builders shared by the tests: the tiny GRPO recipe (tiny preset, two denoising steps, JPEG reward, no samples or
tensorboard) and the tiny random HF CLIP with the CLIP BPE tokenizer that ships in open_clip. Tests import them
(`from tiny_fixtures import tiny_recipe`) and change only what their behaviour needs."""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path
from typing import Any

TINY_RECIPE: dict[str, Any] = {
    "model": {"source": "preset", "preset": "tiny"},
    "rollout": {"sampling": {"top_k": None, "top_p": None}, "renderer": {"num_inference_steps": 2}},
    "rewards": [{"name": "jpeg_compressibility"}],
    "logging": {"sample_every": 0, "tensorboard": False},
}


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` with `changes` applied: nested dicts merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def tiny_recipe(**sections: Any) -> dict[str, Any]:
    """A fresh tiny recipe dict: TINY_RECIPE with `sections` merged in (e.g. trainer={"max_steps": 2})."""
    return merged(TINY_RECIPE, sections)


CIRCLE_AND_THREE = ["a red circle", "a cat", "a tree", "a boat"]


def train_with_one_constant_prompt(tmp_path: Path, monkeypatch: Any, *, name: str, rollout: dict[str, Any],
                                   max_steps: int, other_scale: float) -> list[list[str]]:
    """A tiny LoRA run over `CIRCLE_AND_THREE`, 2 prompts x G = 2 a step: 'a red circle' scores 1.0 for every
    sample (no advantage), the others `image mean / other_scale` (they vary). Returns the prompts each step scored;
    the metrics are in `tmp_path / "run"`."""
    from rl.recipe import Recipe
    from rl.train_loop import train

    seen = tmp_path / "seen.jsonl"
    module = f"{name}_rewards"
    (tmp_path / f"{module}.py").write_text(
        "import json, os\n"
        "def one_constant(images, prompts, metadata):\n"
        "    with open(os.environ['SEEN_PROMPTS'], 'a') as f:\n"
        "        f.write(json.dumps(sorted(set(prompts))) + '\\n')\n"
        f"    return [1.0 if p == 'a red circle' else float(im.mean()) / {other_scale} "
        "for im, p in zip(images, prompts)]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("SEEN_PROMPTS", str(seen))
    recipe = Recipe.model_validate(tiny_recipe(
        name=name, seed=5, torch_threads=1,
        rollout={"prompts": {"format": "inline", "prompts": CIRCLE_AND_THREE}, "prompts_per_step": 2, **rollout},
        rewards=[{"name": f"{module}:one_constant"}],
        trainer={"num_generations": 2, "max_steps": max_steps, "policy": "lora", "learning_rate": 1e-3},
        checkpoint={"every": 0}, eval={"before_and_after": False}))
    train(recipe, tmp_path / "run", progress=False)
    return [json.loads(line) for line in seen.read_text().splitlines()]


def clip_bpe_tokenizer(out_dir: Path):
    """A CLIPTokenizer saved in `out_dir`, built from the CLIP BPE merges bundled with open_clip (no download)."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    out_dir = Path(out_dir)
    with gzip.open(default_bpe()) as f:
        merges = [tuple(m.split()) for m in f.read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tokenizer = CLIPTokenizer.from_pretrained(str(out_dir), model_max_length=77)
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def save_tiny_hf_clip(out_dir: Path, *, projection_dim: int = 16, text_layers: int = 2, vision_layers: int = 2,
                      logit_scale: float | None = None, special_ids: bool = True, seed: int = 0):
    """A tiny random HF CLIP (32-d, 32 px images in 8 px patches) with the CLIP BPE tokenizer and an image
    processor, saved in `out_dir`; returns the model. `projection_dim` 768 is ViT-L/14's width (aesthetic head)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    out_dir = Path(out_dir)
    clip_bpe_tokenizer(out_dir)
    torch.manual_seed(seed)
    ids = dict(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407) if special_ids else {}
    cfg = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=text_layers,
                         num_attention_heads=2, max_position_embeddings=77, **ids),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=vision_layers,
                           num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=projection_dim)
    model = CLIPModel(cfg).eval()
    if logit_scale is not None:
        with torch.no_grad():
            model.logit_scale.fill_(logit_scale)
    model.save_pretrained(str(out_dir))
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        str(out_dir))
    return model
