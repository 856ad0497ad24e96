"""OCR reward: the Flow-GRPO formula on strings, and real OCR engines (rapidocr; tesseract when its binary is
installed) on text rendered with a TrueType font that ships with matplotlib."""

import shutil
import time
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from rewards.ocr import OCRError, OCRReward, extract_target, ocr_reward
from rewards.registry import build_reward
from rewards.spec import RewardSpec

REPO_ROOT = Path(__file__).resolve().parents[1]
OCR_TEST_PROMPTS = REPO_ROOT.parent / "shared" / "data" / "flowgrpo_ocr_test.txt"
PROMPT = 'A smartwatch on a wrist, the screen displaying "Step Goal Achieved" with a celebratory animation'


# ---- the formula ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("recognized, expected", [
    ("STEP GOAL ACHIEVED 10K", 1.0),  # substring rule: extra text is free
    ("Step Goa1 Achieved", 0.9375),  # one substitution over 16 characters
    ("Goal", 0.25),  # Levenshtein 12
    ("", 0.0),  # nothing read
])
def test_worked_examples(recognized, expected):
    assert ocr_reward(PROMPT, recognized) == pytest.approx(expected)


def test_normalisation_removes_only_spaces_and_case():
    assert ocr_reward('say "Hi There"', "hithere") == 1.0
    # a newline or a punctuation mark is not normalised away: one edit each
    assert ocr_reward('say "Hi There"', "hi\nthere") == pytest.approx(1 - 1 / 7)
    assert ocr_reward('say "Hi There"', "hithere!") == 1.0  # ... but a superstring still contains it
    assert ocr_reward('say "Hi, There"', "hithere") == pytest.approx(1 - 1 / 8)


def test_distance_is_capped_at_target_length():
    assert ocr_reward('say "abc"', "x" * 50) == 0.0


def test_target_is_first_double_quoted_text():
    assert extract_target('a "first" and a "second"') == "first"
    assert extract_target('an unclosed "quote here') == "quote here"  # same as prompt.split('"')[1]


def test_no_quote_prompt_needs_a_configured_fallback():
    prompt = "a shop sign that says 'OPEN' in neon"
    with pytest.raises(ValueError, match="no double-quoted target"):
        ocr_reward(prompt, "OPEN")
    assert ocr_reward(prompt, "OPEN", no_quote_fallback="single_quotes_then_prompt") == 1.0
    assert ocr_reward(prompt, "OPEN", no_quote_fallback="whole_prompt") < 0.2
    assert ocr_reward(prompt, prompt, no_quote_fallback="whole_prompt") == 1.0
    assert ocr_reward("no quotes at all", "no quotes at all", no_quote_fallback="single_quotes_then_prompt") == 1.0
    assert ocr_reward(prompt, "OPEN", no_quote_fallback="zero") == 0.0
    with pytest.raises(ValueError, match="no_quote_fallback"):
        ocr_reward(prompt, "OPEN", no_quote_fallback="ignore")


def test_empty_target():
    assert ocr_reward('a blank sign ""', "") == 1.0
    assert ocr_reward('a blank sign " "', "  ") == 1.0
    assert ocr_reward('a blank sign ""', "SALE") == 0.0


def test_unknown_version_is_rejected():
    with pytest.raises(ValueError, match="unknown ocr version"):
        ocr_reward(PROMPT, "x", version="v9")


def test_every_real_ocr_test_prompt_has_a_target():
    if not OCR_TEST_PROMPTS.is_file():
        pytest.skip(f"{OCR_TEST_PROMPTS} is absent")
    prompts = OCR_TEST_PROMPTS.read_text().splitlines()
    assert len(prompts) == 1018
    for prompt in prompts:
        target = extract_target(prompt)
        assert target.strip(), prompt
        assert ocr_reward(prompt, target) == 1.0


# ---- real engines ------------------------------------------------------------------------------------------------

FONT = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"


