"""Mask2Former instance segmentation: GenEval's detector, from local weights only.

Two backends:
- "mmdet" (the reference: GenEval runs mmdet 2.x `mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco`). Used when mmdet
  is installed and `config_file` + `checkpoint` are given. As in the reference, the RGB array is passed to
  `inference_detector` unchanged (mmdet reads arrays as BGR; GenEval's numbers include that quirk). Name
  "mask2former": no suffix in the GenEval tag.
- "transformers": `Mask2FormerForUniversalSegmentation` + its image processor from a `save_pretrained` folder
  (e.g. a local copy of `facebook/mask2former-swin-small-coco-instance`). Same architecture, different checkpoint
  and preprocessing, so its name is "mask2former-hf" and GenEval tags it `+mask2former-hf`.

Post-processing of the transformers backend follows mmdet's Mask2Former instance head, not the transformers
helper (which pastes masks at 384x384 first): class scores = softmax without the "no object" column; top
`max_per_image` (query, class) pairs; mask logits upsampled to the padded input, cropped to the valid region, resized
to the image; mask = logit > 0; score = class score x mean sigmoid inside the mask; box = the mask's extent.
Detections below `score_threshold` are dropped early (GenEval discards everything <= 0.3 anyway).
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np

from rewards.detectors.base import Detection
from rewards.detectors.class_names import to_geneval_name


def _mask_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def instances_from_outputs(class_logits, mask_logits, pixel_mask, image_size: tuple[int, int], *,
                           class_names: list[str], score_threshold: float = 0.3,
                           max_per_image: int = 100) -> list[Detection]:
    """mmdet's Mask2Former instance post-processing for one image.

    class_logits [Q, C+1] (last column = "no object"), mask_logits [Q, h, w] at 1/4 of the padded input,
    pixel_mask [Hp, Wp] of the padded input (1 = real pixel, 0 = padding), image_size (H, W) of the original.
    """
    import torch
    import torch.nn.functional as F

    height, width = image_size
    class_probs = class_logits.softmax(-1)[:, :-1]
    num_queries, num_classes = class_probs.shape
    if num_classes != len(class_names):
        raise ValueError(f"mask2former: {num_classes} classes in the logits but {len(class_names)} names")
    top_scores, top_index = class_probs.flatten().topk(min(max_per_image, num_queries * num_classes))
    # A final score is class score x mask score (<= 1), so pairs below the threshold can go now.
    keep = top_scores >= score_threshold
    top_scores, top_index = top_scores[keep], top_index[keep]
    if top_scores.numel() == 0:
        return []
    queries, labels = top_index // num_classes, top_index % num_classes
    padded_h, padded_w = pixel_mask.shape
    # The processor pads bottom/right; the real image is the top-left valid_h x valid_w block.
    valid_h, valid_w = int(pixel_mask.bool().any(1).sum()), int(pixel_mask.bool().any(0).sum())
    with torch.no_grad():
        logits = mask_logits[queries][None].float()
        logits = F.interpolate(logits, size=(padded_h, padded_w), mode="bilinear", align_corners=False)
        logits = logits[..., :valid_h, :valid_w]
        logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)[0]
        binary = logits > 0
        mask_scores = (logits.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
        scores = top_scores * mask_scores
    detections = []
    for score, label, mask in zip(scores.tolist(), labels.tolist(), binary.cpu().numpy()):
        if score < score_threshold or not mask.any():
            continue
        detections.append(Detection(class_names[label], _mask_box(mask), float(score), mask=mask))
    detections.sort(key=lambda d: -d.confidence)
    return detections


class Mask2FormerDetector:
    def __init__(self, weights_dir: str | Path | None = None, backend: str = "auto",
                 config_file: str | Path | None = None, checkpoint: str | Path | None = None,
                 device: str = "cpu", score_threshold: float = 0.3, max_per_image: int = 100):
        if backend == "auto":
            if weights_dir is not None and (Path(weights_dir) / "config.json").is_file():
                backend = "transformers"
            elif config_file is not None and importlib.util.find_spec("mmdet") is not None:
                backend = "mmdet"
            else:
                raise ValueError("mask2former needs local weights: detector_options.weights_dir = a transformers "
                                 "save_pretrained folder (config.json + weights + preprocessor_config.json), or "
                                 "config_file + checkpoint with mmdet installed; nothing is downloaded")
        self.device, self.score_threshold, self.max_per_image = device, float(score_threshold), int(max_per_image)
        self._lock = threading.Lock()
        if backend == "transformers":
            self._load_transformers(Path(weights_dir) if weights_dir is not None else None)
        elif backend == "mmdet":
            self._load_mmdet(config_file, checkpoint)
        else:
            raise ValueError(f"mask2former backend {backend!r}; expected 'auto', 'transformers' or 'mmdet'")
        self.backend = backend

    # ---- transformers ----------------------------------------------------------------------------------------
    def _load_transformers(self, weights_dir: Path | None) -> None:
        import torch
        from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

        if weights_dir is None or not (weights_dir / "config.json").is_file():
            raise FileNotFoundError(f"mask2former (transformers): no config.json in {weights_dir}")
        self.name = "mask2former-hf"
        self.torch = torch
        self.model = Mask2FormerForUniversalSegmentation.from_pretrained(weights_dir).to(self.device).eval()
        self.processor = AutoImageProcessor.from_pretrained(weights_dir)
        self.class_names = [to_geneval_name(self.model.config.id2label[i])
                            for i in range(len(self.model.config.id2label))]

    def _detect_transformers(self, image: np.ndarray) -> list[Detection]:
        inputs = self.processor(images=[image], return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device)
        pixel_mask = inputs.get("pixel_mask")
        if pixel_mask is None:
            pixel_mask = self.torch.ones(pixel_values.shape[0], *pixel_values.shape[-2:], dtype=self.torch.long)
        pixel_mask = pixel_mask.to(self.device)
        with self.torch.no_grad():
            out = self.model(pixel_values=pixel_values, pixel_mask=pixel_mask)
        return instances_from_outputs(
            out.class_queries_logits[0], out.masks_queries_logits[0], pixel_mask[0], image.shape[:2],
            class_names=self.class_names, score_threshold=self.score_threshold, max_per_image=self.max_per_image)

    # ---- mmdet -----------------------------------------------------------------------------------------------
    def _load_mmdet(self, config_file: str | Path | None, checkpoint: str | Path | None) -> None:
        if importlib.util.find_spec("mmdet") is None:
            raise RuntimeError("mask2former backend 'mmdet' needs mmdet (and mmcv) installed")
        if config_file is None or checkpoint is None:
            raise ValueError("mask2former backend 'mmdet' needs config_file and checkpoint (local paths)")
        from mmdet.apis import inference_detector, init_detector

        self.name = "mask2former"
        self._inference = inference_detector
        self.model = init_detector(str(config_file), str(checkpoint), device=self.device)
        classes = getattr(self.model, "CLASSES", None) or self.model.dataset_meta["classes"]
        self.class_names = [to_geneval_name(c) for c in classes]

    def _detect_mmdet(self, image: np.ndarray) -> list[Detection]:
        result = self._inference(self.model, image)  # RGB passed as is, like GenEval
        detections = []
        if isinstance(result, (tuple, list)):  # mmdet 2.x: per-class boxes [n, 5] and masks
            bbox = result[0] if isinstance(result, tuple) else result
            segm = result[1] if isinstance(result, tuple) and len(result) > 1 else None
            for label, boxes in enumerate(bbox):
                for j, row in enumerate(boxes):
                    if row[4] < self.score_threshold:
                        continue
                    mask = None if segm is None else np.asarray(segm[label][j], dtype=bool)
                    detections.append(Detection(self.class_names[label], tuple(map(float, row[:4])),
                                                float(row[4]), mask=mask))
        else:  # mmdet 3.x: DetDataSample
            inst = result.pred_instances
            masks = inst.masks.cpu().numpy() if "masks" in inst else None
            for j, (box, score, label) in enumerate(zip(inst.bboxes.tolist(), inst.scores.tolist(),
                                                         inst.labels.tolist())):
                if score >= self.score_threshold:
                    detections.append(Detection(self.class_names[label], tuple(box), float(score),
                                                mask=None if masks is None else masks[j].astype(bool)))
        detections.sort(key=lambda d: -d.confidence)
        return detections

    def detect(self, image: np.ndarray) -> list[Detection]:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"mask2former expects uint8 [H, W, 3] RGB, got {image.dtype} {image.shape}")
        with self._lock:
            if self.backend == "transformers":
                return self._detect_transformers(image)
            return self._detect_mmdet(image)
