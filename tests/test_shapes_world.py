"""The shapes world: prompts and split, scene sampling against GenEval metadata, the k-means VQ tokenizer."""

import collections

import numpy as np
import pytest

from worlds.shapes.prompts import (RELATIONS, TAGS, all_prompt_rows, make_split, shapes_prompt_rows,
                                     world_vocabulary)
from worlds.shapes.vq_tokenizer import ShapesVQTokenizer, VQTokenizerConfig
from worlds.shapes.world import (CELL, COLOR_NAMES, GRID, SHAPES, ShapeObject, Scene, render_scene, sample_scene,
                                   sample_random_scene)


def test_world_has_the_required_vocabulary():
    assert {"circle", "square", "triangle"} <= set(SHAPES)
    assert len(COLOR_NAMES) >= 6
    assert set(RELATIONS) == {"left of", "right of", "above", "below"}
    counts = {c["count"] for r in all_prompt_rows() for c in r["include"]}
    assert counts == {1, 2, 3, 4}


def test_prompts_use_geneval_templates_and_metadata():
    rows = {r["prompt"]: r for r in all_prompt_rows()}
    assert rows["a photo of two circles"] == {
        "tag": "counting", "include": [{"class": "circle", "count": 2}],
        "exclude": [{"class": "circle", "count": 3}], "prompt": "a photo of two circles"}
    assert rows["a photo of a blue square left of a green triangle".replace("a blue square", "a square")
                .replace("a green triangle", "a triangle")]["include"] == [
        {"class": "triangle", "count": 1}, {"class": "square", "count": 1, "position": ["left of", 0]}]
    assert rows["a photo of a red circle and a blue square"]["include"] == [
        {"class": "circle", "count": 1, "color": "red"}, {"class": "square", "count": 1, "color": "blue"}]
    assert rows["a photo of an yellow circle".replace("an yellow", "a yellow")]["tag"] == "colors"
    assert {r["tag"] for r in rows.values()} == set(TAGS)


def test_split_is_committed_disjoint_and_covers_every_tag():
    split = make_split()
    assert shapes_prompt_rows("train") == split["train"]
    assert shapes_prompt_rows("heldout") == split["heldout"]
    train = {r["prompt"] for r in split["train"]}
    held = {r["prompt"] for r in split["heldout"]}
    assert not train & held
    assert train | held == {r["prompt"] for r in all_prompt_rows()}
    for name in ("train", "heldout"):
        assert {r["tag"] for r in split[name]} == set(TAGS), name
    # Every held-out word is known to the tokenizer built from the world's vocabulary.
    vocab = set(world_vocabulary())
    assert all(set(r["prompt"].split()) <= vocab for r in split["heldout"])
    with pytest.raises(ValueError, match="unknown shapes split"):
        shapes_prompt_rows("test")


def test_sampled_scenes_satisfy_their_metadata_exactly():
    rng = np.random.default_rng(0)
    for row in all_prompt_rows():
        scene = sample_scene(row, rng)
        want = collections.Counter()
        for clause in row["include"]:
            want[clause["class"]] += clause["count"]
        assert scene.counts() == dict(want), row["prompt"]
        for clause in row["include"]:
            if "color" in clause:
                assert any(o.shape == clause["class"] and o.color == clause["color"] for o in scene.objects)
        if row["tag"] == "position":
            anchor = next(o for o in scene.objects if o.shape == row["include"][0]["class"])
            obj = next(o for o in scene.objects if o.shape == row["include"][1]["class"])
            relation = row["include"][1]["position"][0]
            d_row, d_col = obj.row - anchor.row, obj.col - anchor.col
            main = {"left of": -d_col, "right of": d_col, "above": -d_row, "below": d_row}[relation]
            assert main > 0 and main > abs(d_row if relation in ("left of", "right of") else d_col), row["prompt"]


def test_rendering_keeps_shapes_inside_their_cells():
    rng = np.random.default_rng(1)
    for _ in range(50):
        scene = sample_random_scene(rng, max_objects=GRID * GRID)
        img = render_scene(scene)
        assert img.shape == (GRID * CELL, GRID * CELL, 3) and img.dtype == np.uint8
        occupied = {(o.row, o.col) for o in scene.objects}
        for r in range(GRID):
            for c in range(GRID):
                cell = img[r * CELL:(r + 1) * CELL, c * CELL:(c + 1) * CELL]
                border = np.concatenate([cell[0], cell[-1], cell[:, 0], cell[:, -1]])
                assert (border == 255).all()  # 1 px margin: shapes never touch
                assert ((cell != 255).any()) == ((r, c) in occupied)
    with pytest.raises(ValueError, match="two objects in cell"):
        Scene([ShapeObject("circle", "red", 0, 0), ShapeObject("square", "blue", 0, 0)])


def _labels(scenes):
    labels = np.full((len(scenes), GRID * GRID), "empty", dtype=object)
    for i, s in enumerate(scenes):
        for o in s.objects:
            labels[i, o.row * GRID + o.col] = f"{o.color} {o.shape}"
    return labels


def test_vq_codes_are_pure_and_roundtrip(tmp_path):
    tok = ShapesVQTokenizer.fit(VQTokenizerConfig(num_codes=64, num_fit_scenes=300, kmeans_iterations=15))
    rng = np.random.default_rng(7)
    scenes = [sample_random_scene(rng, max_objects=GRID * GRID) for _ in range(300)]
    images = np.stack([render_scene(s) for s in scenes])
    codes = tok.encode(images)
    assert codes.shape == (300, GRID * GRID) and codes.min() >= 0 and codes.max() < 64
    # Purity: no code is shared by two visual classes (shape x colour, or empty), on unseen scenes.
    per_code = collections.defaultdict(set)
    for code, label in zip(codes.ravel(), _labels(scenes).ravel()):
        per_code[code].add(label)
    assert all(len(v) == 1 for v in per_code.values()), {k: v for k, v in per_code.items() if len(v) > 1}
    assert len(per_code) >= 4 * len(SHAPES)  # it is a real codebook, not a handful of blobs
    # Decoding gives back the cell content: re-encoding the decoded image yields the same codes.
    assert (tok.encode(tok.decode(codes)) == codes).all()
    tok.save_pretrained(tmp_path / "vq")
    again = ShapesVQTokenizer.from_pretrained(tmp_path / "vq")
    assert (again.encode(images) == codes).all()
