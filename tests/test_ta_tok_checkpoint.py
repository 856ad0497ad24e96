"""The released TA-Tok file layout (`ta_tok.pth`: args + state dict with encoder / encode_task_layer / bottleneck /
decoder / teacher keys) loads into `TATokTokenizer` and gives exactly the codes TA-Tok's encode path computes; bad
files get errors that name the problem. All on a tiny random checkpoint written in that layout."""

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from rl.cli import app
from rollouts.config import ModelConfig
from rollouts.generator import NativeImageGenerator
from rollouts.image_tokenizer_loading import load_image_tokenizer
from rollouts.ta_tok_checkpoint import (
    convert_ta_tok,
    load_released_ta_tok,
    read_ta_tok_file,
    write_tiny_ta_tok_checkpoint,
)

HEADS = {"num_attention_heads": 2}  # the tiny encoder's head count (weights cannot tell it)


def _images(n, seed=0, size=40):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _expected_codes(parts, images, *, l2_normalized=True, image_size=32):
    """TA-Tok's encode path written out: SigLIP processor pixels → hidden_states[-2] → tanh(Linear) → in_linear →
    nearest entry of embedding_proj(embedding)."""
    from transformers import SiglipImageProcessor

    pixels = SiglipImageProcessor(size={"height": image_size, "width": image_size})(
        images=list(images), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        h = parts["encoder"](pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        z = parts["in_linear"](parts["encode_task_layer"](h))
        book = parts["embedding_proj"](parts["embedding"].weight)
        if l2_normalized:
            return (F.normalize(z, dim=-1) @ F.normalize(book, dim=-1).T).argmax(-1).numpy()
        return torch.cdist(z, book.unsqueeze(0).expand(z.shape[0], -1, -1)).argmin(-1).numpy()


@pytest.mark.parametrize("easydict_args", [False, True])
def test_released_layout_gives_ta_tok_codes(tmp_path, easydict_args):
    parts = write_tiny_ta_tok_checkpoint(tmp_path / "ta_tok.pth", easydict_args=easydict_args, with_teacher=True)
    args, sd = read_ta_tok_file(tmp_path / "ta_tok.pth")
    assert type(args) is dict and args["bottleneck"]["args"]["regularizer"]["name"] == "simvq"
    assert any(k.startswith("decoder.vision_model.") for k in sd) and "teacher.embeddings.patch_embedding.weight" in sd
    tok = load_released_ta_tok(tmp_path / "ta_tok.pth", encoder_config=HEADS)
    assert (tok.num_codes, tok.tokens_per_image, tok.config.distance) == (64, 16, "cosine")
    imgs = _images(3)
    codes = tok.encode(imgs)
    assert codes.shape == (3, 16) and codes.dtype == np.int64
    assert np.array_equal(codes, _expected_codes(parts, imgs))
    assert len(np.unique(codes)) > 3 and not np.array_equal(codes[0], codes[1])  # it reads the pixels


def test_plain_vq_uses_squared_l2(tmp_path):
    parts = write_tiny_ta_tok_checkpoint(tmp_path / "t.pth", l2_normalized=False, seed=3)
    tok = load_released_ta_tok(tmp_path / "t.pth", encoder_config=HEADS)
    assert tok.config.distance == "l2"
    imgs = _images(2, seed=4)
    assert np.array_equal(tok.encode(imgs), _expected_codes(parts, imgs, l2_normalized=False))


def test_convert_load_and_generator(tmp_path):
    teacher = tmp_path / "siglip-config"  # a local teacher folder named in args: no encoder_config needed
    write_tiny_ta_tok_checkpoint(tmp_path / "ta_tok.pth", teacher=str(teacher))
    from transformers import SiglipVisionConfig

    SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                       image_size=32, patch_size=8).save_pretrained(teacher)
    direct = load_image_tokenizer(tmp_path / "ta_tok.pth")
    convert_ta_tok(tmp_path / "ta_tok.pth", tmp_path / "image_tokenizer")
    quantizer = __import__("safetensors.torch", fromlist=["load_file"]).load_file(
        tmp_path / "image_tokenizer" / "quantizer.safetensors")
    assert sorted(quantizer) == ["codebook", "projection.bias", "projection.weight", "task_layer.bias",
                                 "task_layer.weight"]
    folder = load_image_tokenizer(tmp_path / "image_tokenizer")
    (tmp_path / "dropped_in").mkdir()  # a folder holding only the released file also loads
    (tmp_path / "dropped_in" / "ta_tok.pth").write_bytes((tmp_path / "ta_tok.pth").read_bytes())
    dropped = load_image_tokenizer(tmp_path / "dropped_in")
    imgs = _images(2, seed=5)
    assert np.array_equal(direct.encode(imgs), folder.encode(imgs))
    assert np.array_equal(direct.encode(imgs), dropped.encode(imgs))
    # The converted tokenizer drives editing prompts: its codes become <I k> tokens between the vision markers.
    gen = NativeImageGenerator.from_config(ModelConfig(preset="tiny", device="cpu", dtype="float32", seed=0))
    gen.enable_editing(folder)
    ids, _ = gen.encode_edit_prompts(["make the circle blue"], imgs[:1])
    assert torch.isin(gen.vocab.to_ids(torch.as_tensor(folder.encode(imgs[:1])))[0], ids[0]).all()
    # A BLIP3o-NEXT-layout checkpoint whose image_tokenizer/ holds just the released file loads it for editing.
    gen.save_pretrained(tmp_path / "ckpt")
    shutil.rmtree(tmp_path / "ckpt" / "image_tokenizer")
    (tmp_path / "ckpt" / "image_tokenizer").mkdir()
    shutil.copy(tmp_path / "ta_tok.pth", tmp_path / "ckpt" / "image_tokenizer" / "ta_tok.pth")
    loaded = NativeImageGenerator.from_pretrained(tmp_path / "ckpt", device="cpu", dtype="float32")
    assert "TATokTokenizer" in loaded.load_report["image_tokenizer"]
    ids2, _ = loaded.encode_edit_prompts(["make the circle blue"], imgs[:1])
    assert torch.equal(ids, ids2)


def test_cli_convert(tmp_path):
    write_tiny_ta_tok_checkpoint(tmp_path / "ta_tok.pth")
    (tmp_path / "enc.json").write_text(json.dumps(HEADS))
    runner = CliRunner()
    res = runner.invoke(app, ["convert-ta-tok", str(tmp_path / "ta_tok.pth"), "--out", str(tmp_path / "out"),
                              "--encoder-config", str(tmp_path / "enc.json")])
    assert res.exit_code == 0, res.output
    assert "64 codes, 16 tokens per 32px image" in res.output
    assert (tmp_path / "out" / "quantizer.safetensors").is_file()
    res = runner.invoke(app, ["convert-ta-tok", str(tmp_path / "ta_tok.pth"), "--out", str(tmp_path / "o2")])
    assert res.exit_code == 2 and "--encoder-config" in res.output  # width 32 is no released SigLIP width


def _rewrite(src, dst, edit):
    ckpt = torch.load(src, weights_only=False)
    edit(ckpt)
    torch.save(ckpt, dst)


def test_bad_files_are_named(tmp_path):
    good = tmp_path / "ta_tok.pth"
    write_tiny_ta_tok_checkpoint(good)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_released_ta_tok(tmp_path / "nope.pth")
    torch.save({"state_dict": {}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"not a TA-Tok checkpoint.*state_dict"):
        load_released_ta_tok(tmp_path / "other.pth")

    _rewrite(good, tmp_path / "missing.pth", lambda c: c["model"]["sd"].pop("encode_task_layer.0.weight"))
    with pytest.raises(ValueError, match="encode_task_layer.0.weight"):
        load_released_ta_tok(tmp_path / "missing.pth", encoder_config=HEADS)
    _rewrite(good, tmp_path / "extra.pth", lambda c: c["model"]["sd"].__setitem__("mystery.weight", torch.zeros(1)))
    with pytest.raises(ValueError, match="mystery.weight"):
        load_released_ta_tok(tmp_path / "extra.pth", encoder_config=HEADS)
    _rewrite(good, tmp_path / "lfq.pth",
             lambda c: c["model"]["args"]["bottleneck"]["args"]["regularizer"].__setitem__("name", "lfq"))
    with pytest.raises(ValueError, match="'lfq'"):
        load_released_ta_tok(tmp_path / "lfq.pth", encoder_config=HEADS)
    _rewrite(good, tmp_path / "layer.pth", lambda c: c["model"]["sd"].pop("encoder.encoder.layers.1.mlp.fc1.weight"))
    with pytest.raises(ValueError, match="layers.1.mlp.fc1.weight"):
        load_released_ta_tok(tmp_path / "layer.pth", encoder_config=HEADS)
    with pytest.raises(ValueError, match="hidden_size=64"):
        load_released_ta_tok(good, encoder_config={"num_attention_heads": 2, "hidden_size": 64})
    with pytest.raises(ValueError, match="attention heads"):
        load_released_ta_tok(good, encoder_config={"num_attention_heads": 5})
    # A pickled object outside the weights-only allowlist is refused unless the user trusts the file.
    _rewrite(good, tmp_path / "pickled.pth", lambda c: c.__setitem__("extra", torch.nn.ReLU()))
    with pytest.raises(ValueError, match="allow_unsafe_pickle"):
        load_released_ta_tok(tmp_path / "pickled.pth", encoder_config=HEADS)
    assert load_released_ta_tok(tmp_path / "pickled.pth", encoder_config=HEADS,
                                allow_unsafe_pickle=True).num_codes == 64
