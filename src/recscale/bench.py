"""`recscale benchmark`: time a model's training epochs and validation, as NVIDIA's VAE-CF
`--benchmark` does. The first `untimed_epochs` are dropped (allocator and cache warm-up). The run is
built by the same construction path as `recscale train` (training/build.py)."""

from __future__ import annotations

import json
import resource
import statistics

import torch

from recscale.config.layers import Layer
from recscale.config.run import RunConfig
from recscale.data.dataset.prepared import PreparedDataset
from recscale.errors import RecscaleError
from recscale.evaluation.report import format_rows
from recscale.fsutil import atomic_file
from recscale.training.build import model_class, open_data, pick_device, resolve_data_loading, seeded, seeded_trainer


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def benchmark(cfg: RunConfig, model_params: Layer | dict, untimed_epochs: int = 1) -> dict:
    if untimed_epochs < 0:
        raise RecscaleError(f"--untimed-epochs: must be >= 0, got {untimed_epochs}")
    if cfg.epochs <= untimed_epochs:
        raise RecscaleError(f"--epochs: need more than --untimed-epochs ({untimed_epochs}) epochs to time")
    cfg = resolve_data_loading(cfg, PreparedDataset(cfg.data))
    data = open_data(cfg)
    device = pick_device(cfg.system.device)
    if model_class(cfg.model).closed_form:
        raise RecscaleError(f"--model: {cfg.model} is fitted in closed form; there are no epochs to time")
    with seeded(cfg.system.seed, device):
        trainer = seeded_trainer(cfg, model_params, data, device)
        model = trainer.model
        trainer.logger.enabled = False
        records = []
        for _ in range(cfg.epochs):
            record = trainer.train_epoch()
            trainer.state.epoch += 1
            validation = trainer.validate()
            record |= {"valid_seconds": validation["valid_seconds"], "metrics": validation}
            records.append(record)
    timed = records[untimed_epochs:]
    unit = model.throughput_unit
    return {
        "model": cfg.model, "protocol": data.protocol, "device": str(device), "precision": cfg.system.precision,
        "batch_size": cfg.loader.batch_size, "epochs_timed": len(timed), "unit": unit,
        "epoch_seconds": statistics.mean(r["train_seconds"] for r in timed),
        "valid_seconds": statistics.mean(r["valid_seconds"] for r in timed),
        f"{unit}_per_second": statistics.mean(r["samples_per_second"] for r in timed),
        "peak_memory_mib": peak_memory_mib(device),
        "validation": records[-1]["metrics"],
    }


def format_benchmark(result: dict, fmt: str = "table") -> str:
    """The timing of one benchmark run, as a table, JSON (the whole result), CSV or Markdown."""
    if fmt == "json":
        return json.dumps(result, indent=2)
    rate = f"{result['unit']}_per_second"
    header = ["model", "device", "batch", "epoch s", "valid s", rate, "peak MiB"]
    row = [result["model"], result["device"], result["batch_size"], f"{result['epoch_seconds']:.3f}",
           f"{result['valid_seconds']:.3f}", f"{result[rate]:,.0f}", f"{result['peak_memory_mib']:.0f}"]
    return format_rows(header, [row], fmt)


def write_json(result: dict, path) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
