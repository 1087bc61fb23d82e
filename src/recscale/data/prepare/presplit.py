"""Splits made elsewhere, imported as they are, so that results compare with other tools (and with
the NCF paper) on the very same split.

- `import_split`: train/valid/test files (any layout `read_interactions` reads) under the `ncf`
  or `random` protocol; under `vae`, train plus fold-in and held-out files of the validation and
  test users. NCF evaluation negatives are sampled unless given.
- `read_ncf_paper`: the NCF paper's NAME.train.rating, NAME.test.rating and NAME.test.negative
  (ml-1m, pinterest-20), with the paper's own 99 test negatives per user.
- `import_files`, `import_ncf_paper`: the two as `prepare` runs them, from its input and settings.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import polars as pl

from recscale.config.fields import option
from recscale.config.prepare import PrepareConfig
from recscale.data.ingest.inputs import RawInput
from recscale.data.ingest.raw import RawDataset
from recscale.data.ingest.readers import INTERACTION_KINDS, canonical_interactions, read_delimited
from recscale.data.prepare.filters import check_finite, latest_per_pair
from recscale.data.prepare.ids import encode_ids, encode_text_ids, id_map, sorted_id_maps
from recscale.data.prepare.output import refuse_existing, write_prepared
from recscale.errors import RecscaleError

PARTS = {"ncf": (("train", "test"), ("valid",)), "random": (("train", "test"), ("valid",)),
         "temporal": (("train", "test"), ("valid",)),
         "vae": (("train", "valid_foldin", "valid_heldout", "test_foldin", "test_heldout"), ())}


@dataclasses.dataclass(frozen=True)
class SplitFiles:
    """A split made elsewhere: its fields are `recscale prepare`'s flags (and `recscale.prepare`'s options)."""

    train_file: str | None = option(None, "import a split made elsewhere: its training interactions (read like "
                                    "--ratings); with --test-file and optionally --valid-file")
    valid_file: str | None = option(None, "the imported split's validation interactions (vae: fold-in part of "
                                    "the validation users)")
    test_file: str | None = option(None, "the imported split's test interactions (vae: fold-in part of the test "
                                   "users)")
    valid_heldout_file: str | None = option(None, "vae: held-out part of the validation users")
    test_heldout_file: str | None = option(None, "vae: held-out part of the test users")

    def given(self, protocol: str) -> dict[str, str]:
        """{part: path} of the files given; under `vae` the valid/test files are the fold-in parts."""
        renamed = {"valid_file": "valid_foldin", "test_file": "test_foldin"} if protocol == "vae" else {}
        return {renamed.get(f.name, f.name.removesuffix("_file")): getattr(self, f.name)
                for f in dataclasses.fields(self) if getattr(self, f.name)}


def import_files(source: RawInput, files: SplitFiles, cfg: PrepareConfig, out: Path, overwrite: bool = False) -> dict:
    """--train-file etc.: a split made elsewhere, each file read with `source`'s column rules."""
    if source.dataset or source.format or source.ratings:
        raise RecscaleError("--train-file: imports a ready split; do not combine with --dataset/--format/--ratings")
    given = files.given(cfg.protocol)
    parts = {part: source.read_file(path) for part, path in given.items()}
    paths = tuple(Path(p) for p in [*given.values(), source.movies] if p)
    return import_split(Path(files.train_file).stem, parts, cfg.protocol, Path(out), paths, source.items(),
                        test_negatives=cfg.test_negatives, seed=cfg.seed, overwrite=overwrite)


def import_ncf_paper(source: RawInput, cfg: PrepareConfig, out: Path, overwrite: bool = False) -> dict:
    """The NCF paper's files of --raw-dir or of a dataset named ncf-NAME, with their own negatives."""
    source.check()
    if cfg.protocol != "ncf":
        raise RecscaleError("--protocol: the NCF paper's split is an ncf split")
    name = source.dataset[len("ncf-"):] if source.dataset else None
    name, parts, negatives, paths = read_ncf_paper(source.files_root(), name)
    return import_split(f"ncf-{name}", parts, "ncf", Path(out), paths, negatives=negatives, seed=cfg.seed,
                        overwrite=overwrite)


