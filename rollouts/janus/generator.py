"""`JanusImageGenerator`: Janus-Pro text-to-image behind the generator interface the rest of nativerl uses.

- **AR policy** `.lm`: transformers' `JanusForConditionalGeneration` (Llama body, generation embeddings/aligner
  and generation head; the understanding tower rides along unused), *without* its VQ model: the loader moves
  `model.vqmodel` into the renderer, so the full-weights reference copy (rl/policy.py) never duplicates it and the
  trainer never sees its parameters. The trainer may peft-wrap `.lm` and assign it back, as for BLIP3o-NEXT.
- **Renderer** `.renderer`: `JanusVQRenderer`, the frozen `JanusVQVAE` decoder: codes → pixels. It is
  deterministic and reads the token ids only, so the *conditioning* the renderer sees is the ids themselves
  (`cond_hidden` of a rollout, `conditioning_hidden_states`): an update cannot change the image a stored token
  sequence paints, and the conditioning-drift monitor reports `drift/not_applicable` (`conditioning_tracks_policy`
  is False). Renderer noise seeds, guidance and step counts (`rollout.renderer`) do not apply to it.
- **Sampling** with classifier-free guidance on the logits, and the trainer's log-probs of the same guided
  distribution with both rows in the forward: `rollouts/janus/cfg_sampler.py`.

The interface (what rollouts/rollout.py, rl/policy.py, rl/monitors/drift.py and the evaluation call):
`encode_prompts`, `sample_image_tokens`, `token_logprobs(lm, ...)`, `conditioning_hidden_states`, `render`,
`autocast`, `.lm`, `.renderer`, `.tokenizer`, `.tokens_per_image`, `.vocab.num_image_tokens`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rollouts.config import RendererConfig, SamplingConfig
from rollouts.device import lm_autocast
from rollouts.janus.cfg_sampler import JanusSpecialIds, janus_image_token_logprobs, sample_janus_image_tokens

JANUS_DEFAULT_GUIDANCE = 5.0  # Janus-Pro's released generation default (DeepSeek's demo: cfg_weight 5)


@dataclass(frozen=True)
class JanusImageVocab:
    """Janus's image codes are their own vocabulary (the generation head's K outputs), not text-vocabulary ids."""

    num_image_tokens: int


class JanusVQRenderer(nn.Module):
    """Codes [B, N] → uint8 images [B, H, W, 3] through transformers' `JanusVQVAE.decode` (frozen)."""

    uses_reference = False

    def __init__(self, vqmodel: nn.Module, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5)):
        super().__init__()
        self.vqmodel = vqmodel
        # The checkpoint's image processor normalisation, undone as `JanusImageProcessor.postprocess` undoes it
        # (released Janus-Pro: mean = std = 0.5, i.e. the decoder's [-1, 1] to [0, 1]).
        self.register_buffer("image_mean", torch.tensor(image_mean, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)

    @property
    def native_resolution(self) -> int:
        side = int(self.vqmodel.quantize.quant_state_dims[0])
        return side * 2 ** (len(self.vqmodel.config.channel_multiplier) - 1)

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """float [B, 3, H, W] in [-1, 1] (the decoder's output range)."""
        dev = next(self.vqmodel.parameters()).device
        return self.vqmodel.decode(codes.to(dev, torch.long)).float()

    @torch.no_grad()
    def render(self, codes: torch.Tensor, chunk: int = 16) -> torch.Tensor:
        out = []
        for s in range(0, codes.shape[0], chunk):
            pixels = self.decode_codes(codes[s:s + chunk])
            # As JanusImageProcessor.postprocess: x * std + mean, × 255, clip, truncate to uint8.
            std, mean = self.image_std.float().to(pixels.device), self.image_mean.float().to(pixels.device)
            out.append(((pixels * std + mean) * 255.0).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu())
        return torch.cat(out) if out else torch.empty((0, 0, 0, 3), dtype=torch.uint8)


class JanusImageGenerator(nn.Module):
    conditioning_tracks_policy = False  # the VQ decoder reads token ids: no conditioning drift (module doc)

    def __init__(self, lm: nn.Module, processor, renderer: JanusVQRenderer, *, tokens_per_image: int,
                 special: JanusSpecialIds, default_guidance: float = JANUS_DEFAULT_GUIDANCE):
        super().__init__()
        self.lm = lm
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.renderer = renderer
        self.tokens_per_image = int(tokens_per_image)
        self.special = special
        self.default_guidance = float(default_guidance)
        self.vocab = JanusImageVocab(int(renderer.vqmodel.config.num_embeddings))
        self.load_report: dict = {}
        self.generation_config: dict | None = None
        self.image_tokenizer = None  # text-to-image only: no editing rows
        self.edit_template = None
        self.compute_dtype: torch.dtype | None = None
        self.renderer.requires_grad_(False)
        self.renderer.eval()

    # ---- properties ---------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.lm.parameters()).dtype

    def autocast(self):
        """The LM's one autocast policy (`rollouts.device.lm_autocast`, as NativeImageGenerator's)."""
        return lm_autocast(self.lm, self.compute_dtype)

    def guided(self, sampling: SamplingConfig) -> SamplingConfig:
        """`sampling` with its guidance weight resolved (None → the checkpoint's default)."""
        if sampling.guidance_scale is not None:
            return sampling
        return sampling.model_copy(update={"guidance_scale": self.default_guidance})

    # ---- the interface ---------------------------------------------------------------------------------------
    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions → (ids [B, P], mask [B, P]), left-padded, through the checkpoint's own chat template and
        `JanusProcessor(generation_mode="image")`, which appends `<begin_of_image>`."""
        texts = [self.processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": p}]}],
                                                    add_generation_prompt=True, tokenize=False) for p in prompts]
        enc = self.processor(text=texts, generation_mode="image", padding=True, return_tensors="pt")
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    def enable_editing(self, image_tokenizer, edit_template=None) -> None:
        raise ValueError("Janus-Pro is loaded for text-to-image only: editing rows are not supported")

    def sample_image_tokens(self, prompt_ids, prompt_mask, sampling: SamplingConfig,
                            generator: torch.Generator | None = None):
        with self.autocast():
            return sample_janus_image_tokens(self.lm, prompt_ids, prompt_mask, num_tokens=self.tokens_per_image,
                                             num_codes=self.vocab.num_image_tokens, sampling=self.guided(sampling),
                                             special=self.special, generator=generator)

    def token_logprobs(self, lm: nn.Module, prompt_ids, prompt_mask, image_tokens, sampling: SamplingConfig, *,
                       chunk_size: int | None = None, with_entropy: bool = False, with_hidden: bool = False):
        """Log-probs of `image_tokens` under `lm` (the policy, a peft wrap, or the reference copy) of the guided
        distribution `sampling` describes. The caller sets the autocast."""
        if with_hidden:
            raise ValueError("trainer.conditioning_anchor does not apply to Janus-Pro: its VQ decoder reads token "
                             "ids, not hidden states, so there is no conditioning to anchor; set it to 0")
        return janus_image_token_logprobs(lm, prompt_ids, prompt_mask, image_tokens, sampling=self.guided(sampling),
                                          special=self.special, chunk_size=chunk_size, with_entropy=with_entropy)

    def image_token_logprobs(self, prompt_ids, prompt_mask, image_tokens, sampling: SamplingConfig, **kw):
        with self.autocast():
            return self.token_logprobs(self.lm, prompt_ids, prompt_mask, image_tokens, sampling, **kw)

    def conditioning_hidden_states(self, prompt_ids, prompt_mask, image_tokens) -> torch.Tensor:
        """What the renderer reads: the codes themselves."""
        return image_tokens

    def render(self, cond: torch.Tensor, seeds, cfg: RendererConfig) -> torch.Tensor:
        return self.renderer.render(cond, cfg.decode_chunk_size)

    def doctor_checks(self, sampling: SamplingConfig, texts: list[str], seed: int, tolerances, echo):
        """`nativerl doctor`'s comparisons for Janus-Pro: ours vs transformers' generate with CFG
        (rollouts/janus/upstream_reference.py). → [(name, value, tolerance, unit)]."""
        from rollouts.janus.upstream_reference import janus_doctor_checks

        return janus_doctor_checks(self, sampling, texts, seed, tolerances, echo)

    def upstream_generate(self, prompt_ids, prompt_mask, sampling: SamplingConfig, seed: int = 0) -> torch.Tensor:
        """transformers' `generate(generation_mode="image")` with the same guidance and warpers (benchmarks)."""
        from rollouts.janus.upstream_reference import hf_generate

        with self.autocast():
            return hf_generate(self, prompt_ids, prompt_mask, self.guided(sampling), seed, record=False)[0]

    # ---- files ------------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, **_ignored) -> None:
        """The released transformers layout again (VQ model put back for the save), loadable by
        `JanusForConditionalGeneration.from_pretrained` and by nativerl."""
        from rollouts.lm_parts import unwrap_peft

        lm = unwrap_peft(self.lm)
        lm.model.vqmodel = self.renderer.vqmodel
        try:
            lm.save_pretrained(directory)
        finally:
            lm.model.vqmodel = None
        self.processor.save_pretrained(directory)
