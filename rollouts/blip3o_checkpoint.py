"""Load and save a `NativeImageGenerator` in the layout of the released BLIP3o-NEXT checkpoints.

Layout (upstream branch BLIP3o-NEXT: blip3o/model/blip3o_arch.py, language_model/blip3o_qwen*.py, shared notes):

    <dir>/config.json            Qwen3Config fields (transformers 4.5x `rope_theta` / `rope_scaling: null` read too)
                                 + model_type "blip3o_qwen*" + diffusion_name_or_path, image_start_tag_id
                                 (<im_start>), image_end_tag_id (<im_end>), image_start/end_token_id (<I0>, <I_K-1>),
                                 num_image_tokens (K: read from here, never from the tokenizer's length),
                                 scale_start_token_id (<S0>); we add a "nativerl" block (tokens_per_image,
                                 num_image_tokens, prompt_template). N (tokens per image) defaults to 729.
    <dir>/generation_config.json optional; kept on the generator (`rollout.sampling.source: checkpoint`)
    <dir>/model.safetensors      or model-0000i-of-0000n.safetensors + model.safetensors.index.json
                                 (pytorch_model*.bin also read). Keys:
                                   model.embed_tokens.* model.layers.* model.norm.* lm_head.* (absent when tied)
                                   model.diffusion_connector.{0,2,3}.*      (connector)
                                   model.sana.*, model.sana_vae.*           (renderer, optional in the shards)
                                   model.und_image_vae_connector.*          (editing: reference-latent connector,
                                                                             when config use_und_image_vae; our
                                                                             older model.vae_connector.* read too)
                                   model.und_image_vae_as_noise_connector.* (editing: unused upstream; skipped)
                                   model.vision_tower.*                     (TA-Tok encoder: skipped, see below)
    <dir>/image_tokenizer/       optional reference-image tokenizer (rollouts/image_tokenizer.py), for editing: our
                                 layout, or the released TA-Tok `ta_tok.pth` placed there as is
    <dir>/tokenizer*.json ...    the tokenizer with the image vocabulary (AutoTokenizer)
    <diffusion>/transformer/ vae/ scheduler/   diffusers folders, found by `resolve_diffusion_dir`:
                                 ModelConfig.diffusion_path, $NATIVERL_DIFFUSION_PATH, diffusion_name_or_path as a
                                 local path (absolute or relative to <dir>), a folder of the hub id's last name next
                                 to <dir>, the local Hugging Face cache. Released configs name a hub id
                                 (Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers): it is *not* inside <dir>.
                                 Our saver writes <dir>/diffusion/ and sets diffusion_name_or_path="diffusion".

Tiny checkpoints in each released variant's layout: rollouts/tiny_release.py.

`layout="transformers"` (what `nativerl export` writes) is the same folder readable by plain transformers:
config.json says model_type "qwen3" / Qwen3ForCausalLM, model*.safetensors hold the LM's keys only, and the parts
transformers does not know (connector, editing connector, renderer shards) go to the side file
`nativerl_parts.safetensors`, which this loader reads with the shards. So `AutoModelForCausalLM.from_pretrained`
loads the LM (no trust_remote_code, no unknown-type error) and `NativeImageGenerator.from_pretrained` the whole
generator.

It is unverified whether the released shards carry `model.sana.*` / `model.sana_vae.*`, so the loader accepts
both: diffusers folders give the classes and configs (and weights), shard keys, when present, override the
weights. `load_report` on the returned generator says which source each part came from. The TA-Tok vision tower
only encodes reference images (editing, SFT data); text-to-image rollouts never use it, so its keys are skipped
and listed in the report. Anything else that does not match raises `CheckpointMismatchError` listing the
missing and unexpected keys (and shape mismatches).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rollouts.config import ModelConfig, PromptTemplateConfig

CONFIG_NAME = "config.json"
PARTS_NAME = "nativerl_parts.safetensors"  # layout="transformers": the non-LM tensors, beside the LM's shards
DIFFUSION_SUBDIR = "diffusion"
MODEL_TYPES = ("blip3o_qwen", "blip3o_qwen_inference", "blip3o_qwen_grpo", "qwen3")
CONNECTOR = "model.diffusion_connector."
SANA = "model.sana."
SANA_VAE = "model.sana_vae."
# Editing (use_und_image_vae): reference latents → cross-attention tokens. Upstream's name (branch
# BLIP3o-NEXT-edit), which our saver writes too; older nativerl checkpoints used the second one.
VAE_CONNECTOR = "model.und_image_vae_connector."
VAE_CONNECTOR_ALIASES = (VAE_CONNECTOR, "model.vae_connector.")
# Skipped and listed in the load report: the TA-Tok encoder (the image tokenizer is loaded separately) and the edit
# branch's `und_image_vae_as_noise_connector`, which upstream builds and saves but never calls (its use is
# commented out: the reference latent is concatenated to the noise as is).
IGNORED_PREFIXES = ("model.vision_tower.", "model.und_image_vae_as_noise_connector.")
GENERATION_CONFIG_NAME = "generation_config.json"
DEFAULT_SANA_REPO = "Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers"  # the released configs' value
DIFFUSION_ENV = "NATIVERL_DIFFUSION_PATH"  # a local SANA diffusers folder, when no recipe/CLI value is given
IMAGE_TOKENIZER_SUBDIR = "image_tokenizer"  # optional: reference-image tokenizer (rollouts/image_tokenizer.py)
# Upstream edit-branch config flags (rollouts/reference_image.py).
EDIT_FLAGS = ("use_und_image_vae", "use_und_image_vae_as_noise")
# config.json fields that are not the LM's (upstream's extras and ours): kept out of Qwen3Config.
NATIVERL_KEYS = ("nativerl", "diffusion_name_or_path", "image_start_tag_id", "image_end_tag_id",
                 "image_start_token_id", "image_end_token_id", "scale_start_token_id", "scale_end_token_id",
                 "num_scale_tokens", "num_image_tokens", "num_new_tokens", "architectures", "model_type",
                 "transformers_version", "mm_vision_tower", "only_use_und_image_vae_as_noise") + EDIT_FLAGS


class CheckpointMismatchError(ValueError):
    """A checkpoint does not match the architecture: names the file/part and lists the offending keys."""

    def __init__(self, where: str, missing: list[str] = (), unexpected: list[str] = (),
                 shape_mismatch: list[str] = (), limit: int = 20):
        self.missing, self.unexpected, self.shape_mismatch = list(missing), list(unexpected), list(shape_mismatch)

        def block(title: str, keys: list[str]) -> str:
            if not keys:
                return ""
            more = f"\n    ... and {len(keys) - limit} more" if len(keys) > limit else ""
            return f"\n  {title} ({len(keys)}):\n    " + "\n    ".join(keys[:limit]) + more

        super().__init__(f"checkpoint {where} does not match the model"
                         + block("missing keys", self.missing) + block("unexpected keys", self.unexpected)
                         + block("shape mismatches", self.shape_mismatch))


# ---- reading --------------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: not a BLIP3o-NEXT checkpoint directory") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def _shard_files(directory: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = directory / index_name
        if index.exists():
            names = sorted(set(_read_json(index).get("weight_map", {}).values()))
            missing = [n for n in names if not (directory / n).exists()]
            if missing:
                raise FileNotFoundError(f"{index} names shard files that are missing: {missing}")
            return [directory / n for n in names]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (directory / single).exists():
            return [directory / single]
    raise FileNotFoundError(f"no model weights in {directory}: expected model.safetensors, "
                            "model.safetensors.index.json or pytorch_model.bin")


def read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    files = _shard_files(directory) + ([directory / PARTS_NAME] if (directory / PARTS_NAME).is_file() else [])
    for f in files:
        try:
            part = load_file(str(f)) if f.suffix == ".safetensors" else torch.load(f, map_location="cpu",
                                                                                   weights_only=True)
        except (SafetensorError, RuntimeError, OSError, EOFError) as e:
            raise ValueError(f"cannot read weight file {f}: {e}") from None
        state.update(part)
    return state


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], where: str,
                 allowed_missing: tuple[str, ...] = ()) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in state and k not in allowed_missing]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointMismatchError(where, missing, unexpected, shapes)
    module.load_state_dict(state, strict=False)


def _split(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    parts: dict[str, dict[str, torch.Tensor]] = {"lm": {}, "connector": {}, "sana": {}, "sana_vae": {},
                                                 "vae_connector": {}, "ignored": {}}
    for k, v in state.items():
        alias = next((a for a in VAE_CONNECTOR_ALIASES if k.startswith(a)), None)
        if alias is not None:
            parts["vae_connector"][k[len(alias):]] = v
        elif k.startswith(CONNECTOR):
            parts["connector"][k[len(CONNECTOR):]] = v
        elif k.startswith(SANA_VAE):
            parts["sana_vae"][k[len(SANA_VAE):]] = v
        elif k.startswith(SANA):
            parts["sana"][k[len(SANA):]] = v
        elif k.startswith(IGNORED_PREFIXES):
            parts["ignored"][k] = v
        else:
            parts["lm"][k] = v
    return parts


def _is_diffusers_folder(path: Path) -> bool:
    return (path / "transformer" / CONFIG_NAME).is_file()


def _hub_cache_snapshot(name: str) -> Path | None:
    """A hub id already in the local Hugging Face cache (e.g. after `huggingface-cli download`); never downloads."""
    if name.count("/") != 1 or Path(name).is_absolute():
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # not cached, or no huggingface_hub: just not a candidate
        return None


def resolve_diffusion_dir(directory: Path, config: dict[str, Any], override: str | None) -> tuple[Path, str]:
    """The SANA diffusers folder (transformer/, vae/, scheduler/) and where it was found.

    Released configs name a hub id (`diffusion_name_or_path: Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers`)
    and there is no hub access, so, in order: `model.diffusion_path` (recipe / `--diffusion-path`), the
    NATIVERL_DIFFUSION_PATH environment variable, `diffusion_name_or_path` as a local path (absolute or relative
    to the checkpoint), a folder named like the hub id's last part next to the checkpoint (the documented place:
    `checkpoints/SANA1.5_1.6B_1024px_diffusers` beside `checkpoints/BLIP3o-NEXT-SFT-3B`), then the local Hugging
    Face cache. An explicit value that is not a diffusers folder is an error (no silent fallback)."""
    import os

    explicit = [("model.diffusion_path", override), (f"${DIFFUSION_ENV}", os.environ.get(DIFFUSION_ENV))]
    for label, value in explicit:
        if value:
            path = Path(value).expanduser()
            if not _is_diffusers_folder(path):
                raise FileNotFoundError(f"{label} = {value} is not a local diffusers folder (no "
                                        f"{path / 'transformer' / CONFIG_NAME}); it must hold transformer/, vae/ "
                                        "and scheduler/ (e.g. a download of " + DEFAULT_SANA_REPO + ")")
            return path, label
    name = config.get("diffusion_name_or_path")
    looked: list[str] = []
    candidates: list[tuple[str, Path]] = []
    if name:
        candidates += [("diffusion_name_or_path", Path(name).expanduser()),
                       ("diffusion_name_or_path (relative to the checkpoint)", directory / name),
                       ("next to the checkpoint", directory.parent / Path(name).name)]
    for label, path in candidates:
        if _is_diffusers_folder(path):
            return path, f"{label}: {path}"
        looked.append(str(path))
    cached = _hub_cache_snapshot(name) if name else None
    if cached is not None and _is_diffusers_folder(cached):
        return cached, f"Hugging Face cache: {cached}"
    if name and name.count("/") == 1:
        looked.append(f"the Hugging Face cache for {name}")
    what = f"diffusion_name_or_path {name!r}" if name else "no diffusion_name_or_path"
    raise FileNotFoundError(
        f"no SANA diffusers folder for {directory} ({what} in {directory / CONFIG_NAME}). Looked at: "
        f"model.diffusion_path (not set), ${DIFFUSION_ENV} (not set)"
        + "".join(f", {p}" for p in looked)
        + ". Download the SANA folder once (e.g. huggingface-cli download "
        f"{name if name and name.count('/') == 1 else DEFAULT_SANA_REPO} --local-dir "
        f"{directory.parent / Path(name or DEFAULT_SANA_REPO).name}) or set model.diffusion_path; nothing is "
        "downloaded here")


def _num_image_tokens(config: dict[str, Any], directory: Path) -> tuple[int | None, str]:
    """K from config.json (ours, then upstream's num_image_tokens, then its <I0>/<I_last> ids), never from the
    tokenizer's length: a token added after the image vocabulary must not change K."""
    ours = config.get("nativerl", {}).get("num_image_tokens")
    values = {"nativerl.num_image_tokens": ours, "num_image_tokens": config.get("num_image_tokens")}
    if "image_start_token_id" in config and "image_end_token_id" in config:
        values["image_end_token_id - image_start_token_id + 1"] = (
            int(config["image_end_token_id"]) - int(config["image_start_token_id"]) + 1)
    given = {k: int(v) for k, v in values.items() if v is not None}
    if len(set(given.values())) > 1:
        raise ValueError(f"{directory / CONFIG_NAME}: the image-vocabulary size disagrees: "
                         + ", ".join(f"{k} = {v}" for k, v in given.items()))
    if given:
        key, value = next(iter(given.items()))
        return value, f"{key} = {value}"
    return None, "counted <I..> tokens in the tokenizer (config.json does not say)"


def _read_generation_config(directory: Path) -> dict[str, Any] | None:
    path = directory / GENERATION_CONFIG_NAME
    return _read_json(path) if path.is_file() else None


def _load_component(folder: Path):
    from rollouts.presets import resolve_component_class

    cfg = _read_json(folder / CONFIG_NAME)
    if "_class_name" not in cfg:
        raise ValueError(f"{folder / CONFIG_NAME} has no _class_name")
    cls = resolve_component_class(cfg["_class_name"])
    has_weights = any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))
    if has_weights:
        return cls.from_pretrained(str(folder)), "diffusers folder"
    return cls.from_config(cls.load_config(str(folder))), "config only (weights must come from the shards)"


