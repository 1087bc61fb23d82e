"""The command line: one-line errors with exit code 2, and the commands end to end."""

import dataclasses
import json
import subprocess
import sys

import pytest

from recscale.cli import COMMANDS, main, make_parser
from recscale.cli.datasets import DEMO_MODELS
from recscale.errors import RecscaleError
from recscale.models.registry import MODELS
from tests.helpers import write_ratings


def _run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_prepare_from_a_ratings_file(tmp_path, capsys):
    rows = [f"{u},{i},{(u + i) % 5 + 1},{u * 100 + i}" for u in range(1, 30) for i in range(1, 25) if (u + i) % 3]
    path = write_ratings(tmp_path / "ratings.csv", rows)
    code, out, _ = _run(["prepare", "--ratings", str(path), "--protocol", "ncf", "--test-negatives", "5",
                         "--out", str(tmp_path / "p")], capsys)
    assert code == 0 and "prepared ratings (ncf)" in out
    meta = json.loads((tmp_path / "p" / "meta.json").read_text())
    assert meta["counts"]["interactions"] == len(rows) and meta["protocol"]["test_negatives"] == 5


@pytest.mark.parametrize("argv, fragment", [
    (["prepare", "--out", "X"], "give exactly one of --dataset NAME, --format FORMAT --raw-dir DIR, or --ratings FILE"),
    (["prepare", "--ratings", "BAD", "--out", "X"], "BAD:3: rating is not a number: 'x'"),
    (["prepare", "--ratings", "MISSING.csv", "--out", "X"], "MISSING.csv: file not found"),
    (["prepare", "--dataset", "ml-latest-small", "--ratios", "0.5,0.1,0.1", "--protocol", "random", "--out", "X"],
     "--ratios: need three non-negative fractions that sum to 1"),
    (["prepare", "--dataset", "ml-latest-small", "--protocol", "nope", "--out", "X"], "--protocol: invalid choice"),
    (["evaluate", "--run", "NORUN"], "NORUN: not a run directory"),
    (["train", "--data", "NODATA", "--out", "X"], "not a prepared dataset"),
    (["train", "--data", "NODATA", "--model", "nope", "--out", "X"], "unknown model 'nope'"),
    (["train", "--out", "X"], "--model: which model to train? one of neumf, gmf"),  # no silent default
])
def test_bad_input_is_one_line_with_exit_code_2(tmp_path, monkeypatch, capsys, argv, fragment):
    monkeypatch.chdir(tmp_path)
    write_ratings(tmp_path / "BAD", ["1,2,3,4", "2,3,x,5"])
    code, _, err = _run(argv, capsys)
    assert code == 2
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "X").exists()


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    code, out, _ = _run(["demo", "--out", str(tmp_path / "demo"), "--device", "cpu", "--quick"], capsys)
    assert code == 0
    assert "hr@10" in out and "recall@20" in out
    assert all(f"{m} (test)" in out for m in ("neumf", "multvae", "ease", "popularity"))
    recs = (tmp_path / "demo" / "popularity-ncf" / "recs.tsv").read_text().splitlines()
    assert recs[0] == "user\trank\titem\tscore\tfallback\ttitle\tgenres" and len(recs) == 1 + 671 * 10
    result = json.loads((tmp_path / "demo" / "popularity-ncf" / "eval-test.json").read_text())
    assert 0.3 < result["hr@10"] < 0.8 and result["users"] == 671


def test_registry_and_cli_agree(capsys):
    # the names the CLI promises (issue 5), lower case, nothing more and nothing less
    assert set(MODELS) == {"neumf", "gmf", "mlp", "multvae", "multdae", "autoencoder", "embedding-mlp",
                           "popularity", "ease"}
    parser = make_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS)
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--help"])
    listed = capsys.readouterr().out
    for name, cls in MODELS.items():
        assert f"  {name} " in listed, name
        assert all(f.name in listed for f in dataclasses.fields(cls.Config)), name
    assert {m for models in DEMO_MODELS.values() for m in models} <= set(MODELS)


@pytest.mark.slow
def test_module_entry_point_and_console_script():
    out = subprocess.run([sys.executable, "-m", "recscale", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("recscale ")
    out = subprocess.run([sys.executable, "-m", "recscale", "prepare", "--out", "x", "--seed", "abc"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "--seed: invalid int value" in out.stderr and out.stderr.count("\n") == 1


@pytest.mark.parametrize("argv", [["--debug", "evaluate", "--run", "nowhere"], ["evaluate", "--run", "nowhere", "--debug"]])
def test_debug_is_taken_before_or_after_the_subcommand(argv, tmp_path):
    # with --debug the user's error is raised with its traceback instead of the one-line message
    with pytest.raises(RecscaleError, match="not a run directory"):
        main([argv[0], *[str(tmp_path / a) if a == "nowhere" else a for a in argv[1:]]])
    assert make_parser().parse_args(["evaluate", "--run", "x"]).debug is False


def test_unknown_names_get_a_did_you_mean_and_no_class_name(capsys, tmp_path, small_ncf):
    assert main(["train", "--model", "neumff", "--data", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "did you mean 'neumf'?" in capsys.readouterr().err
    assert main(["train", "--model", "gmf", "--data", str(small_ncf.root), "--out", str(tmp_path / "r"), "-p",
                 "facotrs=8"]) == 2
    err = capsys.readouterr().err
    assert "--param facotrs: unknown key for gmf; did you mean 'factors'?" in err and "Config" not in err


def test_help_names_the_models_own_defaults_and_reads_as_sentences(capsys):
    with pytest.raises(SystemExit):
        make_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "[default: 1024] (the models' own: neumf 4096," in text and "multvae 500" in text
    assert "How training batches are made ([loader] in a config file):" in text
    assert "gmf factors=64, embedding_gradients=auto" in text  # only the settings gmf uses
