"""Pre-train the shapes world generator: `python scripts/pretrain_shapes.py recipes/shapes_sft.yaml [key=value ...]`.

Until `nativerl train recipes/shapes_sft.yaml` dispatches to `rl.sft.run_sft`, this runs it. Overrides use dotted
keys, e.g. `ar_steps=200 data.num_examples=5000 save_to=null`.
"""

from __future__ import annotations

import json
import sys

import yaml

from rl.sft import SFTConfig, load_sft_config, run_sft


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit(__doc__)
    config = load_sft_config(argv[0]).model_dump()
    for item in argv[1:]:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"override {item!r} is not key=value")
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            if p not in node or not isinstance(node[p], dict):
                raise SystemExit(f"override {key!r}: no section {p!r}")
            node = node[p]
        if leaf not in node:
            raise SystemExit(f"override {key!r}: unknown key {leaf!r}")
        node[leaf] = yaml.safe_load(value)
    result = run_sft(SFTConfig(**config))
    print(json.dumps(result.summary, indent=2))
    print("checkpoint:", result.checkpoint_dir)


if __name__ == "__main__":
    main(sys.argv[1:])
