"""One seed derivation (`seeding.derive_seed`) is used everywhere: its streams are independent across purposes and
indices, the driver's, the engines' and the evaluator's seeds come from it, and no generic module builds a seed
by arithmetic any more (an AST scan of the tree, so a new `seed * 1000 + i` fails here)."""

import ast
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.shard_plan import plan_shards
from prompts.prompt_sets import PromptStream
from rl.train_loop import step_seed
from seeding import PURPOSES, derive_seed

ROOT = Path(__file__).resolve().parents[1]
GENERIC = ("seeding", "prompts", "rollouts", "rewards", "engines", "rl")
# The shapes worlds' SFT and SFT-time evaluators keep their own seeds: they define the committed checkpoints and
# their sft_summary.json (seeding/__init__.py says why). Nothing else is exempt.
EXEMPT = {"worlds/shapes/sft.py", "worlds/shapes/evaluate.py", "worlds/shapes_edit/sft.py",
          "worlds/shapes_edit/evaluate.py"}
SEED_SINKS = {"manual_seed", "default_rng", "Random", "SeedSequence", "seed"}


def test_derive_seed_is_a_pure_function_of_what_it_names():
    a = derive_seed(7, "step", 3, 0)
    assert a == derive_seed(7, "step", 3, 0)
    assert 0 <= a < 2**62
    others = {derive_seed(7, "step", 3, 1), derive_seed(7, "step", 4, 0), derive_seed(8, "step", 3, 0),
              derive_seed(7, "eval", 3, 0)}
    assert a not in others and len(others) == 4
    # Hand-built formulas alias: (run 0, step 1) and (run 1, step 0) are different streams here.
    assert derive_seed(0, "step", 1) != derive_seed(1, "step", 0)
    assert derive_seed(-1, "tokens") == derive_seed(2**64 - 1, "tokens")  # negative seeds are one fixed stream
    for sink in (lambda s: torch.Generator().manual_seed(s), np.random.default_rng, random.Random):
        sink(derive_seed(2**40, "render", 5))  # every consumer accepts the 62-bit values


def test_purposes_have_distinct_salts_and_a_typo_raises():
    assert len(set(PURPOSES.values())) == len(PURPOSES)
    with pytest.raises(ValueError, match="unknown seed purpose 'tokenz'"):
        derive_seed(0, "tokenz")


def test_the_driver_and_the_engines_derive_their_seeds_from_it():
    assert step_seed(3, 10) == step_seed(3, 10, 0) == derive_seed(3, "step", 10, 0)  # rank 0 = a single rank
    assert step_seed(3, 10, 1) != step_seed(3, 10, 0)
    rows = [{"prompt": f"p{i}"} for i in range(5)]
    one = plan_shards(rows, step_seed=123, groups_per_shard=5)
    assert [s.seed for s in one] == [123]  # one shard: the step seed itself, as the local engine uses it
    many = plan_shards(rows, step_seed=123, groups_per_shard=2)
    assert [s.seed for s in many] == [derive_seed(123, "shard", i) for i in range(3)]
    # The old shard salt was the extra-render salt: shard streams aliased a row's second render. Not any more.
    assert derive_seed(123, "shard", 1) != derive_seed(123, "extra_render", 1)


def test_prompt_stream_order_is_seeded_per_epoch():
    rows = [{"prompt": str(i)} for i in range(20)]
    a, b, c = PromptStream(rows, seed=0), PromptStream(rows, seed=0), PromptStream(rows, seed=1)
    first = [r["prompt"] for r in a.next(20)]
    assert first == [r["prompt"] for r in b.next(20)]
    assert first != [r["prompt"] for r in c.next(20)]
    second = [r["prompt"] for r in a.next(20)]
    assert sorted(second) == sorted(first) and second != first  # a new epoch is a new order of the same rows
    order = list(range(20))
    random.Random(derive_seed(0, "prompt_order", 0)).shuffle(order)
    assert first == [str(i) for i in order]


def _hand_built_seeds(path: Path) -> list[str]:
    """Seeds computed by arithmetic and passed to a seed consumer or a `seed=` argument (a `% 2**32` that fits a
    seed into a consumer's range derives nothing, so it is allowed)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        values = list(node.args[:1]) if func in SEED_SINKS else []
        values += [k.value for k in node.keywords if k.arg in ("seed", "seeds")]
        found += [f"{path.relative_to(ROOT)}:{v.lineno}: {ast.unparse(v)}" for v in values
                  if isinstance(v, ast.BinOp) and not isinstance(v.op, ast.Mod)]
    return found


def test_no_module_builds_a_seed_by_arithmetic():
    files = [p for pkg in (*GENERIC, "worlds") for p in sorted((ROOT / pkg).rglob("*.py"))]
    assert len(files) > 100  # the scan reads the real tree
    bad = [hit for p in files if str(p.relative_to(ROOT)) not in EXEMPT for hit in _hand_built_seeds(p)]
    assert bad == [], "derive seeds with seeding.derive_seed(seed, purpose, *index):\n" + "\n".join(bad)
    # The scan does find the exempt world formulas, so it is not blind.
    assert _hand_built_seeds(ROOT / "worlds/shapes/evaluate.py")
