"""The typed recipe: one YAML file says *what* to run; `rl/train_loop.py` says *how*.

Every section is a pydantic model with `extra="forbid"`, so a misspelt key is an error that names the key, the
file and the closest valid key. Field names follow TRL's `GRPOConfig` where one exists (`num_generations`, `beta`,
`epsilon`, `loss_type`, `scale_rewards`, ...). Defaults are BLIP3o-NEXT's GRPO values (shared notes,
blip3o-next.md §2) unless a comment says otherwise.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from prompts.coco_prompts import CocoPromptOptions
from rewards.spec import RewardSpec
from rl.monitors.config import MonitorsConfig
from rl.strict_yaml import StrictYAMLError, load_yaml
from rollouts.config import ModelConfig, RendererConfig, SamplingConfig


class Section(BaseModel):
    # allow_inf_nan=False: `learning_rate: .inf` (or nan) is a validation error, never a run that trains on it.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def known_prompt_formats() -> list[str]:
    """The registry's formats (prompts/formats.py), the worlds' included."""
    from prompts.formats import known_prompt_formats as known

    return known()


class PromptSource(Section):
    """Where a step's prompts come from."""

    format: str = Field(
        "shapes", description="geneval_jsonl: GenEval/Flow-GRPO metadata; ocr_txt: one prompt a line with the "
        "target in double quotes; jsonl: rows with at least 'prompt'; inline: the `prompts` list below; "
        "coco_generated: GenEval-style rows generated from the 80 COCO classes (`coco` below, "
        "prompts/coco_prompts.py); edit_jsonl: editing rows {instruction, reference_image} "
        "(prompts/edit_prompts.py); or a world's format (worlds/*/__init__.py): shapes, the embedded shapes "
        "world; shapes_edit, the shapes world's editing rows.")
    path: str | None = Field(None, description="File for geneval_jsonl / ocr_txt / jsonl / edit_jsonl. Relative paths are "
                             "resolved against the recipe's folder, then the current directory.")
    split: Literal["train", "heldout"] = Field("train", description="For a world's format (shapes, shapes_edit).")
    prompts: list[str] = Field(default_factory=list, description="For format=inline.")
    shuffle: bool = Field(True, description="Shuffle once per epoch with the run seed (the position is checkpointed).")
    coco: CocoPromptOptions = Field(default_factory=CocoPromptOptions, description="For format=coco_generated.")
    max_prompt_chars: int = Field(4096, ge=1, description="Longer prompts are refused when the prompts are loaded "
                                  "(and by `nativerl validate`); GenEval and OCR prompts are under 300.")

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        known = known_prompt_formats()
        if value not in known:
            close = difflib.get_close_matches(value, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown prompt format {value!r}{hint}; formats: {known}")
        return value


class PromptPriority(Section):
    floor: float = Field(0.25, gt=0, description="Draw weight of a row without reward spread (solved or stuck), "
                         "as a fraction of the mean spread: such rows come back at about this rate.")
    memory: float = Field(0.5, gt=0, le=1, description="Weight of a row's newest group spread in its running mean.")


class RolloutConfig(Section):
    prompts: PromptSource = Field(default_factory=PromptSource)
    prompts_per_step: int = Field(1, ge=1, description="Prompt groups per step. BLIP3o-NEXT: 1 per GPU (16 or 32 "
                                  "GPUs in the released runs).")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    renderer: RendererConfig = Field(default_factory=RendererConfig)
    engine: Literal["local", "ray"] = Field("local", description="local: in-process; ray: rollout and reward actors.")
    num_rollout_workers: int = Field(1, ge=1, description="Ray rollout actors (engine=ray).")
    worker_num_gpus: float = Field(0.0, ge=0, description="GPUs per Ray rollout actor (1 in production).")
    max_staleness: int = Field(0, ge=0, description="Policy versions a rollout may lag behind (0 = on-policy).")
    worker_timeout_s: float = Field(600.0, gt=0, description="A rollout actor slower than this (or one that does "
                                    "not start within it) is restarted / reported.")
    groups_per_shard: int | None = Field(None, ge=1, description="Prompt groups per actor call (engine=ray); None "
                                         "= one shard per actor (largest batches).")
    reward_num_gpus: float = Field(0.0, ge=0, description="GPUs per Ray reward actor.")
    worker_num_cpus: float = Field(1.0, gt=0, description="CPUs per Ray rollout actor.")
    reward_num_cpus: float = Field(1.0, gt=0, description="CPUs per Ray reward actor.")
    trainer_num_gpus: float = Field(0.0, ge=0, description="GPUs reserved for the trainer's placement group.")
    rest_solved_at: float | None = Field(
        None, description="Rest solved prompts: a prompt whose whole group scored this combined reward or more, all "
        "samples equal (no advantage, nothing to learn), skips its next turn in the prompt order, so the steps go "
        "to prompts that still teach. None = off. With GenEval's partial-credit score, 1.0 = every sample right.")

    prompt_priority: PromptPriority | None = Field(
        None, description="Serve prompts by how much they still teach (prompts/prompt_priority.py): after one "
        "epoch, rows are drawn with weight = their groups' running reward spread + floor x the mean spread. "
        "None = plain shuffled epochs.")

    @model_validator(mode="after")
    def _check_resting(self) -> RolloutConfig:
        for name in ("rest_solved_at", "prompt_priority"):
            if getattr(self, name) is not None and self.max_staleness > 0:
                raise ValueError(f"rollout.{name} needs on-policy rollouts (max_staleness: 0): the next step's "
                                 "prompts are drawn before this step's groups are scored")
        if self.rest_solved_at is not None and self.prompt_priority is not None:
            raise ValueError("rollout.rest_solved_at and rollout.prompt_priority both choose the next prompts; "
                             "set one of them (prompt_priority already draws solved rows less often)")
        return self


class LoraSettings(Section):
    r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Attention and MLP projections of the Qwen3 LM.")


class TrainerConfig(Section):
    """GRPO on the AR image tokens. Names as TRL's GRPOConfig; values as BLIP3o-NEXT's GRPO runs."""

    num_generations: int = Field(16, ge=2, description="Group size G (samples per prompt). BLIP3o-NEXT: 16.")
    max_steps: int = Field(400, ge=1, description="GRPO steps. BLIP3o-NEXT: 400 (GenEval), 900 (OCR).")
    beta: float = Field(0.001, ge=0, description="k3 KL coefficient to the reference. BLIP3o-NEXT: 0.001.")
    epsilon: float = Field(0.2, gt=0, description="Lower clip range of the ratio.")
    epsilon_high: float | None = Field(None, gt=0, description="Upper clip range; None = epsilon (DAPO uses 0.28).")
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = Field("bnpo", description="BLIP3o-NEXT: bnpo.")
    use_bias_correction_kl: bool = Field(False, description="Multiply the k3 KL by the importance ratio (TRL 1.16 "
                                         "default True); BLIP3o-NEXT's TRL 0.21 had no such term.")
    importance_sampling_level: Literal["token", "sequence"] = Field("token", description="sequence = GSPO.")
    scale_rewards: Literal["group", "batch", "none"] = Field("group", description="none = Dr.GRPO.")
    advantage_epsilon: float = Field(1e-4, gt=0, description="std + eps in the advantage. BLIP3o-NEXT: 1e-4.")
    drop_zero_std_groups: bool = Field(False, description="Skip groups whose rewards are all equal.")
    reward_aggregation: Literal["weighted_sum", "advantage_sum"] = Field(
        "weighted_sum", description="weighted_sum: advantages of the weighted reward sum; advantage_sum: each "
        "reward normalised within its group, then summed with the weights (MixGRPO's advantage_aggr).")
    nonfinite_rewards: Literal["error", "drop"] = Field(
        "error", description="NaN/inf in a reward or advantage: refuse the step (error) or drop those samples.")
    nonfinite_update: Literal["error", "skip"] = Field(
        "error", description="NaN/inf loss or gradient norm in an optimizer step: stop the run naming the step and "
        "the value (error), or skip that optimizer step (skip: gradients dropped, optimizer state untouched, "
        "counted in the metric `nonfinite_updates`). Either way the weights never see it.")
    behaviour_correction: Literal["none", "tis"] = Field(
        "none", description="Correct for the sampler's distribution (top-k/top-p truncated, other precision or "
        "engine) differing from the trained one: tis = truncated importance sampling, the surrogate of each token "
        "weighted by min(π_old / π_sampler, cap) (Yao et al. 2025; TRL's vllm_importance_sampling_correction).")
    behaviour_correction_cap: float = Field(3.0, gt=0, description="C of tis (TRL 1.16 default 3.0).")
    spatial_credit: float = Field(0.0, ge=0, le=1, description="λ: move this fraction of each sample's advantage "
                                  "onto the image tokens inside the boxes a structured reward judged (GenEval "
                                  "detections; rl/grpo.py §2b). 0 = plain GRPO.")
    spatial_credit_reward: str | None = Field(None, description="Reward key whose details give the boxes; None = "
                                              "the first reward that reports `credit_boxes`.")
    conditioning_anchor: float = Field(0.0, ge=0, description="α of the conditioning anchor (rl/grpo.py §4): adds "
                                       "α · ‖h − h_ref‖² / ‖h_ref‖² of the hidden states the frozen renderer reads "
                                       "to the loss, so a body update cannot repaint the same tokens. 0 = off "
                                       "(BLIP3o-NEXT).")
    num_iterations: int = Field(1, ge=1, description="μ: updates per rollout batch. BLIP3o-NEXT: 1.")
    mini_batch_size: int | None = Field(None, ge=1, description="Samples per optimizer step; None = the whole "
                                        "rollout batch (one on-policy step per iteration).")
    micro_batch_size: int = Field(8, ge=1, description="Samples per forward/backward (gradient accumulation).")
    learning_rate: float = Field(1e-6, gt=0, description="BLIP3o-NEXT: 1e-6 (OCR), 5e-6 (GenEval).")
    lr_scheduler_type: Literal["constant", "cosine"] = Field("cosine", description="BLIP3o-NEXT: cosine.")
    lr_schedule_steps: int | None = Field(None, ge=1, description="GRPO steps the cosine spans (its horizon), "
                                          "independent of max_steps; None = max_steps. A run stopped early, as "
                                          "BLIP3o-NEXT's (cosine over TRL's 3 epochs, stopped at 400/900 steps), "
                                          "sets the longer horizon here or via lr_schedule_epochs.")
    lr_schedule_epochs: float | None = Field(None, gt=0, description="The horizon in passes over the training "
                                             "prompts, as TRL's num_train_epochs: floor(epochs x prompts / "
                                             "prompts_per_step) steps, computed when the run starts. BLIP3o-NEXT: "
                                             "3 (TRL default). Exclusive with lr_schedule_steps.")
    warmup_steps: int = Field(0, ge=0, description="BLIP3o-NEXT: 0.")
    weight_decay: float = Field(0.0, ge=0, description="BLIP3o-NEXT: 0.")
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0, description="BLIP3o-NEXT: 1.0.")
    policy: Literal["lora", "full"] = Field("full", description="BLIP3o-NEXT: full weights.")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    gradient_checkpointing: bool = Field(False)
    distributed_strategy: Literal["ddp", "fsdp2"] = Field(
        "ddp", description="Under torchrun: ddp (LoRA or full) or fsdp2 (full weights sharded per decoder layer).")
    bf16: Literal["auto", "on", "off"] = Field(
        "auto", description="The LM's compute precision (sampler, trainer and reference alike, rl/policy.py): on = "
        "bf16 autocast, off = fp32, auto = bf16 on GPU or when model.dtype is bf16, else fp32. Trained parameters are "
        "fp32 master weights in every case.")

    @field_validator("bf16", mode="before")
    @classmethod
    def _yaml_on_off(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `on` / `off` as true / false.
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


    @model_validator(mode="after")
    def _check_horizon(self) -> TrainerConfig:
        if self.lr_schedule_steps is not None and self.lr_schedule_epochs is not None:
            raise ValueError("trainer: set lr_schedule_steps or lr_schedule_epochs, not both")
        if self.lr_schedule_steps is not None and self.lr_schedule_steps < self.max_steps:
            raise ValueError(f"trainer.lr_schedule_steps = {self.lr_schedule_steps} is below max_steps = "
                             f"{self.max_steps}: past its horizon the cosine would rise again")
        return self


class LoggingConfig(Section):
    sample_every: int = Field(10, ge=0, description="Write a sample grid every N steps (0 = never).")
    sample_count: int = Field(8, ge=1, description="Images per sample grid.")
    tensorboard: bool = True
    wandb: bool = Field(False, description="Off by default; needs the wandb package.")
    wandb_project: str = "nativerl"
    archive_every: int = Field(0, ge=0, description="Keep every k-th step's rollouts in archive/ (0 = never).")


class CheckpointConfig(Section):
    every: int = Field(50, ge=0, description="Checkpoint every N steps (0 = only at the end). BLIP3o-NEXT: 50.")
    keep_last: int | None = Field(3, ge=1, description="Checkpoints kept; None keeps all.")


class EvalConfig(Section):
    every: int = Field(0, ge=0, description="Evaluate every K steps (0 = never during training).")
    prompts: PromptSource | None = Field(None, description="Held-out prompts; None = no eval.")
    num_prompts: int | None = Field(None, ge=1, description="Use the first N held-out prompts.")
    seeds: int = Field(1, ge=1, description="Fixed seeds per prompt.")
    before_and_after: bool = Field(False, description="Evaluate before the first and after the last step.")


class Recipe(Section):
    """A whole run."""

    name: str = "run"
    seed: int = 0
    torch_threads: int | None = Field(None, ge=1, description="CPU threads for torch in the driver (None = torch's "
                                      "default). Tiny models run fastest on 1, and far faster than on 2 when "
                                      "another process holds a core.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    rewards: list[RewardSpec] = Field(default_factory=list)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    monitors: MonitorsConfig = Field(default_factory=MonitorsConfig, description="The monitors (rl/monitors/): "
                                     "gold versus proxy (off by default), metric rules, drift, health guards.")

    @model_validator(mode="after")
    def _check(self) -> Recipe:
        if not self.rewards:
            raise ValueError("rewards: a GRPO recipe needs at least one reward")
        keys = [s.key for s in self.rewards]  # the same reward twice is fine when each has its own `alias`
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise ValueError(f"rewards: {dupes} listed twice; give each its own `alias:` (the key of its scores, "
                             "weight and metrics), e.g. alias: ocr_server")
        return self


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the file and the key."""


def _model_for_path(loc: tuple[Any, ...], root: type[BaseModel]) -> type[BaseModel] | None:
    """The pydantic model that owns the last key of `loc`, walking the root model's fields."""
    model: Any = root
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return None
        model = _unwrap_model(field.annotation)
        if model is None:
            return None
    return model


def _unwrap_model(annotation: Any) -> type[BaseModel] | None:
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _unwrap_model(arg)
        if found is not None:
            return found
    return None


def _describe(err: ValidationError, source: str, root: type[BaseModel]) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc) or "<root>"
        if e["type"] == "extra_forbidden":
            owner = _model_for_path(loc, root)
            hint = ""
            if owner is not None:
                close = difflib.get_close_matches(str(loc[-1]), list(owner.model_fields), n=1, cutoff=0.5)
                if close:
                    hint = f" (did you mean '{'.'.join(str(p) for p in loc[:-1]) + '.' if len(loc) > 1 else ''}{close[0]}'?)"
            lines.append(f"{source}: unknown key '{key}'{hint}")
        else:
            lines.append(f"{source}: '{key}': {e['msg']}")
    return "\n".join(lines)


