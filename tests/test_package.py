"""recscale as a real package: `python -m build` makes a wheel and an sdist, and the wheel runs from
a fresh virtual environment (its dependencies borrowed from this one, nothing downloaded)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile

import pytest

from recscale._version import __version__
from tests.helpers import ROOT, write_ratings


@pytest.mark.slow
def test_the_wheel_and_sdist_build_and_the_wheel_runs_from_a_fresh_venv(tmp_path):
    source = tmp_path / "source"  # built from a copy: the checkout gets no build/ folder
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(source)],
                   check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob(f"recscale-{__version__}-*.whl"))
    sdist = next((tmp_path / "dist").glob(f"recscale-{__version__}.tar.gz"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "recscale/py.typed" in names and "recscale/data/embedded/ml-latest-small/ratings.parquet" in names
    assert any(n.endswith("licenses/LICENSE") for n in names)
    assert f"recscale-{__version__}/CHANGELOG.md" in tarfile.open(sdist).getnames()

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True)
    # the dependencies from this environment, on PYTHONPATH: its editable recscale is not seen
    # there (a .pth hook, read only in site directories), so `recscale` is the wheel's
    env = {"PYTHONPATH": sysconfig.get_paths()["purelib"], "PATH": "/usr/bin:/bin"}
    recscale = venv / "bin" / "recscale"
    done = subprocess.run([recscale, "--version"], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == f"recscale {__version__}"
    where = subprocess.run([venv / "bin" / "python", "-c", "import recscale; print(recscale.__file__)"],
                           capture_output=True, text=True, env=env, check=True).stdout
    assert where.startswith(str(venv))
    ratings = write_ratings(tmp_path / "r.csv", [f"{u},{i},{1 + (u + i) % 5},{u * 100 + i}"
                                                 for u in range(30) for i in range(u % 7, u % 7 + 8)])
    subprocess.run([recscale, "prepare", "--ratings", ratings, "--out", tmp_path / "data", "--test-negatives", "5"],
                   capture_output=True, text=True, env=env, check=True)
    subprocess.run([recscale, "train", "--data", tmp_path / "data", "--model", "gmf", "--epochs", "1", "--device",
                    "cpu", "--out", tmp_path / "run"], capture_output=True, text=True, env=env, check=True)
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])["epoch"] == 0
