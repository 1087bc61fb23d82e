"""Every published format, written by the test in its exact layout: Latin-1 titles, Windows line
endings, trailing blank lines, duplicate pairs and malformed lines."""

from __future__ import annotations

import polars as pl
import pytest

from recscale.cli import main
from recscale.config.prepare import PrepareConfig
from recscale.data.ingest.formats import read_format
from recscale.data.ingest.readers import read_interactions
from recscale.data.prepare.filters import filter_interactions
from recscale.errors import RecscaleError
from tests.helpers import SHARED


def _write(path, lines, encoding="utf-8", newline="\n", trailing_blank=False):
    text = newline.join(lines) + newline + (newline if trailing_blank else "")
    path.write_bytes(text.encode(encoding))
    return path


def _flags(*on):
    return "|".join("1" if i in on else "0" for i in range(19))


def test_movielens_100k(tmp_path):
    _write(tmp_path / "u.data", ["196\t242\t3\t881250949", "186\t302\t3\t891717742", "196\t302\t5\t881250950"],
           newline="\r\n", trailing_blank=True)
    _write(tmp_path / "u.item", [f"242|Kolya (1996)|24-Jan-1997||http://x|{_flags(5)}",
                                 f"302|Café Society (1997)|01-Jan-1997||http://y|{_flags(0)}"], encoding="latin-1")
    raw = read_format("movielens-100k", tmp_path)
    assert raw.interactions.height == 3
    assert raw.interactions.row(2) == (196, 302, 5.0, 881250950)
    items = {r["item"]: r for r in raw.items.to_dicts()}
    assert items[242]["genres"] == ["Comedy"] and items[302]["genres"] == []  # 'unknown' is no genre
    assert items[302]["title"] == "Café Society (1997)"


def test_movielens_dat_with_latin1_titles_and_a_malformed_line(tmp_path):
    _write(tmp_path / "ratings.dat", ["1::1193::5::978300760", "1::661::3::978302109"], newline="\r\n",
           trailing_blank=True)
    _write(tmp_path / "movies.dat", ["1193::One Flew Over the Cuckoo's Nest (1975)::Drama",
                                     "661::Amélie (2001)::Comedy|Romance"], encoding="latin-1")
    raw = read_format("movielens-dat", tmp_path)
    assert raw.interactions["item"].to_list() == [1193, 661]
    assert raw.items.filter(pl.col("item") == 661).row(0) == (661, "Amélie (2001)", ["Comedy", "Romance"])
    _write(tmp_path / "ratings.dat", ["1::1193::5::978300760", "1::661::3::978302109", "2::x12::4::978302110"])
    with pytest.raises(RecscaleError, match=r"ratings.dat:3: item is not an integer: 'x12'"):
        read_format("movielens-dat", tmp_path)


def test_movielens_csv_keeps_the_latest_of_duplicate_pairs(tmp_path):
    _write(tmp_path / "ratings.csv", ["userId,movieId,rating,timestamp", "1,10,2.0,100", "1,10,4.5,300",
                                      "1,10,3.0,200", "2,10,1.0,50"], newline="\r\n", trailing_blank=True)
    _write(tmp_path / "movies.csv", ['movieId,title,genres', '10,"Heat, Part 1 (1995)",Action|Crime'])
    raw = read_format("movielens-csv", tmp_path)
    assert raw.items.row(0) == (10, "Heat, Part 1 (1995)", ["Action", "Crime"])
    kept = filter_interactions(raw.interactions, PrepareConfig(protocol="random", min_user_interactions=1))
    assert kept.filter(pl.col("user") == 1).select("rating", "timestamp").row(0) == (4.5, 300)
    assert kept.height == 2


def test_netflix(tmp_path):
    _write(tmp_path / "combined_data_1.txt", ["1:", "1488844,3,2005-09-06", "822109,5,2005-05-13", "2:",
                                             "2059652,4,2005-09-05"], newline="\r\n", trailing_blank=True)
    _write(tmp_path / "combined_data_2.txt", ["3:", "1488844,4,2004-01-01"])
    _write(tmp_path / "movie_titles.csv", ["1,2003,Dinosaur Planet", "2,2004,Isle of Man TT, 2004 Review",
                                           "3,1997,Crème Brûlée"], encoding="latin-1")
    raw = read_format("netflix", tmp_path)
    assert raw.interactions.sort("item", "user").rows() == [
        (822109, 1, 5.0, 1115942400), (1488844, 1, 3.0, 1125964800), (2059652, 2, 4.0, 1125878400),
        (1488844, 3, 4.0, 1072915200)]
    titles = dict(raw.items.select("item", "title").rows())
    assert titles[2] == "Isle of Man TT, 2004 Review" and titles[3] == "Crème Brûlée"
    _write(tmp_path / "combined_data_2.txt", ["3:", "1488844,4,2004-01-01", "17,2004-01-02"])
    with pytest.raises(RecscaleError, match=r"combined_data_2.txt:3: expected CustomerID,Rating,Date, found 2"):
        read_format("netflix", tmp_path)


