"""`nativerl` command line: train, validate, export, doctor, eval, compare, rescore, serve-rewards, make-prompts,
convert-ta-tok."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]},
                  help="RL post-training for native image generators (AR image tokens + diffusion renderer).")
console = Console(stderr=True, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"nativerl {version('nativerl')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            print("nativerl (not installed)")
        raise typer.Exit()


@app.callback()
def _main(show_version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                            help="Print the version and exit.")) -> None:
    """RL post-training for native image generators (AR image tokens + diffusion renderer)."""


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


# ---- recipe kinds: the one table ------------------------------------------------------------------------------
GRPO_KIND = "grpo"  # a recipe without `kind:`


def recipe_kinds() -> dict[str, Any]:
    """`kind:` → `worlds.RecipeKind` (config schema, runner, label): GRPO, and every world's own kinds (the shapes
    world's `sft`, the editing world's `shapes_edit_sft`; worlds/*/__init__.py). Every command dispatches on this."""
    import worlds

    # GRPO's runner takes more than (config, progress): `_train` calls it with the run folder and resume options.
    grpo = worlds.RecipeKind(schema="rl.recipe:Recipe", run="rl.train_loop:train", label="GRPO")
    return {GRPO_KIND: grpo, **worlds.contributions("recipe_kinds")}


def _load(recipe: Path, overrides: list[str], grpo_for: str | None = None) -> tuple[str, Any]:
    """(kind, config): the recipe validated against its kind's schema (`recipe_kinds`). With `grpo_for` (the
    option naming the recipe), anything but a GRPO recipe is an error."""
    import worlds
    from rl.recipe import RecipeError, load_recipe, recipe_kind

    kinds = recipe_kinds()
    kind = recipe_kind(recipe)
    if kind not in kinds:
        _fail(f"{recipe}: unknown kind {kind!r}; kinds: {sorted(kinds)} (GRPO when no kind is given)")
    try:
        config = load_recipe(recipe, overrides, worlds.load_object(kinds[kind].schema))
    except RecipeError as exc:
        _fail(str(exc))
    if grpo_for is not None and kind != GRPO_KIND:
        _fail(f"{grpo_for} {recipe}: a GRPO recipe is needed (this one is {type(config).__name__})")
    return kind, config


def _check_reward(spec) -> None:
    """Resolve a reward spec without building it (building may load large weights)."""
    from rewards.registry import check_reward

    problems = check_reward(spec)
    if problems:
        raise ValueError("; ".join(problems))


def _preflight_or_fail(r, recipe: Path, recipe_dir: Path | None, allow_missing_files: bool = False):
    """The checks that need no weights (rl/preflight.py) of a GRPO recipe; any problem ends the command here,
    before loading."""
    from rl.preflight import preflight

    found = preflight(r, recipe_dir)
    errors = found.errors(allow_missing_files)
    if errors:
        hint = ("\n  (checking a recipe before its weights are copied? nativerl validate --allow-missing-weights)"
                if found.missing_files and not allow_missing_files else "")
        _fail(f"{recipe}:\n  " + "\n  ".join(errors) + hint)
    return found


@app.command()
def validate(recipe: Path,
             set_: List[str] = typer.Option([], "--set", help="Override a field: a.b=value, list items by index "
                                            "(rewards.0.weight=2)."),
             allow_missing_weights: bool = typer.Option(False, "--allow-missing-weights", help="Report missing "
                                                        "model/reward files as warnings, not errors.")) -> None:
    """Check a recipe without loading weights: keys, types, rewards (module, signature, version, options),
    prompts, optional packages, local files. `train` runs the same checks first."""
    kind, r = _load(recipe, set_)
    if kind != GRPO_KIND:
        console.print(f"[green]ok[/] {recipe}: pre-training ({type(r).__name__})", highlight=False)
        return
    found = _preflight_or_fail(r, recipe, recipe.parent, allow_missing_weights)
    for message in found.missing_files:
        console.print(f"[yellow]warning[/]: {message}", highlight=False)
    model = r.model.preset if r.model.source == "preset" else r.model.path
    console.print(f"[green]ok[/] {recipe}: GRPO, model {r.model.source}:{model}, "
                  f"{len(r.rewards)} reward(s), {found.prompt_count} prompts", highlight=False)


@app.command()
def train(
    recipe: Optional[Path] = typer.Argument(None, help="Recipe YAML (omit with --resume)."),
    set_: List[str] = typer.Option([], "--set", help="Override a field: a.b=value, list items by index "
                                   "(rewards.0.weight=2); repeatable."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Default: runs/<recipe name>."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this directory."),
    resume_step: Optional[int] = typer.Option(None, "--resume-step", help="With --resume: start from this "
                                              "checkpoint instead of the latest (0 = from the start); later metrics "
                                              "are dropped, newer checkpoints moved to checkpoints/abandoned-*/."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster ('auto' after ray start)."),
    no_progress: bool = typer.Option(False, "--no-progress"),
) -> None:
    """Run a recipe (GRPO or SFT), writing config.yaml, metrics.jsonl, tensorboard, samples/ and checkpoints/."""
    from rl.interrupt import exit_on_signals

    with exit_on_signals():  # start-up and reports: a signal exits with 128 + signal (the loop stops gracefully)
        _train(recipe, set_, run_dir, resume, resume_step, ray_address, no_progress)


