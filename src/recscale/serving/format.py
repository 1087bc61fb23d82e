"""The bundle format: what `recscale export` writes and the only thing serving reads.

A bundle is data, never code. Its manifest lists every file with its size and SHA-256; a reader
checks the manifest's shape (version, kinds, types) and every file before it uses any of them, so
a bundle copied from anywhere is either exactly what an export wrote or refused in one line naming
the file. `export` writes through `file_entries` and `BUNDLE_VERSION` here, never the other way
round (serving does not import the training stack).

Files that could run code when loaded are refused unless the user says they trust the bundle:
torch.export programs (`.pt2`) are loaded with `torch.export.load`, which unpickles.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, Optional

from recscale.errors import RecscaleError
from recscale.fsutil import sha256_file

BUNDLE_VERSION = 2  # 2: every file listed with its size and SHA-256
MANIFEST = "manifest.json"
# Files a bundle reader could pick up by its suffix: one of these that the manifest does not list
# is refused (it is not what the export wrote); anything else in the directory is ignored.
BUNDLE_SUFFIXES = (".onnx", ".pt2", ".npy", ".npz", ".parquet", ".json", ".data")
CODE_SUFFIXES = (".pt2",)  # loading them unpickles: opt-in only (--trust-bundle)


def file_entries(root: Path) -> dict[str, dict]:
    """{name: {"bytes", "sha256"}} of every file directly in `root` (the manifest excluded)."""
    return {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(root.iterdir()) if p.is_file() and p.name != MANIFEST}


def _schema():
    """The manifest's schema (pydantic, which the serving extra brings), built on first use."""
    try:
        from pydantic import BaseModel, ConfigDict, Field
    except ImportError:
        raise RecscaleError("serving a bundle needs pydantic (pip install 'recscale[serve]')") from None

    class Strict(BaseModel):
        model_config = ConfigDict(extra="allow", strict=True)

    class FileEntry(Strict):
        bytes: int = Field(ge=0)
        sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    class GraphSpec(Strict):
        files: list[str] = Field(min_length=1)
        inputs: dict[str, Any] = Field(min_length=1)
        outputs: dict[str, Any] = Field(min_length=1, max_length=1)
        item_vectors: Optional[str] = None
        dim: Optional[int] = Field(default=None, ge=1)

    class Graphs(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        scores: Optional[GraphSpec] = None
        user_vectors: Optional[GraphSpec] = None
        fold_in: Optional[GraphSpec] = None        # pairwise models: histories -> user vectors
        vector_scores: Optional[GraphSpec] = None  # (user vector, item) -> score

    class Manifest(Strict):
        bundle_version: Literal[2]
        recscale_version: str
        model: str = Field(min_length=1)
        kind: Optional[Literal["rows", "pairs"]]
        protocol: str
        dataset: dict[str, Any]
        n_users: int = Field(ge=1)
        n_items: int = Field(ge=1)
        fold_in: bool
        retrieval: bool
        formats: list[str]
        graphs: Graphs
        files: dict[str, FileEntry]

    return Manifest


def read_manifest(root: Path) -> tuple[dict, str]:
    """The manifest of the bundle in `root`, checked against the schema (one-line errors), and the
    SHA-256 of its bytes: the bundle's digest (the manifest lists every file's own SHA-256)."""
    path = root / MANIFEST
    if not root.is_dir():
        raise RecscaleError(f"--bundle: {root}: not a directory")
    try:
        text = path.read_bytes()
        raw = json.loads(text.decode("utf-8"))
    except FileNotFoundError:
        raise RecscaleError(f"--bundle: {root} is not a bundle (no {MANIFEST}; run `recscale export`)") from None
    except (OSError, ValueError) as exc:
        raise RecscaleError(f"--bundle: {path}: unreadable: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise RecscaleError(f"--bundle: {path}: expected a JSON object")
    if raw.get("bundle_version") != BUNDLE_VERSION:
        raise RecscaleError(f"--bundle: {path}: bundle version {raw.get('bundle_version')!r}, this recscale reads "
                            f"version {BUNDLE_VERSION} (export the run again)")
    from pydantic import ValidationError
    try:
        checked = _schema().model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        raise RecscaleError(f"--bundle: {path}: {where}: {error['msg']}") from None
    return checked.model_dump(), hashlib.sha256(text).hexdigest()


def verify_files(root: Path, manifest: dict) -> None:
    """Every listed file present, a plain file directly in `root`, of the listed size and SHA-256;
    every file a graph names listed; no unlisted file that a reader could take for part of it."""
    listed = manifest["files"]
    for name, entry in listed.items():
        path = root / name
        if Path(name).name != name or name in ("", ".", "..", MANIFEST):
            raise RecscaleError(f"--bundle: {root / MANIFEST}: files: {name!r} is not a file name in the bundle")
        if path.is_symlink() or not path.is_file():
            raise RecscaleError(f"--bundle: {path}: {'missing' if not path.exists() else 'not a plain file'} "
                                f"(listed in {MANIFEST})")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise RecscaleError(f"--bundle: {path}: {size} bytes, the manifest says {entry['bytes']} (truncated or "
                                f"altered)")
        if sha256_file(path) != entry["sha256"]:
            raise RecscaleError(f"--bundle: {path}: SHA-256 differs from the manifest's (altered)")
    for graph, spec in manifest["graphs"].items():
        if spec is None:
            continue
        for name in [*spec["files"], *([spec["item_vectors"]] if spec.get("item_vectors") else [])]:
            if name not in listed:
                raise RecscaleError(f"--bundle: {root / MANIFEST}: graphs.{graph}: {name!r} is not listed in files")
    extra = sorted(p.name for p in root.iterdir()
                   if p.name != MANIFEST and p.name not in listed and p.suffix in BUNDLE_SUFFIXES)
    if extra:
        raise RecscaleError(f"--bundle: {root / extra[0]}: not listed in {MANIFEST} (not part of the export; "
                            f"remove it)")


def open_bundle_files(root: Path) -> tuple[dict, str]:
    """The checked manifest of `root` after every file was verified, and the bundle's digest."""
    manifest, digest = read_manifest(root)
    verify_files(root, manifest)
    return manifest, digest
