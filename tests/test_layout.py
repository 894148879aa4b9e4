"""The package's layout holds: four wings (data, models, training, evaluation) and the commands
above them, no import circle, at most 7 floors, and the paths users hold still import.

Every import counts, those inside functions too: a circle held together by imports inside
functions is still a circle for whoever reads the code. ``python tests/test_layout.py`` prints
the figures (floors, circles, the longest module, what one training step reads)."""

from __future__ import annotations

import ast
import functools
import importlib
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "covid_ddp"
MAX_FLOORS = 7
# Which wing may import which: a module of the key's wing imports nothing of the values'.
FORBIDDEN = {
    "data": ("models", "training", "evaluation", "commands"),
    "models": ("training", "evaluation", "commands"),
    "training": ("evaluation", "commands"),
    "evaluation": ("commands",),
}
SHIM = "covid_ddp.model"  # the old home of Net, kept for users' imports; nothing of ours imports it


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imported(module: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The package's modules an import statement names."""
    if isinstance(node, ast.Import):
        candidates = [alias.name for alias in node.names]
    else:
        package = module if modules()[module].name == "__init__.py" else module.rpartition(".")[0]
        if node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        candidates = [f"{prefix}.{alias.name}" for alias in node.names] + [prefix]
    found = []
    for name in candidates:
        while name and name not in modules():
            name = name.rpartition(".")[0]
        if name and name.startswith("covid_ddp.") and name != module:
            found.append(name)
    return found


@functools.cache
def graph() -> dict[str, frozenset[str]]:
    """module -> the package modules it imports (anywhere in it), subpackage __init__ files aside."""
    edges = {}
    for module, path in modules().items():
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        named = {target for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                 for target in _imported(module, node)}
        edges[module] = frozenset(name for name in named if modules()[name].name != "__init__.py")
    return edges


def circles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    edges, index, low, stack, on_stack, found = graph(), {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in edges[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    return found


def floors() -> dict[str, int]:
    """A module's floor: 1 + the highest floor it imports (1: imports nothing of the package's)."""
    edges = graph()

    @functools.cache
    def floor(module: str) -> int:
        return 1 + max((floor(other) for other in edges[module]), default=0)

    return {module: floor(module) for module in edges}


def reads(module: str) -> set[str]:
    """The modules one must read to follow ``module`` all the way down."""
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(graph()[current])
    return seen


def lines(module: str) -> int:
    return len(modules()[module].read_text().splitlines())


def wing(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else None


# --- the tests ------------------------------------------------------------------------------


def test_no_import_circle():
    assert circles() == []


def test_at_most_seven_floors():
    floor = floors()
    chain, module = [], max(floor, key=floor.get)
    while module:  # the longest chain, for the message
        chain.append(module)
        below = [other for other in graph()[module] if floor[other] == floor[module] - 1]
        module = below[0] if below else None
    assert max(floor.values()) <= MAX_FLOORS, " -> ".join(chain)


def test_no_wing_imports_one_above_it():
    wrong = [f"{module} -> {other}" for module, imported in graph().items() for other in imported
             if wing(module) in FORBIDDEN and wing(other) in FORBIDDEN[wing(module)]]
    assert wrong == []


def test_the_old_home_of_net_is_imported_by_no_module_of_ours():
    assert [module for module, imported in graph().items() if SHIM in imported] == []


def test_the_commands_are_imported_only_by_their_launchers():
    importers = [f"{module} -> {other}" for module, imported in graph().items() for other in imported
                 if wing(other) == "commands" and wing(module) != "commands"]
    assert importers == []
    launchers = {path.name: path.read_text() for path in (PACKAGE.parent / "launch").glob("*.py")}
    assert all("from covid_ddp.commands." in text for text in launchers.values()), "launch/*.py call the commands"


def test_the_names_users_hold_still_import():
    import covid_ddp
    from covid_ddp.model import Net as old_home_net

    assert old_home_net is covid_ddp.Net
    for name in ("load_model", "predict", "gradcam", "train", "evaluate", "update_model_card"):
        assert callable(getattr(covid_ddp, name)) and not isinstance(getattr(covid_ddp, name), type(covid_ddp)), name
    for name in ("TrainConfig", "TrainedRun", "EvaluationResult", "Ensemble", "Net"):
        assert isinstance(getattr(covid_ddp, name), type), name
    importlib.import_module("covid_ddp.training.trainer")  # importing a module of a function's name keeps the function
    assert callable(covid_ddp.train) and callable(covid_ddp.predict) and callable(covid_ddp.gradcam)


def main() -> None:
    floor, edges = floors(), graph()
    longest = max(edges, key=lines)
    step = reads("covid_ddp.commands.train")
    print(f"modules: {len(edges)} ({sum(lines(module) for module in edges)} lines)")
    print(f"floors: {max(floor.values())}; circles: {len(circles())}")
    print(f"longest module: {longest} ({lines(longest)} lines)")
    print(f"covid-ddp-train reads {len(step)} modules ({sum(lines(module) for module in step)} lines)")
    trainer = reads("covid_ddp.training.trainer") - reads("covid_ddp.data.sets") - {"covid_ddp.training.trainer"}
    print(f"the trainer's own modules below it, data loading aside: {len(trainer)}")
    for level in range(1, max(floor.values()) + 1):
        print(f"  floor {level}: " + ", ".join(sorted(m.removeprefix("covid_ddp.") for m in edges if floor[m] == level)))


if __name__ == "__main__":
    sys.path.insert(0, str(PACKAGE.parent))
    main()