def _train(recipe: Optional[Path], set_: List[str], run_dir: Optional[Path], resume: Optional[Path],
           resume_step: Optional[int], ray_address: Optional[str], no_progress: bool) -> None:
    from rl.interrupt import exit_code

    if resume is not None:
        config = resume / "config.yaml"
        if not config.is_file():
            _fail(f"--resume {resume}: no config.yaml there (is it a run directory?)")
        _, r = _load(config, set_, grpo_for="--resume")
        run_dir, recipe_dir = resume, (recipe.parent if recipe else Path.cwd())
        _preflight_or_fail(r, config, recipe_dir)
    else:
        if recipe is None:
            _fail("give a RECIPE, or --resume RUN_DIR")
        kind, r = _load(recipe, set_)
        if kind != GRPO_KIND:  # a world's pre-training kind (kind: sft, shapes_edit_sft, ...)
            import worlds

            if run_dir is not None:
                r.output_dir = str(run_dir)
            entry = recipe_kinds()[kind]
            done = worlds.load_object(entry.run)(r, progress=not no_progress)
            console.print(f"[green]done[/] {entry.label} → {done}", highlight=False)
            return
        run_dir = run_dir or Path("runs") / r.name
        recipe_dir = recipe.parent
        _preflight_or_fail(r, recipe, recipe_dir)
        if (run_dir / "metrics.jsonl").exists():
            _fail(f"{run_dir} already holds a run; use --resume {run_dir} or another --run-dir")
    if ray_address:
        os.environ["RAY_ADDRESS"] = ray_address
    from rl.train_loop import train as run_train

    from rewards.suite import RewardFailure
    from rl.checkpoint import CheckpointWriteError
    from rl.grpo import NonFiniteRewardError
    from rl.metrics_log import MetricsWriteError
    from rl.recipe import RecipeError
    from rl.train_loop import CheckpointLoadError

    if resume_step is not None and resume is None:
        _fail("--resume-step needs --resume RUN_DIR")
    try:
        result = run_train(r, run_dir, recipe_dir=recipe_dir, resume=resume is not None, resume_step=resume_step,
                           progress=not no_progress)
    except (CheckpointLoadError, FileNotFoundError, RecipeError) as exc:
        _fail(str(exc))
    except (MetricsWriteError, CheckpointWriteError) as exc:  # a full disk: say so, not torch's "unexpected pos"
        _fail(str(exc), code=1)
    except (RewardFailure, NonFiniteRewardError) as exc:  # the step refused to train on bad rewards
        _fail(f"{type(exc).__name__}: {exc}", code=1)
    if result.interrupted_by:
        if int(os.environ.get("RANK", "0")) == 0:
            saved = ", checkpoint saved" if result.steps else " (nothing trained yet)"
            console.print(f"[yellow]{result.interrupted_by}[/]: stopped after step {result.steps}{saved}; "
                          f"continue with: nativerl train --resume {run_dir}", highlight=False)
        raise typer.Exit(exit_code(result.interrupted_by))
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
        return
    if result.stopped_by_monitor:
        console.print(f"[bold red]stopped by a monitor[/] after step {result.steps} → {run_dir}:\n"
                      f"{result.stopped_by_monitor}", highlight=False)
    else:
        console.print(f"[green]done[/] {result.steps} steps → {run_dir}", highlight=False)
    if result.warnings:
        console.print("[bold yellow]warnings during the run[/] (see monitor.log):\n" + "\n".join(
            f"- {w}" for w in result.warnings), highlight=False)
    if result.eval_before and result.eval_after:
        from rl.paired_eval import format_paired_table, paired_differences

        table = format_paired_table(paired_differences(result.eval_before, result.eval_after), ("before", "after"))
        (run_dir / "eval_before_after.md").write_text(table)
        print("\nHeld-out evaluation (fixed prompts and seeds):\n" + table)
    from rl.health_summary import learning_health_lines
    from rl.metrics_log import read_metrics

    health = learning_health_lines(read_metrics(run_dir))
    if health:
        (run_dir / "learning_health.md").write_text("\n".join(health) + "\n")
        print("\nLearning health:\n" + "\n".join(health))
    from rl.curves import plot_reward_curve

    png = plot_reward_curve(run_dir)
    console.print(f"reward curve: {png}", highlight=False)


