"""Typed configuration of the generator: which model, how to sample image tokens, how to render.

Defaults are BLIP3o-NEXT's inference values (blip3o_qwen_inference.py::generate_images), see
shared notes blip3o-next.md §1.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class PromptTemplateConfig(Strict):
    """How a caption becomes the AR prompt (BLIP3o-NEXT: blip3o_qwen_inference.py, trl grpo_trainer.py L1434)."""

    use_chat_template: bool = Field(True, description="Wrap the user message with the tokenizer's chat template "
                                    "(add_generation_prompt=True). False = the caption sentence only.")
    system_message: str | None = Field("You are a helpful assistant.", description="System turn; None = none.")
    caption_template: str = Field("Please generate image based on the following caption: {prompt}",
                                  description="User message; must contain '{prompt}'.")

    @field_validator("caption_template")
    @classmethod
    def _has_prompt_slot(cls, value: str) -> str:
        if "{prompt}" not in value:
            raise ValueError(f"caption_template must contain '{{prompt}}', got {value!r}")
        return value


class ModelConfig(Strict):
    source: Literal["preset", "path"] = Field("preset", description="Build from a named preset or load a checkpoint directory.")
    preset: str = Field("tiny", description="Preset name when source=preset: 'tiny', 'small', 'blip3o-next-3b-shape', 'shapes'.")
    path: str | None = Field(None, description="Checkpoint directory (BLIP3o-NEXT layout) when source=path.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="auto = bf16 on GPU, fp32 on CPU.")
    device: str = Field("auto", description="auto = cuda if available else cpu.")
    seed: int = Field(0, description="Seed for randomly initialised presets.")
    tokens_per_image: int | None = Field(None, ge=1, description="N image tokens per image; None = the preset's / "
                                         "checkpoint's value (BLIP3o-NEXT: 729).")
    diffusion_path: str | None = Field(None, description="Local diffusers folder (transformer/, vae/, scheduler/) "
                                       "overriding the checkpoint's diffusion_name_or_path (no hub access).")
    image_tokenizer: str | None = Field(None, description="Editing: the reference-image tokenizer, a released TA-Tok "
                                        "ta_tok.pth or a tokenizer folder (rollouts/image_tokenizer.py); overrides "
                                        "the checkpoint's image_tokenizer/.")
    prompt_template: PromptTemplateConfig | None = Field(
        None, description="None = the checkpoint's / preset's own template, else BLIP3o-NEXT's. A resolved "
        "config.yaml keeps None, so a resumed run or an export uses the same template as the original run.")


class SamplingConfig(Strict):
    source: Literal["recipe", "checkpoint"] = Field(
        "recipe", description="recipe: top_k/top_p as written here. checkpoint: top_k/top_p from the checkpoint's "
        "generation_config.json, as BLIP3o-NEXT's GRPO rollouts (generate(do_sample=True, temperature=1.0) with no "
        "top-k/top-p: HF falls back to generation_config.json); resolved when the model loads "
        "(rollouts/sampling_source.py). temperature and restrict_to_image_tokens stay this section's.")
    temperature: float = Field(1.0, gt=0, description="BLIP3o-NEXT: 1.0.")
    top_k: int | None = Field(1200, ge=1, description="BLIP3o-NEXT inference: 1200. None disables.")
    top_p: float | None = Field(0.95, gt=0, le=1, description="BLIP3o-NEXT inference: 0.95. None disables.")
    restrict_to_image_tokens: bool = Field(True, description="Sample only image-token ids (upstream does not mask).")
    guidance_scale: float | None = Field(
        None, ge=1.0, description="Classifier-free guidance on the AR logits, l_u + w (l_c - l_u), for models "
        "that sample that way (Janus-Pro: 5, rollouts/janus/); 1 = off. None = the model's own default "
        "(Janus-Pro: its generation_config.json's guidance_scale; BLIP3o-NEXT: none, it guides its renderer only).")
    logprob_chunk_size: int = Field(128, ge=1, description="Positions per chunk when recomputing log-probs.")


class RendererConfig(Strict):
    guidance_scale: float = Field(2.0, ge=0, description="CFG on the renderer; BLIP3o-NEXT: 2.0.")
    num_inference_steps: int = Field(30, ge=1, description="Euler flow-matching steps; BLIP3o-NEXT: 30.")
    resolution: int | None = Field(None, ge=8, description="Output side in pixels; None = the model's native size.")
    decode_chunk_size: int = Field(16, ge=1, description="Images per renderer/VAE chunk (bounds memory).")
    seed_policy: Literal["shared_per_group", "independent"] = Field(
        "shared_per_group",
        description="shared_per_group: all G samples of a prompt get the same renderer noise (common random "
        "numbers), so reward differences come from the tokens. independent: fresh noise per sample (upstream).",
    )
    renders_per_sample: int = Field(
        1, ge=1,
        description="Render each token sequence M times (M noise seeds) and reward it with the mean over its renders: "
        "less renderer luck in the advantage, at M× the render and reward cost. Training rollouts only; "
        "evaluation renders once per seed.",
    )
