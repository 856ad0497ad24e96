"""Editing rows from jsonl (errors name the line / the file) and the consistency reward's measures, alone and
combined with another reward through the suite."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from prompts.edit_prompts import EditPromptError, load_edit_jsonl, reference_pixels
from rewards.image_consistency import ImageConsistencyReward, pixel_similarity
from rewards.registry import build_reward
from rewards.spec import RewardSpec
from rewards.suite import RewardSuite


def _scene(seed=0, size=64):
    """A smooth image with structure (SSIM on pure noise is not informative)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    img = np.stack([127 + 100 * np.sin(6 * x + rng.uniform(0, 6)), 127 + 100 * np.cos(5 * y + rng.uniform(0, 6)),
                    127 + 100 * np.sin(4 * (x + y))], -1)
    return img.clip(0, 255).astype(np.uint8)


@pytest.fixture()
def edit_set(tmp_path):
    (tmp_path / "imgs").mkdir()
    Image.fromarray(_scene(0)).save(tmp_path / "imgs" / "a.png")
    Image.fromarray(_scene(1)).save(tmp_path / "imgs" / "b.png")
    rows = [{"instruction": "make the sky red", "reference_image": "imgs/a.png", "tag": "color"},
            {"instruction": "remove the dog", "reference_image": str(tmp_path / "imgs" / "b.png")}]
    path = tmp_path / "edits.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    return path


def test_load_edit_jsonl(edit_set):
    rows = load_edit_jsonl(edit_set)
    assert [r["instruction"] for r in rows] == ["make the sky red", "remove the dog"]
    assert rows[0]["prompt"] == "make the sky red" and rows[0]["tag"] == "color"
    assert np.array_equal(reference_pixels(rows[0]), _scene(0))  # relative path resolved against the file
    assert np.array_equal(reference_pixels(rows[1]), _scene(1))


@pytest.mark.parametrize("line,message", [
    ('{"instruction": "x"', "edits.jsonl:2: not valid JSON"),
    ('{"reference_image": "imgs/a.png"}', "edits.jsonl:2: a row needs a non-empty string 'instruction'"),
    ('{"instruction": "x"}', "edits.jsonl:2: a row needs 'reference_image'"),
    ('["x"]', "edits.jsonl:2: a row is a JSON object"),
])
def test_bad_rows_name_the_line(edit_set, line, message):
    first = edit_set.read_text().splitlines()[0]
    edit_set.write_text(first + "\n" + line + "\n")
    with pytest.raises(EditPromptError, match=message.replace("(", r"\(")):
        load_edit_jsonl(edit_set)


def test_missing_image_names_the_file(edit_set, tmp_path):
    edit_set.write_text(json.dumps({"instruction": "x", "reference_image": "imgs/nope.png"}) + "\n")
    with pytest.raises(EditPromptError, match=r"edits.jsonl:1: reference image file not found: .*imgs/nope.png"):
        load_edit_jsonl(edit_set)
    with pytest.raises(EditPromptError, match="nope.png"):
        reference_pixels({"instruction": "x", "reference_image": str(tmp_path / "imgs" / "nope.png")})
    with pytest.raises(EditPromptError, match="not found"):
        load_edit_jsonl(tmp_path / "absent.jsonl")


def test_ssim_and_pixel_measures(edit_set):
    rows = load_edit_jsonl(edit_set)
    ref = _scene(0)
    noisy = (ref.astype(int) + np.random.default_rng(0).normal(0, 8, ref.shape)).clip(0, 255).astype(np.uint8)
    other = 255 - ref  # the inverted image
    for version in ("ssim", "pixel"):
        reward = build_reward(RewardSpec(name=f"image_consistency@{version}"))
        assert reward.version == version
        out = reward([ref, noisy, other], ["p"] * 3, [rows[0]] * 3)
        assert out.scores[0] == pytest.approx(1.0)
        assert out.scores[0] > out.scores[1] > out.scores[2]  # identical > slightly noisy copy > inverted
    assert pixel_similarity(ref, 255 - ref) < 0.6
    # The reference is resized to the edited image's size.
    small = np.asarray(Image.fromarray(ref).resize((32, 32), Image.BICUBIC))
    assert ImageConsistencyReward(version="ssim")([small], ["p"], [rows[0]]).scores[0] > 0.99


