"""Load whichever image tokenizer a folder holds: one saved in our layout (its `config.json` names the class), or a
released TA-Tok `.pth` (converted by `rollouts/ta_tok_checkpoint.py`). Above both, so neither imports the other."""

from __future__ import annotations

from pathlib import Path

from rollouts.image_tokenizer import (
    CONFIG_NAME,
    RELEASED_TA_TOK_NAME,
    ImageTokenizer,
    known_tokenizer_classes,
    read_tokenizer_config,
    tokenizer_class,
)


def load_image_tokenizer(directory: str | Path) -> ImageTokenizer:
    """The image tokenizer saved in `directory` (its `config.json` names the class), or a released TA-Tok file:
    `directory` itself (a `.pth`) or a folder holding only `ta_tok.pth`."""
    directory = Path(directory)
    released = None
    if directory.is_file() and directory.suffix in (".pth", ".pt"):
        released = directory
    elif not (directory / CONFIG_NAME).is_file() and (directory / RELEASED_TA_TOK_NAME).is_file():
        released = directory / RELEASED_TA_TOK_NAME
    if released is not None:
        from rollouts.ta_tok_checkpoint import load_released_ta_tok  # torch.load of a foreign file: on demand

        return load_released_ta_tok(released)
    name = read_tokenizer_config(directory).get("_class_name")
    cls = tokenizer_class(name)
    if cls is None:
        raise ValueError(f"{directory / CONFIG_NAME}: _class_name {name!r} is not one of {known_tokenizer_classes()}")
    return cls.from_pretrained(directory)
