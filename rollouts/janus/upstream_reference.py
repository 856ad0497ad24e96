"""transformers' own way of running Janus-Pro text-to-image, to compare ours against (`nativerl doctor`,
benchmarks/rollout_throughput.py). None of it is used for training.

- `hf_generate`: `JanusForConditionalGeneration.generate(generation_mode="image")`: transformers doubles the batch
  into [conditional; unconditional] rows (every prompt token but BOS and `<begin_of_image>` padded), runs a static
  KV cache, combines the rows with `ClassifierFreeGuidanceLogitsProcessor`, then applies its temperature / top-k /
  top-p warpers and draws with `torch.multinomial`. A recording logits processor placed before the CFG processor
  keeps each step's raw [2B, K] scores (generate returns only the last step's), from which the log-probs of its
  tokens are rebuilt with transformers' own CFG processor and warpers, in generate's order.
- `hf_guided_logits`: the teacher-forced reference: one `JanusModel.forward` per row kind over prompt + tokens
  (transformers' module forward, no cache), the generation head, transformers' CFG processor.
- `hf_images`: `JanusVQVAE.decode` + `JanusProcessor.postprocess`, as transformers' model card decodes.
transformers' Janus generate has no CFG-off mode (with guidance 1 it still doubles the batch and fails), so the
doctor compares at the checkpoint's default guidance when the recipe turns CFG off.
"""

from __future__ import annotations

import time

import torch

from rollouts.config import SamplingConfig
from rollouts.janus.cfg_sampler import janus_parts, unconditional_prompt
from rollouts.upstream_reference import hf_warpers, sync


class _RecordScores:
    """A logits processor that keeps a copy of what it is given and changes nothing."""

    def __init__(self):
        self.scores: list[torch.Tensor] = []

    def __call__(self, input_ids, scores):
        self.scores.append(scores.detach().float().clone())
        return scores


@torch.no_grad()
def hf_generate(gen, prompt_ids, prompt_mask, sampling: SamplingConfig, seed: int = 0, *, greedy: bool = False,
                record: bool = True):
    """→ (codes [B, N], log-probs [B, N] of them under transformers' processed distribution, or None)."""
    from transformers import GenerationConfig
    from transformers.generation.logits_process import ClassifierFreeGuidanceLogitsProcessor, LogitsProcessorList

    lm = gen.lm
    w = float(sampling.guidance_scale)
    gc = GenerationConfig(do_sample=not greedy, temperature=sampling.temperature if not greedy else None,
                          top_k=(sampling.top_k or 0) if not greedy else None,
                          top_p=(sampling.top_p or 1.0) if not greedy else None, guidance_scale=w,
                          bos_token_id=gen.special.bos, pad_token_id=gen.special.pad,
                          generation_kwargs={"boi_token_id": gen.special.boi})
    recorder = _RecordScores()
    processors = LogitsProcessorList([recorder] if record else [])
    devices = [prompt_ids.device] if prompt_ids.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        codes = lm.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=gc,
                            logits_processor=processors, generation_mode="image")
    if not record:
        return codes, None
    cfg = ClassifierFreeGuidanceLogitsProcessor(w)
    warpers = hf_warpers(sampling)
    logp = []
    for t, raw in enumerate(recorder.scores):
        processed = warpers(prompt_ids, cfg(prompt_ids, raw))
        logp.append(processed.log_softmax(-1).gather(-1, codes[:, t:t + 1].long())[:, 0])
    return codes, torch.stack(logp, dim=1)


