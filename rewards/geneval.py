"""GenEval reward: does the image contain the objects, counts, colours and positions the prompt asks for?

Version tags: `geneval@flowgrpo` and `geneval@fixed`, each optionally followed by backend parts.
Matches `yifan123/reward-server` `reward_server/gen_eval.py` (the GenEval server Flow-GRPO trains with, vendored
unchanged in DiffusionNFT), whose `correct` output is the official GenEval rule (djghosh13/geneval).

Tag format: `geneval@<scoring>[+<detector>][+<colour>]`.
- `<scoring>`: "flowgrpo" or "fixed" (below).
- `+<detector>` appears when the detector is not the reference (mmdet Mask2Former Swin-S), e.g. `+yolov3tiny`,
  `+mask2former-hf` (Mask2Former through transformers: same architecture, different checkpoint), `+shapes`.
- `+<colour>` appears when colours are not classified by CLIP zero-shot, e.g. `+hsv`; it is left out when the
  detector sets every colour itself (`provides_colours = True`, as the shapes world's exact detector can).
So the offline stand-in is `geneval@flowgrpo+yolov3tiny+hsv`. A recipe may pin the full tag; it must agree with
the configured backends.

Metadata row (GenEval / Flow-GRPO jsonl): `tag`, `prompt`, `include` = list of
`{class, count, color?, position?: [relation, index of an earlier include clause]}`, optional `exclude` = list of
`{class, count}`.

Detections kept per class (GenEval): sorted by confidence, confidence > 0.3 (> 0.9 for every class when
`tag == "counting"`), at most 16; no extra NMS (GenEval's NMS_THRESHOLD = 1).

Position of A relative to B: centres c and sizes d = (w, h); offset = c_A - c_B; per axis
revised = sign(offset) * max(|offset| - 0.1 * (d_A + d_B), 0); no relation if both |revised| < 1e-3; else
(dx, dy) = revised / ||offset||: "left of" dx < -0.5, "right of" dx > 0.5, "above" dy < -0.5, "below" dy > 0.5.

Three outputs per image:
- `correct` (official GenEval): per include clause take the top-`count` detections (fail if fewer); colour: all
  must be `color`; position: each must hold the relation to every object of the target clause (fail if that clause
  failed). Exclude: fail if at least `count` detections.
- `strict_correct`: per include the number of detections must equal `count` (and the colour matches too); same
  position check; exclude is ignored.
- `exact` (details only, not GenEval): `strict_correct` and nothing extra, i.e. no kept detection of a class the
  prompt does not name: the exact scene. GenEval's rules accept an image holding every class for "a photo of a
  circle"; this does not.
- `score` (partial credit, the training reward): mean of a list r (0 if empty). Per include: append
  1 - |count - n| / count. If n != count and the clause has colour or position: append 0. Otherwise colour appends
  1 - |count - n_colour| / count (a miss fails the clause); position (if the clause still holds): target clause
  failed -> append 0; otherwise:
  - `flowgrpo` (reference, quirk kept): on the first failing pair append 0, then always append 1. A wrong relation
    therefore earns [0, 1] (half credit), e.g. "a cow right of a laptop" with the relation wrong scores 0.75.
  - `fixed` (UniRL's correction): append 1 if every pair holds, else 0. The same example scores 0.667.
  Everything else is identical in both versions, including the reference's other quirks: the count term is
  unbounded below (1 - |c - n|/c < 0 when n > 2c; floor -14 for c = 1 with 16 detections) and exclude clauses never
  affect `score`.

Differences from the served reference that do not change the rule: Flow-GRPO sends JPEG bytes to the reward server,
while this reward scores the pixels it is given; `correct` is always computed (the server's `only_strict=True`,
Flow-GRPO's training setting, forces it to False).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from rewards.base import RewardOutput
from rewards.colour import COLOURS, build_colour_classifier
from rewards.detectors import build_detector
from rewards.detectors.base import Detection

THRESHOLD = 0.3
COUNTING_THRESHOLD = 0.9
MAX_OBJECTS = 16
POSITION_THRESHOLD = 0.1
RELATIONS = ("left of", "right of", "above", "below")
SCORING_VERSIONS = ("flowgrpo", "fixed")
REFERENCE_DETECTOR = "mask2former"  # mmdet Mask2Former Swin-S, the detector GenEval's numbers come from
REFERENCE_COLOUR = "clip"

# (x1, y1, x2, y2, confidence, colour or None), pixels
DetectionTuple = tuple[float, float, float, float, float, "str | None"]


def confidence_threshold(tag: str) -> float:
    return COUNTING_THRESHOLD if tag == "counting" else THRESHOLD


def select_detections(detections: dict[str, list[DetectionTuple]], tag: str) -> dict[str, list[DetectionTuple]]:
    """GenEval's kept detections: per class by descending confidence, above the tag's threshold, at most 16."""
    threshold = confidence_threshold(tag)
    kept = {}
    for class_name, objects in detections.items():
        ordered = sorted(objects, key=lambda o: -o[4])
        ordered = [o for o in ordered if o[4] > threshold][:MAX_OBJECTS]
        if ordered:
            kept[class_name] = ordered
    return kept


def relative_position(obj_a: Sequence[float], obj_b: Sequence[float]) -> set[str]:
    """Relations of A to B (GenEval), from boxes (x1, y1, x2, y2, ...) with y growing downward."""
    boxes = np.array([obj_a[:4], obj_b[:4]], dtype=np.float64).reshape(2, 2, 2)
    center_a, center_b = boxes.mean(axis=-2)
    dim_a, dim_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - POSITION_THRESHOLD * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


def validate_metadata(metadata: dict[str, Any]) -> None:
    """Raise ValueError naming the prompt and the bad field of a GenEval metadata row."""
    where = f"GenEval metadata row (prompt {metadata.get('prompt')!r})"
    if not isinstance(metadata, dict):
        raise TypeError(f"GenEval metadata must be a dict, got {type(metadata).__name__}")
    for key in ("tag", "include"):
        if key not in metadata:
            raise ValueError(f"{where} has no {key!r} key")
    for field in ("include", "exclude"):
        clauses = metadata.get(field, [])
        if not isinstance(clauses, list):
            raise TypeError(f"{where}: {field!r} must be a list")
        for i, clause in enumerate(clauses):
            if not isinstance(clause, dict) or not isinstance(clause.get("class"), str):
                raise TypeError(f"{where}: {field}[{i}] needs a string 'class'")
            count = clause.get("count")
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise ValueError(f"{where}: {field}[{i}] needs an integer 'count' >= 1, got {count!r}")
            if field == "exclude":
                continue
            if "color" in clause and clause["color"] not in COLOURS:
                raise ValueError(f"{where}: include[{i}] color {clause['color']!r} is not one of {COLOURS}")
            if "position" in clause:
                position = clause["position"]
                if (not isinstance(position, (list, tuple)) or len(position) != 2
                        or position[0] not in RELATIONS or not isinstance(position[1], int)
                        or not 0 <= position[1] < i):
                    raise ValueError(f"{where}: include[{i}] position must be [relation in {RELATIONS}, "
                                     f"index of an earlier include clause], got {position!r}")


def _validate_detections(detections: dict[str, list[DetectionTuple]], image_size: tuple[int, int]) -> None:
    width, height = image_size
    if not (width > 0 and height > 0):
        raise ValueError(f"image_size must be (width, height) > 0, got {image_size!r}")
    for class_name, objects in detections.items():
        for obj in objects:
            if len(obj) != 6:
                raise ValueError(f"detection of {class_name!r} must be (x1, y1, x2, y2, confidence, colour), "
                                 f"got {obj!r}")
            x1, y1, x2, y2, confidence = (float(v) for v in obj[:5])
            if not np.all(np.isfinite([x1, y1, x2, y2, confidence])) or x2 < x1 or y2 < y1:
                raise ValueError(f"detection of {class_name!r} has a bad box/confidence: {obj!r}")
            if x2 < 0 or y2 < 0 or x1 > width or y1 > height:
                raise ValueError(f"detection of {class_name!r} box {obj[:4]} lies outside the "
                                 f"{width}x{height} image: boxes must be in pixels")


def _holds(relation: str, objects: list[DetectionTuple], targets: list[DetectionTuple]) -> bool:
    return all(relation in relative_position(obj, target) for obj in objects for target in targets)


def _correct(kept: dict[str, list[DetectionTuple]], metadata: dict[str, Any]) -> bool:
    """Official GenEval `evaluate`: top-`count` objects per clause, exclude makes counting exact."""
    correct = True
    groups: list[list[DetectionTuple] | None] = []
    for clause in metadata["include"]:
        count = clause["count"]
        found = kept.get(clause["class"], [])[:count]
        matched = len(found) >= count
        if matched and "color" in clause:
            matched = sum(1 for o in found if o[5] == clause["color"]) >= count
        if matched and "position" in clause:
            relation, target = clause["position"]
            matched = groups[target] is not None and _holds(relation, found, groups[target])
        correct = correct and matched
        groups.append(found if matched else None)
    for clause in metadata.get("exclude", []):
        if len(kept.get(clause["class"], [])) >= clause["count"]:
            correct = False
    return correct


def _strict_and_score(kept: dict[str, list[DetectionTuple]], metadata: dict[str, Any],
                      version: str) -> tuple[bool, float]:
    """The reward server's `evaluate_reward`: exact counts, and the partial-credit list r."""
    strict = True
    r: list[float] = []
    groups: list[list[DetectionTuple] | None] = []
    for clause in metadata["include"]:
        count = clause["count"]
        found = kept.get(clause["class"], [])
        matched = True
        r.append(1 - abs(count - len(found)) / count)
        if len(found) != count:
            matched = False
            if "color" in clause or "position" in clause:
                r.append(0.0)
        else:
            if "color" in clause:
                n_colour = sum(1 for o in found if o[5] == clause["color"])
                r.append(1 - abs(count - n_colour) / count)
                matched = n_colour == count
            if "position" in clause and matched:
                relation, target = clause["position"]
                if groups[target] is None:
                    matched = False
                    r.append(0.0)
                else:
                    matched = _holds(relation, found, groups[target])
                    if version == "flowgrpo":
                        # Reference quirk: 0 on failure, then 1 unconditionally ([0, 1] = half credit).
                        if not matched:
                            r.append(0.0)
                        r.append(1.0)
                    else:
                        r.append(1.0 if matched else 0.0)
        strict = strict and matched
        groups.append(found if matched else None)
    score = sum(r) / len(r) if r else 0.0
    return strict, float(score)


