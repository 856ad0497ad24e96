"""The learning-health lines at the end of `nativerl train` (rl/health_summary.py): equal-reward groups split into
solved and stuck, entropy and diversity first against last, from the run's own metrics."""

from pathlib import Path

from typer.testing import CliRunner

from rl.cli import app
from rl.health_summary import learning_health_lines

ROOT = Path(__file__).resolve().parents[1]


def _rows(n, zero_std, solved=None):
    rows = []
    for step in range(1, n + 1):
        row = {"step": step, "zero_std_frac": zero_std(step), "entropy": 1.0 if step <= 10 else 0.25,
               "grad_norm": 0.5}
        if solved is not None:
            row["zero_std_frac/solved"] = solved(step)
        rows.append(row)
    return rows + [{"step": n, "eval/accuracy": 0.9}]  # an evaluation row carries no step metrics


def test_lines_split_equal_reward_groups_into_solved_and_stuck():
    rows = _rows(100, lambda s: 0.6 if s > 90 else 0.1, lambda s: 0.45 if s > 90 else 0.0)
    lines = learning_health_lines(rows)
    assert lines[0].startswith("- `zero_std_frac`") and "steps 91-100: 0.60" in lines[0]
    assert "solved (every sample right) 0.45" in lines[0] and "dead signal) 0.15" in lines[0]
    assert "entropy, first 10 → last 10 steps: 1.00 → 0.25" in lines[1]
    assert lines[-1] == "- `grad_norm`, steps 91-100: 0.50"


def test_without_geneval_correctness_there_is_no_split_and_no_steps_no_lines():
    lines = learning_health_lines(_rows(20, lambda s: 1.0))
    assert "steps 19-20: 1.00" in lines[0] and "solved" not in lines[0]
    assert learning_health_lines([{"step": 1, "eval/accuracy": 0.5}]) == []


def test_train_prints_and_writes_the_learning_health(tmp_path):
    run_dir, steps = tmp_path / "run", 3
    result = CliRunner().invoke(app, [
        "train", str(ROOT / "recipes" / "shapes_grpo.yaml"), "--run-dir", str(run_dir), "--no-progress",
        "--set", f"trainer.max_steps={steps}", "--set", "eval.before_and_after=false",
        "--set", "logging.sample_every=0"])
    assert result.exit_code == 0, result.output
    assert "Learning health:" in result.output and "of which solved (every sample right)" in result.output
    written = (run_dir / "learning_health.md").read_text()
    assert written.splitlines()[0] in result.output and f"steps {steps}-{steps}" in written
