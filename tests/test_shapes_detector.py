"""The exact shapes detector: 100% on rendered ground truth, and it plugs into the GenEval scoring code."""

import numpy as np

from rewards.detectors import build_detector
from rewards.geneval import GenEvalReward
from worlds.shapes.prompts import all_prompt_rows
from worlds.shapes.world import (CELL, COLORS, GRID, IMAGE_SIZE, ShapeObject, Scene, render_scene,
                                   sample_random_scene, sample_scene, shape_mask)


def _read(detections):
    return sorted((d.class_name, d.color, int((d.box[0] + d.box[2]) / 2) // CELL,
                   int((d.box[1] + d.box[3]) / 2) // CELL) for d in detections)


def test_detector_is_exact_on_rendered_ground_truth():
    detector = build_detector("shapes")
    rng = np.random.default_rng(0)
    for i in range(600):
        scene = sample_random_scene(rng, max_objects=GRID * GRID if i % 2 else 4)
        detections = detector.detect(render_scene(scene))
        assert _read(detections) == sorted((o.shape, o.color, o.col, o.row) for o in scene.objects), i
        for d in detections:
            assert d.confidence == 1.0 and d.mask.shape == (IMAGE_SIZE, IMAGE_SIZE) and d.mask.any()
            x1, y1, x2, y2 = d.box
            ys, xs = np.nonzero(d.mask)
            assert (x1, y1, x2, y2) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_blank_image_has_no_detections():
    assert build_detector("shapes").detect(np.full((64, 64, 3), 255, np.uint8)) == []


def test_detector_tolerates_soft_edges():
    """A learned renderer blurs edges; a 4x supersampled (anti-aliased) rendering must still read exactly."""
    detector = build_detector("shapes")
    rng = np.random.default_rng(1)
    for _ in range(100):
        scene = sample_random_scene(rng, max_objects=8)
        # Render at 4x (sub-pixel centres of a 256x256 grid), then box-filter down to 64x64.
        ys, xs = np.mgrid[0:256, 0:256].astype(np.float64) / 4.0 - 0.5 + 0.125
        img = np.full((256, 256, 3), 255.0)
        for o in scene.objects:
            cx, cy = o.center
            img[shape_mask(o.shape, cx, cy, o.half_size, xs, ys)] = COLORS[o.color]
        soft = img.reshape(64, 4, 64, 4, 3).mean(axis=(1, 3)).round().astype(np.uint8)
        assert _read(detector.detect(soft)) == sorted((o.shape, o.color, o.col, o.row) for o in scene.objects)


def test_geneval_scoring_with_the_shapes_detector_is_exact_on_ground_truth():
    reward = GenEvalReward(detector="shapes")
    rng = np.random.default_rng(2)
    rows = all_prompt_rows()
    images = [render_scene(sample_scene(r, rng)) for r in rows]
    out = reward(images, [r["prompt"] for r in rows], rows)
    assert all(d["correct"] and d["strict_correct"] for d in out.details)
    assert out.scores == [1.0] * len(rows)


def test_geneval_with_the_shapes_detector_rejects_wrong_scenes():
    reward = GenEvalReward(detector="shapes")
    cases = [
        # (metadata, scene that violates it)
        ({"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}],
          "prompt": "a photo of a red circle"}, Scene([ShapeObject("circle", "blue", 1, 1)])),
        ({"tag": "counting", "include": [{"class": "square", "count": 2}],
          "exclude": [{"class": "square", "count": 3}], "prompt": "a photo of two squares"},
         Scene([ShapeObject("square", "red", 0, 0), ShapeObject("square", "red", 0, 2),
                ShapeObject("square", "green", 3, 3)])),
        ({"tag": "position", "include": [{"class": "triangle", "count": 1},
                                         {"class": "circle", "count": 1, "position": ["left of", 0]}],
          "prompt": "a photo of a circle left of a triangle"},
         Scene([ShapeObject("circle", "red", 1, 3), ShapeObject("triangle", "blue", 1, 0)])),
        ({"tag": "single_object", "include": [{"class": "diamond", "count": 1}], "prompt": "a photo of a diamond"},
         Scene([ShapeObject("square", "red", 2, 2)])),
    ]
    out = reward([render_scene(s) for _, s in cases], [m["prompt"] for m, _ in cases], [m for m, _ in cases])
    assert [d["correct"] for d in out.details] == [False] * len(cases)
    # Partial credit as the reference defines it: right class, wrong colour -> [1, 0] -> 0.5.
    assert out.scores[0] == 0.5
