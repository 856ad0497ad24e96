"""One decode step of the AR policy (feed one token per row, return its last hidden state), three ways.

- `eager`: the decoder builds its attention mask each step from a growing 2D mask (transformers' own path).
- `static`: every input lives in a preallocated buffer: token ids [B,1], positions [B,1] and a boolean 4D mask
  [B,1,1,P+N] handed to the decoder ready-made (a dict keyed by layer type, which transformers accepts as a
  prepared mask). Column P+t of the mask is switched on before step t, which is the causal mask for that step.
  Same kernels as `eager`, so the same numbers (tested on CPU).
- `cuda_graph`: the `static` step captured once as a CUDA graph and replayed N−1 times. A 28-layer decoder issues
  hundreds of small kernels per token; replaying them as one graph removes the Python/launch overhead that
  dominates decoding at rollout batch sizes. transformers' StaticCache keeps its write offset in a tensor
  (`cumulative_length.add_`), so the captured cache update advances on every replay.

Sampling itself (top-k/top-p, the random draw) stays outside the graph, eager, so `torch.Generator` seeding
works as usual. `auto` = `cuda_graph` on CUDA (falling back to `static` if capture fails), `static` elsewhere.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from rollouts.lm_parts import _cache_kwarg_name


def _supports_prepared_mask(decoder: nn.Module) -> bool:
    cfg = decoder.config
    layer_types = set(getattr(cfg, "layer_types", None) or ["full_attention"])
    return layer_types == {"full_attention"} and getattr(cfg, "_attn_implementation", "sdpa") == "sdpa"


class DecodeStep:
    """Call `step(ids [B,1], positions [B,1], t)` → last hidden [B, H] of the token fed at step t."""

    def __init__(self, decoder: nn.Module, cache, prompt_mask: torch.Tensor, total_len: int, mode: str = "auto"):
        if mode not in ("auto", "eager", "static", "cuda_graph"):
            raise ValueError(f"unknown decode mode {mode!r}")
        device = prompt_mask.device
        if mode == "auto":
            mode = "cuda_graph" if device.type == "cuda" else "static"
        if mode in ("static", "cuda_graph") and not _supports_prepared_mask(decoder):
            mode = "eager"  # sliding-window layers or a non-sdpa attention want their own mask format
        if mode == "cuda_graph" and device.type != "cuda":
            raise ValueError("decode mode cuda_graph needs a CUDA device")
        self.mode = mode
        self.decoder, self.cache = decoder, cache
        self.cache_kw = _cache_kwarg_name(type(decoder))
        b, p = prompt_mask.shape
        self.prompt_len = p
        self.mask2d = prompt_mask
        self.mask4d = torch.zeros((b, 1, 1, total_len), dtype=torch.bool, device=device)
        self.mask4d[:, 0, 0, :p] = prompt_mask.bool()
        self.ids = torch.zeros((b, 1), dtype=torch.long, device=device)
        self.pos = torch.zeros((b, 1), dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: torch.Tensor | None = None

    def _forward_static(self) -> torch.Tensor:
        out = self.decoder(input_ids=self.ids, attention_mask={"full_attention": self.mask4d},
                           position_ids=self.pos, use_cache=True, **{self.cache_kw: self.cache})
        return out.last_hidden_state[:, -1]

    def step(self, ids: torch.Tensor, positions: torch.Tensor, t: int) -> torch.Tensor:
        if self.mode == "eager":
            from rollouts.lm_parts import run_decoder

            ones = torch.ones_like(ids, dtype=self.mask2d.dtype)
            self.mask2d = torch.cat([self.mask2d, ones], dim=1)
            return run_decoder(self.decoder, ids, self.mask2d, positions, self.cache)[:, -1]
        self.ids.copy_(ids)
        self.pos.copy_(positions)
        self.mask4d[:, 0, 0, self.prompt_len + t] = True
        if self.mode == "static":
            return self._forward_static()
        if self.graph is not None:
            self.graph.replay()
            return self.out.clone()
        if t == 0:
            # First step eager on a side stream: it is a real step and the warm-up capture needs.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = self._forward_static()
            torch.cuda.current_stream().wait_stream(side)
            return out
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.out = self._forward_static()
            self.graph = graph
        except Exception as e:  # noqa: BLE001 - any capture failure: capture is not executed, so the cache is untouched: fall back and go on
            warnings.warn(f"CUDA graph capture of the decode step failed ({type(e).__name__}: {e}); "
                          "decoding without graphs", stacklevel=2)
            self.mode = "static"
            return self._forward_static()
        self.graph.replay()
        return self.out.clone()
