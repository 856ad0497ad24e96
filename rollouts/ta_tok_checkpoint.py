"""The released TA-Tok checkpoint (`csuhan/TA-Tok`, file `ta_tok.pth`) → `TATokTokenizer`, with no TA-Tok code.

BLIP3o-NEXT tokenizes reference images with this file (shared notes §1; its `TATokVisionTower` loads it with
`load_teacher=False`, sets the quantizer to eval-deterministic and feeds `SiglipImageProcessor` pixels). The file is
`torch.save({"model": {"args": ..., "sd": ...}})`:

    args   {"bottleneck": {"name": "bottleneck", "args": {"bottleneck_dim": D, "regularizer":
                {"name": "simvq", "args": {"codebook_size": K, "l2_normalized": true, "stochastic": true, ...}}}},
            "bottleneck_token_num": 729, "input_size": 384, "teacher": "google/siglip2-so400m-patch14-384",
            "pool_scale": 1, "select_layer_id": -2, "decoder_depth": 3, ...}   (a dict or an easydict.EasyDict)
    sd     encoder.*                          the SigLIP vision transformer (`SiglipModel(...).vision_model`)
           encode_task_layer.0.{weight,bias}  Linear(H, H), followed by Tanh
           bottleneck.in_linear.*             Linear(H, D)
           bottleneck.regularizer.embedding.weight          [K, D]
           bottleneck.regularizer.embedding_proj.*          Linear(D, D): SimVQ's codebook is embedding_proj(embedding)
           decoder.*, decode_task_layer.*, bottleneck.out_linear.*, scale_layer.*, teacher.*   (not on the encode path)

Encode path (what `TATokTokenizer` computes): hidden_states[select_layer_id] → pool → tanh(encode_task_layer) →
in_linear → nearest code of the SimVQ codebook; cosine when `l2_normalized` (TA-Tok's stochastic sampler reduces
to this argmax in eval-deterministic mode, which BLIP3o-NEXT uses), squared L2 otherwise.

The teacher's config is not in the file (TA-Tok fetches it from the hub by name). The vision tower's shape is read
from the weights; the one thing weights cannot tell, the attention head count, comes from `encoder_config` (a local
config folder, a dict or a config object), from `args["teacher"]` when that is a local folder, or from the SigLIP
family's published widths (so400m: 1152 wide, 16 heads).

`write_tiny_ta_tok_checkpoint` writes a random tiny file in exactly this layout (every key family above, EasyDict
args optional) for tests.
"""

from __future__ import annotations

import json
import re
import sys
import types
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from rollouts.image_tokenizer import FeatureHead, TATokConfig, TATokTokenizer, linear_from_tensors

# Not on the encode path: the feature decoder (TA-Tok's reconstruction target), the input scaling that
# BLIP3o-NEXT replaces by the SigLIP image processor, and the distillation teacher.
UNUSED_PREFIXES = ("decoder.", "decode_task_layer.", "bottleneck.out_linear.", "scale_layer.", "teacher.")
REQUIRED_KEYS = ("encode_task_layer.0.weight", "encode_task_layer.0.bias", "bottleneck.regularizer.embedding.weight")
# Attention heads by width for the SigLIP towers that have been released (base, large, so400m, giant).
SIGLIP_HEADS_BY_WIDTH = {768: 12, 1024: 16, 1152: 16, 1536: 16}


