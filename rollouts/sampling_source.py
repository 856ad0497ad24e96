"""`rollout.sampling.source`: where top-k / top-p come from. Resolved once, when the model is loaded.

- `recipe` (default): the values written in the recipe (BLIP3o-NEXT's inference.py: top_k 1200, top_p 0.95).
- `checkpoint`: as BLIP3o-NEXT's GRPO rollouts. Upstream's `generate_images` calls HF
  `generate(do_sample=True, temperature=1.0)` without top-k/top-p, so HF takes them from the checkpoint's
  `generation_config.json` (Qwen3's: top_k 20, top_p 0.95), and HF's own defaults (top_k 50, top_p 1.0) for keys
  the file lacks. The file's temperature is *not* used (upstream passes 1.0 explicitly): the recipe's temperature
  stays, as does `restrict_to_image_tokens`.

How the image-token restriction interacts: upstream samples over the full vocabulary. With
`restrict_to_image_tokens: true` the same temperature/top-k/top-p are applied to the image-token slice only, so the
sampler never draws a text token; the kept set is then "the k most likely *image* tokens" rather than "the k most
likely tokens". A recipe reproducing upstream exactly sets it false (a drawn text token is kept as is: the
renderer conditions on hidden states, as upstream's, and the trainer scores it like any other token).

Values the recipe sets explicitly must agree with the file (a resumed run's config.yaml holds the resolved values,
so it agrees); anything else is an error that names both. Sampling processors nativerl does not implement
(repetition penalty, min-p, typical-p, ...) set to a non-neutral value in the file are an error too, rather than
silently sampling differently from upstream.
"""

from __future__ import annotations

from typing import Any

from rollouts.config import SamplingConfig

HF_DEFAULTS = {"top_k": 50, "top_p": 1.0}  # transformers GenerationConfig defaults
# generation_config keys that change HF sampling, with their neutral values; nativerl samples without them.
UNSUPPORTED_NEUTRAL = {"repetition_penalty": 1.0, "min_p": None, "typical_p": 1.0, "epsilon_cutoff": 0.0,
                       "eta_cutoff": 0.0, "no_repeat_ngram_size": 0, "encoder_repetition_penalty": 1.0,
                       "top_h": None}


def checkpoint_sampling_values(generation_config: dict[str, Any], where: str) -> dict[str, Any]:
    """{top_k, top_p} as HF `generate` would use them with this generation_config (None = disabled)."""
    bad = {k: generation_config[k] for k, neutral in UNSUPPORTED_NEUTRAL.items()
           if generation_config.get(k, neutral) not in (neutral, None)}
    if bad:
        raise ValueError(f"{where} sets {bad}: nativerl's sampler implements temperature/top-k/top-p only; use "
                         "rollout.sampling.source: recipe")
    top_k = generation_config.get("top_k", HF_DEFAULTS["top_k"])
    top_p = generation_config.get("top_p", HF_DEFAULTS["top_p"])
    return {"top_k": int(top_k) if top_k else None,  # HF: top_k 0/None disables
            "top_p": float(top_p) if top_p is not None and float(top_p) < 1.0 else None}


def resolve_sampling(sampling: SamplingConfig, generator, where: str = "rollout.sampling") -> SamplingConfig:
    """The sampling the run uses: `sampling` itself for source=recipe, else with the checkpoint's top-k/top-p."""
    if sampling.source == "recipe":
        return sampling
    gc = getattr(generator, "generation_config", None)
    origin = getattr(generator, "load_report", {}).get("source", "the model")
    if gc is None:
        raise ValueError(f"{where}.source: checkpoint, but {origin} has no generation_config.json (a preset, or a "
                         "checkpoint saved without one): use source: recipe with explicit top_k/top_p")
    file = f"{origin}/generation_config.json"
    values = checkpoint_sampling_values(gc, file)
    for key, value in values.items():
        if key in sampling.model_fields_set and getattr(sampling, key) != value:
            raise ValueError(f"{where}.{key} = {getattr(sampling, key)} but {where}.source: checkpoint takes "
                             f"{key} = {value} from {file}: remove {where}.{key} or use source: recipe")
    return sampling.model_copy(update=values)


def describe_sampling(sampling: SamplingConfig) -> str:
    guidance = f" guidance_scale={sampling.guidance_scale}" if sampling.guidance_scale is not None else ""
    return (f"source={sampling.source} temperature={sampling.temperature} top_k={sampling.top_k} "
            f"top_p={sampling.top_p} restrict_to_image_tokens={sampling.restrict_to_image_tokens}{guidance}")
