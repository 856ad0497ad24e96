"""GenEval-style prompt generation from the 80 COCO classes, the `coco_generated` prompt format, `nativerl
make-prompts`, and the prompt loaders on the field's real file formats (bad rows name their line)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prompts.coco_prompts import (
    COCO_CLASSES,
    TEXT_WORDS,
    _Space,
    generate_geneval_prompts,
    make_plural,
    with_article,
)
from prompts.prompt_sets import load_prompt_rows
from prompts.row_files import PromptSetError, load_jsonl, load_ocr_txt
from prompts.vocabulary import COLOURS, GENEVAL_TAGS
from rewards.ocr import extract_target
from rl.cli import app
from rl.recipe import PromptSource

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def as_loaded(rows):
    """Rows as the GenEval loader returns them (it adds an empty `exclude` where the file has none)."""
    return [{**r, "exclude": r.get("exclude", [])} for r in rows]


def test_geneval_articles_and_plurals_follow_its_rules_including_the_ungrammatical_ones():
    assert [with_article(w) for w in ("apple", "umbrella", "orange cow", "bench", "hair drier")] == \
        ["an apple", "an umbrella", "an orange cow", "a bench", "a hair drier"]
    assert [make_plural(w) for w in ("bus", "wine glass", "cow", "bench", "sheep", "knife")] == \
        ["buses", "wine glasses", "cows", "benchs", "sheeps", "knifes"]


def test_each_tag_has_geneval_phrasing_and_metadata():
    rows = {t: [r for r in generate_geneval_prompts(480, seed=1) if r["tag"] == t] for t in GENEVAL_TAGS}
    assert all(len(v) == 80 for v in rows.values())
    for r in rows["single_object"]:
        (c,) = r["include"]
        assert c["count"] == 1 and r["prompt"] == f"a photo of {with_article(c['class'])}"
    for r in rows["two_object"]:
        a, b = r["include"]
        assert a["class"] != b["class"] and r["prompt"] == \
            f"a photo of {with_article(a['class'])} and {with_article(b['class'])}"
    for r in rows["counting"]:
        (c,) = r["include"]
        assert c["count"] in (2, 3, 4) and r["exclude"] == [{"class": c["class"], "count": c["count"] + 1}]
        word = {2: "two", 3: "three", 4: "four"}[c["count"]]
        assert r["prompt"] == f"a photo of {word} {make_plural(c['class'])}"
    for r in rows["colors"]:
        (c,) = r["include"]
        assert c["color"] in COLOURS and r["prompt"] == f"a photo of {with_article(c['color'] + ' ' + c['class'])}"
    for r in rows["position"]:
        target, subject = r["include"]
        relation, index = subject["position"]
        assert index == 0 and "position" not in target and target["class"] != subject["class"]
        assert r["prompt"] == f"a photo of {with_article(subject['class'])} {relation} {with_article(target['class'])}"
    for r in rows["color_attr"]:
        a, b = r["include"]
        assert a["class"] != b["class"] and a["color"] != b["color"]
        assert r["prompt"] == (f"a photo of {with_article(a['color'] + ' ' + a['class'])} and "
                               f"{with_article(b['color'] + ' ' + b['class'])}")
    assert all("exclude" not in r for t, v in rows.items() if t != "counting" for r in v)
    assert len(COCO_CLASSES) == 80


def test_generation_is_deterministic_distinct_balanced_and_honours_exclusions(tmp_path):
    a, b = generate_geneval_prompts(300, seed=7), generate_geneval_prompts(300, seed=7)
    assert a == b
    assert a != generate_geneval_prompts(300, seed=8)
    assert len({r["prompt"] for r in a}) == 300
    assert set(Counter(r["tag"] for r in a).values()) == {50}

    # Holding out every single_object prompt and half the counting ones: those tags shrink, others fill the gap.
    held = [r["prompt"] for r in generate_geneval_prompts(80 + 120, seed=0, tags=["single_object", "counting"])]
    rows = generate_geneval_prompts(1200, seed=3, exclude_prompts=held)
    counts = Counter(r["tag"] for r in rows)
    assert not {r["prompt"] for r in rows} & set(held)
    assert counts["single_object"] == 0 and counts["counting"] == 120 and sum(counts.values()) == 1200
    assert counts["two_object"] == counts["colors"] == counts["position"] == counts["color_attr"] == 270

    with pytest.raises(ValueError, match="only 80 distinct prompts"):
        generate_geneval_prompts(81, tags=["single_object"])
    with pytest.raises(ValueError, match="colour_attr"):
        generate_geneval_prompts(5, tags=["colour_attr"])


def test_text_fraction_gives_ocr_targets_and_rows_stay_valid_geneval(tmp_path):
    rows = generate_geneval_prompts(400, seed=2, text_fraction=0.5)
    with_text = [r for r in rows if '"' in r["prompt"]]
    assert 150 < len(with_text) < 250
    assert all(extract_target(r["prompt"]) in TEXT_WORDS for r in with_text)
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_jsonl(path, geneval=True) == as_loaded(rows)


def test_make_prompts_command_and_coco_generated_format(tmp_path):
    held = tmp_path / "held.jsonl"
    held_rows = generate_geneval_prompts(12, seed=99)
    held.write_text("".join(json.dumps(r) + "\n" for r in held_rows))
    out = tmp_path / "train.jsonl"
    result = CliRunner().invoke(app, ["make-prompts", "--out", str(out), "--n", "60", "--seed", "4",
                                      "--exclude", str(held)])
    assert result.exit_code == 0, result.output
    rows = load_jsonl(out, geneval=True)
    assert len(rows) == 60 and not {r["prompt"] for r in rows} & {r["prompt"] for r in held_rows}
    assert rows == as_loaded(generate_geneval_prompts(60, seed=4, exclude_prompts=[r["prompt"] for r in held_rows]))

    source = PromptSource.model_validate({"format": "coco_generated",
                                          "coco": {"num_prompts": 60, "seed": 4, "exclude_path": "held.jsonl"}})
    assert as_loaded(load_prompt_rows(source, tmp_path)) == rows  # exclude_path resolved against the recipe folder
    with pytest.raises(Exception, match="num_prompt"):
        PromptSource.model_validate({"format": "coco_generated", "coco": {"num_prompt": 5}})


@pytest.mark.skipif(not (SHARED_DATA / "geneval_evaluation_metadata.jsonl").is_file(),
                    reason="real GenEval metadata not present")
def test_every_real_geneval_prompt_is_in_the_generators_space():
    """Each of GenEval's 553 evaluation rows is exactly one row the generator can produce (same prompt string and
    the same metadata): the space is restricted to the row's own classes and colours, so this checks the
    phrasing, the include/exclude layout and the key order without enumerating all 660k combinations."""
    real = load_jsonl(SHARED_DATA / "geneval_evaluation_metadata.jsonl", geneval=True)
    assert len(real) == 553
    for row in real:
        raw = {k: row[k] for k in ("tag", "include", "exclude", "prompt") if k in row and
               (k != "exclude" or row["exclude"])}
        classes = list(dict.fromkeys(c["class"] for c in row["include"]))
        colours = [c["color"] for c in row["include"]] if row["tag"] == "color_attr" else list(COLOURS)
        space = _Space(row["tag"], classes, colours)
        candidates = [space.row(i) for i in range(space.size)]
        assert any(json.dumps(c) == json.dumps(raw) for c in candidates), row


def test_loaders_name_the_bad_line(tmp_path):
    ocr = tmp_path / "ocr.txt"
    ocr.write_text('a sign that says "OPEN"\n\na poster with "SALE" on it\na sign with no quotes\n')
    with pytest.raises(PromptSetError, match=r"ocr.txt:4: OCR prompt has no double-quoted"):
        load_ocr_txt(ocr)
    gen = tmp_path / "g.jsonl"
    good = generate_geneval_prompts(2, seed=0)
    lines = [json.dumps(good[0]), json.dumps(good[1]), json.dumps({**good[0], "tag": "colour"})]
    gen.write_text("\n".join(lines) + "\n")
    with pytest.raises(PromptSetError, match=r"g.jsonl:3: 'tag' must be one of"):
        load_jsonl(gen, geneval=True)
    gen.write_text(json.dumps(good[0]) + "\n{not json\n")
    with pytest.raises(PromptSetError, match=r"g.jsonl:2: not valid JSON"):
        load_jsonl(gen, geneval=True)


@pytest.mark.skipif(not (SHARED_DATA / "flowgrpo_ocr_test.txt").is_file(), reason="real Flow-GRPO files not present")
def test_loaders_read_the_real_flowgrpo_files():
    ocr = load_ocr_txt(SHARED_DATA / "flowgrpo_ocr_test.txt")
    assert len(ocr) == 1018 and all(extract_target(r["prompt"]) for r in ocr)
    gen = load_jsonl(SHARED_DATA / "flowgrpo_geneval_test_metadata.jsonl", geneval=True)  # no trailing newline
    assert len(gen) == 2212 and Counter(r["tag"] for r in gen)["counting"] == 320