def _parse_value(text: str) -> Any:
    """`--set` values are YAML scalars/lists, so `0.1`, `true`, `[a, b]` and `null` mean what they look like."""
    return load_yaml(text, f"--set value {text!r}") if text != "" else ""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`--set a.b=value`; a numeric part indexes a list (`rewards.0.weight=2`). The result is validated with the
    rest of the recipe, so an override is typed and checked like a key written in the file."""
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"--set {item!r}: expected KEY=VALUE, e.g. trainer.beta=0.01")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node: Any = data
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            where = ".".join(parts[:depth]) or "the recipe"
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise RecipeError(f"--set {key}: '{where}' is a list of {len(node)}; '{part}' is not an index "
                                      f"(0..{len(node) - 1})")
                part = int(part)
                if last:
                    node[part] = _parse_value(value)
                else:
                    node = node[part]
                continue
            if not isinstance(node, dict):
                raise RecipeError(f"--set {key}: '{where}' is not a section")
            if last:
                node[part] = _parse_value(value)
            else:
                node = node.setdefault(part, {})
    return data


def recipe_kind(path: str | Path) -> str:
    """The recipe's `kind:` ('grpo' when it has none, or the file cannot be read: load_recipe reports that). The
    kinds and their schemas are one table, `rl.cli.recipe_kinds` (GRPO and the worlds' pre-training kinds)."""
    try:
        data = load_yaml(Path(path).read_text(), str(path)) or {}
    except (OSError, yaml.YAMLError):
        return "grpo"  # load_recipe reports the problem
    kind = data.get("kind") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) else "grpo"


