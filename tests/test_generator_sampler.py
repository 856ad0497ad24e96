"""Sampler guarantees on the tiny preset (fp32, CPU): one pass gives tokens, log-probs and the conditioning
window, and they agree with a separate teacher-forced forward to 1e-5."""

import pytest
import torch

from rollouts.conditioning import conditioning_hidden_states, conditioning_window
from rollouts.config import ModelConfig, SamplingConfig
from rollouts.generator import NativeImageGenerator
from rollouts.sampler import image_token_logprobs, processed_logits, sample_image_tokens

PROMPTS = ["a red circle", "two blue squares to the left of a green triangle", "x"]


@pytest.fixture(scope="module")
def gen():
    return NativeImageGenerator.from_config(ModelConfig(preset="tiny", device="cpu", dtype="float32", seed=0))


def _sample(gen, sampling, seed=0, prompts=PROMPTS):
    ids, mask = gen.encode_prompts(prompts)
    rng = torch.Generator().manual_seed(seed)
    out = sample_image_tokens(gen.lm, ids, mask, vocab=gen.vocab, num_tokens=gen.tokens_per_image,
                              sampling=sampling, generator=rng)
    return ids, mask, out


def test_prompts_are_left_padded_and_end_with_im_start_s0(gen):
    ids, mask = gen.encode_prompts(PROMPTS)
    assert (ids[:, -2] == gen.vocab.im_start_id).all() and (ids[:, -1] == gen.vocab.scale_ids[0]).all()
    lengths = mask.sum(1)
    assert lengths[1] == ids.shape[1] and lengths[0] < lengths[1]  # the longest prompt fills the row
    assert (mask[0, : ids.shape[1] - lengths[0]] == 0).all()  # padding on the left
    text = gen.tokenizer.decode(ids[0][mask[0].bool()])
    assert "Please generate image based on the following caption: a red circle" in text
    assert "You are a helpful assistant." in text


def test_shapes_and_token_range(gen):
    _, _, out = _sample(gen, SamplingConfig())
    b, n = len(PROMPTS), gen.tokens_per_image
    assert out.image_tokens.shape == (b, n) and out.logprobs.shape == (b, n)
    assert out.cond_hidden.shape == (b, n + 1, gen.lm.config.hidden_size)
    assert out.image_tokens.min() >= 0 and out.image_tokens.max() < gen.vocab.num_image_tokens
    assert torch.isfinite(out.logprobs).all() and (out.logprobs <= 0).all()


@pytest.mark.parametrize("sampling", [
    SamplingConfig(top_k=None, top_p=None),
    SamplingConfig(temperature=0.7, top_k=8, top_p=0.9),
    SamplingConfig(temperature=1.3, top_k=None, top_p=0.5),
])
def test_sampler_hidden_and_logprobs_match_teacher_forced_forward(gen, sampling):
    ids, mask, out = _sample(gen, sampling, seed=1)
    full = conditioning_hidden_states(gen.lm, ids, mask, out.image_tokens, gen.vocab)
    torch.testing.assert_close(out.cond_hidden, full, atol=1e-5, rtol=0)
    again = image_token_logprobs(gen.lm, ids, mask, out.image_tokens, vocab=gen.vocab, sampling=sampling,
                                 chunk_size=5)
    torch.testing.assert_close(out.logprobs, again, atol=1e-5, rtol=0)