def import_split(name: str, parts: dict[str, pl.DataFrame], protocol: str, out: Path, files: tuple[Path, ...] = (),
                 item_features: pl.DataFrame | None = None, negatives: dict[str, pl.DataFrame] | None = None,
                 test_negatives: int = 100, seed: int = 0, overwrite: bool = False) -> dict:
    """Write a prepared dataset from ready parts (canonical columns, original ids)."""
    if protocol not in PARTS:  # seq: the sequence order across parts is not imported yet
        raise RecscaleError(f"--protocol {protocol}: no pre-split import; give the whole log (--ratings) and "
                            f"let prepare split it")
    required, optional = PARTS[protocol]
    missing = [p for p in required if p not in parts]
    unknown = [p for p in parts if p not in required + optional]
    if missing or unknown:
        raise RecscaleError(f"--protocol {protocol}: a pre-split import needs {', '.join(required)}"
                            + (f" (optional: {', '.join(optional)})" if optional else "")
                            + (f"; missing {', '.join(missing)}" if missing else "")
                            + (f"; unexpected {', '.join(unknown)}" if unknown else ""))
    out = Path(out)
    refuse_existing(out, overwrite, files)
    for k, v in parts.items():
        check_finite(v, k)
    negatives = negatives or {}
    frames, names = encode_text_ids({**{k: canonical_interactions(v) for k, v in parts.items()},
                                     **{f"{k}_negatives": _as_interactions(v) for k, v in negatives.items()}})
    parts = {k: latest_per_pair(frames[k]).drop("_line", "_tie") for k in parts}
    negatives = {k: frames[f"{k}_negatives"].select("user", "item") for k in negatives}
    if protocol == "vae":
        groups = {"train": parts["train"], "valid": parts["valid_foldin"], "test": parts["test_foldin"]}
        ids = {g: np.sort(p["user"].unique().to_numpy()) for g, p in groups.items()}
        overlap = np.intersect1d(ids["train"], np.concatenate([ids["valid"], ids["test"]]))
        if overlap.size or np.intersect1d(ids["valid"], ids["test"]).size:
            raise RecscaleError("--protocol vae: training, validation and test users must be disjoint")
        users = id_map(np.concatenate([ids[g] for g in groups]), "user", names).with_columns(
            pl.Series("group", np.repeat(list(groups), [ids[g].size for g in groups])))
        items = id_map(np.sort(parts["train"]["item"].unique().to_numpy()), "item", names)
    else:
        users, items = sorted_id_maps(pl.concat([p.select("user", "item") for p in parts.values()]
                                                + [n.select("user", "item") for n in negatives.values()]), names)
    encoded = {k: encode_ids(v, users, items) for k, v in parts.items()}
    params: dict = {"imported": True, "seed": seed, "tie_break": "file"}
    if protocol == "ncf":
        for split_name, split in encoded.items():
            if split_name != "train" and split["user"].is_duplicated().any():
                raise RecscaleError(f"--protocol ncf: the {split_name} split must hold one interaction per user")
        if negatives:
            for split_name, frame in negatives.items():
                encoded[f"{split_name}_negatives"] = _ordered_negatives(frame, users, items, encoded[split_name])
            test_negatives = encoded["test_negatives"].height // max(encoded["test"].height, 1)
            if test_negatives < 1:
                raise RecscaleError("the test negatives file gives no negative per test user; every metric "
                                    "would be 1.0")
        params |= {"valid": "valid" in encoded, "test_negatives": test_negatives}
    raw = RawDataset(name, pl.DataFrame(), item_features, files)
    return write_prepared(raw, protocol, encoded, users, items, params, out, overwrite, test_negatives, seed)


def _ordered_negatives(frame: pl.DataFrame, users: pl.DataFrame, items: pl.DataFrame,
                       split: pl.DataFrame) -> pl.DataFrame:
    """Encoded (user, item) negatives, grouped by user in the order of the split's rows, the same
    number for every user (the layout PreparedDataset.negatives reads)."""
    encoded = (frame.with_row_index("_order")
               .join(users.select(pl.col("user").alias("_u"), "_key"), left_on="user", right_on="_key")
               .join(items.select(pl.col("item").alias("_i"), "_key"), left_on="item", right_on="_key"))
    if encoded.height != frame.height:
        raise RecscaleError("test negatives name users or items that are in no split")
    per_user = encoded.group_by("_u").len()
    if per_user["len"].n_unique() != 1 or per_user.height != split.height:
        raise RecscaleError("test negatives: every evaluated user needs the same number of negatives")
    order = split.select(pl.col("user").alias("_u")).with_row_index("_split_order")
    return (encoded.join(order, on="_u").sort("_split_order", "_order")
                   .select(pl.col("_u").alias("user"), pl.col("_i").alias("item")))


def _as_interactions(frame: pl.DataFrame) -> pl.DataFrame:
    """(user, item) pairs with the interaction columns, so that ids are numbered like the parts'."""
    return canonical_interactions(frame.select("user", "item").with_columns(
        pl.lit(1.0).alias("rating"), pl.lit(0).alias("timestamp")))


NEGATIVE_KEY = re.compile(r"^\((\d+),(\d+)\)$")


def _read_ncf_negatives(path: Path) -> pl.DataFrame:
    """NAME.test.negative: '(user,item)' then the user's negatives, tab-separated, one user a line."""
    users, items = [], []
    with open(path, encoding="utf-8", newline="") as handle:
        for number, line in enumerate(handle, 1):
            fields = line.rstrip("\r\n").split("\t")
            if not fields[0].strip():
                continue
            key = NEGATIVE_KEY.match(fields[0].strip())
            if not key or not all(f.strip().isdigit() for f in fields[1:] if f.strip()):
                raise RecscaleError(f"{path}:{number}: expected '(user,item)' and integer item ids, tab-separated")
            negatives = [int(f) for f in fields[1:] if f.strip()]
            users += [int(key.group(1))] * len(negatives)
            items += negatives
    return pl.DataFrame({"user": users, "item": items}, schema={"user": pl.Int64, "item": pl.Int64})


def read_ncf_paper(root: Path, name: str | None = None) -> tuple[str, dict, dict, tuple[Path, ...]]:
    """(name, parts, negatives, files) of the NCF paper's split in `root`."""
    root = Path(root)
    if name is None:
        found = sorted(p.name[: -len(".train.rating")] for p in root.glob("*.train.rating"))
        if len(found) != 1:
            raise RecscaleError(f"{root}: expected one NAME.train.rating (found {len(found)})")
        name = found[0]
    paths = [root / f"{name}.{suffix}" for suffix in ("train.rating", "test.rating", "test.negative")]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise RecscaleError(f"{root}: missing {', '.join(missing)}")
    parts = {"train": read_delimited(paths[0], "\t", INTERACTION_KINDS),
             "test": read_delimited(paths[1], "\t", INTERACTION_KINDS)}
    return name, parts, {"test": _read_ncf_negatives(paths[2])}, tuple(paths)
