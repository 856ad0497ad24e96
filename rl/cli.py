"""`nativerl` command line: train, validate, export, eval, compare, rescore, serve-rewards."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="RL post-training for native image generators (AR image tokens + diffusion renderer).")
console = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _load(recipe: Path, overrides: list[str]):
    from rl.recipe import RecipeError, load_recipe

    try:
        return load_recipe(recipe, overrides)
    except RecipeError as exc:
        _fail(str(exc))


def _check_reward_name(name: str) -> None:
    """Resolve a reward name without building it (building may load large weights)."""
    import difflib

    from rewards.registry import BUILTIN_REWARDS, _import

    if ":" in name:
        _import(name)
        return
    base = name.split("@", 1)[0]
    if base not in BUILTIN_REWARDS:
        close = difflib.get_close_matches(base, BUILTIN_REWARDS, n=1)
        raise ValueError(f"unknown reward {name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))


@app.command()
def validate(recipe: Path, set_: List[str] = typer.Option([], "--set", help="Override a field: a.b=value")) -> None:
    """Check a recipe (keys, types, reward names, prompt file) without running it."""
    r = _load(recipe, set_)
    from rollouts.prompt_sets import PromptSetError, load_prompt_rows

    problems = []
    for spec in r.rewards:
        try:
            _check_reward_name(spec.name)
        except ValueError as exc:
            problems.append(f"rewards: {exc}")
    try:
        rows = load_prompt_rows(r.rollout.prompts, recipe.parent)
    except (PromptSetError, ImportError) as exc:
        problems.append(f"rollout.prompts: {exc}")
        rows = []
    if problems:
        _fail(f"{recipe}:\n  " + "\n  ".join(problems))
    console.print(f"[green]ok[/] {recipe}: {r.mode}, model {r.model.source}:{r.model.preset if r.model.source == 'preset' else r.model.path}, "
                  f"{len(r.rewards)} reward(s), {len(rows)} prompts", highlight=False)


@app.command()
def train(
    recipe: Optional[Path] = typer.Argument(None, help="Recipe YAML (omit with --resume)."),
    set_: List[str] = typer.Option([], "--set", help="Override a field: a.b=value (repeatable)."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Default: runs/<recipe name>."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this directory."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster ('auto' after ray start)."),
    no_progress: bool = typer.Option(False, "--no-progress"),
) -> None:
    """Run a recipe (GRPO or SFT), writing config.yaml, metrics.jsonl, tensorboard, samples/ and checkpoints/."""
    if resume is not None:
        config = resume / "config.yaml"
        if not config.is_file():
            _fail(f"--resume {resume}: no config.yaml there (is it a run directory?)")
        r = _load(config, set_)
        run_dir, recipe_dir = resume, (recipe.parent if recipe else Path.cwd())
    else:
        if recipe is None:
            _fail("give a RECIPE, or --resume RUN_DIR")
        r = _load(recipe, set_)
        run_dir = run_dir or Path("runs") / r.name
        recipe_dir = recipe.parent
        if (run_dir / "metrics.jsonl").exists():
            _fail(f"{run_dir} already holds a run; use --resume {run_dir} or another --run-dir")
    if ray_address:
        os.environ["RAY_ADDRESS"] = ray_address
    if r.mode == "sft":
        from rl.sft import run_sft_recipe

        run_sft_recipe(r, run_dir, progress=not no_progress)
        return
    from rl.train_loop import train as run_train

    result = run_train(r, run_dir, recipe_dir=recipe_dir, resume=resume is not None, progress=not no_progress)
    console.print(f"[green]done[/] {result.steps} steps → {run_dir}", highlight=False)
    if result.eval_before and result.eval_after:
        from rl.evaluate import format_eval_table

        table = format_eval_table(result.eval_before, result.eval_after, names=("before", "after"))
        (run_dir / "eval_before_after.md").write_text(table)
        print("\nHeld-out evaluation (fixed prompts and seeds):\n" + table)
    from rl.curves import plot_reward_curve

    png = plot_reward_curve(run_dir)
    console.print(f"reward curve: {png}", highlight=False)


@app.command()
def export(run_dir: Path, out: Path = typer.Option(..., "--out"),
           step: Optional[int] = typer.Option(None, "--step", help="Default: the latest checkpoint.")) -> None:
    """Write a merged model (BLIP3o-NEXT layout) that the generator loader can load."""
    from rl.export import export_checkpoint

    try:
        path = export_checkpoint(run_dir, out, step)
    except FileNotFoundError as exc:
        _fail(str(exc))
    console.print(f"[green]exported[/] {path}", highlight=False)


@app.command("serve-rewards")
def serve_rewards(recipe: Path, port: int = typer.Option(8765, "--port"),
                  host: str = typer.Option("127.0.0.1", "--host"),
                  max_request_mb: float = typer.Option(64.0, "--max-request-mb"),
                  timeout_s: float = typer.Option(120.0, "--timeout-s")) -> None:
    """Serve the recipe's rewards over HTTP (JSON + PNG; loopback by default)."""
    r = _load(recipe, [])
    from rewards.server import serve_from_recipe_rewards

    serve_from_recipe_rewards(r.rewards, host=host, port=port, max_request_bytes=int(max_request_mb * 2**20),
                              request_timeout_s=timeout_s)


def main() -> None:  # pragma: no cover
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":  # `python -m rl.cli`
    main()
