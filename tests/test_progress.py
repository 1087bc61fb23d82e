"""progress.py: bars only where someone watches (a terminal), lines through the `recscale` logger,
-q and -v on every command."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest

from recscale.cli import main
from recscale.progress import bar, bars_shown, set_verbosity


def test_without_a_terminal_a_bar_is_a_silent_pass_through(capsys):
    assert not bars_shown()  # pytest's captured stderr is no terminal
    assert list(bar(range(5), desc="work")) == list(range(5))
    with bar(total=3, desc="work") as shown:
        shown.update(3)
    assert capsys.readouterr().err == ""


def _train(small_ncf, out, *extra):
    return ["train", "--data", str(small_ncf.root), "--model", "gmf", "--epochs", "2", "--device", "cpu",
            "--batch-size", "1024", "--out", str(out), *extra]


def test_epoch_lines_name_the_model_and_quiet_keeps_only_the_result(small_ncf, tmp_path, capsys):
    assert main(_train(small_ncf, tmp_path / "a")) == 0
    out = capsys.readouterr()
    assert "gmf epoch 1: loss" in out.err and "gmf epoch 2: loss" in out.err and "trained gmf" in out.out
    try:
        assert main(["-q", *_train(small_ncf, tmp_path / "b")]) == 0
        out = capsys.readouterr()
        assert "epoch" not in out.err and "trained gmf" in out.out
        assert main([*_train(small_ncf, tmp_path / "c"), "--quiet"]) == 0  # after the subcommand as well
        assert "epoch" not in capsys.readouterr().err
    finally:
        set_verbosity()


@pytest.mark.slow
def test_on_a_terminal_training_shows_a_bar_with_its_rate_and_eta(small_ncf, tmp_path):
    def run(*extra) -> str:
        leader, follower = pty.openpty()
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
        process = subprocess.Popen([sys.executable, "-m", "recscale", *_train(small_ncf, tmp_path / "r", *extra),
                                    "--overwrite"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=follower)
        os.close(follower)
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        assert process.wait(timeout=120) == 0
        os.close(leader)
        return seen.decode(errors="replace")

    shown = run()
    assert "gmf epoch 1/2" in shown and "step/s" in shown and "<" in shown  # tqdm's [elapsed<remaining, rate]
    assert "gmf epoch 2: loss" in shown
    quiet = run("-q")
    assert "step/s" not in quiet and "epoch" not in quiet


def test_datasets_and_runs_say_what_they_are(small_ncf, tmp_path, capsys):
    import recscale
    text = repr(small_ncf)
    assert "protocol ncf" in text and f"{small_ncf.n_users:,} users x {small_ncf.n_items:,} items" in text
    assert main(_train(small_ncf, tmp_path / "run")) == 0
    text = repr(recscale.load_run(tmp_path / "run"))
    assert "gmf on " in text and "2 epoch(s)" in text and "best hr@10 0." in text


def test_the_saved_config_keeps_what_was_asked_and_the_machines_choices_apart(small_ncf, tmp_path, capsys):
    from recscale import api
    from recscale.config.files import tomllib
    from recscale.config.layers import Layer
    from recscale.training.run import read_run_config
    assert main(_train(small_ncf, tmp_path / "run")) == 0
    saved = tomllib.loads((tmp_path / "run" / "config.toml").read_text())
    assert saved["loader"]["data_loading"] == "auto" and saved["loader"]["memory_budget"] == "auto"
    assert saved["machine"]["data_loading"] == "memory" and int(saved["machine"]["memory_budget"]) > 0  # bytes
    assert read_run_config(tmp_path / "run")[0].loader.data_loading == "memory"  # the run resumes as it ran
    # the file as a --config elsewhere: "auto" is resolved again there, not copied
    cfg, _ = api.resolve_settings(tmp_path / "run" / "config.toml", Layer({}, "flags", "flag"), Layer({}, "flags"))
    assert cfg.loader.data_loading == "auto" and cfg.model == "gmf"
