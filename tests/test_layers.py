"""The layer rule (README, Code layout): a module imports only from its own layer or lower ones;
serving only from the lowest layers and itself; models only torch, the batch types and config."""

import ast
from pathlib import Path

import pytest

from tests.helpers import ROOT

PACKAGE = ROOT / "src" / "recscale"

# lowest first; a module belongs to the longest prefix listed
LAYERS = [
    ("recscale.errors", "recscale.fsutil", "recscale.resources", "recscale._version", "recscale.tensorfiles",
     "recscale.ranking", "recscale.progress"),
    ("recscale.config",),
    ("recscale.data", "recscale.data.ingest", "recscale.data.dataset", "recscale.serving"),
    ("recscale.data.prepare", "recscale.data.loading"),
    ("recscale.models", "recscale.optim"),
    ("recscale.parallel", "recscale.evaluation"),
    ("recscale.training",),
    ("recscale.recommend", "recscale.export", "recscale.tuning", "recscale.bench"),
    ("recscale.api", "recscale"),  # the facade: its names come from api
    ("recscale.cli", "recscale.__main__"),
]
LEVEL = {prefix: level for level, prefixes in enumerate(LAYERS) for prefix in prefixes}
# packages that may import less than their level allows: (allowed prefixes besides their own)
NARROW = {
    "recscale.serving": tuple(LAYERS[0]) + LAYERS[1],
    "recscale.models": tuple(LAYERS[0][:1]) + ("recscale.config", "recscale.data.loading.batch"),
}


def owner(module: str, table) -> str | None:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in table:
            return ".".join(parts[:n])
    return None


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


def imported(path: Path, module: str):
    """(line, imported module) for every recscale import, also inside functions; `from recscale
    import x` names the submodule x when there is one."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("recscale"):
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if not base.startswith("recscale"):
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                is_module = (PACKAGE.parent / Path(*candidate.split("."))).with_suffix(".py").exists() or \
                    (PACKAGE.parent / Path(*candidate.split("."))).is_dir()
                yield node.lineno, candidate if is_module else base


def violations(root: Path = PACKAGE) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(path)
        home = owner(module, LEVEL)
        assert home is not None, f"{module}: in no layer (add it to LAYERS and to README's Code layout)"
        narrow = owner(module, NARROW)
        for line, target in imported(path, module):
            there = owner(target, LEVEL)
            if there is None or target.startswith(narrow or "\0") or there == home:
                continue
            if narrow is not None and not any(target == p or target.startswith(p + ".") for p in NARROW[narrow]):
                found.append(f"{path.relative_to(root.parent)}:{line}: {module} ({narrow}) imports {target}")
            elif LEVEL[there] > LEVEL[home]:
                found.append(f"{path.relative_to(root.parent)}:{line}: {module} (layer {LEVEL[home]}) imports "
                             f"{target} (layer {LEVEL[there]})")
    return sorted(set(found))


def test_no_import_runs_back_up_the_layers():
    assert violations() == []


def _violations_of(tmp_path, where: str, source: str) -> list[str]:
    """The scan over a package holding one module, `where`, with `source`."""
    global PACKAGE
    root = tmp_path / "recscale"
    (root / where).parent.mkdir(parents=True)
    (root / where).write_text(source)
    saved, PACKAGE = PACKAGE, root
    try:
        return violations(root)
    finally:
        PACKAGE = saved


@pytest.mark.parametrize("source, rule", [
    ("from recscale.training.run import load_run\n", "layer 2"),    # a dataset module reaching into training
    ("from recscale.evaluation.metrics import ndcg\n", "layer 2"),
])
def test_the_scan_catches_an_import_up_the_layers(tmp_path, source, rule):
    found = _violations_of(tmp_path, "data/dataset/leak.py", source)
    assert len(found) == 1 and rule in found[0], found


@pytest.mark.parametrize("where, source", [
    ("serving/leak.py", "from recscale.data.dataset.prepared import PreparedDataset\n"),  # serving reads bundles only
    ("models/leak.py", "from recscale.data.loading.factory import training_loader\n"),   # models never load
])
def test_the_scan_holds_serving_and_models_to_their_narrow_rule(tmp_path, where, source):
    found = _violations_of(tmp_path, where, source)
    assert len(found) == 1 and "imports" in found[0], found