def test_window_is_s0_plus_image_positions(gen):
    ids, mask, out = _sample(gen, SamplingConfig())
    p, n = ids.shape[1], gen.tokens_per_image
    w = conditioning_window(p, n)
    assert (w.start, w.stop) == (p - 1, p + n)
    # Against an independent HF forward: output_hidden_states[-1] of the causal LM, rows <S0> .. I_N.
    seq = torch.cat([ids, gen.vocab.to_ids(out.image_tokens)], 1)
    m = torch.cat([mask, torch.ones_like(out.image_tokens)], 1)
    pos = (m.cumsum(-1) - 1).clamp(min=0)
    hf = gen.lm(input_ids=seq, attention_mask=m, position_ids=pos, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(out.cond_hidden, hf[:, p - 1:], atol=1e-5, rtol=0)
    assert (seq[:, p - 1] == gen.vocab.scale_ids[0]).all()


def test_top_k_and_top_p_truncate_the_distribution():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    k = processed_logits(logits, SamplingConfig(top_k=2, top_p=None))
    assert torch.isinf(k[0, 2:]).all() and torch.isfinite(k[0, :2]).all()
    probs = logits.softmax(-1)[0]  # 0.636, 0.234, 0.086, ...
    p = processed_logits(logits, SamplingConfig(top_k=None, top_p=0.8))
    assert torch.isfinite(p[0, :2]).all() and torch.isinf(p[0, 2:]).all(), probs
    t = processed_logits(logits, SamplingConfig(temperature=2.0, top_k=None, top_p=None))
    torch.testing.assert_close(t, logits / 2)


def test_sampled_tokens_respect_top_k(gen):
    sampling = SamplingConfig(top_k=3, top_p=None)
    ids, mask, out = _sample(gen, sampling, seed=2)
    # Each sampled token must be among the 3 most likely at its position (teacher-forced logits).
    hidden = conditioning_hidden_states(gen.lm, ids, mask, out.image_tokens, gen.vocab)[:, :-1]
    start, stop = gen.vocab.image_id_range
    logits = hidden @ gen.lm.lm_head.weight[start:stop].T
    top3 = logits.topk(3, dim=-1).indices
    assert (top3 == out.image_tokens.unsqueeze(-1)).any(-1).all()


def test_fixed_seed_gives_identical_tokens(gen):
    _, _, a = _sample(gen, SamplingConfig(), seed=7)
    _, _, b = _sample(gen, SamplingConfig(), seed=7)
    _, _, c = _sample(gen, SamplingConfig(), seed=8)
    assert torch.equal(a.image_tokens, b.image_tokens) and torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.image_tokens, c.image_tokens)


def test_logprobs_are_differentiable_and_entropy_matches(gen):
    sampling = SamplingConfig(top_k=16, top_p=0.95)
    ids, mask, out = _sample(gen, sampling)
    lp, ent = image_token_logprobs(gen.lm, ids, mask, out.image_tokens, vocab=gen.vocab, sampling=sampling,
                                   chunk_size=4, with_entropy=True)
    lp.sum().backward()
    grads = [p.grad for p in gen.lm.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    gen.lm.zero_grad(set_to_none=True)
    assert (ent >= 0).all() and (ent <= torch.log(torch.tensor(16.0)) + 1e-4).all()


def test_peft_lora_wrapped_lm_gives_same_logprobs_as_merged(gen):
    peft = pytest.importorskip("peft")
    import copy

    lm = copy.deepcopy(gen.lm)
    wrapped = peft.get_peft_model(lm, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                      init_lora_weights=False))
    sampling = SamplingConfig(top_k=16, top_p=0.9)
    ids, mask = gen.encode_prompts(PROMPTS[:2])
    out = sample_image_tokens(wrapped, ids, mask, vocab=gen.vocab, num_tokens=gen.tokens_per_image,
                              sampling=sampling, generator=torch.Generator().manual_seed(0))
    lp = image_token_logprobs(wrapped, ids, mask, out.image_tokens, vocab=gen.vocab, sampling=sampling)
    torch.testing.assert_close(out.logprobs, lp, atol=1e-5, rtol=0)
    # The LoRA layers are really in the path: the un-adapted base model gives different log-probs.
    base = image_token_logprobs(gen.lm, ids, mask, out.image_tokens, vocab=gen.vocab, sampling=sampling)
    assert (base - lp).abs().max() > 1e-3
    lp.sum().backward()
    lora_grads = [p.grad for n, p in wrapped.named_parameters() if "lora_" in n]
    assert lora_grads and all(g is not None for g in lora_grads)


@pytest.mark.parametrize("mode", ["eager", "static"])
def test_decode_modes_agree(gen, mode):
    # The prepared-mask decode (static buffers; what the CUDA-graph path captures) equals transformers' own path.
    sampling = SamplingConfig(top_k=16, top_p=0.9)
    ids, mask = gen.encode_prompts(PROMPTS)
    ref = sample_image_tokens(gen.lm, ids, mask, vocab=gen.vocab, num_tokens=gen.tokens_per_image,
                              sampling=sampling, generator=torch.Generator().manual_seed(3), decode_mode="eager")
    out = sample_image_tokens(gen.lm, ids, mask, vocab=gen.vocab, num_tokens=gen.tokens_per_image,
                              sampling=sampling, generator=torch.Generator().manual_seed(3), decode_mode=mode)
    assert torch.equal(ref.image_tokens, out.image_tokens)
    torch.testing.assert_close(ref.cond_hidden, out.cond_hidden, atol=1e-5, rtol=0)
    torch.testing.assert_close(ref.logprobs, out.logprobs, atol=1e-5, rtol=0)
