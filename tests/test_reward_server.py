"""The reward server and its client on loopback: same scores as in-process, clear 400/413 errors, retries, and
a bounded, clear failure when the server is down. The server runs in a daemon thread on a free port and is
stopped by the fixture; every HTTP call has a timeout."""

from __future__ import annotations

import base64
import io
import json
import socket
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from rewards.base import RewardOutput
from rewards.registry import build_reward
from rewards.remote import RemoteReward, RemoteRewardError
from rewards.server import BackgroundRewardServer, ServerLimits, build_served_rewards, encode_png_base64
from rewards.spec import RewardSpec


class MeanRedReward:
    """A small Python reward: the mean red value in [0, 1], plus the prompt length from metadata."""

    name = "mean_red"
    version = "test"

    def __init__(self):
        self.calls: list[int] = []

    def __call__(self, images, prompts, metadata):
        self.calls.append(len(images))
        return RewardOutput(scores=[float(im[..., 0].mean()) / 255 for im in images],
                            details=[{"n": m.get("n", -1)} for m in metadata])


class FailsOnceReward:
    name, version = "flaky", "test"

    def __init__(self):
        self.calls = 0

    def __call__(self, images, prompts, metadata):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("transient failure")
        return [1.0] * len(images)


def batch(n=5, seed=0):
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (24 + 4 * i, 32, 3), dtype=np.uint8) for i in range(n)]
    images[0][:] = 7  # one very compressible image
    return images, [f"prompt {i}" for i in range(n)], [{"n": i} for i in range(n)]


@pytest.fixture(scope="module")
def server():
    rewards = build_served_rewards([{"name": "jpeg_compressibility"}, {"name": "jpeg_compressibility@ddpo"}])
    rewards["mean_red"] = MeanRedReward()
    rewards["flaky"] = FailsOnceReward()
    limits = ServerLimits(max_request_bytes=200_000, max_batch=8, micro_batch=2)
    with BackgroundRewardServer(rewards, limits=limits) as srv:
        yield srv


def post(srv, body: bytes) -> httpx.Response:
    return httpx.post(srv.url + "/score", content=body, headers={"content-type": "application/json"},
                      timeout=10)


def test_health_and_version(server):
    assert httpx.get(server.url + "/health", timeout=5).json() == {"status": "ok"}
    v = httpx.get(server.url + "/version", timeout=5).json()
    assert v["rewards"]["jpeg_compressibility"] == "jpeg_compressibility@flowgrpo"
    assert v["rewards"]["jpeg_compressibility@ddpo"] == "jpeg_compressibility@ddpo"
    assert v["nativerl"]


def test_round_trip_equals_in_process(server):
    images, prompts, metadata = batch()
    for name in ["jpeg_compressibility", "jpeg_compressibility@ddpo"]:
        in_process = build_reward(RewardSpec(name=name))
        local = in_process(images, prompts, metadata)
        remote = RemoteReward(url=server.url, reward=name, batch_size=3, timeout_s=10)
        out = remote(images, prompts, metadata)
        assert out.scores == local.scores  # PNG is lossless: bit-identical images, identical scores
        assert remote.version == f"jpeg_compressibility@{in_process.version}"  # the served tag

    mean_red = server.rewards["mean_red"]
    mean_red.calls.clear()
    out = RemoteReward(url=server.url, reward="mean_red", timeout_s=10)(images, prompts, metadata)
    assert out.scores == MeanRedReward()(images, prompts, metadata).scores
    assert [d["n"] for d in out.details] == [0, 1, 2, 3, 4]  # metadata reached the reward, in order
    assert mean_red.calls == [2, 2, 1]  # one request of 5, scored in micro-batches of 2


def test_one_request_can_score_several_rewards(server):
    images, prompts, metadata = batch(3)
    body = json.dumps({"images": [encode_png_base64(im) for im in images], "prompts": prompts,
                       "rewards": ["jpeg_compressibility", "mean_red"]}).encode()
    r = post(server, body)
    assert r.status_code == 200, r.text
    assert set(r.json()["scores"]) == {"jpeg_compressibility", "mean_red"}
    assert len(r.json()["scores"]["mean_red"]) == 3


