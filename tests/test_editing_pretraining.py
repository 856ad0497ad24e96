"""Editing pre-training: the editor starts from the text-to-image checkpoint (token rows matched by string), its
SFT keeps the frozen renderer able to draw correct edits, and the committed editing checkpoint does (≥ 90%)."""

import json
from pathlib import Path

import pytest
import torch

from worlds.shapes_edit.sft import ShapesEditSFTConfig, run
from rollouts.generator import NativeImageGenerator
from worlds.shapes.model import load_shapes_model
from worlds.shapes_edit.evaluate import evaluate_ground_truth_edits
from worlds.shapes_edit.model import edit_generator_from_text_to_image

ROOT = Path(__file__).resolve().parents[1]


def test_transplant_copies_rows_by_token_string():
    gen, _ = edit_generator_from_text_to_image()
    t2i, _ = load_shapes_model()
    assert set(gen.load_report["new_tokens"]) == {"add", "an", "make", "remove", "<|vision_start|>",
                                                  "<|vision_end|>"}
    for token in ("circle", "red", "<im_start>", "<S0>", "<I0>", "<I63>"):
        new_id, old_id = gen.tokenizer.convert_tokens_to_ids(token), t2i.tokenizer.convert_tokens_to_ids(token)
        assert torch.equal(gen.lm.get_input_embeddings().weight[new_id], t2i.lm.get_input_embeddings().weight[old_id])
        assert torch.equal(gen.lm.lm_head.weight[new_id], t2i.lm.lm_head.weight[old_id])
    assert new_id != old_id  # the image ids moved: a copy by index would have been wrong
    assert torch.equal(gen.lm.model.layers[1].mlp.down_proj.weight, t2i.lm.model.layers[1].mlp.down_proj.weight)


@pytest.mark.slow
def test_short_editing_sft_makes_ground_truth_edits_renderable(tmp_path):
    # Measured (2-core CPU, ~6 s): 0.0 before any AR step (the reference context moves the hidden states); CE +
    # readout + flow matching through the frozen renderer bring it to 0.56 after 20 steps, 0.94 after 40.
    summary = run(ShapesEditSFTConfig(output_dir=str(tmp_path / "sft"), save_to=str(tmp_path / "ckpt"),
                                      num_examples=512, ar_steps=40, eval_rows_per_tag=16, log_every=10),
                  progress=False)
    assert summary["renderer_on_ground_truth_before"]["accuracy"] < 0.2
    assert summary["renderer_on_ground_truth"]["accuracy"] >= 0.8, summary["renderer_on_ground_truth"]
    assert json.loads((tmp_path / "ckpt" / "sft_summary.json").read_text())["ar_steps"] == 40
    gen = NativeImageGenerator.from_pretrained(tmp_path / "ckpt", device="cpu", dtype="float32")
    assert gen.image_tokenizer is not None  # editing rollouts need the reference tokenizer


def test_committed_editing_checkpoint_renders_correct_edits():
    path = ROOT / "worlds" / "shapes_edit" / "pretrained"
    gen = NativeImageGenerator.from_pretrained(path, device="cpu", dtype="float32")
    report = evaluate_ground_truth_edits(gen, gen.image_tokenizer, rows_per_tag=32, seed=99)
    assert report["vq_decode_accuracy"] == 1.0
    assert report["accuracy"] >= 0.9, report
