"""CLIPScore, PickScore and HPSv2 on tiny random CLIPs saved in the real layouts (HF save_pretrained dir with
a tokenizer built from the CLIP BPE that ships in open_clip; open_clip state dicts). Checks loading, shapes,
determinism and that each version's scaling matches the number computed independently from the model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from rewards.registry import build_reward
from rewards.spec import RewardSpec
from tiny_fixtures import save_tiny_hf_clip

TINY_OPEN_CLIP = "nativerl-test-tiny-vit"


@pytest.fixture(scope="module")
def hf_clip_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    save_tiny_hf_clip(root / "hf", logit_scale=math.log(100.0))  # OpenAI CLIP's exp(logit_scale) = 100
    return root / "hf"


@pytest.fixture(scope="module")
def open_clip_file(tmp_path_factory):
    import open_clip

    root = tmp_path_factory.mktemp("open_clip")
    cfg = {"embed_dim": 16,
           "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
    (root / f"{TINY_OPEN_CLIP}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(str(root / f"{TINY_OPEN_CLIP}.json"))
    torch.manual_seed(1)
    model = open_clip.create_model(TINY_OPEN_CLIP, pretrained=None)
    torch.save(model.state_dict(), root / "tiny.pt")
    # The HPSv2 release wraps the weights: {"state_dict": ...}, saved from DDP ("module." prefix).
    wrapped = {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}
    torch.save(wrapped, root / "hps_style.pt")
    return root


def images_and_prompts(n=4, seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(48, 64, 3), (64, 48, 3), (40, 40, 3), (33, 70, 3)]
    images = [rng.integers(0, 256, shapes[i % len(shapes)], dtype=np.uint8) for i in range(n)]
    prompts = ["a photo of a cat", "a red car on a street", 'a sign that says "OPEN"', "two dogs"][:n]
    return images, prompts


def reference_flowgrpo_logits(model_dir, images, prompts):
    """Flow-GRPO clip_scorer.py, written independently: torchvision transforms on [0,1] tensors, HF CLIPModel
    forward, diagonal of logits_per_image."""
    import torchvision.transforms as T
    from transformers import CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(str(model_dir)).eval()
    tok = CLIPTokenizer.from_pretrained(str(model_dir))
    tform = T.Compose([T.Resize(32), T.CenterCrop((32, 32)),
                       T.Normalize(mean=[0.48145466, 0.4578275, 0.40821073],
                                   std=[0.26862954, 0.26130258, 0.27577711])])
    pixels = torch.stack([tform(torch.from_numpy(im).permute(2, 0, 1).float() / 255.0) for im in images])
    texts = tok(prompts, padding="max_length", truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model(pixel_values=pixels, input_ids=texts["input_ids"], attention_mask=texts["attention_mask"])
    return out.logits_per_image.diag(), out.image_embeds, out.text_embeds


def test_clipscore_flowgrpo_is_logits_over_30_and_100_cos_over_30(hf_clip_dir):
    images, prompts = images_and_prompts()
    reward = build_reward(RewardSpec(name="clipscore", options={"path": str(hf_clip_dir)}))
    assert (reward.name, reward.version) == ("clipscore", "flowgrpo")
    out = reward(images, prompts, [{}] * 4)
    assert len(out.scores) == 4 and len(out.details) == 4

    logits, img_emb, txt_emb = reference_flowgrpo_logits(hf_clip_dir, images, prompts)
    np.testing.assert_allclose(out.scores, (logits / 30).numpy(), rtol=1e-4, atol=1e-5)
    cos = torch.nn.functional.cosine_similarity(img_emb, txt_emb, dim=-1).numpy()
    np.testing.assert_allclose(np.array(out.scores) * 30 / 100, cos, rtol=1e-4, atol=1e-5)
    assert not np.allclose(cos, cos[0])  # the test would be vacuous if every pair had the same cosine


def test_clipscore_cos_version_is_raw_cosine_and_batching_does_not_change_scores(hf_clip_dir):
    images, prompts = images_and_prompts()
    flow = build_reward(RewardSpec(name="clipscore@flowgrpo", options={"path": str(hf_clip_dir)}))
    cos = build_reward(RewardSpec(name="clipscore@cos", options={"path": str(hf_clip_dir), "batch_size": 1}))
    assert cos.version == "cos"
    s_flow, s_cos = flow(images, prompts, [{}] * 4).scores, cos(images, prompts, [{}] * 4).scores
    np.testing.assert_allclose(np.array(s_flow) * 30 / 100, s_cos, rtol=1e-4, atol=1e-6)
    assert all(-1.0 <= s <= 1.0 for s in s_cos)
    assert cos(images, prompts, [{}] * 4).scores == s_cos  # deterministic


def test_clipscore_open_clip_backend_matches_model_forward(open_clip_file):
    import open_clip
    from PIL import Image

    images, prompts = images_and_prompts()
    reward = build_reward(RewardSpec(name="clipscore", options={
        "path": str(open_clip_file / "tiny.pt"), "backend": "open_clip", "model_name": TINY_OPEN_CLIP}))
    scores = reward(images, prompts, [{}] * 4).scores

    model, _, preprocess = open_clip.create_model_and_transforms(TINY_OPEN_CLIP, pretrained=None)
    model.load_state_dict(torch.load(open_clip_file / "tiny.pt"))
    model.eval()
    with torch.no_grad():
        img_f, txt_f, scale = model(torch.stack([preprocess(Image.fromarray(im)) for im in images]),
                                    open_clip.get_tokenizer(TINY_OPEN_CLIP)(prompts))
    expected = scale * (img_f * txt_f).sum(-1) / 30  # open_clip's forward returns normalised features
    np.testing.assert_allclose(scores, expected.numpy(), rtol=1e-4, atol=1e-5)


def test_pickscore_flowgrpo_scaling(hf_clip_dir):
    from transformers import CLIPModel, CLIPTokenizer

    from rewards.clip_backends import _pil_image_processor

    images, prompts = images_and_prompts()
    flow = build_reward(RewardSpec(name="pickscore", options={"path": str(hf_clip_dir)}))
    dance = build_reward(RewardSpec(name="pickscore@dancegrpo", options={"path": str(hf_clip_dir)}))
    s_flow, s_dance = flow(images, prompts, [{}] * 4).scores, dance(images, prompts, [{}] * 4).scores

    # Flow-GRPO pickscore_scorer.py: processor for both inputs, padding=True, features normalised. The image
    # processor is the PIL one (transformers 4.x's default, which upstream ran; v5 defaults to torchvision).
    model, tok = CLIPModel.from_pretrained(str(hf_clip_dir)), CLIPTokenizer.from_pretrained(str(hf_clip_dir))
    with torch.no_grad():
        pix = _pil_image_processor(hf_clip_dir)(images=images, return_tensors="pt")["pixel_values"]
        txt = tok(prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        out = model(pixel_values=pix, input_ids=txt["input_ids"], attention_mask=txt["attention_mask"])
    cos = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds, dim=-1)
    np.testing.assert_allclose(s_dance, cos.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(s_flow, (100.0 * cos / 26).numpy(), rtol=1e-4, atol=1e-5)


def test_hpsv2_loads_wrapped_ddp_checkpoint_and_scores_cosine(open_clip_file):
    from rewards.hpsv2 import HPSv2Reward

    images, prompts = images_and_prompts(2)
    hps = HPSv2Reward(path=str(open_clip_file / "hps_style.pt"), model_name=TINY_OPEN_CLIP)
    plain = build_reward(RewardSpec(name="clipscore@cos", options={
        "path": str(open_clip_file / "tiny.pt"), "backend": "open_clip", "model_name": TINY_OPEN_CLIP}))
    assert hps.version == "v2.1"
    np.testing.assert_allclose(hps(images, prompts, [{}, {}]).scores, plain(images, prompts, [{}, {}]).scores,
                               rtol=1e-5, atol=1e-6)


def test_loading_errors_name_the_problem(hf_clip_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_reward(RewardSpec(name="clipscore", options={"path": str(tmp_path / "nowhere")}))
    with pytest.raises(ValidationError, match="batchsize"):
        build_reward(RewardSpec(name="clipscore", options={"path": str(hf_clip_dir), "batchsize": 4}))
    with pytest.raises(ValidationError, match="version"):
        build_reward(RewardSpec(name="clipscore@dfn", options={"path": str(hf_clip_dir)}))
    with pytest.raises(ValueError, match="model_name"):
        build_reward(RewardSpec(name="clipscore", options={"path": str(hf_clip_dir), "backend": "open_clip"}))
    reward = build_reward(RewardSpec(name="clipscore", options={"path": str(hf_clip_dir)}))
    with pytest.raises(ValueError, match="image 0"):
        reward([np.zeros((8, 8, 3), dtype=np.float32)], ["x"], [{}])
