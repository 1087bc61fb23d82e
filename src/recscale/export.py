"""`recscale export`: a run -> a self-contained bundle directory, the only thing serving reads.

    BUNDLE/manifest.json        what is in the bundle: model, protocol, dataset digest, recscale
                                version, the graphs with their input/output names, dtypes and shapes,
                                and every other file with its size and SHA-256 (serving/format.py)
    BUNDLE/model.onnx           the scoring graph through torch.onnx (dynamo), dynamic batch dimension
    BUNDLE/model.pt2            the same graph through torch.export
    BUNDLE/users.parquet        user (contiguous) -> original_id
    BUNDLE/items.parquet        item (contiguous) -> original_id, title
    BUNDLE/seen.npz             CSR of every known user's interactions (filtered out of top-k)
    BUNDLE/history.npz          CSR of what a history model reads for a known user
    BUNDLE/popularity.npy       training counts per item (the fallback for an empty history)
    BUNDLE/users.onnx|.pt2 + item_vectors.npy   with a dot-product score: the user-vector graph and
                                the item vectors for a retrieval index (FAISS)
    BUNDLE/fold_in.onnx|.pt2 + vector_scores.onnx|.pt2   pairwise models: a new user's history ->
                                its user vectors (models/foldin.py), and the scores of user vectors

Graphs: models that read a history export `history (B, I) float32 -> scores (B, I)`; pairwise
models (NeuMF, GMF, MLP, embedding MLP) `user (N,) int64, item (N,) int64 -> score (N,)`, and for
new users `items (B, L) int64, mask (B, L) float32 -> vectors (B, D)` (the fold-in) with
`vectors (N, D) float32, item (N,) int64 -> scores (N,)`.
Popularity needs no graph (its scores are popularity.npy). Before the bundle is renamed into
place, ONNX Runtime's scores are checked against PyTorch's on up to 256 inputs (relative 1e-5).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from recscale._version import __version__
from recscale.errors import RecscaleError
from recscale.fsutil import atomic_directory, check_output, json_marker
from recscale.progress import bar
from recscale.recommend import model_inputs
from recscale.serving.format import BUNDLE_VERSION, MANIFEST, file_entries
from recscale.serving.runtime import onnx_session
from recscale.training.run import load_run

FORMATS = ("onnx", "torch")
is_bundle = json_marker(MANIFEST, "bundle_version", "files")
PARITY_RTOL = 1e-5
PARITY_ATOL = 1e-6  # for scores that are (nearly) zero, where a relative tolerance means nothing
# The fold-in graph's vectors come out of its steps through ReLU towers, where the steps amplify
# rounding (measured on 1-epoch NeuMF and MLP runs, ONNX Runtime against PyTorch: 3e-8 apart
# after 5 steps, up to 4e-2 after 20, in float64 as in float32: the dynamics, not the precision);
# a wrong graph is off by the size of the vectors
PARITY_RTOL_OF = {"histories": 1e-1}


def _require_onnx():
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise RecscaleError("--format onnx: needs onnx, onnxscript and onnxruntime "
                            "(pip install 'recscale[export]'), or use --format torch") from None


def example_inputs(kind: str, n_users: int, n_items: int, batch: int = 2, dim: int = 0) -> tuple[torch.Tensor, ...]:
    """Inputs of a graph of `kind` (INPUT_NAMES) for `batch` examples; `dim`: the user vectors' width."""
    g = torch.Generator().manual_seed(batch)
    if kind == "rows":
        return ((torch.rand(batch, n_items, generator=g) < 0.05).float(),)
    if kind == "histories":  # padded histories of 3 items, the first row's last one padding
        mask = torch.ones(batch, 3)
        mask[0, -1] = 0
        return torch.randint(n_items, (batch, 3), generator=g), mask
    if kind == "vector_pairs":
        return torch.randn(batch, dim, generator=g) * 0.1, torch.randint(n_items, (batch,), generator=g)
    users = torch.randint(n_users, (batch,), generator=g)
    return (users,) if kind == "users" else (users, torch.randint(n_items, (batch,), generator=g))


# the graphs' inputs: history rows, (user, item) pairs, or users alone (a pairwise model's user vectors)
# and a pairwise model's fold-in: padded histories, and (user vector, item) pairs
INPUT_NAMES = {"rows": ["history"], "pairs": ["user", "item"], "users": ["user"], "histories": ["items", "mask"],
               "vector_pairs": ["vectors", "item"]}
