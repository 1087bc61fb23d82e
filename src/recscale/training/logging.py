"""Rank-0 sinks of a run: metrics.jsonl, TensorBoard events (when installed), the epoch lines and
notes (the `recscale` logger), a progress bar per epoch (progress.py), and curves.png (when
matplotlib is installed)."""

from __future__ import annotations

import json
from pathlib import Path

from recscale.config.files import tomllib
from recscale.errors import RecscaleError
from recscale.fsutil import atomic_file
from recscale.progress import LOGGER, bar
from recscale.training.tracking import Tracker, make_tracker


class RunLogger:
    """`run` is the RunDirectory (its `path` moves when a run built aside is published; files are
    opened by path each time, and the TensorBoard writer's open file moves with its directory)."""

    def __init__(self, run, enabled: bool = True, progress: bool = True, label: str = "", tracker: str = "auto"):
        """`label` names what is trained in every line (the model, and the trial under tune);
        `tracker` (tracking.py) is told the run's config.toml once, each epoch, and the end."""
        self.run, self.enabled, self.label = run, enabled, label
        self.bars = enabled and progress
        self.tracker = Tracker()
        if enabled and run is not None:
            self.tracker = make_tracker(tracker, run, label)
            self.tracker.start(recorded_settings(run.path / "config.toml"))

    def epoch_bar(self, epoch: int, epochs: int, steps: int, done: int):
        """The bar of one epoch's steps (elapsed, steps/s, ETA), starting at step `done`."""
        return bar(total=steps, initial=done, desc=f"{self.label} epoch {epoch + 1}/{epochs}".strip(), unit="step",
                   enabled=self.bars)

    def epoch(self, record: dict, metric: str) -> None:
        if not self.enabled:
            return
        value = record.get(metric)
        LOGGER.info(f"{self.label} epoch {record['epoch'] + 1}: loss {record['loss']:.4f}, ".lstrip()
                    + f"{record['samples_per_second']:,.0f} samples/s"
                    + (f", {metric} {value:.4f}{' *' if record.get('best') else ''}" if value is not None else ""))
        if self.run is None:
            return
        try:
            with open(self.run.path / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps(record) + "\n")
        except OSError as exc:
            raise RecscaleError(f"{self.run.path / 'metrics.jsonl'}: cannot write: {exc.strerror}") from None
        self.tracker.epoch(record)

    def message(self, text: str) -> None:
        """A note or warning of the run (rank 0 only); warnings stay under -q."""
        if self.enabled:
            (LOGGER.warning if text.startswith("warning") else LOGGER.info)(text)

    def close(self, records: list[dict], metric: str) -> None:
        if not self.enabled or self.run is None:
            return
        plot_curves(records, metric, self.run.path / "curves.png")
        scored = [r for r in records if metric in r]
        self.tracker.finish(max(scored, key=lambda r: r[metric]) if scored else (records[-1] if records else {}),
                            self.run.path)


def recorded_settings(path: Path) -> dict:
    """config.toml's settings as flat `section.key` parameters (what trackers record)."""
    try:
        sections = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    return {f"{section}.{key}": value for section, body in sections.items() for key, value in body.items()}


def plot_curves(records: list[dict], metric: str, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    epochs = [r["epoch"] + 1 for r in records]
    fig, left = plt.subplots(figsize=(6, 3.5))
    left.plot(epochs, [r["loss"] for r in records], color="tab:blue", label="training loss")
    left.set_xlabel("epoch")
    left.set_ylabel("training loss", color="tab:blue")
    if any(metric in r for r in records):
        right = left.twinx()
        right.plot(epochs, [r.get(metric, float("nan")) for r in records], color="tab:orange", marker="o", ms=3)
        right.set_ylabel(f"validation {metric}", color="tab:orange")
    fig.tight_layout()
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
    return True