def score_detections(metadata: dict[str, Any], detections: dict[str, list[DetectionTuple]],
                     image_size: tuple[int, int], version: str = "flowgrpo") -> dict[str, Any]:
    """Score one image from its raw detections (all confidences; thresholds are applied here).

    detections: class name (GenEval spelling) -> list of (x1, y1, x2, y2, confidence, colour or None) in pixels.
    image_size: (width, height), used to check that boxes are in pixels.
    Returns {"score": float, "strict_correct": bool, "correct": bool}.
    """
    if version not in SCORING_VERSIONS:
        raise ValueError(f"unknown geneval scoring version {version!r}; known: {SCORING_VERSIONS}")
    validate_metadata(metadata)
    _validate_detections(detections, image_size)
    kept = select_detections(detections, metadata["tag"])
    strict, score = _strict_and_score(kept, metadata, version)
    return {"score": score, "strict_correct": strict, "correct": _correct(kept, metadata)}


class GenEvalReward:
    """Detector + colour classifier + `score_detections`. Options: `version` ("flowgrpo" | "fixed", or a full
    pinned tag such as "flowgrpo+yolov3tiny+hsv"), `detector` (a name in `rewards.detectors.known_detectors()`),
    `detector_options`, `colour` ("auto": CLIP when `clip_path` is given, else HSV; "hsv"; "clip"), `clip_path`,
    `clip_options` (e.g. {"arch": "ViT-L-14"} for an open_clip checkpoint)."""

    name: ClassVar[str] = "geneval"
    VERSIONS: ClassVar[tuple[str, ...]] = SCORING_VERSIONS  # a version may pin backends: "flowgrpo+yolov3tiny+hsv"

    def __init__(self, version: str = "flowgrpo", detector: str = REFERENCE_DETECTOR,
                 detector_options: dict[str, Any] | None = None, colour: str = "auto",
                 clip_path: str | None = None, clip_options: dict[str, Any] | None = None):
        scoring, *pinned_backends = version.split("+")
        if scoring not in SCORING_VERSIONS:
            raise ValueError(f"unknown geneval version {version!r}; scoring part must be one of {SCORING_VERSIONS}")
        if colour == "auto":
            colour = "clip" if clip_path else "hsv"
        self.scoring_version = scoring
        self.detector = build_detector(detector, **(detector_options or {}))
        self.colour_classifier = build_colour_classifier(colour, clip_path=clip_path, **(clip_options or {}))
        # A detector that classifies every colour itself (`provides_colours = True`, the shapes world's exact
        # detector) never consults the colour classifier, so the classifier is not part of the tag.
        colour_part = None if getattr(self.detector, "provides_colours", False) else self.colour_classifier.name
        backends = [part for part in (self.detector.name, colour_part)
                    if part is not None and part not in (REFERENCE_DETECTOR, REFERENCE_COLOUR)]
        if pinned_backends and pinned_backends != backends:
            raise ValueError(f"geneval version pinned as {version!r} but the configured backends give "
                             f"{'+'.join([scoring, *backends])!r} (detector {detector!r}, colour {colour!r})")
        self.version = "+".join([scoring, *backends])

    def detections_for_scoring(self, image: np.ndarray, detections: list[Detection],
                               metadata: dict[str, Any]) -> dict[str, list[DetectionTuple]]:
        """Group by class and add colours, classified only where scoring will look at them (kept detections of
        classes that have a colour clause) and only when the detector did not set them itself."""
        grouped: dict[str, list[Detection]] = {}
        for det in detections:
            if not isinstance(det, Detection):
                raise TypeError(f"detector {self.detector.name!r} returned {type(det).__name__}, not Detection")
            grouped.setdefault(det.class_name, []).append(det)
        threshold = confidence_threshold(metadata["tag"])
        colour_classes = {c["class"] for c in metadata["include"] if "color" in c}
        colours: dict[int, str | None] = {}
        for class_name in colour_classes & grouped.keys():
            kept = sorted(grouped[class_name], key=lambda d: -d.confidence)
            kept = [d for d in kept if d.confidence > threshold][:MAX_OBJECTS]
            todo = [d for d in kept if d.color is None]
            if todo:
                predicted = self.colour_classifier.classify(image, [(d.box, d.mask) for d in todo], class_name)
                colours.update({id(d): c for d, c in zip(todo, predicted)})
        return {class_name: [(*map(float, d.box), float(d.confidence), d.color or colours.get(id(d)))
                             for d in objects]
                for class_name, objects in grouped.items()}

    def score_one(self, image: np.ndarray, metadata: dict[str, Any]) -> dict[str, Any]:
        validate_metadata(metadata)
        detections = self.detector.detect(image)
        tuples = self.detections_for_scoring(image, detections, metadata)
        height, width = image.shape[:2]
        result = score_detections(metadata, tuples, (width, height), self.scoring_version)
        kept = select_detections(tuples, metadata["tag"])
        result["detected"] = {name: len(objs) for name, objs in kept.items()}
        named = {clause["class"] for clause in metadata["include"]}
        result["exact"] = bool(result["strict_correct"]) and not any(
            n and name not in named for name, n in result["detected"].items())
        # Where the verdict comes from, for spatial credit (rl/grpo.py §2b): the boxes scoring looked at.
        result["credit_boxes"] = [[float(v) for v in obj[:4]] for objs in kept.values() for obj in objs]
        result["image_size"] = [width, height]
        return result

    def __call__(self, images: Sequence[np.ndarray], prompts: Sequence[str],
                 metadata: Sequence[dict[str, Any]]) -> RewardOutput:
        if not (len(images) == len(prompts) == len(metadata)):
            raise ValueError(f"geneval: {len(images)} images, {len(prompts)} prompts, {len(metadata)} metadata rows")
        for row in metadata:
            validate_metadata(row)
        scores, details = [], []
        for image, row in zip(images, metadata):
            start = time.perf_counter()
            result = self.score_one(image, row)
            scores.append(result["score"])
            details.append({"correct": result["correct"], "strict_correct": result["strict_correct"],
                            "exact": result["exact"],
                            "tag": row["tag"], "detected": result["detected"],
                            "credit_boxes": result["credit_boxes"], "image_size": result["image_size"],
                            "seconds": time.perf_counter() - start})
        return RewardOutput(scores=scores, details=details)