def test_lastfm_360k(tmp_path):
    _write(tmp_path / "usersha1-artmbid-artname-plays.tsv", [
        "00000c289a1829a808ac09c00daf10bc3c4e223b\t3bd73256-3905-4f3a-97e2-8b341527f805\tbetty blowtorch\t2137",
        "00000c289a1829a808ac09c00daf10bc3c4e223b\t\t\"the\" unquoted band\t111",
        "fffe8c7f952d9b960a56ed4dcb40a415d924b224\t3bd73256-3905-4f3a-97e2-8b341527f805\tbetty blowtorch\t3"],
        newline="\r\n", trailing_blank=True)
    raw = read_format("lastfm-360k", tmp_path)
    frame = raw.interactions.sort("user", "rating")
    assert frame["user"].to_list() == ["00000c289a1829a808ac09c00daf10bc3c4e223b"] * 2 + [
        "fffe8c7f952d9b960a56ed4dcb40a415d924b224"] and frame["rating"].to_list() == [111.0, 2137.0, 3.0]
    assert set(frame["item"]) == {"3bd73256-3905-4f3a-97e2-8b341527f805", 'name:"the" unquoted band'}
    assert frame.filter(pl.col("rating") == 3.0)["item"].item() == frame.filter(pl.col("rating") == 2137.0)["item"].item()
    assert set(raw.items["title"]) == {"betty blowtorch", '"the" unquoted band'}
    _write(tmp_path / "usersha1-artmbid-artname-plays.tsv", ["u1\tm1\tband\t5", "", "u2\tm1\tband\tlots"])
    with pytest.raises(RecscaleError, match=r"plays.tsv:3: plays is not an integer: 'lots'"):
        read_format("lastfm-360k", tmp_path)


def test_generic_tsv_with_string_ids_and_implicit_feedback(tmp_path):
    path = _write(tmp_path / "log.tsv", ["who\twhat\twhen", "ann\tb-2\t10", "bob\ta-1\t20", "ann\ta-1\t30"])
    frame = read_interactions(path, "\t", "who", "what", "", "when")
    assert frame.rows() == [("ann", "b-2", 1.0, 10), ("bob", "a-1", 1.0, 20), ("ann", "a-1", 1.0, 30)]
    pl.DataFrame({"u": [5, 6], "i": [7, 8], "r": [1.0, 2.0]}).write_parquet(tmp_path / "log.parquet")
    parquet = read_interactions(tmp_path / "log.parquet", user_col="u", item_col="i", rating_col="r", time_col="")
    assert parquet.rows() == [(5, 7, 1.0, 0), (6, 8, 2.0, 0)]
    with pytest.raises(RecscaleError, match=r"log.tsv:1: missing column\(s\) rating"):
        read_interactions(path, "\t", "who", "what", "rating", "when")


@pytest.mark.parametrize("argv, fragment", [
    (["--format", "movielens-100k", "--raw-dir", "{d}"], "u.data:2: rating is not a number: 'five'"),
    (["--format", "movielens-100k"], "--format movielens-100k: needs --raw-dir DIR"),
    (["--format", "netflix", "--raw-dir", "{d}"], "no combined_data_*.txt files"),
    (["--ratings", "{d}/u.data", "--sep", "::;"], "--sep: expected one character or '::'"),
    (["--dataset", "netflix"], "--dataset netflix: not distributed any more"),
    (["--dataset", "nope"], "unknown dataset 'nope'"),
])
def test_prepare_reports_bad_raw_input_in_one_line(tmp_path, capsys, argv, fragment):
    _write(tmp_path / "u.data", ["196\t242\t3\t881250949", "186\t302\tfive\t891717742"])
    _write(tmp_path / "u.item", [f"242|Kolya (1996)|24-Jan-1997||http://x|{_flags(5)}"])
    code = main(["prepare", *[a.replace("{d}", str(tmp_path)) for a in argv], "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_prepare_from_a_raw_dir_end_to_end(tmp_path, capsys):
    users = range(1, 21)
    _write(tmp_path / "ratings.dat", [f"{u}::{i}::{(u * i) % 5 + 1}::{1000 + u * 50 + i}" for u in users
                                      for i in range(1, 31) if (u + i) % 4])
    _write(tmp_path / "movies.dat", [f"{i}::Film {i} (2000)::{'Drama' if i % 2 else 'Comedy|Drama'}"
                                     for i in range(1, 31)], encoding="latin-1")
    code = main(["prepare", "--format", "movielens-dat", "--raw-dir", str(tmp_path), "--test-negatives", "5",
                 "--out", str(tmp_path / "p")])
    assert code == 0, capsys.readouterr().err
    assert "prepared" in capsys.readouterr().out
    assert (tmp_path / "p" / "meta.json").is_file()


SHARED_ML = SHARED / "data" / "ml-latest-small"


@pytest.mark.skipif(not SHARED_ML.is_dir(), reason="needs ../shared/data/ml-latest-small (present in CI)")
def test_published_ml_latest_small_reads_like_the_embedded_copy(movielens):
    raw = read_format("movielens-csv", SHARED_ML)
    assert raw.interactions.sort("user", "item", "timestamp").equals(
        movielens.interactions.sort("user", "item", "timestamp"))
    assert raw.items.sort("item").equals(movielens.items.sort("item"))