def load_blip3o_checkpoint(path: str | Path, cfg: ModelConfig | None = None):
    """Build a `NativeImageGenerator` from a BLIP3o-NEXT-layout directory (fp32 load, then cfg dtype/device)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    from rollouts.connector import build_connector
    from rollouts.device import resolve_device, resolve_dtype
    from rollouts.generator import NativeImageGenerator
    from rollouts.renderer import Renderer
    from rollouts.vocab import ImageVocab

    cfg = cfg or ModelConfig(source="path", path=str(path))
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
    config = _read_json(directory / CONFIG_NAME)
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"{directory / CONFIG_NAME}: model_type {model_type!r} is not one of {MODEL_TYPES}")
    report: dict[str, Any] = {"source": str(directory), "model_type": model_type}

    # LM
    lm_kwargs = {k: v for k, v in config.items() if k not in NATIVERL_KEYS}
    if lm_kwargs.get("rope_scaling", 0) is None:  # transformers <= 4.5x wrote `rope_scaling: null` (= default rope)
        lm_kwargs.pop("rope_scaling")
    lm_cfg = Qwen3Config(**lm_kwargs)
    lm = Qwen3ForCausalLM(lm_cfg)
    parts = _split(read_state_dict(directory))
    tied = bool(getattr(lm_cfg, "tie_word_embeddings", False))
    _load_strict(lm, parts["lm"], f"{directory} (language model)", ("lm_head.weight",) if tied else ())
    if tied:
        lm.tie_weights()
    report["ignored_keys"] = sorted(parts["ignored"])

    # Renderer
    ddir, report["diffusion_found"] = resolve_diffusion_dir(directory, config, cfg.diffusion_path)
    transformer, report["transformer"] = _load_component(ddir / "transformer")
    vae, report["vae"] = _load_component(ddir / "vae")
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(str(ddir / "scheduler"))
    for name, module, part in (("transformer", transformer, "sana"), ("vae", vae, "sana_vae")):
        if parts[part]:
            _load_strict(module, parts[part], f"{directory} (model.{part}.*)")
            report[name] = f"checkpoint shards (model.{part}.*)"
        elif report[name].startswith("config only"):
            raise CheckpointMismatchError(f"{directory} ({name})", missing=[f"model.{part}.*"])
    connector = build_connector(lm_cfg.hidden_size, int(transformer.config.caption_channels))
    if not parts["connector"]:
        raise CheckpointMismatchError(f"{directory} (connector)",
                                      missing=[CONNECTOR + k for k in connector.state_dict()])
    _load_strict(connector, parts["connector"], f"{directory} (model.diffusion_connector.*)")
    report["diffusion_dir"] = str(ddir)

    # Tokenizer and vocabulary: config ids when present, checked against the tokenizer.
    # Given the LM config, the tokenizer loader does not read config.json (whose BLIP3o model_type it does not know).
    tokenizer = AutoTokenizer.from_pretrained(str(directory), config=lm_cfg)
    extra = config.get("nativerl", {})
    num_image_tokens, report["num_image_tokens"] = _num_image_tokens(config, directory)
    try:
        vocab = ImageVocab.from_tokenizer(tokenizer, num_image_tokens)
    except ValueError as e:
        raise ValueError(f"{directory}: the tokenizer does not match config.json ({report['num_image_tokens']}): "
                         f"{e}") from None
    after = tokenizer.convert_tokens_to_ids(f"<I{vocab.num_image_tokens}>")
    if after is not None and after != tokenizer.unk_token_id and after == vocab.image_id_range[1]:
        raise ValueError(f"{directory}: config.json says {report['num_image_tokens']} but the tokenizer's image "
                         f"vocabulary continues with <I{vocab.num_image_tokens}> (id {after}): the tokenizer and "
                         "config.json come from different checkpoints")
    for key, value in (("image_start_tag_id", vocab.im_start_id), ("image_start_token_id", vocab.image_token_offset),
                       ("scale_start_token_id", vocab.scale_ids[0]), ("image_end_tag_id", vocab.im_end_id),
                       ("image_end_token_id", vocab.image_token_offset + vocab.num_image_tokens - 1)):
        if key in config and int(config[key]) != value:
            raise ValueError(f"{directory / CONFIG_NAME}: {key}={config[key]} but the tokenizer says {value}")
    if vocab.image_token_offset + vocab.num_image_tokens > lm_cfg.vocab_size:
        raise ValueError(f"{directory}: image tokens end at id {vocab.image_token_offset + vocab.num_image_tokens}"
                         f" but the LM vocab_size is {lm_cfg.vocab_size}")
    tokens_per_image = cfg.tokens_per_image or extra.get("tokens_per_image", 729)
    template = cfg.prompt_template or (PromptTemplateConfig(**extra["prompt_template"]) if "prompt_template" in extra
                                       else PromptTemplateConfig())

    renderer = Renderer(connector, transformer, vae, scheduler)
    latent_tokens, concat_noise = (bool(config.get(f)) for f in EDIT_FLAGS)
    if latent_tokens or concat_noise or parts["vae_connector"]:
        from rollouts.reference_image import ReferenceConditionedRenderer, build_latent_connector

        latent_connector = None
        if latent_tokens:
            latent_connector = build_latent_connector(int(transformer.config.in_channels),
                                                      int(transformer.config.caption_channels))
            if not parts["vae_connector"]:
                raise CheckpointMismatchError(f"{directory} (use_und_image_vae)",
                                              missing=[VAE_CONNECTOR + k for k in latent_connector.state_dict()])
            _load_strict(latent_connector, parts["vae_connector"], f"{directory} ({VAE_CONNECTOR}*)")
        elif parts["vae_connector"]:
            raise CheckpointMismatchError(f"{directory} (use_und_image_vae is off)",
                                          unexpected=[VAE_CONNECTOR + k for k in parts["vae_connector"]])
        renderer = ReferenceConditionedRenderer(connector, transformer, vae, scheduler,
                                                latent_connector=latent_connector, concat_noise=concat_noise)
        report["reference_latents"] = {"latent_tokens": latent_tokens, "concat_noise": concat_noise}
    image_tokenizer, edit_template = None, None
    tokenizer_dir = directory / IMAGE_TOKENIZER_SUBDIR
    if (tokenizer_dir / CONFIG_NAME).is_file() or (tokenizer_dir / "ta_tok.pth").is_file():
        from rollouts.image_tokenizer_loading import load_image_tokenizer

        image_tokenizer = load_image_tokenizer(directory / IMAGE_TOKENIZER_SUBDIR)
        report["image_tokenizer"] = f"{directory / IMAGE_TOKENIZER_SUBDIR} ({type(image_tokenizer).__name__})"
    if "edit_template" in extra:
        from rollouts.reference_image import EditTemplateConfig

        edit_template = EditTemplateConfig(**extra["edit_template"])

    gen = NativeImageGenerator(lm, tokenizer, vocab, renderer, tokens_per_image, template,
                               image_tokenizer=image_tokenizer, edit_template=edit_template)
    gen.generation_config = _read_generation_config(directory)
    report["generation_config"] = (f"{GENERATION_CONFIG_NAME}: " + ", ".join(
        f"{k}={gen.generation_config[k]}" for k in ("do_sample", "temperature", "top_k", "top_p")
        if k in gen.generation_config)) if gen.generation_config is not None else "none"
    gen.load_report = report
    device = resolve_device(cfg.device)
    return gen.to(device=device, dtype=resolve_dtype(cfg.dtype, device))


# ---- writing --------------------------------------------------------------------------------------------------
def save_shards(state: dict[str, torch.Tensor], directory: Path, max_shard_bytes: int) -> None:
    from safetensors.torch import save_file

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k in sorted(state):
        t = state[k]
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = t
        size += n
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(directory / "model.safetensors"), metadata=meta)
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / name), metadata=meta)
        weight_map.update({k: name for k in shard})
    total = sum(t.numel() * t.element_size() for t in state.values())
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def save_blip3o_checkpoint(gen, directory: str | Path, *, renderer_in_shards: bool = False,
                           max_shard_bytes: int = 4 * 1024**3, layout: str = "blip3o") -> None:
    """Write `gen` in the BLIP3o-NEXT layout (LoRA-wrapped LMs: merge the adapters first); `layout="transformers"`
    writes it so that plain transformers loads the LM too (module docstring)."""
    if layout not in ("blip3o", "transformers"):
        raise ValueError(f"layout {layout!r}: expected 'blip3o' or 'transformers'")
    from rollouts.lm_parts import unwrap_peft

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lm = unwrap_peft(gen.lm)
    if any("lora_" in k for k in lm.state_dict()):
        raise ValueError("the LM still carries LoRA adapters: merge them (merge_and_unload) before saving")
    renderer = gen.renderer
    lm_state = lm.state_dict()
    tied = bool(getattr(lm.config, "tie_word_embeddings", False))
    if tied:
        lm_state.pop("lm_head.weight", None)  # HF omits tied weights; safetensors refuses shared storage
    state = {k: v.detach().cpu().contiguous() for k, v in lm_state.items()}
    state.update({CONNECTOR + k: v.detach().cpu().contiguous() for k, v in renderer.connector.state_dict().items()})
    latent_connector = getattr(renderer, "latent_connector", None)
    if latent_connector is not None:
        state.update({VAE_CONNECTOR + k: v.detach().cpu().contiguous()
                      for k, v in latent_connector.state_dict().items()})
    if renderer_in_shards:
        state.update({SANA + k: v.detach().cpu().contiguous() for k, v in renderer.transformer.state_dict().items()})
        state.update({SANA_VAE + k: v.detach().cpu().contiguous() for k, v in renderer.vae.state_dict().items()})
    if layout == "transformers":
        from safetensors.torch import save_file

        parts = {k: v for k, v in state.items() if k.startswith((CONNECTOR, VAE_CONNECTOR, SANA, SANA_VAE))}
        state = {k: v for k, v in state.items() if k not in parts}
        save_file(parts, str(directory / PARTS_NAME), metadata={"format": "pt"})
    save_shards(state, directory, max_shard_bytes)

    config = lm.config.to_dict()
    plain = layout == "transformers"
    config.update({
        "model_type": "qwen3" if plain else "blip3o_qwen_inference",
        "architectures": ["Qwen3ForCausalLM" if plain else "blip3oQwenForInferenceLM"],
        "diffusion_name_or_path": DIFFUSION_SUBDIR,
        "image_start_tag_id": gen.vocab.im_start_id,
        "image_end_tag_id": gen.vocab.im_end_id,
        "image_start_token_id": gen.vocab.image_token_offset,
        "scale_start_token_id": gen.vocab.scale_ids[0],
        "nativerl": {"tokens_per_image": gen.tokens_per_image, "num_image_tokens": gen.vocab.num_image_tokens,
                     "prompt_template": gen.prompt_template.model_dump()},
    })
    if getattr(gen, "edit_template", None) is not None:
        config["nativerl"]["edit_template"] = gen.edit_template.model_dump()
    if getattr(renderer, "uses_reference", False):
        config["use_und_image_vae"] = latent_connector is not None
        config["use_und_image_vae_as_noise"] = bool(renderer.concat_noise)
    config.pop("dtype", None)
    config.pop("torch_dtype", None)
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True, default=str))

    ddir = directory / DIFFUSION_SUBDIR
    # With renderer_in_shards the diffusers folders keep only configs (the shards hold the weights).
    for name, module in (("transformer", renderer.transformer), ("vae", renderer.vae)):
        if renderer_in_shards:
            (ddir / name).mkdir(parents=True, exist_ok=True)
            module.save_config(str(ddir / name))
        else:
            module.save_pretrained(str(ddir / name))
    renderer.scheduler.save_pretrained(str(ddir / "scheduler"))
    gen.tokenizer.save_pretrained(str(directory))
    if getattr(gen, "generation_config", None) is not None:  # kept: `rollout.sampling.source: checkpoint` reads it
        (directory / GENERATION_CONFIG_NAME).write_text(json.dumps(gen.generation_config, indent=2))
    image_tokenizer = getattr(gen, "image_tokenizer", None)
    if image_tokenizer is not None and hasattr(image_tokenizer, "save_pretrained"):
        image_tokenizer.save_pretrained(directory / IMAGE_TOKENIZER_SUBDIR)
