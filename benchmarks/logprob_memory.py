"""Peak memory and speed of the update's log-prob computation: ours vs a naive full-vocabulary log_softmax.

ours   `rollouts.sampler.image_token_logprobs`: logits only over the K image-token slice of lm_head, in chunks of
       `--chunk` positions, each chunk checkpointed (so one chunk's [B, chunk, K] logits are alive at a time),
       with the sampler's top-k/top-p processing.
naive  what BLIP3o-NEXT's trainer does without Liger: lm_head over the full ~217k vocabulary at all N positions,
       `log_softmax`, gather (TRL `logits_to_keep=N`).

Both run forward + backward of `-(logprobs).mean()` through the same LM (BLIP3o-NEXT sizes: hidden 2048, vocab
151,669 + 5 + 65,536 = 217,210, N = 729; `--layers` decoder layers, tied embeddings as Qwen3-1.7B). The comparison
is about the head and the softmax, so a shallow LM is enough; only the final norm is trainable, so both variants
pay the same (small) parameter-gradient memory and the difference is the activations.

Memory: on CUDA `torch.cuda.max_memory_allocated` minus the allocation before the step; on CPU the peak RSS
(VmHWM, reset through /proc/self/clear_refs) minus the RSS before the step. Each variant runs in a fresh
subprocess so one cannot inherit the other's allocator state.

    python benchmarks/logprob_memory.py                      # CPU, batch 2
    python benchmarks/logprob_memory.py --device cuda --batch 16
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT_VOCAB, NUM_IMAGE_TOKENS, TOKENS_PER_IMAGE, HIDDEN = 151_669, 65_536, 729, 2048


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def run_variant(args) -> dict:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    sys.path.insert(0, str(ROOT))
    from rollouts.config import SamplingConfig
    from rollouts.sampler import image_token_logprobs
    from rollouts.vocab import ImageVocab

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    vocab = ImageVocab(im_start_id=TEXT_VOCAB, im_end_id=TEXT_VOCAB + 1,
                       scale_ids=(TEXT_VOCAB + 2, TEXT_VOCAB + 3, TEXT_VOCAB + 4),
                       image_token_offset=TEXT_VOCAB + 5, num_image_tokens=NUM_IMAGE_TOKENS)
    total_vocab = TEXT_VOCAB + 5 + NUM_IMAGE_TOKENS
    torch.manual_seed(0)
    with torch.device(device):
        lm = Qwen3ForCausalLM(Qwen3Config(vocab_size=total_vocab, hidden_size=HIDDEN, intermediate_size=6144,
                                          num_hidden_layers=args.layers, num_attention_heads=16,
                                          num_key_value_heads=8, head_dim=128, tie_word_embeddings=True))
    lm.to(dtype)
    lm.requires_grad_(False)
    lm.model.norm.weight.requires_grad_(True)  # gives the hidden states a gradient path, costs 2048 floats
    b, n = args.batch, TOKENS_PER_IMAGE
    prompt = torch.randint(0, 1000, (b, args.prompt_len), device=device)
    prompt[:, -2], prompt[:, -1] = vocab.im_start_id, vocab.scale_ids[0]
    prompt_mask = torch.ones_like(prompt)
    tokens = torch.randint(0, NUM_IMAGE_TOKENS, (b, n), device=device)
    sampling = SamplingConfig()  # BLIP3o-NEXT: T 1.0, top-k 1200, top-p 0.95, image-token slice

    def ours():
        return image_token_logprobs(lm, prompt, prompt_mask, tokens, vocab=vocab, sampling=sampling,
                                    chunk_size=args.chunk)

    def naive():
        ids = torch.cat([prompt, vocab.to_ids(tokens)], dim=1)
        logits = lm(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=n + 1).logits[:, :-1]
        logp = logits.float().log_softmax(-1)
        return logp.gather(-1, vocab.to_ids(tokens).unsqueeze(-1)).squeeze(-1)

    fn = ours if args.variant == "ours" else naive

    def step():
        loss = -fn().mean()
        loss.backward()
        lm.model.norm.weight.grad = None
        return float(loss)

    if device.type == "cuda":
        step()  # warm-up (cuBLAS workspaces, kernels) outside the measurement
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = _rss_kib("VmRSS") * 1024
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = _rss_kib("VmHWM") * 1024 - before
    best = min(times)
    return {"variant": args.variant, "peak_bytes": peak, "step_s": best, "tokens_per_s": b * n / best,
            "batch": b, "layers": args.layers, "device": str(device), "dtype": args.dtype, "chunk": args.chunk}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=None, help="default: 16 on cuda (BLIP3o-NEXT), 2 on cpu")
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--prompt-len", dest="prompt_len", type=int, default=32)
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="default: bf16 cuda, fp32 cpu")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variant", choices=["ours", "naive"], default=None, help="(internal) run one variant")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args()
    cuda = args.device.startswith("cuda")
    args.batch = args.batch or (16 if cuda else 2)
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    results = {}
    for variant in ("ours", "naive"):
        cmd = [sys.executable, __file__, "--variant", variant] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("variant", "json")
            and v is not None]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"{variant} failed:\n{out.stderr[-3000:]}")
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    ours, naive = results["ours"], results["naive"]
    ratio = naive["peak_bytes"] / max(ours["peak_bytes"], 1)
    machine = f"{platform.node()} ({platform.machine()}, {args.device})"
    print(f"machine: {machine}; batch {args.batch}, N {TOKENS_PER_IMAGE}, vocab {TEXT_VOCAB + 5 + NUM_IMAGE_TOKENS}, "
          f"K {NUM_IMAGE_TOKENS}, hidden {HIDDEN}, {args.layers} layer(s), {args.dtype}, chunk {args.chunk}")
    print("| variant | peak memory of fwd+bwd (MiB) | step time (s) | update tokens/s |")
    print("|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['peak_bytes'] / 2**20:.0f} | {r['step_s']:.2f} | {r['tokens_per_s']:.0f} |")
    print(f"memory ratio naive/ours: {ratio:.1f}x (target >= 4x)")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "ratio": ratio, **results}, indent=2))


if __name__ == "__main__":
    main()
