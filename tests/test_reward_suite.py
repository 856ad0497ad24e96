"""RewardSuite: every branch of the failure policy, with small real reward functions (and the real OCR reward)."""

import asyncio
import time

import numpy as np
import pytest

from rewards.base import RewardOutput
from rewards.spec import RewardSpec
from rewards.suite import RewardFailure, RewardSuite, SuiteScores

IMAGES = [np.full((8, 8, 3), v, np.uint8) for v in (0, 51, 255)]
PROMPTS = ["dark", "dim", "bright"]
META = [{"prompt": p} for p in PROMPTS]


# Small real rewards. Module-level so they can also be named by dotted path (tests/ is on sys.path under pytest).
def brightness(images, prompts, metadata):
    return RewardOutput(scores=[float(im.mean()) / 255 for im in images],
                        details=[{"mean": float(im.mean())} for im in images])


brightness.version = "test"


def darkness(images, prompts, metadata):
    return [1.0 - float(im.mean()) / 255 for im in images]


def prompt_length(images, prompts, metadata, *, scale=1.0):
    return [scale * len(p) for p in prompts]


class Raising:
    name, version = "raising", "test"

    def __call__(self, images, prompts, metadata):
        raise ZeroDivisionError("broken on purpose")


class NaNOnSecond:
    name, version = "nan", "test"

    def __call__(self, images, prompts, metadata):
        return [0.0 if i != 1 else float("nan") for i in range(len(images))]


class Sleepy:
    name, version = "sleepy", "test"

    def __init__(self, seconds):
        self.seconds = seconds

    def __call__(self, images, prompts, metadata):
        time.sleep(self.seconds)
        return [1.0] * len(images)


class ShortOutput:
    name, version = "short", "test"

    def __call__(self, images, prompts, metadata):
        return [1.0] * (len(images) - 1)


class AsyncContrast:
    name, version = "contrast", "async"

    def __init__(self, delay=0.0):
        self.delay = delay

    async def __call__(self, images, prompts, metadata):
        await asyncio.sleep(self.delay)
        return RewardOutput(scores=[float(im.std()) for im in images])


class Wrapped:
    """A named wrapper around a plain function, like the registry's FunctionReward."""

    def __init__(self, fn, name):
        self.fn, self.name, self.version = fn, name, "test"

    def __call__(self, images, prompts, metadata):
        return self.fn(images, prompts, metadata)


def suite_of(*pairs):
    """pairs of (spec kwargs, reward object)."""
    return RewardSuite([RewardSpec(**spec) for spec, _ in pairs], rewards=[r for _, r in pairs])


def test_all_rewards_succeed():
    suite = RewardSuite([RewardSpec(name="test_reward_suite:brightness", alias="bright", weight=0.5),
                         RewardSpec(name="test_reward_suite:prompt_length", alias="length", weight=2.0,
                                    options={"scale": 0.1})])
    out = suite.score(IMAGES, PROMPTS, META)
    assert isinstance(out, SuiteScores)
    np.testing.assert_allclose(out.scores["bright"], [0.0, 0.2, 1.0])
    np.testing.assert_allclose(out.scores["length"], [0.4, 0.3, 0.6])
    assert out.failed == {} and out.weights == {"bright": 0.5, "length": 2.0}  # as written: nothing failed
    assert out.tags == {"bright": "test_reward_suite:brightness@test",
                        "length": "test_reward_suite:prompt_length@user"}
    assert out.details[2]["bright"] == {"mean": 255.0} and "length" not in out.details[2]
    assert set(out.timings) == {"bright", "length"} and all(t >= 0 for t in out.timings.values())


def test_optional_exception_is_excluded_and_weights_renormalised():
    suite = suite_of(({"name": "bright", "weight": 1.0}, Wrapped(brightness, "bright")),
                     ({"name": "raising", "weight": 1.0, "required": False}, Raising()))
    out = suite.score(IMAGES, PROMPTS, META)
    assert np.isnan(out.scores["raising"]).all()  # never a silent 0
    assert "ZeroDivisionError: broken on purpose" in out.failed["raising"]
    assert out.weights == {"bright": 2.0}  # total weight kept: 1 + 1 -> 2
    np.testing.assert_allclose(out.scores["bright"], [0.0, 0.2, 1.0])


def test_optional_nan_is_a_failure():
    suite = suite_of(({"name": "bright", "weight": 3.0}, Wrapped(brightness, "bright")),
                     ({"name": "nan", "weight": 1.0, "required": False}, NaNOnSecond()))
    out = suite.score(IMAGES, PROMPTS, META)
    assert "non-finite" in out.failed["nan"] and "[1]=nan" in out.failed["nan"]
    assert np.isnan(out.scores["nan"]).all()
    assert out.weights == {"bright": pytest.approx(4.0)}


