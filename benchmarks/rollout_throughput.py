"""Rollout throughput: our one-pass sampler vs the upstream way (HF `generate`, then a second full forward).

Same randomly initialised model, same left-padded batch, same sampling parameters (temperature, top-k, top-p).
- ours: `rollouts.sampler.sample_image_tokens` (KV cache, image-token slice of the lm_head, hidden states
  collected during decoding, log-probs of the processed distribution).
- upstream (BLIP3o-NEXT generate_images + GRPO trainer), `rollouts/upstream_reference.py` (shared with
  `nativerl doctor`): `lm.generate(do_sample=True, max_new_tokens=N, top_k, top_p)` over the full vocabulary (no
  EOS stop), then `lm(..., output_hidden_states=True)` on prompt + tokens with the attention mask to get the
  conditioning window (this second forward also computes full-vocabulary logits for every position, as
  upstream's does). Neither log-probs nor a mask: upstream has none.
Tokens/s = B·N / wall time (sampling and hidden states; no rendering). Optional renderer images/s at given
resolutions (CFG 2.0, 30 Euler steps by default).

Janus-Pro presets (`janus-pro-tiny`, `janus-pro-1b-shape`): ours = `JanusImageGenerator.sample_image_tokens`
(KV-cached [cond; uncond] rows, CFG on the logits, log-probs kept); baseline = transformers'
`JanusForConditionalGeneration.generate(generation_mode="image")` with the same guidance
(`rollouts/janus/upstream_reference.py`). Both sample the full softmax by default (Janus's released sampler has no
top-k/top-p: pass --top-k 0 --top-p 1). Janus's renderer is the VQ decoder (`--render-resolutions` does not apply).

CPU:  python benchmarks/rollout_throughput.py --preset tiny --batch 8
      python benchmarks/rollout_throughput.py --preset janus-pro-tiny --batch 8 --top-k 0 --top-p 1
      python benchmarks/rollout_throughput.py --preset small --batch 8 --tokens-per-image 64
GPU:  python benchmarks/rollout_throughput.py --device cuda --preset blip3o-next-3b-shape --batch 16 64 \
          --render-resolutions 512 1024
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from rollouts.config import ModelConfig, RendererConfig, SamplingConfig
from rollouts.generator import NativeImageGenerator
from rollouts.renderer import render_images
from rollouts.sampler import sample_image_tokens
from rollouts.upstream_reference import timed, upstream_tokens_and_hidden

CAPTIONS = ["a photo of a red apple on a wooden table", "two cats", "a sign that says OPEN",
            "a blue bicycle to the left of a yellow car in the snow", "a cup", "three green balls"]


def ours(gen, ids, mask, n, sampling, seed=0):
    rng = torch.Generator(device=gen.device).manual_seed(seed)
    if hasattr(gen, "upstream_generate"):  # another family: its own sampler (always all N tokens)
        return gen.sample_image_tokens(ids, mask, sampling, rng)
    return sample_image_tokens(gen.lm, ids, mask, vocab=gen.vocab, num_tokens=n, sampling=sampling, generator=rng)


def upstream(gen, ids, mask, n, sampling):
    if hasattr(gen, "upstream_generate"):  # the family's reference path (Janus: transformers generate with CFG)
        return gen.upstream_generate(ids, mask, sampling)
    new, _, hidden = upstream_tokens_and_hidden(gen.lm, ids, mask, n, sampling, gen.tokenizer.pad_token_id,
                                                with_logprobs=False)
    return new, hidden


def _timed(fn, device, repeats: int) -> float:
    return timed(fn, device, repeats)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--batch", type=int, nargs="+", default=[8])
    ap.add_argument("--tokens-per-image", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--top-k", type=int, default=1200)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--guidance", type=float, default=None, help="CFG on the AR logits (Janus: default 5)")
    ap.add_argument("--render-resolutions", type=int, nargs="*", default=[])
    ap.add_argument("--render-batch", type=int, default=16)
    ap.add_argument("--render-steps", type=int, default=30)
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    gen = NativeImageGenerator.from_config(ModelConfig(preset=args.preset, device=args.device, dtype=args.dtype,
                                                       tokens_per_image=args.tokens_per_image))
    gen.eval()
    device, n = gen.device, gen.tokens_per_image
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU {platform.processor() or platform.machine()}, {args.threads} thread(s)"
    vocab = getattr(gen.lm.config, "text_config", gen.lm.config).vocab_size
    print(f"# preset={args.preset} device={device} ({machine}) dtype={gen.dtype} N={n} "
          f"K={gen.vocab.num_image_tokens} vocab={vocab} build {time.perf_counter() - t0:.1f}s")
    sampling = SamplingConfig(top_k=args.top_k or None, top_p=args.top_p if args.top_p < 1 else None,
                              guidance_scale=args.guidance)
    if hasattr(gen, "guided"):
        sampling = gen.guided(sampling)
        print(f"# classifier-free guidance on the logits: {sampling.guidance_scale}")
    results = []
    for b in args.batch:
        ids, mask = gen.encode_prompts([CAPTIONS[i % len(CAPTIONS)] for i in range(b)])
        ours(gen, ids, mask, min(n, 4), sampling)  # warm-up (kernels, allocator)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t_ours = _timed(lambda ids=ids, mask=mask: ours(gen, ids, mask, n, sampling), device, args.repeats)
        row = {"preset": args.preset, "device": machine, "dtype": str(gen.dtype), "batch": b, "N": n,
               "top_k": sampling.top_k, "top_p": sampling.top_p, "guidance": sampling.guidance_scale,
               "ours_s": t_ours, "ours_tok_s": b * n / t_ours}
        if device.type == "cuda":
            row["ours_peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        if not args.skip_baseline:
            upstream(gen, ids, mask, min(n, 4), sampling)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t_up = _timed(lambda ids=ids, mask=mask: upstream(gen, ids, mask, n, sampling), device, args.repeats)
            row.update({"upstream_s": t_up, "upstream_tok_s": b * n / t_up, "speedup": t_up / t_ours})
            if device.type == "cuda":
                row["upstream_peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        print(json.dumps(row), flush=True)
        results.append(row)

    for res in args.render_resolutions:
        cfg = RendererConfig(resolution=res, num_inference_steps=args.render_steps,
                             decode_chunk_size=args.render_batch)
        h = torch.randn(args.render_batch, n + 1, gen.lm.config.hidden_size, device=device, dtype=gen.dtype)
        seeds = list(range(args.render_batch))
        render_images(gen.renderer, h[:1], seeds[:1], RendererConfig(resolution=res, num_inference_steps=1))
        t = _timed(lambda h=h, seeds=seeds, cfg=cfg: render_images(gen.renderer, h, seeds, cfg), device, 1)
        row = {"preset": args.preset, "device": machine, "render_resolution": res, "images": args.render_batch,
               "steps": args.render_steps, "guidance_scale": cfg.guidance_scale, "render_s": t,
               "images_per_s": args.render_batch / t}
        print(json.dumps(row), flush=True)
        results.append(row)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
