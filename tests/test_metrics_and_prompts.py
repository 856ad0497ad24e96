"""metrics.jsonl is append-only and crash-safe; prompt loaders name the bad line; the prompt stream resumes."""

import json

import pytest

from prompts.prompt_sets import PromptStream
from prompts.row_files import PromptSetError, load_jsonl, load_ocr_txt
from rl.metrics_log import MetricsLog, read_metrics


def test_metrics_lines_and_half_line(tmp_path):
    log = MetricsLog(tmp_path, tensorboard=False)
    log.append(1, {"reward/mean": 0.5, "nan": float("nan")})
    log.append(2, {"reward/mean": 0.7})
    with open(tmp_path / "metrics.jsonl", "a") as f:  # what a crash mid-write could leave
        f.write('{"step": 3, "rew')
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["nan"] is None
    log.truncate_after(1)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1]


def test_ocr_txt_loader(tmp_path):
    p = tmp_path / "ocr.txt"
    p.write_text('A sign that says "OPEN"\nA poster reading "Sale"')
    assert [r["prompt"] for r in load_ocr_txt(p)][1] == 'A poster reading "Sale"'
    p.write_text('A sign that says "OPEN"\nno quotes here\n')
    with pytest.raises(PromptSetError, match=r"ocr.txt:2"):
        load_ocr_txt(p)


def test_geneval_jsonl_loader_names_line(tmp_path):
    good = {"tag": "counting", "prompt": "a photo of two cats", "include": [{"class": "cat", "count": 2}],
            "exclude": [{"class": "cat", "count": 3}]}
    p = tmp_path / "m.jsonl"
    p.write_text(json.dumps(good) + "\n" + json.dumps({**good, "tag": "bogus"}) + "\n")
    with pytest.raises(PromptSetError, match=r"m.jsonl:2.*tag"):
        load_jsonl(p, geneval=True)
    p.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(PromptSetError, match=r"m.jsonl:2"):
        load_jsonl(p, geneval=True)
    p.write_text(json.dumps({**good, "include": json.dumps(good["include"])}) + "\n")
    assert load_jsonl(p, geneval=True)[0]["include"][0]["class"] == "cat"


def test_prompt_stream_resumes_exactly():
    rows = [{"prompt": str(i)} for i in range(7)]
    a = PromptStream(rows, seed=3)
    first = [r["prompt"] for r in a.next(10)]
    state = a.state_dict()
    rest = [r["prompt"] for r in a.next(9)]
    b = PromptStream(rows, seed=3)
    b.load_state_dict(state)
    assert [r["prompt"] for r in b.next(9)] == rest
    assert sorted(first[:7]) == sorted(r["prompt"] for r in rows)  # one epoch covers every row once
