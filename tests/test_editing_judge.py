"""The VLM edit judge against a fake OpenAI-compatible chat-completions server on loopback: the request carries
the instruction and both images, the reply's score is parsed and normalised, and a reply without a usable score is
a clear failure (required: the step stops; optional: dropped), never a silent 0."""

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from rewards.edit_judge import EditJudgeReward, JudgeError, parse_score, require_loopback
from rewards.spec import RewardSpec
from rewards.suite import RewardFailure, RewardSuite


class FakeVLM:
    """Answers each request with the next canned reply; records the requests."""

    def __init__(self):
        self.replies: list[str] = []
        self.requests: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "body": body})
                reply = fake.replies.pop(0) if fake.replies else "Score: 0"
                if reply == "HTTP 500":
                    self.send_response(500)
                    self.end_headers()
                    self.wfile.write(b"boom")
                    return
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture()
def vlm():
    fake = FakeVLM()
    yield fake
    fake.server.shutdown()


def _img(value):
    return np.full((16, 16, 3), value, dtype=np.uint8)


def _spec(vlm, **kw):
    return RewardSpec(name="edit_judge", options={"judge": "vlm", "judge_options": {
        "url": vlm.url, "model": "qwen-vl-test", "concurrency": 1}}, **kw)


def test_scores_are_parsed_and_the_request_carries_both_images(vlm):
    vlm.replies = ["Score: 8", "The edit is partial.\n**Score:** 2.5/5"]
    reward = RewardSuite([_spec(vlm)])
    rows = [{"instruction": "make it red", "reference_image": _img(10)},
            {"instruction": "make it blue", "reference_image": _img(20)}]
    out = reward.score([_img(200), _img(100)], ["make it red", "make it blue"], rows)
    assert out.scores["edit_judge"].tolist() == [0.8, 0.5]
    assert out.tags["edit_judge"] == "edit_judge@vlm+qwen-vl-test+p1"
    first = vlm.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["body"]["model"] == "qwen-vl-test"
    parts = first["body"]["messages"][0]["content"]
    urls = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
    decoded = [np.asarray(Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1])))) for u in urls]
    assert np.array_equal(decoded[0], _img(10)) and np.array_equal(decoded[1], _img(200))  # reference, edited
    assert "make it red" in [p["text"] for p in parts if p["type"] == "text"][0]


def test_unparsable_reply_fails_the_required_reward(vlm):
    vlm.replies = ["I think it looks good."]
    with pytest.raises(RewardFailure, match="no score in the judge's reply"):
        RewardSuite([_spec(vlm)]).score([_img(1)], ["x"], [{"instruction": "x", "reference_image": _img(0)}])


def test_optional_judge_failure_is_dropped_not_zero(vlm):
    vlm.replies = ["HTTP 500"]
    suite = RewardSuite([_spec(vlm, required=False), RewardSpec(name="image_consistency@pixel")])
    out = suite.score([_img(1)], ["x"], [{"instruction": "x", "reference_image": _img(0)}])
    assert "HTTP 500" in out.failed["edit_judge"] and np.isnan(out.scores["edit_judge"]).all()
    assert out.weights == {"image_consistency": 2.0}


@pytest.mark.parametrize("text,value", [("Score: 7", 0.7), ("score = 3/10", 0.3), ("9", 0.9), ("10.", 1.0),
                                        ("Reasoning... Score: 0", 0.0)])
def test_parse_score(text, value):
    assert parse_score(text, 10) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "good", "Score: 11", "Score: -1", "between 6 and 8"])
def test_parse_score_refuses(text):
    with pytest.raises(JudgeError):
        parse_score(text, 10)


def test_only_loopback_urls():
    assert require_loopback("http://localhost:8000/v1") == "http://localhost:8000/v1"
    assert require_loopback("http://[::1]:8000/v1/") == "http://[::1]:8000/v1"
    for url in ("http://10.0.0.5:8000/v1", "https://api.openai.com/v1", "http://example.com"):
        with pytest.raises(ValueError, match="not on loopback"):
            require_loopback(url)
    with pytest.raises(ValueError, match="not on loopback"):
        EditJudgeReward(judge="vlm", judge_options={"url": "http://10.1.1.1/v1", "model": "m"})
