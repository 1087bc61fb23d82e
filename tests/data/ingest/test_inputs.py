"""data/ingest/inputs.py: the command line and the API resolve an input by the same rules."""

import json
import subprocess
import sys

import polars as pl
import pytest

import recscale
from recscale.data.ingest.inputs import RawInput, separator
from recscale.errors import RecscaleError


def _tsv(path, n_users=30, n_items=20):
    rows = [(u, (u * 7 + j) % n_items, 1.0 + (u + j) % 5, 1000 + j) for u in range(n_users) for j in range(6)]
    frame = pl.DataFrame(rows, schema={"userId": pl.Int64, "movieId": pl.Int64, "rating": pl.Float64,
                                       "timestamp": pl.Int64}, orient="row")
    frame.write_csv(path, separator="\t")
    return path


@pytest.mark.parametrize("engine", ["memory", "stream"])
def test_the_api_reads_a_tsv_file_as_the_command_line_does(tmp_path, engine):
    ratings = _tsv(tmp_path / "ratings.tsv")
    api = recscale.prepare(str(ratings), tmp_path / "api", protocol="ncf", test_negatives=5, engine=engine)
    subprocess.run([sys.executable, "-m", "recscale", "prepare", "--ratings", str(ratings), "--out",
                    str(tmp_path / "cli"), "--test-negatives", "5", "--engine", engine], check=True,
                   capture_output=True)
    cli = json.loads((tmp_path / "cli" / "meta.json").read_text())
    assert api.meta["counts"] == cli["counts"] and api.meta["counts"]["users"] == 30
    assert api.meta["sha256"]["train"] == cli["sha256"]["train"]


def test_one_input_exactly_and_the_separator_rules():
    with pytest.raises(RecscaleError, match="exactly one of"):
        RawInput(dataset="ml-latest-small", ratings="x.csv").read()
    with pytest.raises(RecscaleError, match="needs --raw-dir"):
        RawInput(format="movielens-csv").scan()
    assert separator(None, "a.tsv") == "\t" and separator(None, "a.csv") == "," and separator("tab", "a") == "\t"
    with pytest.raises(RecscaleError, match="--sep"):
        separator(";;", "a.csv")
