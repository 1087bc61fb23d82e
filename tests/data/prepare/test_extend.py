"""`prepare --extend PARENT` (issue 30, id maps that grow): every user and item of yesterday's
dataset keeps its number in today's, new ones are appended, both engines alike; a parent prepared
otherwise is refused in one line."""

from __future__ import annotations

import json
import subprocess
import sys

import polars as pl
import pytest

from recscale.config.prepare import PrepareConfig
from recscale.data.dataset.prepared import PreparedDataset
from recscale.data.ingest.raw import RawDataset
from recscale.data.ingest.readers import read_interactions
from recscale.data.ingest.scan import ratings_source
from recscale.data.prepare.memory import prepare
from recscale.data.prepare.stream import prepare_stream
from recscale.errors import RecscaleError
from tests.helpers import growing_logs


def _prepare(path, cfg, out, engine):
    if engine == "memory":
        return prepare(RawDataset(path.stem, read_interactions(path), None, (path,)), cfg, out)
    return prepare_stream(ratings_source(path), cfg, out, rows_per_bucket=60)


@pytest.mark.parametrize("protocol", ["ncf", "random", "temporal", "vae"])
@pytest.mark.parametrize("text_ids", [False, True])
def test_the_parents_numbers_are_kept_and_new_ids_appended(tmp_path, protocol, text_ids):
    old, new = growing_logs(tmp_path, text_ids)
    base = PrepareConfig(protocol=protocol, test_negatives=5, heldout_users=4, min_rating=1)
    _prepare(old, base, tmp_path / "parent", "memory")
    cfg = PrepareConfig(**{**base.__dict__, "extend": str(tmp_path / "parent")})
    engines = ["memory"] if protocol == "vae" else ["memory", "stream"]
    for engine in engines:
        _prepare(new, cfg, tmp_path / engine, engine)
    parent, child = PreparedDataset(tmp_path / "parent"), PreparedDataset(tmp_path / "memory")
    for kind in ("users", "items"):
        before, after = parent.table(kind)["original_id"], child.table(kind)["original_id"]
        assert after.head(before.len()).equals(before), kind  # same original id at every old number
        assert after.len() > before.len() and after.n_unique() == after.len(), kind
    assert parent.original_user_ids()[5] in child.original_user_ids()  # gone today, number kept
    # the interactions read back to the same original ids
    train = child.table("train")
    users, items = child.original_user_ids(), child.original_item_ids()
    decoded = set(zip(users[train["user"].to_numpy()].tolist(), items[train["item"].to_numpy()].tolist()))
    raw = pl.read_csv(new, schema_overrides={"userId": pl.Utf8, "movieId": pl.Utf8})
    cast = (lambda v: v) if text_ids else int
    assert decoded <= {(cast(u), cast(i)) for u, i in zip(raw["userId"], raw["movieId"])}
    record = child.meta["protocol"]["parent"]
    assert record["users"] == parent.n_users and len(record["meta_sha256"]) == 64
    if "stream" in engines:  # the streaming engine writes what the in-memory one writes
        a, b = (json.loads((tmp_path / e / "meta.json").read_text()) for e in engines)
        assert {k: v for k, v in a.items() if k != "sha256"} == {k: v for k, v in b.items() if k != "sha256"}
        for name in a["files"].values():
            assert pl.read_parquet(tmp_path / "memory" / name).equals(pl.read_parquet(tmp_path / "stream" / name)), name


def test_a_parent_prepared_otherwise_is_refused_in_one_line(tmp_path):
    old, new = growing_logs(tmp_path, False)
    _prepare(old, PrepareConfig(protocol="ncf", test_negatives=5), tmp_path / "parent", "memory")
    for cfg, message in ((PrepareConfig(protocol="random", extend=str(tmp_path / "parent")), "protocol 'ncf'"),
                         (PrepareConfig(protocol="ncf", min_rating=3, test_negatives=5, extend=str(tmp_path / "parent")),
                          "min_rating")):
        with pytest.raises(RecscaleError, match=message):
            _prepare(new, cfg, tmp_path / "child", "memory")
        assert not (tmp_path / "child").exists()
    out = subprocess.run([sys.executable, "-m", "recscale", "prepare", "--ratings", str(new), "--protocol", "random",
                          "--extend", str(tmp_path / "parent"), "--out", str(tmp_path / "cli")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "--extend" in out.stderr and len(out.stderr.strip().splitlines()) == 1