def test_optional_timeout_returns_on_time():
    suite = suite_of(({"name": "bright"}, Wrapped(brightness, "bright")),
                     ({"name": "sleepy", "required": False, "timeout_s": 0.2}, Sleepy(3.0)))
    start = time.perf_counter()
    out = suite.score(IMAGES, PROMPTS, META)
    assert time.perf_counter() - start < 2.0  # did not wait for the 3 s call
    assert "timed out after timeout_s=0.2" in out.failed["sleepy"]
    assert out.weights == {"bright": 2.0}


def test_wrong_length_output_is_a_failure():
    suite = suite_of(({"name": "bright"}, Wrapped(brightness, "bright")),
                     ({"name": "short", "required": False}, ShortOutput()))
    out = suite.score(IMAGES, PROMPTS, META)
    assert "returned 2 scores for a batch of 3 images" in out.failed["short"]


def test_required_failure_raises_naming_the_reward_and_cause():
    suite = suite_of(({"name": "bright"}, Wrapped(brightness, "bright")),
                     ({"name": "raising"}, Raising()),
                     ({"name": "nan", "required": False}, NaNOnSecond()))
    with pytest.raises(RewardFailure, match=r"required reward 'raising' \(raising@test\) failed: "
                                            r"ZeroDivisionError: broken on purpose") as info:
        suite.score(IMAGES, PROMPTS, META)
    assert info.value.reward == "raising" and "nan" in str(info.value)  # other failures are listed


def test_required_timeout_raises():
    suite = suite_of(({"name": "sleepy", "timeout_s": 0.1}, Sleepy(2.0)))
    with pytest.raises(RewardFailure, match="timed out"):
        suite.score(IMAGES, PROMPTS, META)


def test_no_weighted_reward_left_fails_the_step():
    suite = suite_of(({"name": "raising", "required": False}, Raising()),
                     ({"name": "bright", "weight": 0.0}, Wrapped(brightness, "bright")))
    with pytest.raises(RewardFailure, match="no reward with a non-zero weight"):
        suite.score(IMAGES, PROMPTS, META)


def test_async_rewards_run_and_time_out():
    suite = suite_of(({"name": "contrast"}, AsyncContrast()),
                     ({"name": "slow_contrast", "alias": "slow", "required": False, "timeout_s": 0.1},
                      AsyncContrast(delay=2.0)))
    out = suite.score(IMAGES, PROMPTS, META)
    np.testing.assert_allclose(out.scores["contrast"], [0.0, 0.0, 0.0])
    assert "timed out" in out.failed["slow"] and out.tags["contrast"] == "contrast@async"


def test_rewards_run_concurrently():
    suite = suite_of(({"name": "a", "required": False}, Sleepy(0.5)), ({"name": "b"}, Sleepy(0.5)))
    start = time.perf_counter()
    suite.score(IMAGES, PROMPTS, META)
    assert time.perf_counter() - start < 0.95


def test_keys_aliases_and_duplicates():
    with pytest.raises(ValueError, match="alias"):
        RewardSuite([RewardSpec(name="test_reward_suite:darkness"), RewardSpec(name="test_reward_suite:darkness")])
    suite = RewardSuite([RewardSpec(name="test_reward_suite:darkness"),
                         RewardSpec(name="test_reward_suite:darkness", alias="dark2", weight=0.5)])
    out = suite.score(IMAGES, PROMPTS, META)
    assert set(out.scores) == {"test_reward_suite:darkness", "dark2"}


def test_ascore_inside_an_event_loop():
    suite = suite_of(({"name": "bright"}, Wrapped(brightness, "bright")))

    async def main():
        with pytest.raises(RuntimeError, match="ascore"):
            suite.score(IMAGES, PROMPTS, META)
        return await suite.ascore(IMAGES, PROMPTS, META)

    out = asyncio.run(main())
    np.testing.assert_allclose(out.scores["bright"], [0.0, 0.2, 1.0])


