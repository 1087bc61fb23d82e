"""`train --warm-start RUN` (issue 30, item 2): a run on an extended dataset starts from the weights
of a run on its parent: known rows copied, new rows as a fresh run draws them, dense layers copied;
it then trains exactly as a fresh run initialized with those weights would."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from recscale import api
from recscale.config.prepare import PrepareConfig
from recscale.data.ingest.raw import RawDataset
from recscale.data.ingest.readers import read_interactions
from recscale.data.prepare.memory import prepare
from recscale.errors import RecscaleError
from recscale.models.base import DataShape
from recscale.models.tables import EmbeddingTables, TableSpec
from recscale.models.vae import MultDAE, MultVAE
from recscale.tensorfiles import load_checkpoint
from recscale.training.trainer import Trainer
from tests.helpers import growing_logs


def _datasets(root, protocol: str, generations: int = 1):
    """Yesterday's dataset and today's, prepared with --extend from it (and further days)."""
    yesterday, today = growing_logs(root)
    cfg = PrepareConfig(protocol=protocol, test_negatives=5, heldout_users=4, min_rating=1)
    prepare(RawDataset("y", read_interactions(yesterday), None, (yesterday,)), cfg, root / "day0")
    for day in range(1, generations + 1):
        extend = PrepareConfig(**{**cfg.__dict__, "extend": str(root / f"day{day - 1}")})
        prepare(RawDataset("t", read_interactions(today), None, (today,)), extend, root / f"day{day}")
    return [root / f"day{d}" for d in range(generations + 1)]


def _settings(**more):
    return {"epochs": 1, "batch_size": 64, "progress": False, "tracker": "none", **more}


@pytest.fixture
def first_state(monkeypatch):
    """Records the model's weights when each Trainer.fit starts; `load` (a state) replaces them first."""
    seen, load = [], {}
    fit = Trainer.fit

    def spy(self):
        if load:
            self.model.load_state_dict(load)
        seen.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        return fit(self)
    monkeypatch.setattr(Trainer, "fit", spy)
    return seen, load


def _final(run) -> dict:
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


@pytest.mark.parametrize("model, protocol", [("neumf", "ncf"), ("multvae", "vae")])
def test_a_warm_start_is_a_fresh_run_begun_from_the_copied_weights(tmp_path, first_state, model, protocol):
    seen, load = first_state
    parent, child = _datasets(tmp_path, protocol)
    old = api.train(parent, model, tmp_path / "old", **_settings())
    warm = api.train(child, model, tmp_path / "warm", **_settings(warm_start=old))
    api.train(child, model, tmp_path / "fresh", **_settings())
    fresh_start = seen[2]
    old_state = load_checkpoint(tmp_path / "old" / "checkpoints" / "best.pt")["model"]

    # what the warm run began from: the fresh run's draw, with the old run's weights over the old ids
    expected = {k: v.clone() for k, v in fresh_start.items()}
    grown = 0
    for key, was in old_state.items():
        expected[key][tuple(slice(0, n) for n in was.shape)] = was
        grown += was.shape != expected[key].shape
    assert grown >= 2  # the id-indexed tensors did grow (users or items)
    for key in expected:
        assert torch.equal(seen[1][key], expected[key]), key

    # and it trained as a fresh run given those weights does
    load.update(expected)
    api.train(child, model, tmp_path / "given", **_settings())
    for key, value in _final(tmp_path / "warm").items():
        assert torch.equal(value, _final(tmp_path / "given")[key]), key
    assert warm.config.warm_start == str(tmp_path / "old")  # recorded in config.toml


@pytest.mark.parametrize("kind", [MultVAE, MultDAE])
def test_a_grown_row_model_scores_old_items_as_before(kind):
    torch.manual_seed(0)
    small, large = kind(DataShape(50, 30)).eval(), kind(DataShape(60, 41)).eval()
    large.grow_from(small.state_dict(), "old")
    history = (torch.rand(8, 30) < 0.2).float()  # (B, I_old)
    padded = torch.cat([history, torch.zeros(8, 11)], 1)  # the same users: no new item seen
    users = torch.arange(8)
    with torch.no_grad():
        assert torch.allclose(large.score(users, padded)[:, :30], small.score(users, history), atol=1e-6)


def test_deferred_tables_draw_the_copied_rows_shard_by_shard():
    """A sharded run's tables are materialized a row range at a time from `initial_values`; with a
    warm start those ranges hold the copied rows where they exist and the fresh draw after them."""
    torch.manual_seed(3)
    tables = EmbeddingTables({"t": TableSpec("items", 20, 4)})
    fresh = tables["t"].weight.detach().clone()
    old = torch.randn(13, 4)
    tables.start_from["t"] = old
    pieces = torch.cat([tables.initial_values("t", slice(a, b), slice(1, 3)) for a, b in ((0, 7), (7, 15), (15, 20))])
    assert torch.equal(pieces, torch.cat([old, fresh[13:]])[:, 1:3])


def test_warm_starts_that_cannot_match_are_refused_in_one_line(tmp_path):
    parent, child, grandchild = _datasets(tmp_path, "ncf", generations=2)
    old = api.train(parent, "gmf", tmp_path / "old", **_settings())
    api.train(grandchild, "gmf", tmp_path / "two-days", **_settings(warm_start=old))  # an ancestor will do
    cases = [(dict(model="mlp"), "is a gmf run"),
             (dict(model="gmf", factors=8), "gmf_user.weight"),
             (dict(model="gmf", data=parent, warm_start=tmp_path / "two-days"), "does not extend")]
    for case, message in cases:
        args = {"warm_start": old, **case}
        with pytest.raises(RecscaleError, match=message):
            api.train(args.pop("data", child), args.pop("model"), tmp_path / "refused", **_settings(**args))
        assert not (tmp_path / "refused").exists()
    out = subprocess.run([sys.executable, "-m", "recscale", "train", "--data", str(child), "--model", "gmf",
                          "--warm-start", str(tmp_path), "--out", str(tmp_path / "cli")], capture_output=True, text=True)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "--warm-start" in out.stderr


def test_a_closed_form_model_refits_on_the_grown_dataset(tmp_path):
    parent, child = _datasets(tmp_path, "vae")
    old = api.train(parent, "ease", tmp_path / "old", **_settings())
    warm = api.train(child, "ease", tmp_path / "warm", **_settings(warm_start=old))
    api.train(child, "ease", tmp_path / "fresh", **_settings())
    assert warm.config.warm_start == str(tmp_path / "old")
    for key, value in _final(tmp_path / "warm").items():  # nothing of the old fit survives the refit
        assert torch.equal(value, _final(tmp_path / "fresh")[key]), key


def test_a_foreign_checkpoint_entry_is_refused_in_one_line():
    model = MultDAE(DataShape(10, 12))
    state = {**model.state_dict(), "layers.0.bias": [1.0, 2.0]}  # what a crafted checkpoint could hold
    with pytest.raises(RecscaleError, match="is not a tensor"):
        model.grow_from(state, "odd")
