"""The model contract (issue 14): model knowledge stays in models/, sparse input equals dense input,
and the README's Python API example runs."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
import torch

from recscale.data.loading.batch import UserBatch
from recscale.data.loading.memory import csr_rows_dense, csr_rows_sparse
from recscale.models.base import DataShape
from recscale.models.registry import MODELS
from tests.helpers import ROOT

SRC = ROOT / "src" / "recscale"
# where the trainer, evaluation and the commands live: they ask models, never test what they are
ASKERS = [*(SRC / "training").glob("*.py"), *(SRC / "evaluation").glob("*.py"), SRC / "recommend.py", *(SRC / "cli").glob("*.py"),
          SRC / "api.py", SRC / "bench.py"]
MODEL_TYPES = {cls.__name__ for cls in MODELS.values()} | {cls.Config.__name__ for cls in MODELS.values()} | {
    base.__name__ for cls in MODELS.values() for base in cls.__mro__ if base.__module__.startswith("recscale.models")}
MODEL_ATTRIBUTES = {f.name for cls in MODELS.values() for f in dataclasses.fields(cls.Config)}


def _problems(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Compare):  # cfg.model == "neumf", name in ("gmf", "mlp")
            for side in [node.left, *node.comparators]:
                names = [c.value for c in ast.walk(side) if isinstance(c, ast.Constant)]
                if any(n in MODELS for n in names):
                    found.append(f"{where}: compares with a model name")
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("isinstance", "hasattr", "getattr"):
            mentioned = {getattr(a, "id", getattr(a, "attr", None)) for arg in node.args for a in ast.walk(arg)}
            mentioned |= {a.value for arg in node.args for a in ast.walk(arg) if isinstance(a, ast.Constant)}
            if mentioned & (MODEL_TYPES | MODEL_ATTRIBUTES):
                found.append(f"{where}: {node.func.id} on a model or its config")
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("recscale.models.") \
                and node.module not in ("recscale.models.base", "recscale.models.registry", "recscale.models.tables"):
            found.append(f"{where}: imports a model module ({node.module})")
        if isinstance(node, ast.Attribute) and node.attr in MODEL_ATTRIBUTES - {"layers", "hidden", "dropout"} \
                and path.parent.name in ("training", "evaluation"):
            found.append(f"{where}: reads a model setting (.{node.attr})")
    return found


def test_no_model_knowledge_outside_the_models():
    problems = [p for path in ASKERS for p in _problems(path)]
    assert problems == []
    names = "|".join(map(re.escape, MODELS))
    for path in [*(SRC / "training").glob("*.py"), *(SRC / "evaluation").glob("*.py")]:
        literals = [c.value for c in ast.walk(ast.parse(path.read_text())) if isinstance(c, ast.Constant)]
        assert not [v for v in literals if isinstance(v, str) and re.fullmatch(names, v)], path


def test_the_scan_would_catch_a_model_test(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f(cfg, model):\n    if cfg.model != 'neumf':\n        pass\n"
                   "    if isinstance(model.cfg, NeuMFConfig):\n        pass\n    return hasattr(model.cfg, 'anneal_cap')\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert len(_problems(bad)) == 3
    finally:
        ROOT = saved


def test_every_model_builds_with_its_default_config():
    shape = DataShape(n_users=5, n_items=7)
    for name, cls in MODELS.items():
        assert isinstance(cls(shape, cls.Config()), cls), name


# ----------------------------------------------------------------------------- sparse input


def _rows(n_users=6, n_items=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    dense = (torch.rand(n_users, n_items, generator=g) < 0.2).float() * torch.randint(1, 6, (n_users, n_items),
                                                                                     generator=g).float()
    dense[:, 0] = 3.0  # every row has an item
    csr = scipy.sparse.csr_matrix(dense.numpy())
    indptr, indices, values = (torch.from_numpy(a.astype(t)) for a, t in
                               ((csr.indptr, "int64"), (csr.indices, "int64"), (csr.data, "float32")))
    users = torch.tensor([4, 0, 5, 2])  # a batch in shuffled order
    return (UserBatch(users, csr_rows_dense(indptr, indices, values, users, n_items)),
            UserBatch(users, None, *csr_rows_sparse(indptr, indices, values, users)))


@pytest.mark.parametrize("name, params", [("multvae", {"hidden": (12,), "latent": 5, "dropout": 0.0, "lam": 0.01}),
                                          ("multdae", {"latent": 5, "dropout": 0.0, "lam": 0.01}),
                                          ("autoencoder", {"hidden": (6, 3)})])
def test_sparse_input_gives_the_dense_loss_and_gradients(name, params):
    dense, sparse = _rows()
    cls = MODELS[name]
    torch.manual_seed(0)
    model = cls(DataShape(6, 40), cls.Config(**params))
    eps = torch.randn(4, 5)
    results = []
    for batch in (dense, sparse):
        model.zero_grad()
        loss = model(batch, beta=0.3, eps=eps).loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss_d, grads_d), (loss_s, grads_s) = results
    assert torch.allclose(loss_d, loss_s, rtol=1e-5, atol=1e-6)
    for n in grads_d:
        assert torch.allclose(grads_d[n], grads_s[n], rtol=1e-4, atol=1e-6), n


def test_sparse_dropout_drops_nonzeros_only_and_keeps_the_expected_input():
    dense, sparse = _rows()
    model = MODELS["multdae"](DataShape(6, 40), MODELS["multdae"].Config(latent=5, dropout=0.5))
    model.train()
    torch.manual_seed(1)
    first = model._encode_input(sparse)  # (B, latent): a weighted sum of the kept items' weight rows
    # the same sum, recomputed from a dense row with the kept items: zeros were never candidates
    assert first.shape == (4, 5)
    kept = []
    torch.manual_seed(1)
    row_of = sparse.row_of_nonzeros()
    norms = torch.zeros(4).index_add_(0, row_of, sparse.values ** 2).sqrt()
    values = torch.nn.functional.dropout(sparse.values / norms[row_of], 0.5, training=True)
    x = torch.zeros(4, 40)
    x[row_of, sparse.indices] = values
    assert torch.allclose(first, model.layers[0].dense(x), atol=1e-6)
    kept.append(int((values != 0).sum()))
    assert 0 < kept[0] < sparse.values.numel()


# ----------------------------------------------------------------------------- the README's API example


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- api-example:begin -->\s*```python\n(.*?)```\s*<!-- api-example:end -->", text, re.S)
    assert match, "README.md has no api-example block"
    return match.group(1)


@pytest.mark.slow
def test_the_readme_api_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_readme_example(), "README.md", "exec"), namespace)
    run, top = namespace["run"], namespace["top"]
    assert (tmp_path / "runs" / "neumf" / "checkpoints" / "best.pt").is_file()
    assert top.columns == ["user", "rank", "item", "score", "fallback", "title", "genres"] and top.height == 20
    assert set(top["user"].to_list()) == {1, 2}
    assert 0 < run.evaluate("test", write=False)["hr@10"] <= 1


# ----------------------------------------------------------------------------- catalog blocks


def test_every_model_scores_the_catalog_in_blocks_as_it_scores_it_whole():
    """catalog_scorer's blocks, concatenated, are score()'s columns, from a dense history and from
    the sparse CSR one that blocked evaluation passes."""
    from recscale.evaluation.blocks import sparse_rows
    n_users, n_items = 6, 40
    dense, _ = _rows(n_users, n_items)
    users, history = dense.users, dense.rows  # (4,), (4, I)
    csr = scipy.sparse.csr_matrix(history.numpy())
    torch.manual_seed(0)
    for name, cls in MODELS.items():
        model = cls(DataShape(n_users=n_users, n_items=n_items), cls.Config()).eval()
        with torch.no_grad():
            for buffer in model.buffers():  # fitted models (EASE, popularity): something to rank
                buffer.copy_(torch.rand(buffer.shape)) if buffer.is_floating_point() else None
            h = history if model.needs_history else None
            whole = model.score(users, h)  # (B, I)
            for given in ([h, sparse_rows(csr, np.arange(4), "cpu")] if model.needs_history else [None]):
                scorer = model.catalog_scorer(users, given)
                blocks = torch.cat([scorer(slice(start, min(n_items, start + 15))) for start in range(0, n_items, 15)], 1)
                torch.testing.assert_close(blocks, whole, msg=name)
                picked = torch.tensor([7, 0, 39, 7])  # any items, in any order, repeated
                torch.testing.assert_close(scorer(picked), whole[:, picked], msg=name)