REPO_ROOT = Path(__file__).resolve().parents[1]  # a checkout: the shipped recipes name committed files from here


def path_bases(recipe_dir: Path) -> list[Path]:
    """Where a relative path in a recipe is looked for, in order: the recipe's folder, the current directory, and the
    nativerl checkout (so a shipped recipe's `model.path: worlds/shapes/pretrained` works from any folder)."""
    bases = [recipe_dir.resolve(), Path.cwd().resolve()]
    if (REPO_ROOT / "recipes").is_dir():
        bases.append(REPO_ROOT)
    return list(dict.fromkeys(bases))


def _found(value: Any, bases: list[Path]) -> str | None:
    if not isinstance(value, str) or not value or value.startswith(("http://", "https://")):
        return None
    p = Path(value).expanduser()
    if p.is_absolute():
        return None
    for base in bases:
        if (base / p).exists():
            return str(base / p)
    return None


def _walk_option_paths(options: Any, bases: list[Path]) -> None:
    if not isinstance(options, dict):
        return
    for key, value in options.items():
        if isinstance(value, dict):
            _walk_option_paths(value, bases)
        elif isinstance(key, str) and (key.endswith(("path", "_dir")) or key == "weights"):
            options[key] = _found(value, bases) or value


def resolve_recipe_paths(data: dict[str, Any], recipe_dir: Path) -> dict[str, Any]:
    """Relative input paths of a GRPO recipe made absolute where the file exists (`path_bases` order), so a recipe
    runs from any folder and its run's config.yaml (resume, eval, export) names the same files. A path found
    nowhere is left as written: `validate` reports it. A user reward `module:function` gets `module_dir`, the
    folder its module was found in (the recipe's folder, then the current directory)."""
    bases = path_bases(recipe_dir)

    def fix(section: Any, *keys: str) -> None:
        if isinstance(section, dict):
            for k in keys:
                if k in section:
                    section[k] = _found(section[k], bases) or section[k]

    fix(data.get("model"), "path", "diffusion_path", "image_tokenizer")
    for section in ((data.get("rollout") or {}).get("prompts") if isinstance(data.get("rollout"), dict) else None,
                    (data.get("eval") or {}).get("prompts") if isinstance(data.get("eval"), dict) else None):
        if isinstance(section, dict):
            fix(section, "path")
            fix(section.get("coco"), "exclude_path")
    for spec in data.get("rewards") or []:
        if not isinstance(spec, dict):
            continue
        _walk_option_paths(spec.get("options"), bases)
        name = spec.get("name")
        if isinstance(name, str) and ":" in name and not spec.get("module_dir"):
            top = name.split(":", 1)[0].split(".")[0]
            for base in bases[:2]:  # the user's folders, not the checkout
                if (base / f"{top}.py").is_file() or (base / top).is_dir():
                    spec["module_dir"] = str(base)
                    break
    return data


