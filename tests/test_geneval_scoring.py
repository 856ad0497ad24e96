"""GenEval scoring (`rewards.geneval.score_detections`) on synthetic detections: every worked example of the
reward notes, the reference's quirks, and both versions. No detector involved."""

import json
from pathlib import Path

import pytest

from rewards.geneval import (
    COUNTING_THRESHOLD,
    MAX_OBJECTS,
    relative_position,
    score_detections,
    select_detections,
    validate_metadata,
)

SIZE = (512, 512)
REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def box(cx, cy, conf=0.95, colour=None, half=20):
    return (cx - half, cy - half, cx + half, cy + half, conf, colour)


COW_RIGHT_OF_LAPTOP = {
    "tag": "position", "prompt": "a photo of a cow right of a laptop",
    "include": [{"class": "laptop", "count": 1}, {"class": "cow", "count": 1, "position": ["right of", 0]}],
}
TWO_WINE_GLASSES = {
    "tag": "counting", "prompt": "a photo of two wine glasses",
    "include": [{"class": "wine glass", "count": 2}], "exclude": [{"class": "wine glass", "count": 3}],
}
PURPLE_CUP = {"tag": "colors", "prompt": "a photo of a purple cup",
              "include": [{"class": "cup", "count": 1, "color": "purple"}]}


def glasses(n, conf=0.95):
    return {"wine glass": [box(60 + 80 * k, 256, conf) for k in range(n)]}


# ---- worked examples (rewards.md) ----------------------------------------------------------------------------

@pytest.mark.parametrize("version, expected", [("flowgrpo", 0.75), ("fixed", 2 / 3)])
def test_position_wrong_relation_gets_half_credit_only_in_flowgrpo(version, expected):
    # cow LEFT of the laptop: r = [1, 1, 0, 1] in the reference, [1, 1, 0] when fixed
    dets = {"laptop": [box(350, 256)], "cow": [box(100, 256)]}
    out = score_detections(COW_RIGHT_OF_LAPTOP, dets, SIZE, version=version)
    assert out["score"] == pytest.approx(expected)
    assert out["strict_correct"] is False and out["correct"] is False


@pytest.mark.parametrize("version", ["flowgrpo", "fixed"])
def test_position_right_relation(version):
    dets = {"laptop": [box(100, 256)], "cow": [box(350, 256)]}
    out = score_detections(COW_RIGHT_OF_LAPTOP, dets, SIZE, version=version)
    assert out == {"score": 1.0, "strict_correct": True, "correct": True}


@pytest.mark.parametrize("version", ["flowgrpo", "fixed"])
def test_position_object_missing(version):
    out = score_detections(COW_RIGHT_OF_LAPTOP, {"laptop": [box(100, 256)]}, SIZE, version=version)
    assert out["score"] == pytest.approx(1 / 3)  # [1, 0, 0]
    assert not out["strict_correct"] and not out["correct"]


def test_position_target_group_unmatched_appends_zero():
    meta = {"tag": "position", "prompt": "p",
            "include": [{"class": "laptop", "count": 1}, {"class": "cow", "count": 1, "position": ["right of", 0]}]}
    # two laptops: the target clause fails (strict), so the cow's position earns [0]: r = [0, 1, 0]
    dets = {"laptop": [box(100, 100), box(100, 400)], "cow": [box(350, 256)]}
    out = score_detections(meta, dets, SIZE)
    assert out["score"] == pytest.approx(1 / 3)
    assert out["strict_correct"] is False
    # GenEval's `correct` takes the top-1 laptop, so the clause matches and the relation holds
    assert out["correct"] is True


@pytest.mark.parametrize("n, expected", [(2, 1.0), (1, 0.5), (3, 0.5), (5, -0.5)])
def test_counting_partial_credit_including_negative(n, expected):
    out = score_detections(TWO_WINE_GLASSES, glasses(n), SIZE)
    assert out["score"] == pytest.approx(expected)


def test_counting_uses_the_09_threshold():
    dets = {"wine glass": [box(60, 256, 0.95), box(200, 256, 0.95), box(340, 256, 0.85)]}
    out = score_detections(TWO_WINE_GLASSES, dets, SIZE)
    assert out == {"score": 1.0, "strict_correct": True, "correct": True}  # 0.85 < COUNTING_THRESHOLD
    single = {"tag": "single_object", "prompt": "p", "include": [{"class": "wine glass", "count": 1}]}
    # the same 0.85 detection counts for a non-counting tag
    assert score_detections(single, {"wine glass": [box(60, 256, 0.85)]}, SIZE)["score"] == 1.0
    assert COUNTING_THRESHOLD == 0.9


@pytest.mark.parametrize("dets, expected", [
    ({"cup": [box(256, 256, colour="purple")]}, 1.0),  # [1, 1]
    ({"cup": [box(256, 256, colour="green")]}, 0.5),  # [1, 0]
    ({"cup": [box(100, 256, colour="purple"), box(400, 256, colour="purple")]}, 0.0),  # [0, 0]
    ({"cup": [box(256, 256, colour=None)]}, 0.5),  # an unclassified colour is a miss
])
def test_colour_examples(dets, expected):
    assert score_detections(PURPLE_CUP, dets, SIZE)["score"] == pytest.approx(expected)


# ---- correct vs strict_correct -------------------------------------------------------------------------------

@pytest.mark.parametrize("n, correct, strict", [(1, False, False), (2, True, True), (3, False, False)])
def test_counting_correct_and_strict_with_exclude(n, correct, strict):
    out = score_detections(TWO_WINE_GLASSES, glasses(n), SIZE)
    assert (out["correct"], out["strict_correct"]) == (correct, strict)