@app.command()
def export(run_dir: Path, out: Path = typer.Option(..., "--out"),
           step: Optional[int] = typer.Option(None, "--step", help="Default: the latest checkpoint."),
           layout: str = typer.Option("transformers", "--layout", help="transformers: AutoModelForCausalLM loads "
                                      "the LM (model_type qwen3, other parts in a side file); blip3o: the released "
                                      "BLIP3o-NEXT model_type.")) -> None:
    """Write a merged model that the generator loader, and transformers' AutoModelForCausalLM, load."""
    from rl.export import export_checkpoint

    try:
        path = export_checkpoint(run_dir, out, step, layout=layout)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    console.print(f"[green]exported[/] {path}", highlight=False)


@app.command()
def doctor(
    checkpoint: Path = typer.Argument(..., help="A BLIP3o-NEXT checkpoint folder (released layout or exported)."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="Take model settings, sampling and renderer "
                                          "from this recipe (its model.path is replaced by CHECKPOINT)."),
    set_: List[str] = typer.Option([], "--set", help="Override a recipe field: a.b=value (repeatable)."),
    prompts: int = typer.Option(2, "--prompts", min=1, help="Prompts to compare on."),
    seed: int = typer.Option(0, "--seed"),
    device: Optional[str] = typer.Option(None, "--device", help="Default: the recipe's, else auto."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="auto | float32 | bfloat16 | float16."),
    diffusion_path: Optional[str] = typer.Option(None, "--diffusion-path", help="Local SANA diffusers folder."),
    image_tokenizer: Optional[str] = typer.Option(None, "--image-tokenizer", help="Edit models: ta_tok.pth."),
    tokens_per_image: Optional[int] = typer.Option(None, "--tokens-per-image", min=1, help="Default: the "
                                                   "checkpoint's (BLIP3o-NEXT: 729)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Render steps (default: the recipe's, 30)."),
    resolution: Optional[int] = typer.Option(None, "--resolution", help="Render size (default: native)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the two images (ours.png, upstream.png) here."),
) -> None:
    """Check a checkpoint before the first real job: load report, then our sampler/renderer next to upstream's
    way (HF generate + second forward, diffusion_decode) on the same tokens; one ok/differs line per check."""
    from rl.doctor import run_doctor

    r = None
    if recipe is not None:
        _, r = _load(recipe, set_, grpo_for="--recipe")
    try:
        checks = run_doctor(checkpoint, r, num_prompts=prompts, seed=seed, device=device, dtype=dtype,
                            diffusion_path=diffusion_path, image_tokenizer=image_tokenizer,
                            num_inference_steps=steps, resolution=resolution, tokens_per_image=tokens_per_image,
                            out_dir=out)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    failed = [c.name for c in checks if not c.ok]
    if failed:
        console.print(f"[bold red]{len(failed)} of {len(checks)} checks differ[/]", highlight=False)
        raise typer.Exit(1)
    console.print(f"[green]all {len(checks)} checks ok[/]", highlight=False)


