"""Bytes per LM parameter of a full-weights GRPO policy, and how many weights one update changes, by precision.

Modes (the `small` preset's LM, full weights, one GRPO optimizer step with AdamW on random advantages):
  fp32                 model.dtype float32, trainer.bf16 off: fp32 weights and compute.
  bf16 masters (ours)  model.dtype bfloat16: `rl.policy.Policy` keeps fp32 master weights, computes under bf16
                       autocast, reference copy in bf16.
  bf16 plain (before)  the LM stored in bf16 and plain AdamW on the bf16 tensors (what `dtype: auto` on GPU did
                       before issue 13): no master copy.
Bytes are counted from the tensors alive after the step (trainable weights, their gradients, AdamW state, the frozen
reference copy), i.e. the steady-state training memory of the policy without activations; `changed` is the
fraction of trainable weights whose value differs after the step.

Run: .venv/bin/python benchmarks/precision_memory.py [--preset small] [--lr 1e-6]
"""

from __future__ import annotations

import argparse
import copy

import torch


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def one_step(mode: str, preset: str, lr: float) -> dict[str, float]:
    from rl.grpo import grpo_loss
    from rl.policy import Policy
    from rl.recipe import TrainerConfig
    from rollouts.config import ModelConfig, SamplingConfig
    from rollouts.generator import NativeImageGenerator

    dtype = "float32" if mode == "fp32" else "bfloat16"
    gen = NativeImageGenerator.from_config(ModelConfig(preset=preset, device="cpu", dtype=dtype, seed=0))
    sampling = SamplingConfig(top_k=None, top_p=None)
    ids, mask = gen.encode_prompts(["a red circle", "two blue squares", "a green triangle", "a yellow star"])
    tokens = gen.sample_image_tokens(ids, mask, sampling, generator=torch.Generator().manual_seed(0)).image_tokens
    cfg = TrainerConfig(policy="full", learning_rate=lr, bf16="off" if mode == "fp32" else "auto")
    if mode == "bf16 plain (before)":
        lm = gen.lm.requires_grad_(True)
        reference = copy.deepcopy(lm).requires_grad_(False)
        params = list(lm.parameters())

        def logprobs():
            return gen.image_token_logprobs(ids, mask, tokens, sampling)
    else:
        policy = Policy(gen, cfg)
        reference, params = policy.reference, policy.trainable_parameters()

        def logprobs():
            with policy.autocast():
                return policy.logprobs(ids, mask, tokens, sampling)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    before = [p.detach().clone() for p in params]
    logp = logprobs()
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    loss, _ = grpo_loss(logp, logp.detach(), None, advantages, torch.ones_like(logp), beta=0.0, epsilon=0.2)
    loss.backward()
    opt.step()
    n = sum(p.numel() for p in params)
    state = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t) and t.numel() > 1]
    changed = sum(int((p.detach() != b).sum()) for p, b in zip(params, before))
    return {"params": n, "weights": tensor_bytes(params) / n, "grads": tensor_bytes(p.grad for p in params) / n,
            "adam": tensor_bytes(state) / n, "reference": tensor_bytes(reference.parameters()) / n,
            "changed": changed / n}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--lr", type=float, default=1e-6)
    args = p.parse_args()
    torch.manual_seed(0)
    print(f"preset {args.preset}, lr {args.lr:g}, torch {torch.__version__}")
    print("| mode | weights B/param | grads | AdamW state | reference | total | weights changed by one step |")
    print("|---|---|---|---|---|---|---|")
    for mode in ("fp32", "bf16 masters (ours)", "bf16 plain (before)"):
        r = one_step(mode, args.preset, args.lr)
        total = r["weights"] + r["grads"] + r["adam"] + r["reference"]
        print(f"| {mode} | {r['weights']:.2f} | {r['grads']:.2f} | {r['adam']:.2f} | {r['reference']:.2f} | "
              f"{total:.2f} | {100 * r['changed']:.1f}% |")
    print(f"({r['params'] / 1e6:.1f} M trainable LM parameters)")


if __name__ == "__main__":
    main()
