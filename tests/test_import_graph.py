"""The import graph of the project's packages, read from the source with `ast` (module-level and function-level
imports alike, since a lazy import is still a dependency): the layers hold and there are no circles.

Layers, bottom up: `seeding/` (the one seed derivation, imports nothing of ours) → `prompts/` (prompt data) →
`rollouts/` (the generator and the rollout step) and `rewards/` → `engines/` (local and Ray engines: they run
generators and reward actors) → `rl/` (the driver). A world (`worlds/<name>/`) plugs into the generic packages by
name, so no generic module imports it; the index package `worlds/__init__.py` and `worlds/manifest.py` are generic.
"""

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("seeding", "prompts", "rollouts", "rewards", "engines", "rl", "worlds")
WORLD_INDEX = {"worlds", "worlds.manifest"}  # the registry of worlds, not a world
# World code inside the generic packages, exempt from the generic-layer rules below: none since worlds/ exists.
SHAPES_WORLD_PREFIXES: tuple[str, ...] = ()
# Circles not yet untangled: none. A new circle fails the test, and so would a listed one that is gone.
KNOWN_CYCLES: list[set[str]] = []


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")) if (ROOT / pkg).is_dir() else []:
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _known(name: str) -> str | None:
    """The project module `name` resolves to: itself, or the nearest package above it that exists."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.update(filter(None, (_known(alias.name) for alias in node.names)))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:  # `from pkg import submodule` depends on the submodule
                target = f"{source}.{alias.name}"
                out.add(target if target in MODULES else _known(source))
    out.discard(None)
    out.discard(module)
    return out


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _cycles() -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(root: str) -> None:
        work = [(root, iter(sorted(GRAPH[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            step = next(edges, None)
            if step is not None:
                if step not in index:
                    index[step] = low[step] = counter[0]
                    counter[0] += 1
                    stack.append(step)
                    on_stack.add(step)
                    work.append((step, iter(sorted(GRAPH[step]))))
                elif step in on_stack:
                    low[node] = min(low[node], index[step])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    comp.add(member)
                    if member == node:
                        break
                if len(comp) > 1:
                    out.append(comp)

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    return out


def _edges(source_ok, target_ok) -> list[str]:
    return sorted(f"{m} -> {t}" for m, targets in GRAPH.items() if source_ok(m) for t in targets if target_ok(t))


def _in(*packages: str):
    return lambda m: m.split(".")[0] in packages


def _generic(m: str) -> bool:
    world = m.startswith(SHAPES_WORLD_PREFIXES) or (m.startswith("worlds.") and m not in WORLD_INDEX)
    return not world


def test_the_graph_is_read_from_the_real_tree():
    some = {"prompts.prompt_sets", "rollouts.rollout", "rewards.suite", "engines.ray_engine", "rl.train_loop"}
    assert some <= set(GRAPH)
    assert "rollouts.rollout" in GRAPH["engines.local_engine"]
    assert "prompts.edit_prompts" in GRAPH["rollouts.rollout"]  # a function-level import counts


def test_no_import_circles():
    found = _cycles()
    new = [sorted(c) for c in found if c not in KNOWN_CYCLES]
    gone = [sorted(c) for c in KNOWN_CYCLES if c not in found]
    assert not new, f"import circles: {new}"
    assert not gone, f"these circles are gone: delete them from KNOWN_CYCLES: {gone}"


def test_seeding_imports_no_project_package():
    assert "seeding" in GRAPH and _edges(_in("seeding"), lambda t: True) == []


def test_prompts_import_only_the_seed_derivation():
    assert _edges(_in("prompts"), lambda t: not _in("prompts", "seeding")(t) and t not in WORLD_INDEX) == []


def test_rewards_never_import_the_generator_the_engines_or_the_driver():
    assert _edges(lambda m: _in("rewards")(m) and _generic(m),
                  lambda t: _in("rollouts", "engines", "rl")(t)) == []


def test_the_generator_never_imports_rewards_engines_or_the_driver():
    assert _edges(lambda m: _in("rollouts")(m) and _generic(m), _in("rewards", "engines", "rl")) == []


def test_engines_never_import_the_driver():
    assert _edges(_in("engines"), _in("rl")) == []


def test_generic_code_never_imports_a_world():
    assert _edges(_generic, lambda t: t.startswith("worlds.") and t not in WORLD_INDEX) == []


def test_the_graph_records_what_it_checks():
    by_package = defaultdict(set)
    for m, targets in GRAPH.items():
        by_package[m.split(".")[0]].update(t.split(".")[0] for t in targets)
    assert by_package["prompts"] <= {"prompts", "worlds", "seeding"}
    assert "seeding" in by_package["prompts"] and "seeding" in by_package["rl"]  # the one derivation is used
    assert "rewards" in by_package["engines"]  # the Ray engine's reward actors: engine code
