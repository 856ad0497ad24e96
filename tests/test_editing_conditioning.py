"""Editing conditioning on the tiny preset (fp32, CPU): the reference's tokens sit between vision markers in the
AR context, the sampler and the trainer's log-prob recomputation agree on edit prompts, the reference latents
reach the renderer (cross-attention tokens and/or noise-space concatenation), and everything round-trips through
a checkpoint."""

import numpy as np
import pytest
import torch

from rollouts.conditioning import conditioning_hidden_states
from rollouts.config import ModelConfig, RendererConfig, SamplingConfig
from rollouts.generator import NativeImageGenerator
from rollouts.image_tokenizer import build_tiny_tatok
from rollouts.image_tokenizer_loading import load_image_tokenizer
from rollouts.reference_image import (
    EditTemplateConfig,
    ReferenceConditionedRenderer,
    ReferenceMarkers,
    encode_edit_prompts,
    reference_latents_for,
    reference_span,
    render_edited_images,
)
from rollouts.rollout import generate_rollouts
from rollouts.sampler import image_token_logprobs

SAMPLING = SamplingConfig(top_k=None, top_p=None)
RENDER = RendererConfig(num_inference_steps=2, guidance_scale=2.0)


def _images(n, seed=0, size=32):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def gen():
    g = NativeImageGenerator.from_config(ModelConfig(preset="tiny", device="cpu", dtype="float32", seed=0))
    g.enable_editing(build_tiny_tatok(num_codes=64, image_size=32, patch_size=8))  # 16 tokens = the tiny N
    return g


def test_edit_prompt_layout(gen):
    codes = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    markers = ReferenceMarkers.from_tokenizer(gen.tokenizer)
    ids, mask = encode_edit_prompts(["make the circle blue", "x"], codes, gen.tokenizer, gen.vocab, markers,
                                    EditTemplateConfig())
    assert (ids[:, -2] == gen.vocab.im_start_id).all() and (ids[:, -1] == gen.vocab.scale_ids[0]).all()
    assert mask[0].sum() != mask[1].sum()  # different lengths: padding happened
    assert (mask[:, 0] == 0).any() and (mask[:, -1] == 1).all()  # left padding
    for row, (start, stop) in enumerate(reference_span(ids, markers)):
        assert stop - start == 16
        assert torch.equal(ids[row, start:stop], gen.vocab.to_ids(codes[row]))
    text = gen.tokenizer.decode(ids[0][mask[0].bool()])
    assert "Please edit this image according to the following instruction: make the circle blue." in text
    # The vision markers are appended after the image vocabulary: image-token ids did not move.
    assert min(markers.vision_start_id, markers.vision_end_id) >= gen.vocab.image_id_range[1]


def test_template_validation():
    with pytest.raises(ValueError, match="<image>"):
        EditTemplateConfig(instruction_template="{instruction}")
    with pytest.raises(ValueError, match="instruction"):
        EditTemplateConfig(instruction_template="edit <image>")


