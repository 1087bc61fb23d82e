"""training/tracking.py: the run's settings, every epoch and the best record reach a real MLflow
store and real TensorBoard event files."""

from recscale.cli import main


def _train(data, out, tracker):
    return ["-q", "train", "--data", str(data.root), "--model", "gmf", "--epochs", "2", "--batch-size", "1024",
            "--device", "cpu", "--out", str(out), "--tracker", tracker]


def test_mlflow_gets_params_epochs_best_metrics_and_the_run_directory(small_ncf, tmp_path, monkeypatch):
    import mlflow
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(_train(small_ncf, tmp_path / "run", "mlflow")) == 0
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("recscale")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "gmf" and run.info.status == "FINISHED"
    assert run.data.params["loader.batch_size"] == "1024" and run.data.params["run.model"] == "gmf"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [0, 1]
    assert 0 < run.data.metrics["best_hr_at_10"] <= 1
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.toml", "metrics.jsonl", "checkpoints"} <= artifacts


def test_tensorboard_events_hold_every_epoch(small_ncf, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    assert main(_train(small_ncf, tmp_path / "run", "tensorboard")) == 0
    events = EventAccumulator(str(tmp_path / "run"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [0, 1] and "hr@10" in events.Tags()["scalars"]
