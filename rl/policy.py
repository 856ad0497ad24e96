"""The trained policy: the generator's AR LM in one of two modes, plus its reference for the KL term.

- `lora`: peft LoRA adapters on the LM (target modules, rank and alpha from `LoraSettings`); only `lora_` tensors
  train. The reference is the *same* model with the adapters disabled (`with peft_model.disable_adapter():`), so
  there is no second copy of the weights.
- `full`: every LM parameter trains; the reference is a frozen deep copy of the AR LM **only**. BLIP3o-NEXT's
  reference was a second copy of the whole model, renderer included (shared notes blip3o-next.md §4.3); here the
  renderer is never copied (asserted) and is frozen and kept out of the optimizer in both modes.

Precision (`compute_dtype`). Trainable parameters are always fp32 master weights; the LM *computes* in bf16 under
autocast when the recipe asks for bf16 (`trainer.bf16`, see `compute_dtype`). So a full-weights update at lr 1e-6
is applied to fp32 numbers (plain AdamW on bf16 tensors rounds most such updates away: 2% of weights changed at lr
1e-6, issue 13), gradients accumulate in fp32, and checkpoints hold the masters, so a resume is exact. Chosen over a
bf16 model with fp32 copies inside the optimizer (DeepSpeed ZeRO's way) because it is torch's own mixed precision
(autocast; FSDP2 shards the fp32 parameters as is), needs no custom optimizer, and costs the same 16 bytes per
trained parameter (fp32 weight 4 + fp32 grad 4 + Adam moments 8; the bf16 variant has 2 + 2 + 12). Frozen weights
(the LoRA base, the full-mode reference, the renderer) stay in the model's dtype. One autocast policy,
`NativeImageGenerator.autocast()`, covers the sampler, the trainer's forward and the reference, so all three
compute the same function. Memory per parameter: benchmarks/RESULTS.md.

Log-probs are scored on `rollouts.sampler.scored_distribution(sampling)`: the temperature-scaled distribution
without top-k/top-p, for the policy and the reference alike, so they are finite for every sampled token (why:
rl/grpo.py, "Which distribution is trained"). They go through the generator's `token_logprobs` (BLIP3o-NEXT:
`rollouts.sampler.image_token_logprobs`, image-token slice of the head, chunked; Janus-Pro: the CFG-guided
distribution, rollouts/janus/cfg_sampler.py), wrapped in
`ImageTokenScorer`, an `nn.Module` whose forward is that call: DDP and FSDP2 (`rl/distributed.py`) wrap the scorer,
so their hooks run on every log-prob forward even though the sampler calls the decoder and the head directly.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rl.recipe import LoraSettings, TrainerConfig
from rollouts.config import SamplingConfig
from rollouts.sampler import scored_distribution
from rollouts import weight_sync
from rollouts.weight_sync import apply_sync_state


def wrap_lora(lm: nn.Module, settings: LoraSettings) -> nn.Module:
    """peft-wrap `lm` exactly as rollout workers do (`rollouts/weight_sync.py`), from the recipe's LoRA settings."""
    return weight_sync.wrap_lora(lm, **settings.model_dump())


class ImageTokenScorer(nn.Module):
    """forward(prompt_ids, prompt_mask, image_tokens, sampling, ...) = score(self.lm, ...), where `score` is the
    generator's `token_logprobs` (BLIP3o-NEXT: `rollouts.sampler.image_token_logprobs`; Janus-Pro: the CFG-guided
    log-probs with both rows in the forward, rollouts/janus/cfg_sampler.py)."""

    def __init__(self, lm: nn.Module, score: Callable[..., Any]):
        super().__init__()
        self.lm = lm
        self.score = score

    def forward(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, image_tokens: torch.Tensor,
                sampling: SamplingConfig, with_entropy: bool = False, chunk_size: int | None = None,
                with_hidden: bool = False):
        return self.score(self.lm, prompt_ids, prompt_mask, image_tokens, sampling, chunk_size=chunk_size,
                          with_entropy=with_entropy, with_hidden=with_hidden)


