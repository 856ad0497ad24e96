"""Object class names as GenEval spells them, and the renames that bring detector vocabularies to that spelling.

GenEval's `object_names.txt` is COCO's 80 classes with three names made unambiguous ("computer mouse",
"tv remote", "computer keyboard"). Darknet's `coco.names` still carries VOC-era names ("motorbike", "sofa", ...).
Every detector maps its labels through `to_geneval_name` so one scoring function serves them all.
"""

from __future__ import annotations

GENEVAL_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "computer mouse", "tv remote",
    "computer keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock",
    "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)

# Darknet coco.names (VOC-era spellings) and COCO's own short names -> GenEval spelling.
RENAMES: dict[str, str] = {
    "motorbike": "motorcycle",
    "aeroplane": "airplane",
    "sofa": "couch",
    "pottedplant": "potted plant",
    "diningtable": "dining table",
    "tvmonitor": "tv",
    "mouse": "computer mouse",
    "remote": "tv remote",
    "keyboard": "computer keyboard",
}


def to_geneval_name(label: str) -> str:
    label = label.strip()
    return RENAMES.get(label, label)