def read_ta_tok_file(path: str | Path, *, allow_unsafe_pickle: bool = False) -> tuple[dict[str, Any], dict]:
    """→ (args, state dict). Loads with `weights_only=True` (EasyDict args allowed through a stand-in); a file that
    pickles anything else needs `allow_unsafe_pickle=True`, which runs arbitrary code from the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TA-Tok checkpoint {path} not found")
    if allow_unsafe_pickle:
        raw = torch.load(path, map_location="cpu", weights_only=False)
    else:
        try:
            # EasyDict args come back as OrderedDicts: the weights-only unpickler lets an OrderedDict take both the
            # items and the attribute state an EasyDict pickles, and easydict itself is never imported.
            with torch.serialization.safe_globals([(OrderedDict, "easydict.EasyDict")]):
                raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch names the global it refused
            raise ValueError(f"{path}: cannot be read as a weights-only checkpoint ({str(exc).splitlines()[0]}). "
                             "If you trust the file, pass allow_unsafe_pickle=True (--allow-unsafe-pickle)") from None
    try:
        args, sd = raw["model"]["args"], raw["model"]["sd"]
    except (KeyError, TypeError):
        top = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(f"{path}: not a TA-Tok checkpoint: expected ckpt['model']['args'] and ckpt['model']['sd'], "
                         f"found {top}") from None
    return _plain(args), dict(sd)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


def _nested(args: dict, *keys: str, where: str) -> Any:
    node: Any = args
    for i, key in enumerate(keys):
        if not isinstance(node, dict) or key not in node:
            raise ValueError(f"{where}: args has no {'.'.join(keys[: i + 1])!r}")
        node = node[key]
    return node


def _encoder_config(sd: dict[str, torch.Tensor], args: dict, encoder_config: Any, where: str):
    """SigLIP / SigLIP2 vision config whose shapes match the `encoder.*` weights."""
    from transformers import AutoConfig, Siglip2VisionConfig, SiglipVisionConfig

    patch_w = sd.get("encoder.embeddings.patch_embedding.weight")
    pos_w = sd.get("encoder.embeddings.position_embedding.weight")
    if patch_w is None or pos_w is None:
        raise ValueError(f"{where}: no encoder.embeddings.patch_embedding / position_embedding weights")
    naflex = patch_w.ndim == 2  # SigLIP2 NaFlex embeds flattened patches with a Linear; SigLIP uses a Conv2d
    hidden = int(patch_w.shape[0])
    patch = int(round((patch_w.shape[1] / 3) ** 0.5)) if naflex else int(patch_w.shape[-1])
    layers = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.encoder\.layers\.(\d+)\.", k)))
    intermediate = int(sd["encoder.encoder.layers.0.mlp.fc1.weight"].shape[0])
    num_positions = int(pos_w.shape[0])
    side = int(round(num_positions ** 0.5))
    shape = dict(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers, patch_size=patch,
                 vision_use_head=any(k.startswith("encoder.head.") for k in sd))

    given = encoder_config
    teacher = args.get("teacher")
    if given is None and isinstance(teacher, str) and (Path(teacher) / "config.json").is_file():
        given = teacher
    if isinstance(given, (str, Path)):
        config_path = Path(given)
        if config_path.is_file():
            try:
                given = json.loads(config_path.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(f"encoder config {config_path} is not valid JSON: {exc}") from None
        elif (config_path / "config.json").is_file():
            given = AutoConfig.from_pretrained(str(config_path), local_files_only=True)
        else:
            raise FileNotFoundError(f"encoder config {config_path}: no such file or folder with a config.json")
    if given is not None and not isinstance(given, dict):
        given = getattr(given, "vision_config", given).to_dict()
    if isinstance(given, dict) and "vision_config" in given:
        given = given["vision_config"]
    if given is not None:
        heads = int(given["num_attention_heads"])
        for key, value in shape.items():
            if key in given and key != "vision_use_head" and int(given[key]) != value:
                raise ValueError(f"{where}: encoder_config {key}={given[key]} but the encoder weights have {value}")
        extra = {k: given[k] for k in ("hidden_act", "layer_norm_eps", "attention_dropout") if k in given}
    elif hidden in SIGLIP_HEADS_BY_WIDTH:
        heads, extra = SIGLIP_HEADS_BY_WIDTH[hidden], {}
    else:
        raise ValueError(f"{where}: encoder width {hidden} is not a released SigLIP width "
                         f"({sorted(SIGLIP_HEADS_BY_WIDTH)}); pass encoder_config (--encoder-config) to give the "
                         "attention head count")
    if hidden % heads:
        raise ValueError(f"{where}: {heads} attention heads do not divide width {hidden}")
    if naflex:
        return Siglip2VisionConfig(num_patches=num_positions, num_attention_heads=heads, **shape, **extra), side * patch
    return SiglipVisionConfig(image_size=side * patch, num_attention_heads=heads, **shape, **extra), side * patch


def load_released_ta_tok(path: str | Path, *, encoder_config: Any = None, device: str = "cpu",
                         allow_unsafe_pickle: bool = False) -> TATokTokenizer:
    """`ta_tok.pth` as released → a frozen `TATokTokenizer` on `device`. Every key is accounted for: a missing
    encode-path weight or a key outside the known families is an error naming it."""
    from transformers import Siglip2VisionModel, SiglipVisionModel

    where = str(path)
    args, sd = read_ta_tok_file(path, allow_unsafe_pickle=allow_unsafe_pickle)
    bottleneck = _nested(args, "bottleneck", where=where)
    if bottleneck.get("name") != "bottleneck":
        raise ValueError(f"{where}: bottleneck name {bottleneck.get('name')!r} is not supported "
                         "(expected 'bottleneck')")
    regularizer = _nested(args, "bottleneck", "args", "regularizer", where=where)
    if regularizer.get("name") != "simvq":
        raise ValueError(f"{where}: regularizer {regularizer.get('name')!r} is not supported (expected 'simvq')")
    l2_normalized = bool(regularizer.get("args", {}).get("l2_normalized", False))

    missing = [k for k in REQUIRED_KEYS if k not in sd]
    if missing:
        raise ValueError(f"{where}: missing encode-path weights {missing}")
    known = ("encoder.", "encode_task_layer.0.", "bottleneck.in_linear.", "bottleneck.regularizer.embedding.",
             "bottleneck.regularizer.embedding_proj.") + UNUSED_PREFIXES
    unexpected = sorted(k for k in sd if not k.startswith(known))
    if unexpected:
        raise ValueError(f"{where}: unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}")

    enc_cfg, image_size = _encoder_config(sd, args, encoder_config, where)
    encoder = (Siglip2VisionModel if type(enc_cfg).__name__.startswith("Siglip2") else SiglipVisionModel)(enc_cfg)
    # The file holds the bare vision transformer's keys (embeddings.*, encoder.layers.*, post_layernorm.*, head.*);
    # transformers 4.x wraps them in `vision_model.` inside SiglipVisionModel, 5.x does not.
    wrap = "vision_model." if any(k.startswith("vision_model.") for k in encoder.state_dict()) else ""
    enc_sd = {wrap + k[len("encoder."):]: v.float() for k, v in sd.items() if k.startswith("encoder.")}
    result = encoder.load_state_dict(enc_sd, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{where}: encoder weights do not fit a {type(encoder).__name__}: missing "
                         f"{result.missing_keys[:10]}, unexpected {result.unexpected_keys[:10]}")

    projection = linear_from_tensors(sd, "bottleneck.in_linear") if "bottleneck.in_linear.weight" in sd else None
    embedding = sd["bottleneck.regularizer.embedding.weight"].float()
    with torch.no_grad():  # SimVQ learns a linear map of a frozen table; the codes index the mapped table
        codebook = (linear_from_tensors(sd, "bottleneck.regularizer.embedding_proj")(embedding)
                    if "bottleneck.regularizer.embedding_proj.weight" in sd else embedding)
    input_size = int(args.get("input_size", image_size))
    config = TATokConfig(select_layer=int(args.get("select_layer_id", -2)), pool_scale=int(args.get("pool_scale", 1)),
                         distance="cosine" if l2_normalized else "l2", image_size=input_size)
    head = FeatureHead(task_layer=linear_from_tensors(sd, "encode_task_layer.0"), projection=projection)
    tok = TATokTokenizer(encoder, codebook, config, head).to(device)
    expected_tokens = args.get("bottleneck_token_num")
    if expected_tokens is not None and config.pool_scale == 1 and int(expected_tokens) != tok.tokens_per_image:
        raise ValueError(f"{where}: bottleneck_token_num {expected_tokens} but a {input_size}px input gives "
                         f"{tok.tokens_per_image} tokens")
    return tok


def convert_ta_tok(path: str | Path, out_dir: str | Path, **kwargs: Any) -> TATokTokenizer:
    """Write the released checkpoint in our image-tokenizer layout (`rollouts/image_tokenizer.py`), e.g. as the
    `image_tokenizer/` folder of a BLIP3o-NEXT checkpoint."""
    tok = load_released_ta_tok(path, **kwargs)
    tok.save_pretrained(out_dir)
    return tok


# ---- a tiny file in the released layout, for tests ---------------------------------------------------------------
def write_tiny_ta_tok_checkpoint(path: str | Path, *, num_codes: int = 64, image_size: int = 32, patch_size: int = 8,
                                 hidden_size: int = 32, bottleneck_dim: int = 16, l2_normalized: bool = True,
                                 easydict_args: bool = False, with_teacher: bool = False,
                                 teacher: str = "google/siglip2-so400m-patch14-384",
                                 seed: int = 0) -> dict[str, torch.nn.Module]:
    """Random tiny TA-Tok saved as `torch.save({"model": {"args", "sd"}})` with every key family of the real file.
    Returns the modules it was built from (`encoder` a SiglipVisionModel, `encode_task_layer`, `in_linear`,
    `embedding`, `embedding_proj`) so tests can compute the expected codes by hand."""
    from transformers import Siglip2VisionConfig, Siglip2VisionModel, SiglipVisionConfig, SiglipVisionModel

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        encoder = SiglipVisionModel(SiglipVisionConfig(
            image_size=image_size, patch_size=patch_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
            num_hidden_layers=3, num_attention_heads=2, vision_use_head=True))
        parts = {
            "encode_task_layer": torch.nn.Sequential(torch.nn.Linear(hidden_size, hidden_size), torch.nn.Tanh()),
            "decoder": Siglip2VisionModel(Siglip2VisionConfig(
                patch_size=1, num_hidden_layers=1, num_channels=bottleneck_dim, hidden_size=hidden_size,
                intermediate_size=2 * hidden_size, num_attention_heads=2)),
            "decode_task_layer": torch.nn.Sequential(torch.nn.Linear(hidden_size, hidden_size), torch.nn.Tanh(),
                                                     torch.nn.Linear(hidden_size, hidden_size)),
            "bottleneck.in_linear": torch.nn.Linear(hidden_size, bottleneck_dim),
            "bottleneck.out_linear": torch.nn.Linear(bottleneck_dim, hidden_size),
            "bottleneck.regularizer.embedding": torch.nn.Embedding(num_codes, bottleneck_dim),
            "bottleneck.regularizer.embedding_proj": torch.nn.Linear(bottleneck_dim, bottleneck_dim),
        }
    sd = {"encoder." + k.removeprefix("vision_model."): v for k, v in encoder.state_dict().items()}
    for prefix, module in parts.items():
        if prefix == "decoder":  # TA-Tok was saved under transformers 4.x, where this wrapper adds `vision_model.`
            prefix = "decoder.vision_model"
        sd.update({f"{prefix}.{k.removeprefix('vision_model.')}": v for k, v in module.state_dict().items()})
    sd["scale_layer.shift"] = torch.full((1, 3, 1, 1), 0.5)
    sd["scale_layer.scale"] = torch.full((1, 3, 1, 1), 0.5)
    if with_teacher:
        sd["teacher.embeddings.patch_embedding.weight"] = torch.zeros(hidden_size, 3, patch_size, patch_size)
    args = {
        "bottleneck": {"name": "bottleneck", "args": {"bottleneck_dim": bottleneck_dim, "norm": "none", "regularizer": {
            "name": "simvq", "args": {"codebook_size": num_codes, "commitment_loss_weight": 0.25,
                                      "codebook_loss_weight": 1.0, "entropy_loss_weight": 0.0,
                                      "l2_normalized": l2_normalized, "stochastic": l2_normalized,
                                      "stochastic_temperature": 0.03}}}},
        "bottleneck_token_num": (image_size // patch_size) ** 2, "input_size": image_size,
        "teacher": teacher, "input_type": "quant", "pool_scale": 1, "decoder_depth": 1,
        "select_layer_id": -2,
    }
    payload = {"model": {"args": _as_easydict(args) if easydict_args else args, "sd": sd}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if easydict_args:
        # Pickle under the real class path `easydict.EasyDict` (what the released file references) without
        # depending on the easydict package.
        module = types.ModuleType("easydict")
        module.EasyDict = _TinyEasyDict
        previous = sys.modules.get("easydict")
        sys.modules["easydict"] = module
        try:
            torch.save(payload, path)
        finally:
            if previous is None:
                sys.modules.pop("easydict", None)
            else:
                sys.modules["easydict"] = previous
    else:
        torch.save(payload, path)
    return {"encoder": encoder, **{k.rsplit(".", 1)[-1]: v for k, v in parts.items()}}


class _TinyEasyDict(dict):
    """Pickles like `easydict.EasyDict`: a dict whose keys are also attributes."""

    def __init__(self, d: dict | None = None):
        super().__init__()
        for k, v in (d or {}).items():
            self[k] = v
            setattr(self, k, v)


_TinyEasyDict.__module__, _TinyEasyDict.__qualname__ = "easydict", "EasyDict"


def _as_easydict(obj: Any) -> Any:
    if isinstance(obj, dict):
        return _TinyEasyDict({k: _as_easydict(v) for k, v in obj.items()})
    return obj