def test_exclude_makes_counting_exact_for_correct_only_and_never_affects_score():
    without_exclude = {k: v for k, v in TWO_WINE_GLASSES.items() if k != "exclude"}
    with_ex = score_detections(TWO_WINE_GLASSES, glasses(3), SIZE)
    without = score_detections(without_exclude, glasses(3), SIZE)
    assert with_ex["correct"] is False and without["correct"] is True  # top-2 found, nothing excluded
    assert with_ex["strict_correct"] is False and without["strict_correct"] is False  # strict ignores exclude
    assert with_ex["score"] == without["score"] == pytest.approx(0.5)


def test_correct_judges_colour_on_top_count_objects_strict_on_all():
    dets = {"cup": [box(100, 256, 0.9, "purple"), box(400, 256, 0.5, "green")]}
    out = score_detections(PURPLE_CUP, dets, SIZE)
    assert out["correct"] is True and out["strict_correct"] is False and out["score"] == 0.0


def test_score_unbounded_below_with_max_objects_cap():
    meta = {"tag": "single_object", "prompt": "a photo of a cat", "include": [{"class": "cat", "count": 1}]}
    dets = {"cat": [box(30 + 25 * k, 256, 0.5, half=10) for k in range(MAX_OBJECTS + 4)]}
    assert len(select_detections(dets, "single_object")["cat"]) == MAX_OBJECTS
    assert score_detections(meta, dets, SIZE)["score"] == pytest.approx(-14.0)


def test_threshold_is_strictly_greater_than_03():
    meta = {"tag": "single_object", "prompt": "p", "include": [{"class": "cat", "count": 1}]}
    assert score_detections(meta, {"cat": [box(256, 256, 0.3)]}, SIZE)["score"] == 0.0
    assert score_detections(meta, {"cat": [box(256, 256, 0.31)]}, SIZE)["score"] == 1.0


def test_empty_include_scores_zero_like_the_reference():
    out = score_detections({"tag": "single_object", "prompt": "p", "include": []}, {}, SIZE)
    assert out["score"] == 0.0


# ---- position rule --------------------------------------------------------------------------------------------

def test_relative_position_rule():
    centre = box(256, 256)
    assert relative_position(box(100, 256), centre) == {"left of"}
    assert relative_position(box(400, 256), centre) == {"right of"}
    assert relative_position(box(256, 100), centre) == {"above"}  # y grows downward
    assert relative_position(box(256, 400), centre) == {"below"}
    assert relative_position(box(100, 100), centre) == {"left of", "above"}  # diagonal: two relations
    # centres 7 px apart with 40 px boxes: inside 0.1 * (40 + 40) = 8 px on both axes -> no relation
    assert relative_position(box(263, 263), centre) == set()


# ---- validation ------------------------------------------------------------------------------------------------

def test_bad_metadata_and_detections_raise_clear_errors():
    with pytest.raises(ValueError, match="'include'"):
        score_detections({"tag": "single_object", "prompt": "p"}, {}, SIZE)
    with pytest.raises(ValueError, match="earlier include clause"):
        validate_metadata({"tag": "position", "prompt": "p",
                           "include": [{"class": "cow", "count": 1, "position": ["right of", 0]}]})
    with pytest.raises(ValueError, match="color 'grey'"):
        validate_metadata({"tag": "colors", "prompt": "p", "include": [{"class": "cup", "count": 1,
                                                                          "color": "grey"}]})
    with pytest.raises(ValueError, match="outside"):
        score_detections(PURPLE_CUP, {"cup": [(600, 600, 700, 700, 0.9, None)]}, SIZE)
    with pytest.raises(ValueError, match="unknown geneval scoring version"):
        score_detections(PURPLE_CUP, {}, SIZE, version="v2")


# ---- real metadata format --------------------------------------------------------------------------------------

def perfect_detections(row):
    """Detections that satisfy every include clause exactly: counts, colours, positions."""
    dets = {}
    placed = []
    for i, clause in enumerate(row["include"]):
        colour = clause.get("color")
        if "position" in clause:
            relation, target = clause["position"]
            tx, ty = placed[target][0]
            dx, dy = {"left of": (-170, 0), "right of": (170, 0), "above": (0, -170), "below": (0, 170)}[relation]
            centres = [(tx + dx, ty + dy)]
        elif any("position" in c for c in row["include"]):
            centres = [(256, 256)]
        else:
            centres = [(60 + 90 * k, 100 + 150 * i) for k in range(clause["count"])]
        assert len(centres) == clause["count"]
        placed.append(centres)
        dets.setdefault(clause["class"], []).extend(box(x, y, 0.95, colour) for x, y in centres)
    return dets


@pytest.mark.parametrize("filename", ["geneval_evaluation_metadata.jsonl", "flowgrpo_geneval_test_metadata.jsonl"])
def test_real_metadata_rows_score_perfectly_with_perfect_detections(filename):
    path = SHARED_DATA / filename
    if not path.is_file():
        pytest.skip(f"{path} is absent (real GenEval metadata lives in ../shared/data next to the repo)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert len(rows) in (553, 2212)
    for row in rows:
        for version in ("flowgrpo", "fixed"):
            out = score_detections(row, perfect_detections(row), SIZE, version=version)
            assert out == {"score": 1.0, "strict_correct": True, "correct": True}, row["prompt"]
