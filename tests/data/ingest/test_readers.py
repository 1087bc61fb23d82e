import polars as pl
import pytest

from recscale.data.ingest.readers import read_movies_csv, read_ratings_csv
from recscale.errors import RecscaleError
from tests.helpers import write_ratings


def test_reads_canonical_columns_and_ignores_extra_ones(tmp_path):
    path = write_ratings(tmp_path / "r.csv", ["1,31,2.5,1260759144,,", "2,10,4,5,,x"],
                         header="userId,movieId,rating,timestamp,,")
    frame = read_ratings_csv(path)
    assert frame.columns == ["user", "item", "rating", "timestamp"]
    assert frame["user"].to_list() == [1, 2]
    assert frame["rating"].to_list() == [2.5, 4.0]
    assert frame.schema["rating"] == pl.Float32


def test_shipped_copy_of_ml_latest_small_reads(movielens):
    assert movielens.interactions.height == 100_004
    assert movielens.interactions["user"].n_unique() == 671
    assert movielens.items.filter(pl.col("item") == 1)["genres"].to_list()[0] == \
        ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]


@pytest.mark.parametrize("rows, message", [
    (["1,2,3,4", "1,x,3,5"], "r.csv:3: movieId is not an integer: 'x'"),
    (["1,2,3,4", "1,2,nan,5"], "r.csv:3: rating is not a finite number: 'nan'"),
    (["1,2,3,4", "1,2,,5"], "r.csv:3: missing value for rating"),
    (["1,2,3,4", "1,2,3.5,5", "7,8,four,9"], "r.csv:4: rating is not a number: 'four'"),
    (["1,2,3,4", "1,2"], "r.csv:3: missing value for rating"),
])
def test_bad_values_name_file_and_line(tmp_path, rows, message):
    path = write_ratings(tmp_path / "r.csv", rows)
    with pytest.raises(RecscaleError) as err:
        read_ratings_csv(path)
    assert str(err.value).endswith(message)
    assert "\n" not in str(err.value)


def test_missing_column_is_named(tmp_path):
    path = write_ratings(tmp_path / "r.csv", ["1,2,4"], header="userId,movieId,timestamp")
    with pytest.raises(RecscaleError, match=r"r.csv:1: missing column\(s\) rating"):
        read_ratings_csv(path)


def test_empty_missing_and_header_only_files(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(RecscaleError, match="empty.csv: file is empty"):
        read_ratings_csv(tmp_path / "empty.csv")
    with pytest.raises(RecscaleError, match="nope.csv: file not found"):
        read_ratings_csv(tmp_path / "nope.csv")
    with pytest.raises(RecscaleError, match="no rows after the header"):
        read_ratings_csv(write_ratings(tmp_path / "h.csv", []))


def test_movies_genres_are_lists_without_the_placeholder(tmp_path):
    path = tmp_path / "movies.csv"
    path.write_text('movieId,title,genres\n1,"Toy Story (1995)",Animation|Comedy\n2,"X, The",(no genres listed)\n')
    frame = read_movies_csv(path)
    assert frame["genres"].to_list() == [["Animation", "Comedy"], []]
    assert frame["title"].to_list()[1] == "X, The"