@torch.no_grad()
def hf_guided_logits(gen, prompt_ids, prompt_mask, codes, guidance: float) -> torch.Tensor:
    """Teacher-forced guided logits [B, N, K] through transformers' `JanusModel.forward` and its CFG processor."""
    from transformers.generation.logits_process import ClassifierFreeGuidanceLogitsProcessor

    lm = gen.lm
    inner = janus_parts(lm)
    b, p = prompt_ids.shape
    n = codes.shape[1]
    rows = torch.cat([prompt_ids, unconditional_prompt(prompt_ids, gen.special)])
    embeds = torch.cat([lm.get_input_embeddings()(rows),
                        inner.image_embeddings(codes[:, :-1].repeat(2, 1)).to(lm.get_input_embeddings().weight.dtype)],
                       dim=1)
    mask = torch.cat([torch.cat([prompt_mask, prompt_mask]), torch.ones((2 * b, n - 1), dtype=prompt_mask.dtype,
                                                                        device=prompt_mask.device)], dim=1)
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    body = lm.get_base_model().model if hasattr(lm, "get_base_model") else lm.model
    hidden = body(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state[:, p - 1:]
    logits = body.generation_head(hidden).float()
    cfg = ClassifierFreeGuidanceLogitsProcessor(guidance)
    return torch.stack([cfg(prompt_ids, logits[:, t]) for t in range(n)], dim=1)


def hf_processed_logprobs(guided: torch.Tensor, codes: torch.Tensor, sampling: SamplingConfig,
                          prompt_ids: torch.Tensor) -> torch.Tensor:
    warpers = hf_warpers(sampling)
    n = codes.shape[1]
    return torch.stack([warpers(prompt_ids, guided[:, t]).log_softmax(-1).gather(-1, codes[:, t:t + 1])[:, 0]
                        for t in range(n)], dim=1)


@torch.no_grad()
def hf_images(gen, codes: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] the way transformers' model card decodes: vqmodel.decode + processor.postprocess."""
    pixels = gen.renderer.vqmodel.decode(codes.to(next(gen.renderer.parameters()).device))
    images = gen.processor.postprocess(list(pixels.float().cpu()), return_tensors="pt")["pixel_values"]
    return torch.as_tensor(images).permute(0, 2, 3, 1).to(torch.uint8)


def timed(fn, device):
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def janus_doctor_checks(gen, sampling: SamplingConfig, texts: list[str], seed: int, tolerances, echo):
    """→ [(name, value, tolerance, unit)] comparing ours with transformers' Janus path (module doc)."""
    from rollouts.sampler import scored_distribution

    sampling = gen.guided(sampling)
    if sampling.guidance_scale <= 1.0:
        echo(f"  note: the recipe turns CFG off; transformers' Janus generate cannot (it always doubles the batch): "
             f"comparing at the checkpoint's guidance {gen.default_guidance} instead")
        sampling = sampling.model_copy(update={"guidance_scale": gen.default_guidance})
    echo(f"# CFG on the logits: guidance {sampling.guidance_scale} (conditional + unconditional rows)")
    ids, mask = gen.encode_prompts(texts)
    dev, b, n = gen.device, ids.shape[0], gen.tokens_per_image
    tol_lp, _, tol_img = tolerances
    with gen.autocast():
        def ours():
            return gen.sample_image_tokens(ids, mask, sampling, torch.Generator(device=dev).manual_seed(seed))

        ours()  # warm-up
        t_ours, mine = timed(ours, dev)
        hf_codes, hf_logp = hf_generate(gen, ids, mask, sampling, seed)
        t_hf, _ = timed(lambda: hf_generate(gen, ids, mask, sampling, seed, record=False), dev)
        with torch.no_grad():
            ours_on_hf = gen.token_logprobs(gen.lm, ids, mask, hf_codes, sampling)
            guided = hf_guided_logits(gen, ids, mask, mine.image_tokens, sampling.guidance_scale)
            hf_on_ours = hf_processed_logprobs(guided, mine.image_tokens, sampling, ids)
            trainer = gen.token_logprobs(gen.lm, ids, mask, mine.image_tokens, scored_distribution(sampling))
            hf_trainer = (guided / sampling.temperature).log_softmax(-1).gather(
                -1, mine.image_tokens.unsqueeze(-1)).squeeze(-1)
        greedy = sampling.model_copy(update={"top_k": 1, "top_p": None})
        our_greedy = gen.sample_image_tokens(ids, mask, greedy).image_tokens
        hf_greedy, _ = hf_generate(gen, ids, mask, sampling, seed, greedy=True, record=False)
    img_ours = gen.render(mine.image_tokens[:1], None, _renderer_cfg())
    img_hf = hf_images(gen, mine.image_tokens[:1])
    echo("# throughput (second run of ours; transformers' generate with CFG, no score recording)")
    echo(f"  ours:         {b * n / t_ours:10.1f} tokens/s")
    echo(f"  transformers: {b * n / t_hf:10.1f} tokens/s")
    agree = (our_greedy.cpu() == hf_greedy.cpu())
    first_diff = int(agree.all(0).long().cumprod(0).sum())  # positions before the first disagreement
    echo(f"  greedy (top-k 1) tokens: identical for the first {first_diff} of {n} positions")

    def d(a, c):
        return float((a.float().cpu() - c.float().cpu()).abs().max())

    checks = [
        ("log-probs on transformers generate's tokens (ours teacher-forced, both CFG rows, vs generate's "
         "recorded scores through its CFG processor and warpers)", d(ours_on_hf, hf_logp), tol_lp, ""),
        ("log-probs on our sampler's tokens (ours vs transformers' JanusModel forward + CFG processor + warpers)",
         d(mine.logprobs, hf_on_ours), tol_lp, ""),
        ("trainer log-probs on our sampler's tokens (ours untruncated vs log_softmax(cfg(logits) / T))",
         d(trainer, hf_trainer), tol_lp, ""),
        ("image of our tokens (our VQ render vs vqmodel.decode + JanusProcessor.postprocess)",
         d(img_ours, img_hf), tol_img, " levels"),
    ]
    if gen.dtype == torch.float32 and (gen.compute_dtype in (None, torch.float32)):
        # Greedy decoding takes the argmax of the same guided logits: in fp32 the sequences must be equal. (In
        # bf16 a near-tie may flip between a KV-cached pass and another kernel order: printed above, not checked.)
        checks.append(("greedy tokens (our sampler with top-k 1 vs transformers generate do_sample=False), "
                       "fraction of positions after the first disagreement", 1.0 - first_diff / n, 0.0, ""))
    return checks


def _renderer_cfg():
    from rollouts.config import RendererConfig

    return RendererConfig(decode_chunk_size=1)