INPUT_SHAPES = {"history": ("float32", ["batch", "items"]), "user": ("int64", ["batch"]),
                "item": ("int64", ["batch"]), "items": ("int64", ["batch", "length"]),
                "mask": ("float32", ["batch", "length"]), "vectors": ("float32", ["batch", "dim"])}


def _dynamic_shapes(kind: str):
    batch = torch.export.Dim("batch", min=1, max=2**20)
    length = torch.export.Dim("length", min=1, max=2**16)
    return {name: {0: batch, 1: length} if INPUT_SHAPES[name][1][1:] == ["length"] else {0: batch}
            for name in INPUT_NAMES[kind]}


def _signature(kind: str, output: str) -> dict:
    inputs = {name: {"dtype": INPUT_SHAPES[name][0], "shape": INPUT_SHAPES[name][1]} for name in INPUT_NAMES[kind]}
    out_shape = ["batch", "items"] if output == "scores" and kind == "rows" else (
        ["batch"] if output == "scores" else ["batch", "dim"])
    return {"inputs": inputs, "outputs": {output: {"dtype": "float32", "shape": out_shape}}}


def _forward_kwargs(kind: str, inputs: tuple[torch.Tensor, ...]) -> dict:
    return dict(zip(INPUT_NAMES[kind], inputs))