def test_real_ocr_reward_in_the_suite():
    """A built-in reward by name: a prompt without quotes makes OCR fail (fallback "error"); required vs optional."""
    pytest.importorskip("rapidocr")
    specs = [RewardSpec(name="ocr@flowgrpo", required=False), RewardSpec(name="test_reward_suite:brightness",
                                                                         alias="bright")]
    suite = RewardSuite(specs)
    assert suite.tags["ocr"] == "ocr@flowgrpo"
    out = suite.score(IMAGES[:1], ["a plain black square"], META[:1])
    assert "ValueError" in out.failed["ocr"] and "no double-quoted target" in out.failed["ocr"]
    assert out.weights == {"bright": 2.0}
    required = RewardSuite([RewardSpec(name="ocr", options={"no_quote_fallback": "error"})])
    with pytest.raises(RewardFailure, match="'ocr' \\(ocr@flowgrpo\\)"):
        required.score(IMAGES[:1], ["a plain black square"], META[:1])
    # with a configured fallback the same prompt scores: a blank image reads nothing -> 0 (a real score)
    ok = RewardSuite([RewardSpec(name="ocr", options={"no_quote_fallback": "whole_prompt"})])
    result = ok.score(IMAGES[:1], ["a plain black square"], META[:1])
    assert result.failed == {} and result.scores["ocr"].tolist() == [0.0]


def test_sys_exit_inside_an_optional_reward_is_that_rewards_failure():
    """sys.exit() in reward code (sync in its thread, or async on the loop) fails that reward, not the run."""
    class Exits:
        name, version = "exits", "test"

        def __call__(self, images, prompts, metadata):
            raise SystemExit(3)

    class AsyncExits:
        name, version = "aexits", "test"

        async def __call__(self, images, prompts, metadata):
            raise SystemExit("bye")

    suite = suite_of(({"name": "bright"}, Wrapped(brightness, "bright")),
                     ({"name": "exits", "required": False}, Exits()),
                     ({"name": "aexits", "required": False}, AsyncExits()))
    out = suite.score(IMAGES, PROMPTS, META)
    assert out.failed["exits"].startswith("SystemExit(3)") and out.failed["aexits"].startswith("SystemExit('bye')")
    assert out.weights == {"bright": 3.0}
    with pytest.raises(RewardFailure, match=r"required reward 'exits' .*SystemExit\(3\)"):
        suite_of(({"name": "exits"}, Exits())).score(IMAGES, PROMPTS, META)


def test_rewards_get_read_only_images_so_one_cannot_change_what_the_next_scores():
    class Scribbler:
        name, version = "scribbler", "test"

        def __call__(self, images, prompts, metadata):
            for im in images:
                im[:] = 255  # "brighten" the rollouts in place
            return [0.0] * len(images)

    images = [im.copy() for im in IMAGES]
    suite = suite_of(({"name": "scribbler", "required": False}, Scribbler()),
                     ({"name": "bright"}, Wrapped(brightness, "bright")))
    out = suite.score(images, PROMPTS, META)
    assert "read-only" in out.failed["scribbler"]
    np.testing.assert_allclose(out.scores["bright"], [0.0, 0.2, 1.0])  # scored the real pixels
    assert all((a == b).all() for a, b in zip(images, IMAGES))  # the caller's arrays (the rollouts) are intact


@pytest.mark.parametrize("bad, shown", [
    (["0.5", "0.5", "0.5"], "score [0] is str '0.5'"),
    ([b"1", b"1", b"1"], "score [0] is bytes"),
    ([1.0, None, 1.0], "score [1] is NoneType"),
    ([1.0, [2.0], 1.0], "score [1] is list"),
    ({1.0, 2.0, 3.0}, "returned set"),
    ("111", "returned str"),
    (RewardOutput.__new__(RewardOutput), None),  # placeholder replaced below
])
def test_reward_outputs_must_be_numbers(bad, shown):
    if shown is None:  # RewardOutput itself refuses numeric strings (float("0.5") would accept them)
        with pytest.raises(TypeError, match=r"score \[0\] is str"):
            RewardOutput(scores=["0.5"])
        return
    suite = suite_of(({"name": "bad", "required": False}, Wrapped(lambda i, p, m: bad, "bad")),
                     ({"name": "bright"}, Wrapped(brightness, "bright")))
    out = suite.score(IMAGES, PROMPTS, META)
    assert shown in out.failed["bad"], out.failed


def test_numpy_and_torch_numbers_are_accepted():
    import torch

    for good in (np.array([1, 2, 3], np.int32), torch.tensor([0.5, 1.0, 2.0]), [np.float32(1), True, 2],
                 [torch.tensor(1.5), np.array(2.0), 3]):
        out = suite_of(({"name": "ok"}, Wrapped(lambda i, p, m, g=good: g, "ok"))).score(IMAGES, PROMPTS, META)
        assert out.failed == {} and out.scores["ok"].dtype == np.float64


def test_a_reward_has_a_timeout_by_default():
    from rewards.spec import DEFAULT_REWARD_TIMEOUT_S

    assert RewardSpec(name="x").timeout_s == DEFAULT_REWARD_TIMEOUT_S == 600.0
