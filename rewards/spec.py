"""How a recipe names a reward: `RewardSpec` (one entry of the recipe's `rewards:` list)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


# Ten minutes: well above one step's scoring on CPU (OCR ~0.3 s per 512² image, so ~80 s for 256 images) and above
# the remote reward's worst case with its defaults (RemoteRewardOptions.bound_s = 487 s).
DEFAULT_REWARD_TIMEOUT_S = 600.0


class RewardSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(..., description="Built-in name ('ocr', 'geneval@fixed', ...) or a dotted path 'pkg.module:function'.")
    weight: float = Field(1.0, description="Weight in the weighted sum (or in per-reward advantage aggregation).")
    required: bool = Field(True, description="A failing required reward fails the step; an optional one is dropped and the weights renormalised.")
    timeout_s: float | None = Field(DEFAULT_REWARD_TIMEOUT_S, gt=0, description="Per-call timeout in seconds; a "
                                    "timeout counts as a failure. The default bounds a hung reward (a dead server, a "
                                    "stuck model) while leaving room for a remote reward's retries (4 attempts of "
                                    "120 s); null = no limit.")
    options: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the reward's constructor.")
    alias: str | None = Field(None, min_length=1, description="Key of this reward in scores, weights and metrics; "
                              "default: `name` without its '@version' (needed when one reward appears twice).")
    module_dir: str | None = Field(None, description="User rewards: the folder their module is imported from. "
                                   "Default: the recipe's folder, then the current directory (filled in with the "
                                   "absolute folder when the recipe is loaded, so a resumed run finds it too).")

    @property
    def base_name(self) -> str:
        return self.name.split("@", 1)[0]

    @property
    def key(self) -> str:
        return self.alias or self.base_name

    @property
    def pinned_version(self) -> str | None:
        return self.name.split("@", 1)[1] if "@" in self.name and ":" not in self.name else None
