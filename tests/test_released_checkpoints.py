"""Every released BLIP3o-NEXT variant's layout loads (tiny checkpoints written as upstream's save code writes them,
rollouts/tiny_release.py), and the edge cases of a user's first load get clear errors: the image-vocabulary size
comes from config.json (a trailing added token does not move it), the SANA folder is found in the documented places
or the error lists where it looked, the edit model's connectors load under upstream's names, its CFG zeroes the
reference tokens after their connector, and references are centre-cropped, not squashed."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rollouts.blip3o_checkpoint import DIFFUSION_ENV, read_state_dict
from rollouts.config import ModelConfig, RendererConfig, SamplingConfig
from rollouts.generator import NativeImageGenerator
from rollouts.reference_image import ReferenceConditionedRenderer, fit_reference
from rollouts.rollout import generate_rollouts
from rollouts.sampling_source import resolve_sampling
from rollouts.tiny_release import TINY_SANA_DIR, VARIANTS, write_all, write_tiny_release

N = 16  # the tiny LM's tokens per image (upstream's configs do not say; released models use 729)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    return write_all(tmp_path_factory.mktemp("released"))


def _load(path, **kw):
    return NativeImageGenerator.from_config(ModelConfig(source="path", path=str(path), device="cpu",
                                                        dtype="float32", tokens_per_image=N, **kw))


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_released_variant_loads(releases, variant):
    rel = releases[variant]
    cfg = json.loads((rel.checkpoint / "config.json").read_text())
    assert cfg["rope_theta"] == 1e6 and cfg["rope_scaling"] is None and cfg["tie_word_embeddings"] is True
    assert cfg["diffusion_name_or_path"].startswith("Efficient-Large-Model/")
    index = json.loads((rel.checkpoint / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and "lm_head.weight" not in index["weight_map"]
    assert any(k.startswith("model.sana.") for k in index["weight_map"])
    assert any(k.startswith("model.sana_vae.") for k in index["weight_map"])
    state = read_state_dict(rel.checkpoint)

    gen = _load(rel.checkpoint, image_tokenizer=str(rel.image_tokenizer) if rel.image_tokenizer else None)
    report = gen.load_report
    assert report["transformer"] == "checkpoint shards (model.sana.*)"
    assert report["vae"] == "checkpoint shards (model.sana_vae.*)"
    assert report["diffusion_found"].startswith("next to the checkpoint")
    assert report["num_image_tokens"] == "num_image_tokens = 64" and gen.vocab.num_image_tokens == 64
    assert any(k.startswith("model.vision_tower.") for k in report["ignored_keys"])
    assert gen.generation_config["top_k"] == 20
    # Tied head, and the shards' (fine-tuned) caption projection, not the SANA folder's base weights.
    assert gen.lm.get_output_embeddings().weight.data_ptr() == gen.lm.get_input_embeddings().weight.data_ptr()
    cap = gen.renderer.transformer.caption_projection.linear_1.weight
    assert torch.equal(cap, state["model.sana.caption_projection.linear_1.weight"])
    base = load_file(str(rel.diffusion / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert not torch.equal(cap, base["caption_projection.linear_1.weight"])
    assert torch.equal(gen.renderer.connector[0].weight, state["model.diffusion_connector.0.weight"])
    if variant == "edit":
        assert isinstance(gen.renderer, ReferenceConditionedRenderer) and gen.renderer.concat_noise
        assert torch.equal(gen.renderer.latent_connector[2].weight, state["model.und_image_vae_connector.2.weight"])
        assert "model.und_image_vae_as_noise_connector.0.weight" in report["ignored_keys"]
        assert gen.image_tokenizer is not None
    else:
        sampling = resolve_sampling(SamplingConfig(source="checkpoint"), gen)
        assert (sampling.top_k, sampling.top_p) == (20, 0.95)
        batch = generate_rollouts(gen, [{"prompt": "a red circle"}], group_size=2, sampling=sampling,
                                  renderer_cfg=RendererConfig(num_inference_steps=2), seed=0)
        assert batch.images.shape == (2, 32, 32, 3)


def test_export_writes_upstreams_edit_connector_name(releases, tmp_path):
    rel = releases["edit"]
    gen = _load(rel.checkpoint)
    gen.save_pretrained(tmp_path / "exported")
    keys = set(load_file(str(tmp_path / "exported" / "model.safetensors")))
    assert any(k.startswith("model.und_image_vae_connector.") for k in keys)
    again = _load(tmp_path / "exported")
    assert torch.equal(again.renderer.latent_connector[0].weight, gen.renderer.latent_connector[0].weight)
    assert again.generation_config == gen.generation_config  # kept for sampling.source: checkpoint


def test_trailing_added_token_does_not_change_k(tmp_path):
    rel = write_tiny_release(tmp_path, "sft", trailing_tokens=("<|extra_pad|>",))
    assert _load(rel.checkpoint).vocab.num_image_tokens == 64
    cfg_path = rel.checkpoint / "config.json"
    cfg = json.loads(cfg_path.read_text())
    for key in ("num_image_tokens", "image_end_token_id"):  # a config that does not say: <I..> are counted
        cfg.pop(key)
    cfg_path.write_text(json.dumps(cfg))
    gen = _load(rel.checkpoint)
    assert gen.vocab.num_image_tokens == 64 and "counted" in gen.load_report["num_image_tokens"]


def test_image_vocabulary_mismatches_are_explained(releases, tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(releases["sft"].checkpoint, d)
    shutil.copytree(releases["sft"].diffusion, tmp_path / TINY_SANA_DIR)
    cfg = json.loads((d / "config.json").read_text())

    def write(**changes):
        (d / "config.json").write_text(json.dumps({**cfg, **changes}))

    write(num_image_tokens=63, image_end_token_id=cfg["image_start_token_id"] + 62)
    with pytest.raises(ValueError, match=r"continues with <I63>.*different checkpoints"):
        _load(d)
    write(num_image_tokens=65, image_end_token_id=cfg["image_start_token_id"] + 64)
    with pytest.raises(ValueError, match=r"num_image_tokens = 65.*no '<I64>' token"):
        _load(d)
    write(num_image_tokens=65)
    with pytest.raises(ValueError, match=r"disagrees: num_image_tokens = 65, image_end_token_id"):
        _load(d)


def test_sana_folder_is_found_or_the_error_lists_where_it_looked(releases, tmp_path, monkeypatch):
    d = tmp_path / "models" / "sft"
    shutil.copytree(releases["sft"].checkpoint, d)
    with pytest.raises(FileNotFoundError) as e:
        _load(d)
    msg = str(e.value)
    for place in ("model.diffusion_path (not set)", f"${DIFFUSION_ENV} (not set)",
                  str(tmp_path / "models" / TINY_SANA_DIR), "Hugging Face cache"):
        assert place in msg
    sana = tmp_path / "elsewhere"
    shutil.copytree(releases["sft"].diffusion, sana)
    assert _load(d, diffusion_path=str(sana)).load_report["diffusion_found"] == "model.diffusion_path"
    monkeypatch.setenv(DIFFUSION_ENV, str(sana))
    assert _load(d).load_report["diffusion_found"] == f"${DIFFUSION_ENV}"
    monkeypatch.setenv(DIFFUSION_ENV, str(tmp_path / "typo"))
    with pytest.raises(FileNotFoundError, match=f"\\${DIFFUSION_ENV} = .*typo is not a local diffusers folder"):
        _load(d)
    monkeypatch.delenv(DIFFUSION_ENV)
    shutil.copytree(sana, tmp_path / "models" / TINY_SANA_DIR)  # the documented place: next to the checkpoint
    assert _load(d).load_report["diffusion_found"].startswith("next to the checkpoint")


def test_edit_cfg_zeroes_reference_tokens_after_their_connector(releases):
    gen = _load(releases["edit"].checkpoint)
    r = gen.renderer
    hidden = torch.randn(2, N + 1, gen.lm.config.hidden_size)
    ref = torch.randn(2, r.latent_channels, 8, 8)
    cond = r.conditioning(hidden, ref)
    uncond = r.conditioning(hidden, ref, keep=torch.tensor([0.0, 1.0]))
    assert torch.equal(uncond[0, N + 1:], torch.zeros_like(uncond[0, N + 1:]))  # exactly zero, not connector(0)
    assert not torch.equal(r.reference_states(torch.zeros_like(ref))[0], torch.zeros_like(uncond[0, N + 1:]))
    torch.testing.assert_close(uncond[0, :N + 1], r.encoder_states(torch.zeros_like(hidden))[0])
    torch.testing.assert_close(uncond[1], cond[1])


def test_reference_is_centre_cropped_not_squashed():
    image = np.zeros((32, 64, 3), dtype=np.uint8)
    image[:, :16] = (255, 0, 0)
    image[:, 16:48] = (0, 255, 0)
    image[:, 48:] = (0, 0, 255)
    out = fit_reference(image, 16)  # shorter side 32 → 16, width 64 → 32, then the centre 16 columns
    assert out.shape == (16, 16, 3)
    assert (out[:, 1:-1, 1] > 200).all() and (out[:, 1:-1, 0] < 60).all() and (out[:, 1:-1, 2] < 60).all()