@app.command("serve-rewards")
def serve_rewards(recipe: Path, port: int = typer.Option(8765, "--port"),
                  host: str = typer.Option("127.0.0.1", "--host"),
                  max_request_mb: float = typer.Option(64.0, "--max-request-mb"),
                  timeout_s: float = typer.Option(120.0, "--timeout-s"),
                  reference_root: Optional[Path] = typer.Option(None, "--reference-root", help="Let requests name "
                                                                "reference images under this folder (off by "
                                                                "default: the server reads no file a request "
                                                                "names).")) -> None:
    """Serve the recipe's rewards over HTTP (JSON + PNG; loopback by default)."""
    _, r = _load(recipe, [], grpo_for="serve-rewards")
    from rewards.server import serve_from_recipe_rewards

    try:
        serve_from_recipe_rewards(r.rewards, host=host, port=port, max_request_bytes=int(max_request_mb * 2**20),
                                  request_timeout_s=timeout_s, reference_root=reference_root)
    except ValueError as exc:
        _fail(str(exc))


@app.command("eval")
def eval_(
    target: Path = typer.Argument(..., help="A run directory (its latest checkpoint), a run's checkpoints/step-* "
                                  "folder, or an exported generator (nativerl export)."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="Prompt file (GenEval jsonl, OCR txt or jsonl)."),
    split: Optional[str] = typer.Option(None, "--split", help="Instead of --prompts: the recipe's own prompts, "
                                        "heldout (eval.prompts) or train."),
    seeds: Optional[int] = typer.Option(None, "--seeds", min=1, help="Fixed seeds per prompt (default 1, or "
                                        "eval.seeds with --split)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="geneval_jsonl | ocr_txt | jsonl (default: from the "
                                      "file)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Default: RUN_DIR/eval/<prompts>-step-N, or "
                                       "eval/<checkpoint>/<prompts>."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="For an exported generator: rewards, sampling, "
                                          "renderer."),
    reward: List[str] = typer.Option([], "--reward", help="Reward name or JSON spec; replaces the recipe's "
                                     "rewards (repeatable)."),
    set_: List[str] = typer.Option([], "--set", help="Override a recipe field: a.b=value (repeatable)."),
    num_prompts: Optional[int] = typer.Option(None, "--num-prompts", min=1, help="Only the first N prompts."),
    step: Optional[int] = typer.Option(None, "--step", help="For a run directory: this checkpoint step."),
) -> None:
    """Fixed prompts x fixed seeds: per-reward means and per-tag GenEval accuracy -> eval.json + eval.md."""
    from rewards.suite import RewardFailure
    from rl.eval_command import parse_reward_option, run_eval
    from rl.recipe import RecipeError
    from prompts.row_files import PromptSetError

    if fmt is not None and fmt not in ("geneval_jsonl", "ocr_txt", "jsonl"):
        _fail(f"--format {fmt!r}: expected geneval_jsonl, ocr_txt or jsonl")
    try:
        specs = [parse_reward_option(r) for r in reward] or None
        report = run_eval(target, prompts, seeds=seeds, fmt=fmt, out_dir=out, recipe_path=recipe, rewards=specs,
                          overrides=set_, num_prompts=num_prompts, step=step, split=split)
    except (FileNotFoundError, ValueError, RecipeError, PromptSetError) as exc:
        _fail(str(exc))
    except RewardFailure as exc:
        _fail(f"RewardFailure: {exc}", code=1)
    print((Path(report["out_dir"]) / "eval.md").read_text())
    console.print(f"[green]wrote[/] {report['out_dir']}/eval.json, eval.md", highlight=False)


@app.command()
def compare(
    run_dirs: List[Path] = typer.Argument(..., help="Run directories (finished or still running)."),
    out: Path = typer.Option(Path("compare"), "--out", help="Output folder for compare.png and compare.html."),
    steps: Optional[str] = typer.Option(None, "--steps", help="Sample-grid steps for the report, e.g. 10,50 "
                                        "(default: first and latest)."),
    metric: List[str] = typer.Option([], "--metric", help="Only these metrics or prefixes (repeatable), e.g. "
                                     "reward/ or kl."),
    alpha: float = typer.Option(0.3, "--smoothing", min=0.0, max=1.0, help="EMA weight of the newest value."),
) -> None:
    """Overlay reward / GenEval-tag / KL / entropy / monitor curves of runs, with bands across seeds."""
    from rl.compare import compare_runs

    try:
        wanted = [int(s) for s in steps.split(",") if s.strip()] if steps else None
    except ValueError:
        _fail(f"--steps {steps!r}: expected comma-separated integers, e.g. 10,50")
    try:
        result = compare_runs(run_dirs, out, steps=wanted, metrics=metric or None, alpha=alpha)
    except (FileNotFoundError, ValueError, TypeError) as exc:
        _fail(str(exc))
    for r in result.runs:
        state = "finished" if r.finished else "in progress"
        console.print(f"{r.path}: {r.name} seed {r.seed}, step {r.last_step}/{r.max_steps} ({state})",
                      highlight=False)
    from rl.compare import format_arm_table
    from rl.paired_eval import format_paired_table

    for label, group in result.groups.items():
        console.print(f"arm {label}: " + ", ".join(str(r.path) for r in group), highlight=False)
    for item in result.evals:
        print(f"\nHeld-out evaluation, {item['run']} vs {item['baseline']}:")
        if "arms" in item:
            print(format_arm_table(item["arms"], (item["baseline"], item["run"])))
        else:
            print(f"not comparable: {item['error']}" if "error" in item
                  else format_paired_table(item["rows"], ("baseline", "run")))
    console.print(f"[green]wrote[/] {result.png} and {result.html} ({len(result.keys)} panels)", highlight=False)


@app.command("compare-evals")
def compare_evals(
    baseline: Path = typer.Argument(..., help="An eval.json (nativerl eval) or a run directory (its "
                                    "eval_after.json)."),
    other: Path = typer.Argument(..., help="The same, evaluated on the same prompts and seeds."),
    resamples: int = typer.Option(4000, "--resamples", min=100, help="Bootstrap draws."),
) -> None:
    """Paired change between two held-out evaluations, with 95% bootstrap intervals over prompts."""
    from rl.paired_eval import format_paired_table, load_evaluation, paired_differences

    try:
        rows = paired_differences(load_evaluation(baseline), load_evaluation(other), resamples=resamples)
    except (OSError, ValueError) as exc:  # UnpairedEvaluations is a ValueError
        _fail(str(exc))
    print(format_paired_table(rows, (baseline.name, other.name)))


@app.command()
def rescore(
    run_dir: Path = typer.Argument(..., help="A run trained with logging.archive_every > 0."),
    reward: str = typer.Option(..., "--reward", help="Reward name, e.g. clipscore@cos or pkg.module:fn."),
    options: Optional[str] = typer.Option(None, "--options", help="Reward options as JSON, e.g. "
                                          "'{\"path\": \"checkpoints/clip\"}'."),
    alias: Optional[str] = typer.Option(None, "--alias", help="Key to store it under (default: the name)."),
    steps: Optional[str] = typer.Option(None, "--steps", help="Only these archived steps, e.g. 10,20."),
) -> None:
    """Score the archived rollout images with another reward; results go beside them and to rescored.jsonl."""
    import json

    from pydantic import ValidationError

    from rewards.spec import RewardSpec
    from rl.rescore import rescore_run

    try:
        opts = json.loads(options) if options else {}
        spec = RewardSpec(name=reward, options=opts, alias=alias)
        _check_reward(spec)
        wanted = [int(s) for s in steps.split(",") if s.strip()] if steps else None
        lines = rescore_run(run_dir, spec, steps=wanted)
    except json.JSONDecodeError as exc:
        _fail(f"--options: not valid JSON: {exc.msg}")
    except (FileNotFoundError, ValueError, ValidationError, RuntimeError) as exc:
        _fail(str(exc))
    key = spec.key
    for line in lines:
        console.print(f"step {line['step']}: {key} = {line[f'rescored/{key}/mean']:.4f}", highlight=False)
    console.print(f"[green]wrote[/] {run_dir}/archive/step-*/rescored/{key}.json and {run_dir}/rescored.jsonl",
                  highlight=False)


@app.command("make-prompts")
def make_prompts(
    out: Path = typer.Option(..., "--out", help="Output jsonl (GenEval / Flow-GRPO metadata format)."),
    n: int = typer.Option(5000, "--n", min=1, help="Number of prompts."),
    seed: int = typer.Option(0, "--seed"),
    tags: Optional[str] = typer.Option(None, "--tags", help="Comma-separated subset of the six GenEval tags."),
    exclude: Optional[Path] = typer.Option(None, "--exclude", help="A GenEval jsonl whose prompts are held out "
                                           "(e.g. GenEval's evaluation_metadata.jsonl)."),
    text_fraction: float = typer.Option(0.0, "--text-fraction", min=0.0, max=1.0,
                                        help="Fraction of rows given a quoted sign text (for an OCR reward)."),
) -> None:
    """Generate GenEval-style training prompts + metadata from the 80 COCO classes."""
    from prompts.coco_prompts import generate_geneval_prompts, write_jsonl
    from prompts.row_files import PromptSetError, load_jsonl
    from prompts.vocabulary import GENEVAL_TAGS

    try:
        excluded = [r["prompt"] for r in load_jsonl(exclude)] if exclude else []
        rows = generate_geneval_prompts(n, seed=seed, tags=tags.split(",") if tags else GENEVAL_TAGS,
                                        exclude_prompts=excluded, text_fraction=text_fraction)
    except (PromptSetError, ValueError) as exc:
        _fail(str(exc))
    write_jsonl(rows, out)
    counts = {t: sum(r["tag"] == t for r in rows) for t in GENEVAL_TAGS}
    console.print(f"[green]wrote[/] {len(rows)} prompts to {out}: "
                  + ", ".join(f"{t} {c}" for t, c in counts.items() if c), highlight=False)


@app.command("convert-ta-tok")
def convert_ta_tok_cmd(
    checkpoint: Path = typer.Argument(..., help="The released TA-Tok file (ta_tok.pth)."),
    out: Path = typer.Option(..., "--out", help="Folder to write (our image-tokenizer layout), e.g. "
                             "<blip3o-next checkpoint>/image_tokenizer."),
    encoder_config: Optional[Path] = typer.Option(None, "--encoder-config", help="Local SigLIP config folder or "
                                                  "config.json; needed only when the encoder width is not a "
                                                  "released SigLIP width."),
    allow_unsafe_pickle: bool = typer.Option(False, "--allow-unsafe-pickle", help="Load with weights_only=False "
                                             "(runs code from the file; only for files you trust)."),
) -> None:
    """Convert a released TA-Tok checkpoint into the image-tokenizer folder that editing rollouts load."""
    from rollouts.ta_tok_checkpoint import convert_ta_tok

    try:
        tok = convert_ta_tok(checkpoint, out, encoder_config=encoder_config, allow_unsafe_pickle=allow_unsafe_pickle)
    except (OSError, ValueError) as exc:
        _fail(str(exc))
    console.print(f"[green]wrote[/] {out}: {tok.num_codes} codes, {tok.tokens_per_image} tokens per "
                  f"{tok.config.image_size}px image, {tok.config.distance} nearest code", highlight=False)


def main() -> None:  # pragma: no cover
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":  # `python -m rl.cli`
    main()
