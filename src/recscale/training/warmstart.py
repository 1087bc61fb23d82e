"""`train --warm-start RUN`: the weights of a run trained on the dataset this one extends.

The run must be of the same model and trained on this dataset or on one it extends (its recorded
meta.json digest is in this dataset's lineage, `prepare --extend`), so that user and item numbers
mean the same people and things; the model copies what it can (models/growth.py). Only weights
travel: the optimizer, the schedule and the epoch count start afresh (a warm start is a new run).
"""

from __future__ import annotations

from pathlib import Path

import torch

from recscale.config.files import RECORD_SECTION, read_config_file
from recscale.data.dataset.prepared import PreparedDataset
from recscale.errors import RecscaleError
from recscale.parallel.checkpoints import gather_sharded
from recscale.tensorfiles import load_checkpoint
from recscale.training.rundir import CONFIG, LAST, has_checkpoint


def warm_start_state(source: str | Path, model_name: str, data: PreparedDataset) -> dict[str, torch.Tensor]:
    """The model state of run `source` (its best checkpoint, else its last), after checking that
    it is a `model_name` run on `data`'s lineage."""
    source = Path(source)
    if not (source / CONFIG).is_file():
        raise RecscaleError(f"--warm-start: {source} is not a run directory (no {CONFIG})")
    if not has_checkpoint(source):
        raise RecscaleError(f"--warm-start: {source} has no checkpoint yet (it stopped before its first epoch ended)")
    sections = read_config_file(source / CONFIG)
    trained = sections.get("run", sections.get("train", {})).get("model")
    if trained != model_name:
        raise RecscaleError(f"--warm-start: {source} is a {trained} run; this run trains {model_name}")
    dataset = sections.get(RECORD_SECTION, {})
    if dataset.get("meta_sha256") not in data.lineage:
        raise RecscaleError(f"--warm-start: {source} was trained on {dataset.get('path', 'another dataset')}, which "
                            f"{data.root} does not extend; prepare this log with --extend {dataset.get('path', 'THAT')}")
    path = source / "checkpoints" / "best.pt"
    path = path if path.is_file() else source / LAST
    return gather_sharded(path, load_checkpoint(path))
