"""`nativerl doctor CHECKPOINT [--recipe R]`: prove, on the user's own weights, that nativerl runs the model as
upstream does, before the first real job.

1. Loads the checkpoint (with the recipe's model settings when given) and prints the load report: where each
   part came from, which keys were skipped, the SANA folder found, K, the generation_config.
2. Runs upstream's way (`rollouts/upstream_reference.py`: HF `generate` over the full vocabulary, then the
   second full forward for the hidden states) and ours (`rollouts/sampler.py`: one KV-cached pass) on a few
   prompts with the same sampling (the recipe's, resolved as training resolves it; the image-token restriction
   is lifted for the comparison because upstream has none), and compares, on the same tokens:
   - log-probs: our teacher-forced `image_token_logprobs` vs the log-probs of HF `generate`'s warped scores
     (tokens drawn by HF), our sampler's log-probs vs HF's warpers on the second forward's logits (tokens drawn
     by us), and what our trainer scores (the untruncated temperature-scaled distribution) vs what upstream's TRL
     scores (`log_softmax(logits / T)` over the full vocabulary);
   - conditioning hidden states: our teacher-forced window vs upstream's second forward (HF's tokens), and our
     sampler's one-pass states vs upstream's second forward (our tokens).
3. Renders one image per path (our `render_images` vs upstream's `diffusion_decode`) from the same noise seed.
4. Reports tokens/s, images/s and peak GPU memory of each path (each measured on its second run, after a
   warm-up; CPU: no memory figure).
5. Ends with one line per check, `ok` or `differs by X`, and returns non-zero when one differs.

Tolerances depend on the dtype (bf16 drifts between a KV-cached pass and a full forward); they are printed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rollouts.config import ModelConfig, RendererConfig, SamplingConfig

PROMPTS = ["a photo of a red apple on a wooden table", "a sign that says OPEN",
           "a blue bicycle to the left of a yellow car", "three green balls"]
EDIT_INSTRUCTIONS = ["make the background blue", "add a red hat", "turn it into a pencil sketch",
                     "remove the object in the middle"]
# (log-prob |Δ|, hidden-state |Δ| / max |h|, image |Δ| in uint8 levels), by LM dtype.
TOLERANCES = {torch.float32: (1e-3, 1e-4, 2.0), torch.float16: (5e-2, 2e-2, 16.0), torch.bfloat16: (1.5e-1, 5e-2, 24.0)}


@dataclass
class Check:
    name: str
    value: float  # max |Δ| (inf when the two paths disagree on which tokens are possible)
    tolerance: float
    unit: str = ""

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.value)) and self.value <= self.tolerance

    def line(self) -> str:
        if self.ok:
            return f"ok          {self.name}: max |Δ| {self.value:.3g}{self.unit} (tolerance {self.tolerance:g})"
        return f"DIFFERS     {self.name}: differs by {self.value:.3g}{self.unit} (tolerance {self.tolerance:g})"


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float().cpu(), b.float().cpu()
    if a.shape != b.shape:  # e.g. a conditioning window of another length: as different as it gets
        return float("inf")
    both_inf = torch.isinf(a) & torch.isinf(b) & (torch.sign(a) == torch.sign(b))
    d = (a - b).abs().masked_fill(both_inf, 0.0)
    return float(d.max()) if d.numel() else 0.0


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return _max_abs(a, b) / max(float(b.float().abs().max()), 1e-12)


def _reference_image(size: int) -> np.ndarray:
    """A deterministic synthetic reference (colour gradients + a square) for edit models."""
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    img = np.stack([x, y, 1 - x * y], -1)
    q = size // 4
    img[q:3 * q, q:3 * q] = (0.9, 0.2, 0.1)
    return (img * 255).astype(np.uint8)[None]


def run_doctor(checkpoint: str | Path, recipe=None, *, num_prompts: int = 2, seed: int = 0,
               device: str | None = None, dtype: str | None = None, diffusion_path: str | None = None,
               image_tokenizer: str | None = None, num_inference_steps: int | None = None,
               resolution: int | None = None, tokens_per_image: int | None = None, out_dir: Path | None = None,
               echo: Callable[[str], None] = print) -> list[Check]:
    from rollouts.generator import NativeImageGenerator
    from rollouts.conditioning import conditioning_hidden_states
    from rollouts.reference_image import reference_latents_for, render_edited_images
    from rollouts.renderer import seeded_noise
    from rollouts.sampler import image_token_logprobs, sample_image_tokens, scored_distribution
    from rollouts.sampling_source import describe_sampling, resolve_sampling
    from rollouts.upstream_reference import (hf_generate, measure, second_forward, upstream_render,
                                             warped_logprobs)

    model = recipe.model.model_copy() if recipe is not None else ModelConfig()
    updates = {"source": "path", "path": str(checkpoint)}
    for key, value in (("device", device), ("dtype", dtype), ("diffusion_path", diffusion_path),
                       ("image_tokenizer", image_tokenizer), ("tokens_per_image", tokens_per_image)):
        if value is not None:
            updates[key] = value
    model = ModelConfig.model_validate({**model.model_dump(), **updates})
    gen = NativeImageGenerator.from_config(model)
    gen.eval()
    echo(f"# load report: {checkpoint}")
    for key, value in gen.load_report.items():
        if isinstance(value, list):
            value = f"{len(value)} keys" + (f" ({', '.join(value[:4])}{', ...' if len(value) > 4 else ''})"
                                            if value else "")
        echo(f"  {key}: {value}")
    if hasattr(gen, "doctor_checks"):  # a family with its own upstream comparison (rollouts/<family>/)
        return _family_doctor(gen, recipe, num_prompts, seed, echo)
    echo(f"  LM: {gen.lm.config.num_hidden_layers} layers, hidden {gen.lm.config.hidden_size}, vocab "
         f"{gen.lm.config.vocab_size}; K = {gen.vocab.num_image_tokens} image tokens, N = {gen.tokens_per_image}")

    if recipe is not None:
        sampling, renderer_cfg = recipe.rollout.sampling, recipe.rollout.renderer
    else:  # no recipe: sample as upstream's RL did when the checkpoint says how
        sampling = SamplingConfig(source="checkpoint") if gen.generation_config is not None else SamplingConfig()
        renderer_cfg = RendererConfig()
    sampling = resolve_sampling(sampling, gen)
    updates = {"decode_chunk_size": 1}
    if num_inference_steps is not None:
        updates["num_inference_steps"] = num_inference_steps
    if resolution is not None:
        updates["resolution"] = resolution
    renderer_cfg = renderer_cfg.model_copy(update=updates)
    same = sampling.model_copy(update={"restrict_to_image_tokens": False})
    echo(f"# sampling: {describe_sampling(sampling)}")
    if sampling.restrict_to_image_tokens:
        echo("  (training restricts sampling to image tokens; upstream does not: the comparison samples both paths "
             "over the full vocabulary)")
    echo(f"# renderer: guidance {renderer_cfg.guidance_scale}, {renderer_cfg.num_inference_steps} steps, "
         f"resolution {renderer_cfg.resolution or gen.renderer.native_resolution}")

    # Prompts (edit models with an image tokenizer: edit prompts on a synthetic reference).
    size = renderer_cfg.resolution or gen.renderer.native_resolution
    refs = _reference_image(size)
    editing = gen.image_tokenizer is not None
    if editing:
        texts = [EDIT_INSTRUCTIONS[i % len(EDIT_INSTRUCTIONS)] for i in range(num_prompts)]
        ids, mask = gen.encode_edit_prompts(texts, np.repeat(refs, num_prompts, axis=0))
    else:
        texts = [PROMPTS[i % len(PROMPTS)] for i in range(num_prompts)]
        ids, mask = gen.encode_prompts(texts)
    ref_latents = None
    if getattr(gen.renderer, "uses_reference", False):
        ref_latents = reference_latents_for(gen.renderer, refs, renderer_cfg.resolution)
    echo(f"# {num_prompts} {'edit ' if editing else ''}prompts: {texts}")
    n, dev, b = gen.tokens_per_image, gen.device, ids.shape[0]
    pad = gen.tokenizer.pad_token_id if gen.tokenizer.pad_token_id is not None else 0

    def ours_ar():
        rng = torch.Generator(device=dev).manual_seed(seed)
        return sample_image_tokens(gen.lm, ids, mask, vocab=gen.vocab, num_tokens=n, sampling=same, generator=rng)

    def upstream_ar(with_logprobs: bool):
        new, logp = hf_generate(gen.lm, ids, mask, n, same, pad, seed, with_logprobs)
        hidden, _ = second_forward(gen.lm, ids, mask, new)
        return new, logp, hidden

    ours_ar()  # warm-up (kernels, CUDA graphs, allocator), then the measured run
    t_ours, mem_ours, mine = measure(ours_ar, dev)
    # The warm-up keeps generate's scores for the log-prob check; the timed run keeps none, as upstream's rollout.
    hf_ids, hf_logp, hf_hidden = upstream_ar(True)
    t_up, mem_up, (timed_ids, _, _) = measure(lambda: upstream_ar(False), dev)
    if not torch.equal(timed_ids, hf_ids):
        echo("  note: HF generate drew other tokens when not keeping its scores (the same seed)")

    with torch.no_grad():
        # HF's tokens through our teacher-forced path.
        hf_codes = hf_ids - gen.vocab.image_token_offset  # full-vocab ids as codes (text ids fall outside [0, K))
        our_logp_on_hf = image_token_logprobs(gen.lm, ids, mask, hf_codes, vocab=gen.vocab, sampling=same)
        our_hidden_on_hf = conditioning_hidden_states(gen.lm, ids, mask, hf_codes, gen.vocab)
        # Our tokens through upstream's second forward and HF's warpers.
        our_ids = gen.vocab.to_ids(mine.image_tokens)
        up_hidden_on_ours, up_logits_on_ours = second_forward(gen.lm, ids, mask, our_ids)
        up_logp_on_ours = warped_logprobs(up_logits_on_ours, our_ids, same)
        # What the trainers score: ours the untruncated temperature-scaled distribution (scored_distribution),
        # upstream's TRL log_softmax(logits / T) over the full vocabulary.
        our_scored = image_token_logprobs(gen.lm, ids, mask, mine.image_tokens, vocab=gen.vocab,
                                          sampling=scored_distribution(same))
        up_scored = (up_logits_on_ours.float() / same.temperature).log_softmax(-1).gather(
            -1, our_ids.unsqueeze(-1)).squeeze(-1)

    # One image per path, same noise seed, each from its own path's hidden states on our tokens.
    noise = seeded_noise([seed], (gen.renderer.latent_channels, gen.renderer.latent_size(renderer_cfg.resolution),
                                  gen.renderer.latent_size(renderer_cfg.resolution)))
    ref1 = ref_latents[:1] if ref_latents is not None else None

    def ours_render():
        return render_edited_images(gen.renderer, mine.cond_hidden[:1], ref1, [seed], renderer_cfg)

    def upstream_render_one():
        return upstream_render(gen.renderer, up_hidden_on_ours[:1], noise, renderer_cfg.guidance_scale,
                               renderer_cfg.num_inference_steps, ref1)

    ours_render()
    r_ours, rmem_ours, img_ours = measure(ours_render, dev)
    upstream_render_one()
    r_up, rmem_up, img_up = measure(upstream_render_one, dev)
    if out_dir is not None:
        from PIL import Image

        out_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img_ours[0].numpy()).save(out_dir / "ours.png")
        Image.fromarray(img_up[0].numpy()).save(out_dir / "upstream.png")
        echo(f"# images: {out_dir / 'ours.png'}, {out_dir / 'upstream.png'}")

    def mem(x):
        return f"{x:.2f} GiB" if x is not None else "n/a (CPU)"

    echo("# throughput (second run of each; tokens = sampling + conditioning hidden states, no rendering)")
    echo(f"  ours:     {b * n / t_ours:10.1f} tokens/s   {1 / r_ours:8.3f} images/s   peak {mem(mem_ours)} / "
         f"{mem(rmem_ours)}")
    echo(f"  upstream: {b * n / t_up:10.1f} tokens/s   {1 / r_up:8.3f} images/s   peak {mem(mem_up)} / "
         f"{mem(rmem_up)}")
    outside = int(((hf_codes < 0) | (hf_codes >= gen.vocab.num_image_tokens)).sum())
    if outside:
        echo(f"  note: HF generate drew {outside} of {hf_codes.numel()} tokens outside the image vocabulary "
             "(full-vocabulary sampling, as upstream)")

    tol_lp, tol_h, tol_img = TOLERANCES.get(gen.dtype, TOLERANCES[torch.bfloat16])
    checks = [
        Check("log-probs on HF generate's tokens (ours teacher-forced vs generate's scores)",
              _max_abs(our_logp_on_hf, hf_logp), tol_lp),
        Check("log-probs on our sampler's tokens (ours vs HF warpers on the second forward)",
              _max_abs(mine.logprobs, up_logp_on_ours), tol_lp),
        Check("trainer log-probs on our sampler's tokens (ours untruncated vs TRL's log_softmax(logits / T))",
              _max_abs(our_scored, up_scored), tol_lp),
        Check("hidden states on HF generate's tokens (ours teacher-forced vs second forward), relative",
              _rel(our_hidden_on_hf, hf_hidden), tol_h),
        Check("hidden states on our sampler's tokens (one pass vs second forward), relative",
              _rel(mine.cond_hidden, up_hidden_on_ours), tol_h),
        Check(f"image, seed {seed} (ours vs upstream's diffusion_decode)", _max_abs(img_ours, img_up), tol_img,
              " levels"),
    ]
    echo("# checks")
    for c in checks:
        echo(c.line())
    return checks


def _family_doctor(gen, recipe, num_prompts: int, seed: int, echo: Callable[[str], None]) -> list[Check]:
    """The generator's own comparison with its upstream path (e.g. Janus-Pro: transformers' generate with CFG),
    on the recipe's sampling (resolved as training resolves it) or the checkpoint's defaults."""
    from rollouts.sampling_source import describe_sampling, resolve_sampling

    if recipe is not None:
        sampling = recipe.rollout.sampling
    else:
        sampling = SamplingConfig(source="checkpoint") if gen.generation_config is not None else SamplingConfig()
    sampling = resolve_sampling(sampling, gen)
    echo(f"  K = {gen.vocab.num_image_tokens} image tokens, N = {gen.tokens_per_image}")
    echo(f"# sampling: {describe_sampling(sampling)}")
    texts = [PROMPTS[i % len(PROMPTS)] for i in range(num_prompts)]
    echo(f"# {num_prompts} prompts: {texts}")
    tolerances = TOLERANCES.get(gen.dtype, TOLERANCES[torch.bfloat16])
    checks = [Check(*c) for c in gen.doctor_checks(sampling, texts, seed, tolerances, echo)]
    echo("# checks")
    for c in checks:
        echo(c.line())
    return checks
