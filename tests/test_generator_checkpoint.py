"""BLIP3o-NEXT-layout checkpoints: a tiny model round-trips; broken or mismatched ones fail with the keys named."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from rollouts.blip3o_checkpoint import CheckpointMismatchError
from rollouts.config import ModelConfig, RendererConfig, SamplingConfig
from rollouts.generator import NativeImageGenerator
from rollouts.rollout import generate_rollouts

ROWS = [{"prompt": "a red circle"}, {"prompt": "a blue square"}]
KW = {"group_size": 2, "sampling": SamplingConfig(), "renderer_cfg": RendererConfig(num_inference_steps=2), "seed": 3}


@pytest.fixture(scope="module")
def gen():
    return NativeImageGenerator.from_config(ModelConfig(preset="tiny", device="cpu", dtype="float32", seed=4))


@pytest.fixture(scope="module")
def saved(gen, tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt") / "blip3o-tiny"
    gen.save_pretrained(d)
    return d


def _load(path, **kw):
    return NativeImageGenerator.from_config(ModelConfig(source="path", path=str(path), device="cpu",
                                                        dtype="float32", **kw))


def test_layout_and_key_names(saved):
    cfg = json.loads((saved / "config.json").read_text())
    assert cfg["model_type"] == "blip3o_qwen_inference" and cfg["diffusion_name_or_path"] == "diffusion"
    keys = set(load_file(str(saved / "model.safetensors")))
    assert "model.embed_tokens.weight" in keys and "model.layers.0.self_attn.q_proj.weight" in keys
    assert "model.norm.weight" in keys and "lm_head.weight" in keys
    assert {"model.diffusion_connector.0.weight", "model.diffusion_connector.2.bias",
            "model.diffusion_connector.3.weight"} <= keys
    for sub in ("transformer", "vae", "scheduler"):
        assert (saved / "diffusion" / sub / "config.json").exists() or \
            (saved / "diffusion" / sub / "scheduler_config.json").exists()


def test_round_trip_gives_identical_rollouts(gen, saved):
    loaded = _load(saved)
    for (k, a), (k2, b) in zip(gen.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    assert loaded.vocab == gen.vocab and loaded.tokens_per_image == gen.tokens_per_image
    assert loaded.load_report["transformer"] == "diffusers folder"
    a, b = generate_rollouts(gen, ROWS, **KW), generate_rollouts(loaded, ROWS, **KW)
    assert torch.equal(a.prompt_ids, b.prompt_ids)
    assert torch.equal(a.image_tokens, b.image_tokens) and torch.equal(a.images, b.images)


def test_renderer_weights_in_shards_and_sharded_files(gen, tmp_path):
    d = tmp_path / "sharded"
    gen.save_pretrained(d, renderer_in_shards=True, max_shard_bytes=200_000)
    assert (d / "model.safetensors.index.json").exists()
    assert not list((d / "diffusion" / "transformer").glob("*.safetensors"))
    loaded = _load(d)
    assert loaded.load_report["transformer"].startswith("checkpoint shards")
    assert loaded.load_report["vae"].startswith("checkpoint shards")
    for (k, a), b in zip(gen.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k


def test_vision_tower_keys_are_ignored_and_reported(saved, tmp_path):
    d = tmp_path / "with_tower"
    shutil.copytree(saved, d)
    state = load_file(str(d / "model.safetensors"))
    state["model.vision_tower.encoder.weight"] = torch.zeros(2)
    save_file(state, str(d / "model.safetensors"))
    assert _load(d).load_report["ignored_keys"] == ["model.vision_tower.encoder.weight"]


def test_missing_and_unexpected_keys_are_listed(saved, tmp_path):
    d = tmp_path / "bad"
    shutil.copytree(saved, d)
    state = load_file(str(d / "model.safetensors"))
    del state["model.layers.1.mlp.up_proj.weight"]
    state["model.layers.9.self_attn.q_proj.weight"] = torch.zeros(2)
    save_file(state, str(d / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError) as e:
        _load(d)
    msg = str(e.value)
    assert "missing keys (1)" in msg and "model.layers.1.mlp.up_proj.weight" in msg
    assert "unexpected keys (1)" in msg and "model.layers.9.self_attn.q_proj.weight" in msg


def test_mismatched_shapes_are_listed(saved, tmp_path):
    d = tmp_path / "wide"
    shutil.copytree(saved, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError, match=r"shape mismatches \(6\)[\s\S]*mlp.up_proj.weight"):
        _load(d)


def test_missing_connector_is_an_error(saved, tmp_path):
    d = tmp_path / "noconn"
    shutil.copytree(saved, d)
    state = {k: v for k, v in load_file(str(d / "model.safetensors")).items() if "diffusion_connector" not in k}
    save_file(state, str(d / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError, match="model.diffusion_connector.0.weight"):
        _load(d)


def test_corrupt_weight_file_names_the_file(saved, tmp_path):
    d = tmp_path / "corrupt"
    shutil.copytree(saved, d)
    (d / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="cannot read weight file .*model.safetensors"):
        _load(d)


def test_missing_files_and_bad_model_type(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _load(tmp_path / "nowhere")
    d = tmp_path / "other"
    shutil.copytree(saved, d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    with pytest.raises(ValueError, match="model_type 'llama'"):
        _load(d)
    (d / "config.json").write_text(json.dumps({**cfg, "diffusion_name_or_path": "Org/not-local"}))
    with pytest.raises(FileNotFoundError, match="diffusion_path"):
        _load(d)
    moved = tmp_path / "elsewhere"
    shutil.move(str(d / "diffusion"), moved)
    assert _load(d, diffusion_path=str(moved)).tokens_per_image == 16