def render(text: str, size=(512, 512), font_size=44) -> np.ndarray:
    image = Image.new("RGB", size, "white")
    if text:
        draw = ImageDraw.Draw(image)
        font = ImageFont.truetype(str(FONT), font_size)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        xy = ((size[0] - (right - left)) // 2 - left, (size[1] - (bottom - top)) // 2 - top)
        draw.text(xy, text, fill=(20, 20, 20), font=font)
    return np.asarray(image)


@pytest.fixture(scope="module")
def rendered():
    return {"right": render("Step Goal Achieved"), "wrong": render("Coffee Shop"), "blank": render("")}


@pytest.fixture(scope="module")
def rapidocr_reward():
    return OCRReward(backend="rapidocr")


def check_engine(reward, rendered):
    images = [rendered["right"], rendered["wrong"], rendered["blank"]]
    out = reward(images, [PROMPT] * 3, [{}] * 3)
    right, wrong, blank = out.scores
    assert right >= 0.9, out.details[0]
    assert wrong < 0.5, out.details[1]
    assert blank == 0.0 and out.details[2]["recognized"] == ""
    assert all(d["ocr_seconds"] > 0 for d in out.details)
    return out


def test_rapidocr_right_wrong_blank(rapidocr_reward, rendered):
    out = check_engine(rapidocr_reward, rendered)
    assert out.scores[0] == 1.0  # DejaVu Sans at 44 px is read exactly
    assert out.details[0]["recognized"].replace(" ", "").lower() == "stepgoalachieved"


def test_rapidocr_one_typo_gives_expected_fraction(rapidocr_reward):
    out = rapidocr_reward([render("Step Gaol Achieved")], [PROMPT], [{}])
    assert out.scores[0] == pytest.approx(1 - 2 / 16)  # a transposition is two Levenshtein edits


def test_batched_and_single_calls_agree(rapidocr_reward, rendered):
    images = [rendered["right"], rendered["wrong"]]
    batched = rapidocr_reward(images, [PROMPT] * 2, [{}] * 2).scores
    single = [rapidocr_reward([im], [PROMPT], [{}]).scores[0] for im in images]
    assert batched == single


def test_ocr_failure_raises_naming_the_image(rapidocr_reward, rendered):
    bad = rendered["right"].astype(np.float32) / 255.0  # not uint8: the backend refuses it
    with pytest.raises(OCRError, match="image 1"):
        rapidocr_reward([rendered["right"], bad], [PROMPT] * 2, [{}] * 2)


def test_no_quote_prompt_fails_before_ocr_unless_fallback(rapidocr_reward, rendered):
    with pytest.raises(ValueError, match="no double-quoted target"):
        rapidocr_reward([rendered["right"]], ["a smartwatch"], [{}])


@pytest.mark.skipif(shutil.which("tesseract") is None,
                    reason="the tesseract binary is not installed (apt-get install tesseract-ocr tesseract-ocr-eng)")
def test_tesseract_right_wrong_blank(rendered):
    reward = OCRReward(backend="tesseract")
    assert reward.backend.name == "tesseract"
    check_engine(reward, rendered)


def test_paddleocr_adapter_reports_missing_package():
    pytest.importorskip("rapidocr")
    try:
        import paddleocr  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="needs the `paddleocr` package"):
            OCRReward(backend="paddleocr")
    else:
        pytest.skip("paddleocr is installed; the adapter is exercised by real use")


def test_registry_builds_ocr_with_its_tag(rendered):
    start = time.perf_counter()
    reward = build_reward(RewardSpec(name="ocr@flowgrpo", options={"no_quote_fallback": "zero"}))
    assert f"{reward.name}@{reward.version}" == "ocr@flowgrpo"
    assert reward([rendered["blank"]], ["no quotes"], [{}]).scores == [0.0]
    assert time.perf_counter() - start < 30
    with pytest.raises(ValueError, match="unknown OCR backend"):
        OCRReward(backend="easyocr")