def test_clip_measure_from_local_weights(edit_set, tmp_path):
    from tiny_fixtures import save_tiny_hf_clip

    clip_dir = tmp_path / "clip"
    save_tiny_hf_clip(clip_dir, logit_scale=np.log(100.0))
    rows = load_edit_jsonl(edit_set)
    reward = build_reward(RewardSpec(name="image_consistency@clip", options={"path": str(clip_dir)}))
    out = reward([_scene(0), _scene(1)], ["p", "p"], [rows[0], rows[0]])
    assert out.scores[0] == pytest.approx(1.0, abs=1e-5)
    emb = reward.embedder.embed_images([_scene(1), _scene(0)])
    cos = torch.nn.functional.cosine_similarity(emb[0], emb[1], dim=0)
    assert out.scores[1] == pytest.approx(float(cos), abs=1e-5) and out.scores[1] < 0.9999


def test_dino_measure_from_local_weights(edit_set, tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             patch_size=8, image_size=32)).save_pretrained(tmp_path / "dino")
    rows = load_edit_jsonl(edit_set)
    reward = ImageConsistencyReward(version="dino", path=str(tmp_path / "dino"), dino_image_size=32)
    assert reward.version == "dino"
    out = reward([_scene(0), _scene(1)], ["p", "p"], [rows[0], rows[0]])
    assert out.scores[0] == pytest.approx(1.0, abs=1e-5) and out.scores[1] < 0.9999
    with pytest.raises(ValueError, match="needs 'path'"):
        ImageConsistencyReward(version="dino")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageConsistencyReward(version="dino", path=str(tmp_path / "missing"))


def redness_judge(instruction, reference, edited, row):
    """A pluggable judge: fraction of pixels that are clearly red (for "make ... red" instructions)."""
    e = edited.astype(int)
    return float(((e[..., 0] > 150) & (e[..., 1] < 100) & (e[..., 2] < 100)).mean())


redness_judge.version = "redness-test"


def test_consistency_and_a_judge_combine_in_the_suite(edit_set):
    rows = load_edit_jsonl(edit_set)
    ref = _scene(0)
    red = ref.copy()
    red[:32] = (220, 30, 30)  # half the image edited to red
    suite = RewardSuite([
        RewardSpec(name="image_consistency@ssim", weight=0.5),
        RewardSpec(name="edit_judge", weight=1.0, options={"judge": "test_editing_data_rewards:redness_judge"}),
    ])
    out = suite.score([ref, red], ["p", "p"], [rows[0], rows[0]])
    assert out.tags == {"image_consistency": "image_consistency@ssim", "edit_judge": "edit_judge@redness-test"}
    assert out.weights == {"image_consistency": 0.5, "edit_judge": 1.0} and not out.failed
    assert out.scores["image_consistency"][0] > out.scores["image_consistency"][1]  # the edit changed pixels
    # The judge's own numbers pass through the suite unchanged (half the image was painted red).
    assert out.scores["edit_judge"][1] == pytest.approx(redness_judge("", ref, red, {}))
    assert out.scores["edit_judge"][1] >= 0.5 and out.scores["edit_judge"][0] < out.scores["edit_judge"][1] - 0.3


def test_bundled_sample_references(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text('{"instruction": "make the cat black", "reference_image": "skimage:chelsea"}\n')
    (row,) = load_edit_jsonl(path)
    assert row["reference_image"] == "skimage:chelsea" and reference_pixels(row).shape == (300, 451, 3)
    path.write_text('{"instruction": "x", "reference_image": "skimage:chelsea"}\n'
                    '{"instruction": "x", "reference_image": "skimage:lena"}\n')
    with pytest.raises(EditPromptError, match=r"e.jsonl:2: 'skimage:lena' is not a bundled sample image"):
        load_edit_jsonl(path)
