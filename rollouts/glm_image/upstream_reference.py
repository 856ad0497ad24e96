"""transformers' own way of sampling GLM-Image's AR prior tokens, to compare ours against (`nativerl doctor`).
None of it is used for training.

`hf_generate`: `GlmImageForConditionalGeneration.generate` as `GlmImagePipeline.generate_prior_tokens` calls it
(the processor's input ids, `image_grid_thw`, `images_per_sample`; transformers computes the 3D-rope positions of
every generated token itself), with two logits processors of ours: one records each step's raw scores (generate
returns none by default), one keeps the K image codes only (the distribution our sampler draws from,
rollouts/glm_image/prior_sampler.py), so the log-probs of generate's tokens can be rebuilt with transformers'
warpers and compared with our teacher-forced scorer.
"""

from __future__ import annotations

import torch

from rollouts.config import SamplingConfig
from rollouts.upstream_reference import hf_warpers, timed


class _RecordScores:
    def __init__(self):
        self.scores: list[torch.Tensor] = []

    def __call__(self, input_ids, scores):
        self.scores.append(scores.detach().float().clone())
        return scores


class _CodesOnly:
    def __init__(self, num_codes: int):
        self.num_codes = num_codes

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[:, self.num_codes:] = float("-inf")
        return scores


@torch.no_grad()
def hf_generate(gen, prompt_ids, prompt_mask, sampling: SamplingConfig, seed: int = 0, *, greedy: bool = False):
    """→ (codes [B, N], log-probs [B, N] of them under transformers' warpers on the recorded code logits)."""
    from transformers import GenerationConfig
    from transformers.generation.logits_process import LogitsProcessorList

    n, k = gen.tokens_per_image, gen.vocab.num_image_tokens
    grid_thw, per_sample = gen.grids.grid_thw(prompt_ids.shape[0], prompt_ids.device)
    gc = GenerationConfig(do_sample=not greedy, temperature=None if greedy else sampling.temperature,
                          top_k=None if greedy else (sampling.top_k or 0),
                          top_p=None if greedy else (sampling.top_p or 1.0), max_new_tokens=n, min_new_tokens=n,
                          pad_token_id=gen.tokenizer.pad_token_id, eos_token_id=None)
    recorder = _RecordScores()
    devices = [prompt_ids.device] if prompt_ids.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        out = gen.lm.generate(input_ids=prompt_ids, attention_mask=prompt_mask, image_grid_thw=grid_thw,
                              images_per_sample=per_sample, generation_config=gc,
                              logits_processor=LogitsProcessorList([recorder, _CodesOnly(k)]))
    codes = out[:, prompt_ids.shape[1]:]
    warpers = hf_warpers(sampling)
    logp = [warpers(prompt_ids, raw[:, :k]).log_softmax(-1).gather(-1, codes[:, t:t + 1])[:, 0]
            for t, raw in enumerate(recorder.scores)]
    return codes, torch.stack(logp, dim=1)


def glm_image_doctor_checks(gen, sampling: SamplingConfig, texts: list[str], seed: int, tolerances, echo):
    """→ [(name, value, tolerance, unit)] comparing ours with transformers' GLM-Image generate (module doc)."""
    from rollouts.sampler import scored_distribution

    if sampling.guidance_scale not in (None, 1.0):
        sampling = sampling.model_copy(update={"guidance_scale": None})
    echo(f"# AR prior: {gen.grids.preview[0]}x{gen.grids.preview[1]} preview + {gen.grids.target[0]}x"
         f"{gen.grids.target[1]} target grid = {gen.tokens_per_image} tokens; the DiT reads token ids "
         "(conditioning drift: not applicable)")
    ids, mask = gen.encode_prompts(texts)
    dev, b, n = gen.device, ids.shape[0], gen.tokens_per_image
    tol_lp = tolerances[0]
    with gen.autocast():
        def ours():
            return gen.sample_image_tokens(ids, mask, sampling, torch.Generator(device=dev).manual_seed(seed))

        t_ours, mine = timed(ours, dev)
        t_hf, (hf_codes, hf_logp) = timed(lambda: hf_generate(gen, ids, mask, sampling, seed), dev)
        with torch.no_grad():
            ours_on_hf = gen.token_logprobs(gen.lm, ids, mask, hf_codes, sampling)
            trainer = gen.token_logprobs(gen.lm, ids, mask, mine.image_tokens, sampling)
            untruncated = gen.token_logprobs(gen.lm, ids, mask, mine.image_tokens, scored_distribution(sampling))
        greedy = sampling.model_copy(update={"top_k": 1, "top_p": None})
        our_greedy = gen.sample_image_tokens(ids, mask, greedy).image_tokens
        hf_greedy, _ = hf_generate(gen, ids, mask, sampling, seed, greedy=True)
    echo("# throughput")
    echo(f"  ours:         {b * n / t_ours:10.1f} tokens/s")
    echo(f"  transformers: {b * n / t_hf:10.1f} tokens/s (generate with score recording)")
    agree = our_greedy.cpu() == hf_greedy.cpu()
    first_diff = int(agree.all(0).long().cumprod(0).sum())
    echo(f"  greedy (top-k 1) tokens: identical for the first {first_diff} of {n} positions")

    def d(a, c):
        return float((a.float().cpu() - c.float().cpu()).abs().max())

    checks = [
        ("log-probs on transformers generate's tokens (ours teacher-forced vs generate's recorded scores through "
         "its warpers)", d(ours_on_hf, hf_logp), tol_lp, ""),
        ("trainer log-probs on our sampler's tokens (teacher-forced vs the sampler's)", d(trainer, mine.logprobs),
         tol_lp, ""),
        ("non-finite trainer log-probs without top-k/top-p (count)", float((~torch.isfinite(untruncated)).sum()),
         0.0, ""),
    ]
    if gen.dtype == torch.float32 and gen.compute_dtype in (None, torch.float32):
        checks.append(("greedy tokens (our sampler with top-k 1 vs transformers generate do_sample=False), "
                       "fraction of positions after the first disagreement", 1.0 - first_diff / n, 0.0, ""))
    return checks
