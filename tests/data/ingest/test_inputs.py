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


def test_the_api_takes_the_command_lines_column_options(tmp_path):
    frame = pl.read_csv(_tsv(tmp_path / "ratings.tsv"), separator="\t")
    odd = tmp_path / "odd.txt"  # neither MovieLens' names nor a separator the suffix implies
    frame.rename({"userId": "u", "movieId": "i", "rating": "r", "timestamp": "t"}).write_csv(odd, separator=";")
    columns = {"sep": ";", "user_col": "u", "item_col": "i", "rating_col": "r", "time_col": "t"}
    api = recscale.prepare(str(odd), tmp_path / "api", test_negatives=5, **columns)
    subprocess.run([sys.executable, "-m", "recscale", "prepare", "--ratings", str(odd), "--out", str(tmp_path / "cli"),
                    "--test-negatives", "5", *[f"--{k.replace('_', '-')}={v}" for k, v in columns.items()]],
                   check=True, capture_output=True)
    assert api.meta["sha256"] == json.loads((tmp_path / "cli" / "meta.json").read_text())["sha256"]
    with pytest.raises(RecscaleError, match="missing column"):
        recscale.prepare(str(odd), tmp_path / "bad", sep=";", user_col="nope")


def test_pandas_and_arrow_tables_prepare_like_the_polars_frame(tmp_path):
    frame = pl.read_csv(_tsv(tmp_path / "ratings.tsv"), separator="\t").rename({"userId": "user", "movieId": "item"})
    digests = [recscale.prepare(table, tmp_path / name, test_negatives=5).meta["sha256"]["train"]
               for name, table in (("polars", frame), ("pandas", frame.to_pandas()), ("arrow", frame.to_arrow()))]
    assert len(set(digests)) == 1
    renamed = frame.to_pandas().rename(columns={"user": "visitor", "rating": "stars"})
    assert recscale.prepare(renamed, tmp_path / "named", test_negatives=5, user_col="visitor",
                            rating_col="stars").meta["sha256"]["train"] == digests[0]


def test_the_api_imports_a_split_made_elsewhere_as_the_command_line_does(tmp_path):
    frame = pl.read_csv(_tsv(tmp_path / "ratings.tsv"), separator="\t")
    last = frame.sort("timestamp").group_by("userId", maintain_order=True).tail(1)
    frame.join(last, on=["userId", "movieId"], how="anti").write_csv(tmp_path / "train.csv")
    last.write_csv(tmp_path / "test.csv")
    files = {"train_file": tmp_path / "train.csv", "test_file": tmp_path / "test.csv"}
    api = recscale.prepare(None, tmp_path / "api", test_negatives=5, **files)
    subprocess.run([sys.executable, "-m", "recscale", "prepare", "--out", str(tmp_path / "cli"), "--test-negatives",
                    "5", "--train-file", str(files["train_file"]), "--test-file", str(files["test_file"])],
                   check=True, capture_output=True)
    cli = json.loads((tmp_path / "cli" / "meta.json").read_text())
    assert api.meta["protocol"]["imported"] and api.meta["sha256"] == cli["sha256"]


@pytest.mark.parametrize("engine", ["memory", "stream"])
def test_times_as_iso_text_a_pattern_or_native_parquet_datetimes_mean_the_same(tmp_path, engine):
    import datetime
    frame = pl.read_csv(_tsv(tmp_path / "ratings.tsv"), separator="\t")
    moments = [datetime.datetime(2020, 1, 1) + datetime.timedelta(hours=int(t) * 7 + u)
               for u, t in zip(frame["userId"], frame["timestamp"])]
    as_seconds = frame.with_columns(pl.Series("timestamp", [int(m.replace(tzinfo=datetime.timezone.utc).timestamp())
                                                            for m in moments]))
    as_seconds.write_csv(tmp_path / "seconds.csv")
    frame.with_columns(pl.Series("timestamp", [m.isoformat() for m in moments])).write_csv(tmp_path / "iso.csv")
    frame.with_columns(pl.Series("timestamp", [m.strftime("%d/%m/%Y %H:%M") for m in moments])).write_csv(
        tmp_path / "pattern.csv")
    frame.with_columns(pl.Series("timestamp", moments)).write_parquet(tmp_path / "native.parquet")
    options = {"test_negatives": 5, "engine": engine}
    digests = [recscale.prepare(str(tmp_path / "seconds.csv"), tmp_path / "s", **options).meta["sha256"]["test"],
               recscale.prepare(str(tmp_path / "iso.csv"), tmp_path / "i", time_format="iso",
                                **options).meta["sha256"]["test"],
               recscale.prepare(str(tmp_path / "pattern.csv"), tmp_path / "p", time_format="%d/%m/%Y %H:%M",
                                **options).meta["sha256"]["test"],
               recscale.prepare(str(tmp_path / "native.parquet"), tmp_path / "n", **options).meta["sha256"]["test"]]
    assert len(set(digests)) == 1  # the same latest interaction held out per user, by every way of writing time
    (tmp_path / "bad.csv").write_text("userId,movieId,rating,timestamp\n1,2,4.0,2020-01-01\n1,3,4.0,yesterday\n")
    with pytest.raises(RecscaleError, match=r"bad.csv:3: timestamp is not a time in the format 'iso'"):
        recscale.prepare(str(tmp_path / "bad.csv"), tmp_path / "b", time_format="iso", **options)
    assert not (tmp_path / "b").exists()