@pytest.mark.parametrize("body, message", [
    (b"{not json", "not JSON"),
    (json.dumps({"images": ["aGVsbG8="], "prompts": ["x"]}).encode(), "images[0]: not a readable PNG"),
    (json.dumps({"images": ["%%%"], "prompts": ["x"]}).encode(), "images[0]: not valid base64"),
    (json.dumps({"images": [], "prompts": [], "pickle": 1}).encode(), "pickle"),
    (json.dumps({"images": [], "prompts": ["x"]}).encode(), "same length"),
    (json.dumps({"images": [], "prompts": [], "rewards": ["clipscore"]}).encode(), "unknown reward"),
])
def test_malformed_payload_is_400_with_a_message(server, body, message):
    r = post(server, body)
    assert r.status_code == 400
    assert message in r.json()["error"]


def test_non_rgb_and_jpeg_images_are_refused(server):
    def b64(img: Image.Image, fmt: str) -> str:
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        return base64.b64encode(buf.getvalue()).decode()

    gray = b64(Image.new("L", (8, 8)), "PNG")
    jpeg = b64(Image.new("RGB", (8, 8)), "JPEG")
    for data, message in [(gray, "mode 'L'"), (jpeg, "only PNG")]:
        r = post(server, json.dumps({"images": [data], "prompts": ["x"]}).encode())
        assert r.status_code == 400 and message in r.json()["error"]


def test_oversized_payload_is_413(server):
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)  # ~270 kB of PNG: > 200 kB as base64
    r = post(server, json.dumps({"images": [encode_png_base64(big)], "prompts": ["x"],
                                 "rewards": ["mean_red"]}).encode())
    assert r.status_code == 413 and "max_request_bytes" in r.json()["error"]
    small = [np.zeros((4, 4, 3), np.uint8)] * 9  # more images than max_batch=8
    body = {"images": [encode_png_base64(im) for im in small], "prompts": ["x"] * 9}
    r = post(server, json.dumps(body).encode())
    assert r.status_code == 413 and "max_batch" in r.json()["error"]
    # The client reports a 4xx at once, without retrying.
    t0 = time.perf_counter()
    with pytest.raises(RemoteRewardError, match="HTTP 413"):
        RemoteReward(url=server.url, reward="mean_red", batch_size=9, backoff_s=5)(small, ["x"] * 9, [{}] * 9)
    assert time.perf_counter() - t0 < 2


def test_client_retries_a_failing_reward_then_succeeds(server):
    out = RemoteReward(url=server.url, reward="flaky", max_retries=2, backoff_s=0.05, timeout_s=10)(
        *batch(2))
    assert out.scores == [1.0, 1.0]
    assert server.rewards["flaky"].calls == 2  # the first attempt got a 500, the retry succeeded


def test_server_down_gives_a_clear_error_within_the_bound():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    reward = build_reward(RewardSpec(name="remote", options={
        "url": url, "reward": "ocr", "timeout_s": 1.0, "max_retries": 3, "backoff_s": 0.1}))
    bound = reward.options.bound_s  # 4 attempts x 1 s + 0.1 + 0.2 + 0.4
    t0 = time.perf_counter()
    with pytest.raises(RemoteRewardError) as err:
        reward(*batch(2))
    elapsed = time.perf_counter() - t0
    assert url in str(err.value) and "4 attempt(s)" in str(err.value) and "ConnectError" in str(err.value)
    assert 0.7 - 0.05 <= elapsed <= bound + 0.5  # it did back off (0.7 s in total), and it stopped in time


def test_slow_reward_gets_504_within_the_request_timeout():
    class Slow:
        name, version = "slow", "test"

        def __call__(self, images, prompts, metadata):
            time.sleep(1.5)
            return [0.0] * len(images)

    with BackgroundRewardServer({"slow": Slow()}, limits=ServerLimits(request_timeout_s=0.3)) as srv:
        t0 = time.perf_counter()
        r = post(srv, json.dumps({"images": [encode_png_base64(np.zeros((4, 4, 3), np.uint8))],
                                  "prompts": ["x"]}).encode())
        assert r.status_code == 504 and "request_timeout_s" in r.json()["error"]
        assert time.perf_counter() - t0 < 1.4


