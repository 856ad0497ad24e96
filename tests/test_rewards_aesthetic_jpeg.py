"""Aesthetic predictor on a tiny random CLIP (768-d projection, like ViT-L/14) with a random head saved in the
public `sac+logos+ava1-l14-linearMSE.pth` key layout; JPEG compressibility against PIL file sizes."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from rewards.registry import build_reward
from rewards.spec import RewardSpec
from tiny_fixtures import save_tiny_hf_clip

# The public head's tensors: Linear positions 0, 2, 4, 6, 7 of its nn.Sequential (dropouts in between).
HEAD_SHAPES = {"layers.0": (1024, 768), "layers.2": (128, 1024), "layers.4": (64, 128), "layers.6": (16, 64),
               "layers.7": (1, 16)}


@pytest.fixture(scope="module")
def aesthetic_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("aesthetic")
    clip_dir = root / "clip"
    save_tiny_hf_clip(clip_dir, projection_dim=768, text_layers=1, special_ids=False)  # 768: ViT-L/14's width

    g = torch.Generator().manual_seed(1)
    head = {}
    for prefix, (out_f, in_f) in HEAD_SHAPES.items():
        head[f"{prefix}.weight"] = torch.randn(out_f, in_f, generator=g) / in_f ** 0.5
        head[f"{prefix}.bias"] = torch.randn(out_f, generator=g) * 0.1
    torch.save(head, root / "sac+logos+ava1-l14-linearMSE.pth")
    return clip_dir, root / "sac+logos+ava1-l14-linearMSE.pth", head


def test_aesthetic_is_the_head_on_l2_normalised_clip_image_embeddings(aesthetic_files):
    from transformers import CLIPModel

    from rewards.clip_backends import _pil_image_processor

    clip_dir, head_path, head = aesthetic_files
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (48, 40, 3), dtype=np.uint8) for _ in range(3)]
    reward = build_reward(RewardSpec(name="aesthetic",
                                      options={"path": str(head_path), "clip_path": str(clip_dir)}))
    assert reward.version == "flowgrpo"
    scores = reward(images, ["", "", ""], [{}] * 3).scores
    assert len(scores) == 3
    assert reward(images, ["", "", ""], [{}] * 3).scores == scores  # dropout off, deterministic

    model = CLIPModel.from_pretrained(str(clip_dir)).eval()
    with torch.no_grad():
        pix = _pil_image_processor(clip_dir)(images=images, return_tensors="pt")["pixel_values"]
        # = get_image_features
        emb = model.visual_projection(model.vision_model(pixel_values=pix).pooler_output)

    def head_fn(x):  # the public head: five linear layers, no activations
        for prefix in HEAD_SHAPES:
            x = x @ head[f"{prefix}.weight"].T + head[f"{prefix}.bias"]
        return x.squeeze(-1)

    normalised = head_fn(emb / emb.norm(dim=-1, keepdim=True))
    np.testing.assert_allclose(scores, normalised.numpy(), rtol=1e-4, atol=1e-5)
    assert emb.norm(dim=-1).min() > 1.5  # so the unnormalised input would give a clearly different score
    assert not np.allclose(scores, head_fn(emb).numpy(), atol=1e-3)


def test_aesthetic_rejects_a_head_in_another_layout(aesthetic_files, tmp_path):
    clip_dir, _, head = aesthetic_files
    renamed = {k.replace("layers.", "mlp."): v for k, v in head.items()}
    torch.save(renamed, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="layers.0.weight"):
        build_reward(RewardSpec(name="aesthetic", options={"path": str(tmp_path / "bad.pth"),
                                                           "clip_path": str(clip_dir)}))


def jpeg_kb(image: np.ndarray) -> float:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=95)
    return len(buf.getvalue()) / 1000


def test_jpeg_compressibility_versions():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    flat = np.full((64, 64, 3), 128, dtype=np.uint8)
    flow = build_reward(RewardSpec(name="jpeg_compressibility"))
    ddpo = build_reward(RewardSpec(name="jpeg_compressibility@ddpo"))
    assert (flow.version, ddpo.version) == ("flowgrpo", "ddpo")
    out = flow([noise, flat], ["", ""], [{}, {}])
    np.testing.assert_allclose(out.scores, [-jpeg_kb(noise) / 500, -jpeg_kb(flat) / 500])
    np.testing.assert_allclose(ddpo([noise, flat], ["", ""], [{}, {}]).scores,
                               [-jpeg_kb(noise), -jpeg_kb(flat)])
    assert out.scores[1] > out.scores[0]  # the flat image compresses better
    assert out.details[0]["jpeg_kb"] == pytest.approx(jpeg_kb(noise))
    with pytest.raises(ValueError, match="uint8"):
        flow([noise.astype(np.float32)], [""], [{}])