def _reshard_fsdp_root(scorer: nn.Module) -> None:
    """FSDP2 keeps its root's parameters (embeddings, final norm, lm_head) unsharded after a forward, expecting the
    backward to reshard them. A no-grad forward (the warm-up, π_old at μ > 1) has no backward, and the next training
    step then updated those parameters differently from one process (max |Δ| 0.054 on embed_tokens in a 2-rank
    gloo test). Resharding here restores the equality (tests/test_distributed_gloo.py)."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(scorer, FSDPModule):
        scorer.reshard()


def compute_dtype(bf16: str, storage_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The LM's compute precision from `trainer.bf16`: on → bf16; off → fp32; auto → bf16 on GPU or when the
    model is stored in bf16/fp16 (`model.dtype`), else fp32. Never fp16: training in fp16 needs loss scaling."""
    if bf16 == "on":
        return torch.bfloat16
    if bf16 == "off":
        return torch.float32
    if bf16 != "auto":
        raise ValueError(f"trainer.bf16 must be 'auto', 'on' or 'off', got {bf16!r}")
    low = storage_dtype in (torch.bfloat16, torch.float16)
    return torch.bfloat16 if (device.type == "cuda" or low) else torch.float32


class Policy:
    """The trainable AR LM of `generator` (LoRA or full) and its reference. See the module doc."""

    def __init__(self, generator: nn.Module, cfg: TrainerConfig):
        self.generator, self.cfg, self.vocab = generator, cfg, generator.vocab
        # LoRA saves name it as the adapter's base_model_name_or_path, so peft's AutoPeftModelForCausalLM finds the
        # base locally (rl/train_loop.py sets it: a transformers-loadable folder of the base LM).
        self.base_model_path: str | None = None
        # The renderer only draws images from the LM's hidden states: frozen, never in the optimizer.
        generator.renderer.requires_grad_(False)
        generator.renderer.eval()
        lm = generator.lm
        self.storage_dtype = next(lm.parameters()).dtype  # the model's dtype: what export writes
        self.compute_dtype = compute_dtype(cfg.bf16, self.storage_dtype, next(lm.parameters()).device)
        generator.compute_dtype = self.compute_dtype  # sampler, trainer and reference: one autocast policy
        if self.compute_dtype == torch.float32 and self.storage_dtype != torch.float32:
            lm.float()  # trainer.bf16 off: the whole LM computes in fp32
        if cfg.policy == "lora":
            lm.requires_grad_(False)
            generator.lm = wrap_lora(lm, cfg.lora)  # contract: the trainer may wrap .lm and assign it back
            self.reference: nn.Module | None = None
        elif cfg.policy == "full":
            self._assert_lm_excludes_renderer()
            # Frozen reference in the model's dtype (no master needed), taken before the masters are made.
            self.reference = copy.deepcopy(lm).eval().requires_grad_(False)
            lm.float().requires_grad_(True)  # fp32 masters (a no-op for an fp32 model)
            n_ref, n_lm = (sum(p.numel() for p in m.parameters()) for m in (self.reference, lm))
            assert n_ref == n_lm, f"reference has {n_ref} parameters, the LM {n_lm}: not a copy of the LM alone"
        else:
            raise ValueError(f"trainer.policy must be 'lora' or 'full', got {cfg.policy!r}")
        for _, p in self.named_trainable_parameters():  # LoRA adapters: fp32 masters too (peft's default)
            if p.dtype != torch.float32:
                p.data = p.data.float()
        if cfg.gradient_checkpointing:
            # Non-reentrant: works with frozen inputs (LoRA) and inside DDP without enable_input_require_grads.
            self.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.lm.train()
        self.scorer: nn.Module = ImageTokenScorer(self.lm, generator.token_logprobs)  # rl/distributed.py may wrap this
        bad = [n for n, p in self.lm.named_parameters() if p.requires_grad and "lora_" not in n]
        if cfg.policy == "lora" and bad:
            raise RuntimeError(f"LoRA policy has non-LoRA trainable parameters: {bad[:5]}")

    @property
    def lm(self) -> nn.Module:
        return self.generator.lm

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    def _assert_lm_excludes_renderer(self) -> None:
        # If the LM held the renderer (as BLIP3o-NEXT's model class does), deep-copying it would copy the renderer.
        renderer_ids = {id(p) for p in self.generator.renderer.parameters()}
        assert not any(id(p) in renderer_ids for p in self.lm.parameters()), \
            "the AR LM contains renderer parameters: its reference copy would duplicate the renderer"

    # ---- log-probs --------------------------------------------------------------------------------------------
    def autocast(self):
        """The generator's autocast policy (`compute_dtype`), the one the sampler uses too."""
        return self.generator.autocast()

    def logprobs(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, image_tokens: torch.Tensor,
                 sampling: SamplingConfig, with_entropy: bool = False, chunk_size: int | None = None,
                 with_hidden: bool = False):
        """π log-probs [B,N] of the given image tokens (differentiable) under `scored_distribution(sampling)`, or
        (logprobs, entropy), with the conditioning hidden states [B,N+1,H] appended when `with_hidden`."""
        out = self.scorer(prompt_ids, prompt_mask, image_tokens, scored_distribution(sampling), with_entropy,
                          chunk_size, with_hidden)
        if not torch.is_grad_enabled():
            _reshard_fsdp_root(self.scorer)
        return out

    @torch.no_grad()
    def reference_logprobs(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, image_tokens: torch.Tensor,
                           sampling: SamplingConfig, chunk_size: int | None = None, with_hidden: bool = False):
        """π_ref log-probs [B,N] under `scored_distribution(sampling)`: LoRA → the same LM with adapters disabled;
        full → the frozen LM copy. `with_hidden`: (logprobs, the reference's conditioning hidden states)."""
        sampling = scored_distribution(sampling)
        kw = dict(chunk_size=chunk_size, with_hidden=with_hidden)
        with self.autocast():
            score = self.generator.token_logprobs
            if self.reference is None:
                with self.lm.disable_adapter():
                    return score(self.lm, prompt_ids, prompt_mask, image_tokens, sampling, **kw)
            return score(self.reference, prompt_ids, prompt_mask, image_tokens, sampling, **kw)

    # ---- parameters and weight transfer -------------------------------------------------------------------------
    def named_trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.lm.named_parameters() if p.requires_grad]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_trainable_parameters()]

    def state_for_sync(self) -> dict[str, torch.Tensor]:
        """What the rollout side needs after an update, as CPU copies: LoRA → the adapter tensors only (peft's
        `get_peft_model_state_dict` keys); full → the LM state dict. Load with `apply_sync_state`."""
        if self.cfg.policy == "lora":
            from peft import get_peft_model_state_dict

            state = get_peft_model_state_dict(self.lm, save_embedding_layers=False)  # base embeddings never change
        else:
            state = _full_state_dict(self.lm)
        return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}

    def load_sync_state(self, state: dict[str, torch.Tensor]) -> None:
        apply_sync_state(self.lm, state)

    # ---- files ------------------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """LoRA: standard PEFT adapter (adapter_config.json + adapter_model.safetensors), loadable with
        `peft.PeftModel.from_pretrained(base_lm, directory)`. Full: the LM's `save_pretrained`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.cfg.policy == "lora":
            for config in self.lm.peft_config.values():
                config.base_model_name_or_path = self.base_model_path
            # The base embeddings never change (LoRA on lm_head adds a delta): the adapter holds only adapters.
            self.lm.save_pretrained(directory, save_embedding_layers=False)
        else:
            self.lm.save_pretrained(directory, state_dict=_full_state_dict(self.lm))

    def load(self, directory: str | Path) -> None:
        directory = Path(directory)
        if self.cfg.policy == "lora":
            from peft.utils import load_peft_weights

            if not (directory / "adapter_config.json").is_file():
                raise FileNotFoundError(f"{directory}: no adapter_config.json (not a LoRA policy save)")
            apply_sync_state(self.lm, load_peft_weights(str(directory), device=str(self.device)))
            return
        from safetensors.torch import load_file

        files = sorted(directory.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{directory}: no *.safetensors weights (not a full policy save)")
        state: dict[str, torch.Tensor] = {}
        for f in files:
            state.update(load_file(str(f), device=str(self.device)))
        apply_sync_state(self.lm, state)

    def merged_lm(self) -> nn.Module:
        """A plain transformers LM for export, in the model's dtype (`storage_dtype`, e.g. bf16 on GPU): LoRA
        merged into a copy (the policy keeps its adapters); full → a copy of the trained LM's masters, cast."""
        if self.cfg.policy == "lora":
            merged = copy.deepcopy(self.lm).merge_and_unload()
        else:
            merged = copy.deepcopy(self.lm)
        return merged.to(self.storage_dtype)

    def train(self, mode: bool = True) -> Policy:
        self.lm.train(mode)
        return self


def _full_state_dict(lm: nn.Module) -> dict[str, torch.Tensor]:
    """The LM's full (unsharded) state dict; under FSDP2 the shards are gathered first."""
    from torch.distributed.tensor import DTensor

    if any(isinstance(p, DTensor) for p in lm.parameters()):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(lm, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return lm.state_dict()