def test_serve_from_recipe_rewards_serves_in_a_separate_process(tmp_path):
    """The entry point `nativerl serve-rewards` calls, run as its own process, answers on loopback."""
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = ("from rewards.server import serve_from_recipe_rewards; "
            f"serve_from_recipe_rewards([{{'name': 'jpeg_compressibility@ddpo'}}], port={port}, "
            "max_batch=4, log_level='warning')")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:  # bounded wait for start-up
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "server did not start within 30 s"
            time.sleep(0.1)
        images, prompts, metadata = batch(3)
        out = RemoteReward(url=f"http://127.0.0.1:{port}", reward="jpeg_compressibility@ddpo", timeout_s=10)(
            images, prompts, metadata)
        local = build_reward(RewardSpec(name="jpeg_compressibility@ddpo"))
        assert out.scores == local(images, prompts, metadata).scores
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_serve_from_recipe_rewards_rejects_unknown_limits_and_remote_specs():
    from rewards.server import serve_from_recipe_rewards

    with pytest.raises(ValueError, match="max_requests"):
        serve_from_recipe_rewards([{"name": "jpeg_compressibility"}], max_requests=3)
    with pytest.raises(ValueError, match="cannot serve a 'remote'"):
        build_served_rewards([{"name": "remote", "options": {"url": "http://x", "reward": "y"}}])


def test_several_servers_share_the_batches_and_cover_for_a_dead_one():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    a, b = MeanRedReward(), MeanRedReward()
    images, prompts, meta = batch(7)
    expected = MeanRedReward()(images, prompts, meta).scores
    with BackgroundRewardServer({"mean_red": a}) as sa, BackgroundRewardServer({"mean_red": b}) as sb:
        reward = RemoteReward(url=[sa.url, dead, sb.url], reward="mean_red", batch_size=2, max_retries=2,
                              backoff_s=0.01, timeout_s=10)
        out = reward(images, prompts, meta)
    assert out.scores == pytest.approx(expected) and [d["n"] for d in out.details] == list(range(7))
    # Both live servers scored, and the batches sent to the dead one went to the next server.
    assert a.calls and b.calls and sum(a.calls) + sum(b.calls) == 7
    assert reward.version == "mean_red@test"


def test_servers_serving_different_versions_are_refused():
    class Other(MeanRedReward):
        version = "other"

    with (BackgroundRewardServer({"mean_red": MeanRedReward()}) as sa,
          BackgroundRewardServer({"mean_red": Other()}) as sb):
        reward = RemoteReward(url=[sa.url, sb.url], reward="mean_red", batch_size=1, timeout_s=10)
        with pytest.raises(RemoteRewardError, match="different versions"):
            reward(*batch(2))


# ---- trust boundary: requests are untrusted (docs/SECURITY.md) ----

def _png(path, array):
    Image.fromarray(array).save(path)
    return path


def _score_body(images, metadata=None, rewards=None, prompts=None):
    body = {"images": [encode_png_base64(im) for im in images], "prompts": prompts or ["x"] * len(images)}
    if metadata is not None:
        body["metadata"] = metadata
    if rewards is not None:
        body["rewards"] = rewards
    return json.dumps(body).encode()