def test_edit_rollout_group_shares_reference_and_logprobs_round_trip(gen):
    refs = _images(2)
    rows = [{"instruction": "make it red", "reference_image": refs[0]},
            {"instruction": "remove the square", "reference_image": refs[1]}]
    batch = generate_rollouts(gen, rows, group_size=3, sampling=SAMPLING, renderer_cfg=RENDER, seed=5)
    assert len(batch) == 6 and batch.images.shape == (6, 32, 32, 3)
    assert batch.metadata[0] is batch.metadata[2] and batch.metadata[3] is rows[1]
    markers = ReferenceMarkers.from_tokenizer(gen.tokenizer)
    spans = reference_span(batch.prompt_ids, markers)
    ref_codes = [batch.prompt_ids[i, a:b] for i, (a, b) in enumerate(spans)]
    expected = gen.vocab.to_ids(torch.as_tensor(gen.image_tokenizer.encode(refs)))
    for i in range(6):  # every sample of a group carries its group's reference tokens
        assert torch.equal(ref_codes[i], expected[i // 3])
    assert not torch.equal(expected[0], expected[1])
    # The trainer recomputes log-probs from batch.prompt_ids: same distribution as the sampler's.
    again = image_token_logprobs(gen.lm, batch.prompt_ids, batch.prompt_mask, batch.image_tokens, vocab=gen.vocab,
                                 sampling=SAMPLING, chunk_size=5)
    torch.testing.assert_close(batch.logprobs, again, atol=1e-5, rtol=0)
    # Same seed -> same rollout.
    twice = generate_rollouts(gen, rows, group_size=3, sampling=SAMPLING, renderer_cfg=RENDER, seed=5)
    assert torch.equal(batch.image_tokens, twice.image_tokens) and torch.equal(batch.images, twice.images)


def test_mixed_batch_is_refused(gen):
    with pytest.raises(ValueError, match="mixes editing rows"):
        generate_rollouts(gen, [{"prompt": "a"}, {"instruction": "b", "reference_image": _images(1)[0]}],
                          group_size=1, sampling=SAMPLING, renderer_cfg=RENDER, seed=0)


@pytest.mark.parametrize("latent_tokens,concat_noise", [(True, False), (False, True), (True, True)])
def test_reference_latents_reach_the_renderer(gen, latent_tokens, concat_noise):
    r = ReferenceConditionedRenderer.from_renderer(gen.renderer, latent_tokens=latent_tokens,
                                                   concat_noise=concat_noise, seed=1)
    refs = _images(2, seed=3)
    ref_lat = reference_latents_for(r, refs, None)
    assert ref_lat.shape == (2, r.latent_channels, r.native_latent_size, r.native_latent_size)
    ids, mask = gen.encode_edit_prompts(["a", "b"], refs)
    hidden = conditioning_hidden_states(gen.lm, ids, mask, torch.zeros(2, 16, dtype=torch.long), gen.vocab)
    states = r.conditioning(hidden, ref_lat)
    extra = r.native_latent_size ** 2 if latent_tokens else 0
    assert states.shape == (2, 17 + extra, gen.renderer.transformer.config.caption_channels)
    # CFG's unconditional branch (as upstream): AR hidden states zeroed before their connector, the reference
    # tokens zeroed after theirs.
    uncond = r.conditioning(hidden, ref_lat, keep=torch.zeros(2))
    torch.testing.assert_close(uncond[0, :17], r.encoder_states(torch.zeros_like(hidden))[0])
    assert torch.equal(uncond[:, 17:], torch.zeros_like(uncond[:, 17:]))
    # The picture depends on the reference (same tokens, same noise, different reference).
    other = reference_latents_for(r, _images(2, seed=4), None)
    a = render_edited_images(r, hidden, ref_lat, [7, 7], RENDER)
    b = render_edited_images(r, hidden, other, [7, 7], RENDER)
    assert a.shape == (2, 32, 32, 3) and not torch.equal(a, b)
    # The flow-matching loss trains the latent connector.
    if latent_tokens:
        r.latent_connector.requires_grad_(True)
        loss = r.training_loss(hidden, ref_lat, generator=torch.Generator().manual_seed(0), drop_prob=0.0,
                               reference_latents=ref_lat)
        loss.backward()
        assert r.latent_connector[0].weight.grad.abs().sum() > 0
        r.latent_connector.requires_grad_(False)


def test_without_options_it_is_the_plain_renderer(gen):
    r = ReferenceConditionedRenderer.from_renderer(gen.renderer, latent_tokens=False, concat_noise=False)
    hidden = torch.randn(2, 17, gen.lm.config.hidden_size, generator=torch.Generator().manual_seed(0))
    from rollouts.renderer import render_images

    assert torch.equal(render_edited_images(r, hidden, None, [1, 2], RENDER),
                       render_images(gen.renderer, hidden, [1, 2], RENDER))


def test_checkpoint_round_trip_with_reference_renderer_and_tokenizer(gen, tmp_path):
    gen2 = NativeImageGenerator.from_config(ModelConfig(preset="tiny", device="cpu", dtype="float32", seed=0))
    gen2.enable_editing(gen.image_tokenizer, EditTemplateConfig(use_chat_template=False, system_message=None,
                                                                instruction_template="{instruction} <image>"))
    gen2.renderer = ReferenceConditionedRenderer.from_renderer(gen2.renderer, latent_tokens=True, concat_noise=True,
                                                               seed=2)
    gen2.save_pretrained(tmp_path / "ckpt")
    loaded = NativeImageGenerator.from_pretrained(tmp_path / "ckpt", device="cpu", dtype="float32")
    assert isinstance(loaded.renderer, ReferenceConditionedRenderer)
    assert loaded.renderer.concat_noise and loaded.renderer.latent_connector is not None
    assert loaded.edit_template == gen2.edit_template
    assert type(loaded.image_tokenizer).__name__ == "TATokTokenizer"
    rows = [{"instruction": "make it red", "reference_image": _images(1, seed=9)[0]}]
    a = generate_rollouts(gen2, rows, group_size=2, sampling=SAMPLING, renderer_cfg=RENDER, seed=1)
    b = generate_rollouts(loaded, rows, group_size=2, sampling=SAMPLING, renderer_cfg=RENDER, seed=1)
    assert torch.equal(a.prompt_ids, b.prompt_ids) and torch.equal(a.image_tokens, b.image_tokens)
    torch.testing.assert_close(a.images.float(), b.images.float(), atol=1, rtol=0)


@pytest.mark.parametrize("naflex", [False, True])
def test_tatok_layout_round_trip(tmp_path, naflex):
    tok = build_tiny_tatok(tmp_path / "tatok", naflex=naflex, num_codes=32)
    assert sorted(p.name for p in (tmp_path / "tatok").iterdir()) == ["config.json", "encoder",
                                                                       "quantizer.safetensors"]
    loaded = load_image_tokenizer(tmp_path / "tatok")
    imgs = _images(3, seed=1, size=48)  # resized to the tokenizer's 32 px
    codes = loaded.encode(imgs)
    assert codes.shape == (3, 16) and codes.dtype == np.int64 and codes.min() >= 0 and codes.max() < 32
    assert np.array_equal(codes, tok.encode(imgs))
    assert not np.array_equal(codes[0], codes[1])  # it reads the pixels
    # Nearest-code rule: each code is the argmax cosine between the (pooled, projected) feature and the codebook.
    feats = torch.nn.functional.normalize(loaded.features(imgs), dim=-1)
    book = torch.nn.functional.normalize(loaded.codebook, dim=-1)
    assert np.array_equal((feats @ book.T).argmax(-1).numpy(), codes)


def test_image_tokenizer_errors(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{"_class_name": "Nope"}')
    with pytest.raises(ValueError, match="Nope"):
        load_image_tokenizer(tmp_path / "bad")
    with pytest.raises(FileNotFoundError, match="image tokenizer config"):
        load_image_tokenizer(tmp_path / "missing")
    g = NativeImageGenerator.from_config(ModelConfig(preset="tiny", device="cpu", dtype="float32"))
    with pytest.raises(ValueError, match="32 codes"):
        g.enable_editing(build_tiny_tatok(num_codes=32))
    with pytest.raises(ValueError, match="enable_editing"):
        g.encode_edit_prompts(["a"], _images(1))
