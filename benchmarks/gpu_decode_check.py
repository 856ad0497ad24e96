"""GPU check: the CUDA-graph decode gives the same tokens, log-probs and hidden states as eager (tiny, fp32)."""

import torch

from rollouts.config import ModelConfig, SamplingConfig
from rollouts.generator import NativeImageGenerator
from rollouts.sampler import image_token_logprobs, sample_image_tokens

gen = NativeImageGenerator.from_config(ModelConfig(preset="tiny", device="cuda", dtype="float32"))
ids, mask = gen.encode_prompts(["a red circle", "two blue squares left of a cat", "x"])
s = SamplingConfig(top_k=16, top_p=0.9)
outs = {m: sample_image_tokens(gen.lm, ids, mask, vocab=gen.vocab, num_tokens=16, sampling=s,
                               generator=torch.Generator("cuda").manual_seed(0), decode_mode=m)
        for m in ("eager", "cuda_graph")}
a, b = outs["eager"], outs["cuda_graph"]
lp = image_token_logprobs(gen.lm, ids, mask, b.image_tokens, vocab=gen.vocab, sampling=s)
print("tokens equal", torch.equal(a.image_tokens, b.image_tokens),
      "hidden max diff", (a.cond_hidden - b.cond_hidden).abs().max().item(),
      "logprob vs recompute max diff", (b.logprobs - lp).abs().max().item())