def test_reference_files_are_off_by_default_and_confined_to_the_root_with_one_error(tmp_path):
    """`metadata.reference_image` must not turn the server into a file reader: without a reference root no path is
    read (an inline PNG works); with one, only images under it are, and a path outside it, a missing path, a symlink
    out of it and a file that is not an image all get the same answer, so the error says nothing about the disk."""
    from rewards.server import INLINE_PNG

    rng = np.random.default_rng(1)
    edited = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    root, outside = tmp_path / "refs", tmp_path / "private"
    root.mkdir(), outside.mkdir()
    allowed = _png(root / "ref.png", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    secret = _png(outside / "secret.png", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    (root / "link.png").symlink_to(secret)
    (root / "notes.txt").write_text("not an image")
    pixel = build_served_rewards([{"name": "image_consistency@pixel"}])
    expected = build_reward(RewardSpec(name="image_consistency@pixel"))(
        [edited], ["x"], [{"reference_image": str(allowed)}]).scores

    with BackgroundRewardServer(pixel) as closed:
        r = post(closed, _score_body([edited], [{"reference_image": str(secret)}]))
        assert r.status_code == 400 and "reads no files" in r.json()["error"]
        inline = INLINE_PNG + encode_png_base64(np.asarray(Image.open(allowed)))
        r = post(closed, _score_body([edited], [{"reference_image": inline}]))
        assert r.status_code == 200 and r.json()["scores"]["image_consistency@pixel"] == expected
        # The client sends an in-memory reference inline, so remote editing rewards need no file access at all.
        remote = RemoteReward(url=closed.url, reward="image_consistency@pixel", timeout_s=10)
        assert remote([edited], ["x"], [{"reference_image": np.asarray(Image.open(allowed))}]).scores == expected

    with BackgroundRewardServer(pixel, reference_root=root) as srv:
        r = post(srv, _score_body([edited], [{"reference_image": "ref.png"}]))
        assert r.status_code == 200 and r.json()["scores"]["image_consistency@pixel"] == expected
        errors = set()
        for ref in [str(secret), "../private/secret.png", "link.png", "missing.png", str(outside / "none.png"),
                    "notes.txt"]:
            r = post(srv, _score_body([edited], [{"reference_image": ref}]))
            assert r.status_code == 400, (ref, r.text)
            errors.add(r.json()["error"])
        assert errors == {"metadata[0].reference_image: not an image this server may read (only images under its "
                          "reference root)"}


def test_decoded_pixels_json_depth_and_prompt_length_are_bounded_with_errors_naming_the_limit():
    limits = ServerLimits(max_image_pixels=300 * 300, max_request_pixels=100_000, max_json_depth=8,
                          max_prompt_chars=50)
    flat = np.zeros((200, 200, 3), np.uint8)  # 40,000 pixels, a few hundred bytes of PNG
    with BackgroundRewardServer({"mean_red": MeanRedReward()}, limits=limits) as srv:
        assert post(srv, _score_body([flat, flat])).status_code == 200
        r = post(srv, _score_body([flat, flat, flat]))  # 120,000 decoded pixels from ~1 kB of PNG
        assert r.status_code == 413 and "max_request_pixels=100000" in r.json()["error"]
        r = post(srv, _score_body([np.zeros((400, 400, 3), np.uint8)]))
        assert r.status_code == 413 and "max_image_pixels=90000" in r.json()["error"]
        nested = {"a": [[[[[[[[[1]]]]]]]]]}
        r = post(srv, _score_body([flat], [nested]))
        assert r.status_code == 400 and "max_json_depth=8" in r.json()["error"]
        bomb = b'{"images": [], "prompts": [], "metadata": [' + b"[" * 200_000 + b"]" * 200_000 + b"]}"
        r = post(srv, bomb)  # deeper than Python's recursion limit: still a 400, not a 500
        assert r.status_code == 400 and "max_json_depth=8" in r.json()["error"]
        r = post(srv, _score_body([flat], prompts=["a" * 51]))
        assert r.status_code == 413 and "max_prompt_chars is 50" in r.json()["error"]


def test_health_answers_while_a_request_is_being_decoded(monkeypatch):
    """Decoding runs in a worker thread: a slow decode (here made slow on purpose) does not stall the event loop."""
    import threading

    import rewards.server as server_module

    real = server_module.decode_image

    def slow_decode(img, where):
        time.sleep(2.0)
        return real(img, where)

    monkeypatch.setattr(server_module, "decode_image", slow_decode)
    with BackgroundRewardServer({"mean_red": MeanRedReward()}) as srv:
        answer = {}
        sender = threading.Thread(target=lambda: answer.setdefault("r", post(srv, _score_body(
            [np.zeros((8, 8, 3), np.uint8)]))))
        sender.start()
        time.sleep(0.5)  # the request is now inside the slow decode
        t0 = time.perf_counter()
        assert httpx.get(srv.url + "/health", timeout=5).status_code == 200
        assert time.perf_counter() - t0 < 1.0
        sender.join(10)
        assert answer["r"].status_code == 200


def test_served_rewards_get_read_only_pixels_and_must_return_numbers():
    class Scribbler:
        name, version = "scribbler", "test"

        def __call__(self, images, prompts, metadata):
            images[0][:] = 0  # would change what the next reward of the request scores
            return [0.0] * len(images)

    class Stringly:
        name, version = "stringly", "test"

        def __call__(self, images, prompts, metadata):
            return ["0.5"] * len(images)

    with BackgroundRewardServer({"scribbler": Scribbler(), "stringly": Stringly()}) as srv:
        img = np.full((8, 8, 3), 200, np.uint8)
        r = post(srv, _score_body([img], rewards=["scribbler"]))
        assert r.status_code == 500 and "read-only" in r.json()["error"]
        r = post(srv, _score_body([img], rewards=["stringly"]))
        assert r.status_code == 500 and "'stringly'" in r.json()["error"] and "score [0] is str" in r.json()["error"]