@contextlib.contextmanager
def _quiet_exporters():
    """torch.export and the ONNX exporter log their internals (missing torchvision, deprecations):
    noise for a user who asked for a bundle."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def export_graph(module: torch.nn.Module, kind: str, stem: Path, formats, n_users: int, n_items: int,
                 output: str, dim: int = 0) -> list[str]:
    """Write `stem.pt2` and/or `stem.onnx` for `module`; returns the file names written. A bar
    shows the steps (trace, torch.export file, ONNX export, parity check) on a terminal."""
    steps = 1 + ("torch" in formats) + 2 * ("onnx" in formats)
    with _quiet_exporters(), bar(total=steps, desc=f"export {stem.name}", unit="step") as shown:
        return _export_graph(module, kind, stem, formats, n_users, n_items, output, shown, dim)


def _export_graph(module: torch.nn.Module, kind: str, stem: Path, formats, n_users: int, n_items: int,
                  output: str, shown, dim: int = 0) -> list[str]:
    module = module.eval()
    example = example_inputs(kind, n_users, n_items, dim=dim)
    written = []
    shown.set_postfix_str("tracing (torch.export)")
    try:
        program = torch.export.export(module, example, dynamic_shapes=tuple(_dynamic_shapes(kind).values()))
    except Exception as exc:  # torch.export's own errors: a model it cannot trace
        raise RecscaleError(f"export: torch.export cannot trace this model: {str(exc).splitlines()[0]}") from None
    shown.update()
    if "torch" in formats:
        # Into memory first: torch's archive writer aborts the interpreter when a write fails (full
        # disk); Python's own write raises OSError, which the bundle's atomic directory reports
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        stem.with_suffix(".pt2").write_bytes(buffer.getbuffer())
        written.append(stem.with_suffix(".pt2").name)
        shown.update()
    if "onnx" in formats:
        _require_onnx()
        shown.set_postfix_str("ONNX export")
        try:
            # from the program traced above: the exporter would otherwise trace the module again
            torch.onnx.export(program, example, str(stem.with_suffix(".onnx")), dynamo=True,
                              input_names=INPUT_NAMES[kind], output_names=[output], verbose=False)
        except OSError:
            raise  # a full disk or a read-only folder: reported by the bundle's atomic directory
        except Exception as exc:
            raise RecscaleError(f"export: the ONNX exporter failed: {str(exc).splitlines()[0]}") from None
        written.append(stem.with_suffix(".onnx").name)
        shown.update()
        shown.set_postfix_str("parity check (ONNX Runtime against the model)")
        check_parity(module, stem.with_suffix(".onnx"), kind, n_users, n_items, output, dim=dim)
        shown.update()
    return written


def check_parity(module: torch.nn.Module, onnx_path: Path, kind: str, n_users: int, n_items: int, output: str,
                 batch: int = 256, dim: int = 0) -> float:
    """ONNX Runtime against PyTorch on `batch` inputs; returns the largest relative difference and
    raises when it exceeds PARITY_RTOL (PARITY_RTOL_OF for some kinds; beyond PARITY_ATOL)."""
    session = onnx_session(onnx_path)
    inputs = example_inputs(kind, n_users, n_items, batch, dim)
    with torch.no_grad():
        expected = module(*inputs).numpy()
    got = session.run([output], {name: t.numpy() for name, t in zip(INPUT_NAMES[kind], inputs)})[0]
    worst = float(np.max(np.abs(got - expected) / (np.abs(expected) + PARITY_ATOL / PARITY_RTOL)))
    if worst > PARITY_RTOL_OF.get(kind, PARITY_RTOL):
        raise RecscaleError(f"export: ONNX Runtime's scores differ from PyTorch's by {worst:.2e} (relative); "
                            f"use --format torch")
    return worst


def _csr(matrix: sp.csr_matrix, path: Path) -> None:
    np.savez(path, indptr=matrix.indptr.astype(np.int64), indices=matrix.indices.astype(np.int32),
             shape=np.array(matrix.shape, dtype=np.int64))


def export_run(run: str | Path, out: str | Path, formats=FORMATS, checkpoint: str = "best",
               overwrite: bool = False) -> dict:
    """Write the bundle of `run` to `out` (atomically); returns the manifest."""
    formats = tuple(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise RecscaleError(f"--format: choose from {', '.join(FORMATS)} (several allowed), got {', '.join(formats)}")
    if "onnx" in formats:
        _require_onnx()
    out = Path(out)
    loaded = load_run(run, "cpu", checkpoint)  # reads only: the output is checked before anything is written
    model, data, cfg = loaded.model.eval(), loaded.data, loaded.config
    check_output(out, "bundle", is_bundle, overwrite, (run, data.root))
    kind = model.scoring_kind
    scorer = model.scoring_module()
    retrieval = model.retrieval()
    inputs, seen = model_inputs(data)
    with atomic_directory(out, overwrite=overwrite) as tmp:
        graphs = {}
        if scorer is not None:
            files = export_graph(scorer, kind, tmp / "model", formats, data.n_users, data.n_items, "scores")
            graphs["scores"] = {"files": files, **_signature(kind, "scores")}
        if retrieval is not None:
            vector_kind = "rows" if kind == "rows" else "users"
            files = export_graph(retrieval.user_module, vector_kind, tmp / "users", formats, data.n_users,
                                 data.n_items, "vectors")
            np.save(tmp / "item_vectors.npy", retrieval.item_vectors.float().numpy())
            graphs["user_vectors"] = {"files": files, "item_vectors": "item_vectors.npy",
                                      "dim": int(retrieval.item_vectors.shape[1]),
                                      **_signature(vector_kind, "vectors")}
        fold_in = model.fold_in_modules()
        if fold_in:  # a pairwise model: the server folds new users in through these two graphs
            dim = int(model.fold_in_start().shape[0])
            files = export_graph(fold_in["fold_in"], "histories", tmp / "fold_in", formats, data.n_users,
                                 data.n_items, "vectors", dim)
            graphs["fold_in"] = {"files": files, "dim": dim, "pool": int(fold_in["fold_in"].pool.numel()),
                                 **_signature("histories", "vectors")}
            files = export_graph(fold_in["vector_scores"], "vector_pairs", tmp / "vector_scores", formats,
                                 data.n_users, data.n_items, "scores", dim)
            graphs["vector_scores"] = {"files": files, "dim": dim, **_signature("vector_pairs", "scores")}
        users = data.table("users").select("user", "original_id")
        users.write_parquet(tmp / "users.parquet")
        items = data.table("items")
        items.select("item", "original_id", *(["title"] if "title" in items.columns else [])).write_parquet(
            tmp / "items.parquet")
        _csr(seen, tmp / "seen.npz")
        _csr(inputs, tmp / "history.npz")
        popularity = data.item_counts().astype(np.float32)
        np.save(tmp / "popularity.npy", popularity)
        meta_digest = hashlib.sha256((data.root / "meta.json").read_bytes()).hexdigest()
        manifest = {
            "bundle_version": BUNDLE_VERSION, "recscale_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "run": str(Path(run).absolute()), "checkpoint": loaded.checkpoint,
            "model": cfg.model, "model_config": _plain(loaded.model_config), "kind": kind,
            "protocol": data.protocol, "dataset": {"name": data.meta["source"]["dataset"], "meta_sha256": meta_digest},
            "n_users": data.n_users, "n_items": data.n_items, "fold_in": model.scores_new_users and scorer is not None,
            "formats": list(formats), "graphs": graphs,
            "retrieval": retrieval is not None,
            "files": file_entries(tmp),  # name -> bytes and SHA-256, checked by every reader
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _plain(cfg) -> dict:
    import dataclasses
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}

