"""The renames that bring detector vocabularies to GenEval's spelling of the class names.

GenEval's class names (`prompts/vocabulary.py`, GENEVAL_CLASSES) are COCO's 80 classes with three names made
unambiguous ("computer mouse", "tv remote", "computer keyboard"). Darknet's `coco.names` still carries VOC-era
names ("motorbike", "sofa", ...). Every detector maps its labels through `to_geneval_name` so one scoring
function serves them all.
"""

from __future__ import annotations

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
