"""`nativerl doctor` on the tiny checkpoint of every released variant: it loads, compares our sampler and renderer
with upstream's way (HF generate + second forward, diffusion_decode) on the same tokens, prints one ok line per
check and exits 0; a deliberate mismatch (an off-by-one conditioning window in our path) is reported as differing
and exits 1."""

import pytest
from typer.testing import CliRunner

import rollouts.conditioning as conditioning
from rl.cli import app
from rollouts.tiny_release import VARIANTS, write_all

ARGS = ["--steps", "2", "--tokens-per-image", "16", "--device", "cpu", "--dtype", "float32"]
CHECKS = 6


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    return write_all(tmp_path_factory.mktemp("released"))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _doctor(rel, *extra):
    args = ["doctor", str(rel.checkpoint), *ARGS, *extra]
    if rel.image_tokenizer is not None:
        args += ["--image-tokenizer", str(rel.image_tokenizer)]
    return CliRunner().invoke(app, args)


def _check_lines(output):
    return [line for line in output.splitlines() if line.startswith(("ok ", "DIFFERS "))]


@pytest.mark.parametrize("variant", VARIANTS)
def test_doctor_passes_on_every_released_variant(releases, variant, tmp_path):
    # One variant runs with a reproduce-recipe: its model settings, sampling and renderer are used.
    extra = []
    if variant == "grpo-geneval":  # the recipe's diffusion_path is a placeholder: the user points it at theirs
        extra = ["--recipe", "recipes/blip3o_next_geneval.yaml", "--diffusion-path", str(releases[variant].diffusion)]
    res = _doctor(releases[variant], "--out", str(tmp_path), *extra)
    assert res.exit_code == 0, res.output
    lines = _check_lines(res.output)
    assert len(lines) == CHECKS and all(line.startswith("ok ") for line in lines), res.output
    assert "transformer: checkpoint shards (model.sana.*)" in res.output
    # upstream RL's sampling: the checkpoint's top-k/top-p (the recipe says source: checkpoint too)
    assert "source=checkpoint temperature=1.0 top_k=20 top_p=0.95" in res.output
    assert "tokens/s" in res.output and "images/s" in res.output
    assert (tmp_path / "ours.png").is_file() and (tmp_path / "upstream.png").is_file()
    if variant == "edit":
        assert "edit prompts" in res.output and "und_image_vae_as_noise_connector" in res.output


def test_doctor_reports_a_mismatch(releases, monkeypatch):
    def shifted(prompt_len, num_tokens):  # a window one position early (upstream's SFT had one shifted by ~3, #78)
        return slice(prompt_len - 2, prompt_len + num_tokens - 1)

    monkeypatch.setattr(conditioning, "conditioning_window", shifted)
    res = _doctor(releases["sft"])
    assert res.exit_code == 1, res.output
    differs = [line for line in _check_lines(res.output) if line.startswith("DIFFERS ")]
    assert any("hidden states on HF generate's tokens" in line and "differs by" in line for line in differs)
    assert any("log-probs on HF generate's tokens" in line for line in differs)
    assert "checks differ" in res.output