def load_recipe(path: str | Path, overrides: list[str] | None = None, schema: type[BaseModel] | None = None) -> Any:
    """Read, override and validate a recipe against `schema` (default: Recipe). Every problem is a RecipeError
    naming the file and the key."""
    schema = schema or Recipe
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        data = load_yaml(path.read_text(), str(path)) or {}
    except StrictYAMLError as exc:  # its message names the file already
        raise RecipeError(str(exc)) from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping, got {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    if schema is not Recipe or data.get("kind") == "grpo":  # `kind:` picked the schema (rl.cli.recipe_kinds)
        data.pop("kind", None)
    if schema is Recipe:
        data = resolve_recipe_paths(data, path.parent)
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_describe(exc, str(path), schema)) from None


# Keys a resumed run may not change: the checkpoint's weights, optimizer state and prompt-stream position belong to
# the model, the policy shape, the group size, the seed and the prompt set the run started with.
RESUME_FROZEN = ("model", "seed", "rollout.prompts", "trainer.num_generations", "trainer.policy", "trainer.lora",
                 "trainer.distributed_strategy")


def resume_frozen(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUME_FROZEN)


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for k, v in data.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def recipe_changes(before: BaseModel, after: BaseModel) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (before, after)} for every resolved value that differs (lists compare as a whole)."""
    a, b = _flatten(before.model_dump(mode="json")), _flatten(after.model_dump(mode="json"))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def recipe_to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
