"""Rank-0 sinks of a run: metrics.jsonl, TensorBoard events (when installed), a progress line on a
terminal, and curves.png (when matplotlib is installed)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from recscale.errors import RecscaleError
from recscale.fsutil import atomic_file


class RunLogger:
    """`run` is the RunDirectory (its `path` moves when a run built aside is published; files are
    opened by path each time, and the TensorBoard writer's open file moves with its directory)."""

    def __init__(self, run, enabled: bool = True, progress: bool = True):
        self.run, self.enabled = run, enabled
        self.tty = enabled and progress and sys.stderr.isatty()
        self._last = 0.0
        self.tensorboard = None
        if enabled and run is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tensorboard = SummaryWriter(str(run.path))
            except Exception:  # tensorboard not installed: metrics.jsonl is the record
                self.tensorboard = None

    def progress(self, epoch: int, epochs: int, step: int, steps: int, loss: float, rate: float) -> None:
        now = time.monotonic()
        if not self.tty or (now - self._last < 0.5 and step != steps):
            return
        self._last = now
        print(f"\repoch {epoch + 1}/{epochs}  step {step}/{steps}  loss {loss:.4f}  {rate:,.0f} samples/s",
              end="", file=sys.stderr, flush=True)

    def epoch(self, record: dict, metric: str) -> None:
        if not self.enabled:
            return
        if self.tty:
            print("\r", end="", file=sys.stderr)
        value = record.get(metric)
        print(f"epoch {record['epoch'] + 1}: loss {record['loss']:.4f}, {record['samples_per_second']:,.0f} samples/s"
              + (f", {metric} {value:.4f}{' *' if record.get('best') else ''}" if value is not None else ""),
              file=sys.stderr)
        if self.run is None:
            return
        try:
            with open(self.run.path / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps(record) + "\n")
        except OSError as exc:
            raise RecscaleError(f"{self.run.path / 'metrics.jsonl'}: cannot write: {exc.strerror}") from None
        if self.tensorboard is not None:
            for key, val in record.items():
                if isinstance(val, (int, float)) and key != "epoch":
                    self.tensorboard.add_scalar(key, val, record["epoch"])

    def message(self, text: str) -> None:
        if self.enabled:
            print(text, file=sys.stderr)

    def close(self, records: list[dict], metric: str) -> None:
        if not self.enabled or self.run is None:
            return
        if self.tensorboard is not None:
            self.tensorboard.close()
        plot_curves(records, metric, self.run.path / "curves.png")


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
