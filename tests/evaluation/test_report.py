"""evaluation/report.py: tables fit 80 columns, and json/csv/markdown carry the same numbers."""

import csv
import io
import json

from recscale.cli import main
from recscale.evaluation.report import format_rows, format_table

ROWS = {"neumf (test)": {**{f"{m}@{k}": 0.1 * k / 50 for m in ("hr", "ndcg") for k in (10, 20, 50)}, "mrr": 0.2,
                         "ci95": {"hr@10": 0.01, "mrr": 0.002}, "users": 671},
        "popularity (test)": {"hr@10": 0.3, "ndcg@10": 0.1, "mrr": 0.05, "users": 671}}


def test_the_table_wraps_into_blocks_of_80_columns_and_loses_nothing():
    text = format_table(ROWS, (10, 20, 50), "ncf")
    assert max(map(len, text.splitlines())) <= 80
    blocks = text.split("\n\n")
    assert len(blocks) > 1 and all(b.splitlines()[1].startswith("neumf (test)") for b in blocks)
    headers = " ".join(b.splitlines()[0] for b in blocks).split()
    assert headers.count("model") == len(blocks) and headers[-1] == "users"
    assert [h for h in headers if h not in ("model", "users")] == ["hr@10", "ndcg@10", "hr@20", "ndcg@20", "hr@50",
                                                                  "ndcg@50", "mrr"]
    assert "0.0200±0.0100" in text and "0.2000±0.0020" in text


def test_json_csv_and_markdown_carry_the_same_numbers():
    data = json.loads(format_table(ROWS, (10, 20, 50), "ncf", "json"))
    assert data["neumf (test)"]["hr@10"] == ROWS["neumf (test)"]["hr@10"] and data["neumf (test)"]["users"] == 671
    assert data["neumf (test)"]["ci95"]["hr@10"] == 0.01 and data["popularity (test)"]["hr@20"] is None
    table = list(csv.DictReader(io.StringIO(format_table(ROWS, (10, 20, 50), "ncf", "csv"))))
    assert float(table[0]["hr@50"]) == ROWS["neumf (test)"]["hr@50"] and table[1]["model"] == "popularity (test)"
    assert float(table[0]["hr@10_ci95"]) == 0.01
    markdown = format_table(ROWS, (10,), "ncf", "markdown").splitlines()
    assert markdown[0] == "| model | hr@10 | ndcg@10 | mrr | users |" and markdown[1] == "|---|---|---|---|---|"
    assert format_rows(["a", "b"], [[1, "x"]], "csv") == "a,b\n1,x"


def test_evaluate_prints_json_a_program_can_read(small_ncf, tmp_path, capsys):
    assert main(["train", "--data", str(small_ncf.root), "--model", "popularity", "--out", str(tmp_path / "run"),
                 "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--run", str(tmp_path / "run"), "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0 < result["popularity (test)"]["hr@10"] <= 1 and result["popularity (test)"]["users"] == small_ncf.n_users
