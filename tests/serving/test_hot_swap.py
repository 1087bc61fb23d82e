"""Serving without downtime (issue 30 item 4): a bundle swapped on SIGHUP or through the admin
endpoint while requests keep coming, every request answered; a corrupt bundle leaves the old one
serving; /metadata names the digest; /metrics in the Prometheus text format."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

import recscale
from recscale.config.fields import ConfigError
from recscale.config.prepare import PrepareConfig
from recscale.data.prepare.memory import prepare
from recscale.errors import RecscaleError
from recscale.export import export_run
from recscale.serving.batcher import MicroBatcher
from recscale.serving.bundle import Bundle
from recscale.serving.settings import ServerConfig
from tests.helpers import synthetic_raw
from tests.serving.test_server_limits import Server

httpx = pytest.importorskip("httpx")
pytest.importorskip("onnxruntime")
pytest.importorskip("prometheus_client")
from fastapi.testclient import TestClient  # noqa: E402  (after the skips: the serve extra)

from recscale.serving.app import create_app  # noqa: E402

TOKEN = "admin-token-of-some-length"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Two bundles of the same data (EASE, popularity) and `current`, a symlink to the first."""
    root = tmp_path_factory.mktemp("swap")
    prepare(synthetic_raw(n_users=40, n_items=30, per_user=10), PrepareConfig(protocol="vae", min_rating=1,
                                                                               heldout_users=6), root / "data")
    for model in ("ease", "popularity"):
        run = recscale.train(root / "data", model, root / f"run-{model}", device="cpu", progress=False)
        export_run(run.path, root / model, formats=("onnx",))
    (root / "current").symlink_to(root / "ease")
    return root


def point(current: Path, target: Path) -> None:
    """Re-point the symlink atomically, as a deployment would."""
    temporary = current.with_name(current.name + ".new")
    temporary.symlink_to(target)
    os.replace(temporary, current)


@pytest.fixture
def current(bundles):
    point(bundles / "current", bundles / "ease")
    yield bundles / "current"
    point(bundles / "current", bundles / "ease")


def test_the_admin_endpoint_swaps_and_a_corrupt_bundle_keeps_the_old_one(bundles, current, monkeypatch, tmp_path):
    monkeypatch.setenv("RECSCALE_TEST_ADMIN", TOKEN)
    ease, popularity = Bundle(bundles / "ease").digest, Bundle(bundles / "popularity").digest
    corrupt = tmp_path / "corrupt"
    shutil.copytree(bundles / "popularity", corrupt)
    (corrupt / "popularity.npy").write_bytes((corrupt / "popularity.npy").read_bytes()[:-4] + b"\0\0\0\1")
    user = Bundle(bundles / "ease").user_ids[0].item()
    with TestClient(create_app(current, admin_token_env="RECSCALE_TEST_ADMIN")) as client:
        assert client.get("/metadata").json()["digest"] == ease
        assert client.post("/admin/reload").status_code == 403
        assert client.post("/admin/reload", headers={"X-Admin-Token": TOKEN + "x"}).status_code == 403

        point(current, corrupt)
        refused = client.post("/admin/reload", headers={"X-Admin-Token": TOKEN})
        assert refused.status_code == 422 and refused.json()["serving"] == ease
        assert "popularity.npy" in refused.json()["error"] and "\n" not in refused.json()["error"]
        assert client.get("/metadata").json()["digest"] == ease
        assert client.post("/recommend", json={"user": user, "k": 3}).status_code == 200

        point(current, bundles / "popularity")
        swapped = client.post("/admin/reload", headers={"X-Admin-Token": TOKEN}).json()
        assert swapped["swapped"] and (swapped["digest"], swapped["previous"]) == (popularity, ease)
        meta = client.get("/metadata").json()
        assert (meta["digest"], meta["model"]) == (popularity, "popularity")
        assert (meta["hot_swap"]["swapped"], meta["hot_swap"]["failed"]) == (1, 1)
        answer = client.post("/recommend", json={"user": user, "k": 3}).json()

        text = client.get("/metrics").text
        assert f'recscale_bundle_info{{digest="{popularity}"' in text and ease not in text
        assert 'recscale_bundle_swaps_total{result="failed"} 1.0' in text
        assert 'recscale_bundle_swaps_total{result="swapped"} 1.0' in text
    with TestClient(create_app(bundles / "popularity")) as client:
        assert client.post("/recommend", json={"user": user, "k": 3}).json() == answer  # the new bundle's answers


def test_without_the_token_variable_there_is_no_admin_endpoint(bundles, monkeypatch):
    with TestClient(create_app(bundles / "ease")) as client:
        assert client.post("/admin/reload", headers={"X-Admin-Token": TOKEN}).status_code == 404
    monkeypatch.delenv("RECSCALE_TEST_ADMIN", raising=False)
    with pytest.raises(RecscaleError, match="RECSCALE_TEST_ADMIN is unset"):
        create_app(bundles / "ease", admin_token_env="RECSCALE_TEST_ADMIN")
    monkeypatch.setenv("RECSCALE_TEST_ADMIN", "short")
    with pytest.raises(RecscaleError, match="shorter than 16"):
        create_app(bundles / "ease", admin_token_env="RECSCALE_TEST_ADMIN")
    with pytest.raises(ConfigError, match="SIGHUP"):
        ServerConfig(admin_token_env="RECSCALE_TEST_ADMIN", workers=2)


def test_metrics_count_answers_by_status_and_bound_the_paths(bundles):
    user = Bundle(bundles / "ease").user_ids[0].item()
    with TestClient(create_app(bundles / "ease", max_batch=8)) as client:
        for _ in range(3):
            assert client.post("/recommend", json={"user": user, "k": 3}).status_code == 200
        assert client.post("/recommend", json={"user": "nobody", "k": 3}).status_code == 404
        for n in range(5):
            client.get(f"/no-such-path-{n}")
        text = client.get("/metrics").text
    assert 'recscale_requests_total{path="/recommend",status="200"} 3.0' in text
    assert 'recscale_requests_total{path="/recommend",status="404"} 1.0' in text
    assert 'recscale_requests_total{path="other",status="404"} 5.0' in text and "no-such-path" not in text
    assert 'recscale_request_seconds_count{path="/recommend"} 4.0' in text
    # three requests one after another: three batches of one (the 404 never reached the batcher)
    assert "recscale_batch_size_count 3.0" in text and 'recscale_batch_size_bucket{le="1.0"} 3.0' in text


def test_a_drained_batcher_answers_every_job_it_was_given():
    async def main():
        scored = []
        batcher = MicroBatcher(lambda jobs: scored.extend(jobs) or [j * 2 for j in jobs], max_batch=4, max_wait_ms=20)
        await batcher.start()
        answers = [asyncio.ensure_future(batcher.submit(n)) for n in range(10)]
        await asyncio.sleep(0)  # each submit has run up to its wait
        await batcher.drain()
        return [await a for a in answers], scored, batcher.worker.done()

    answers, scored, stopped = asyncio.run(main())
    assert answers == [n * 2 for n in range(10)] and sorted(scored) == list(range(10)) and stopped


@pytest.mark.slow
def test_swaps_under_load_answer_every_request(bundles, current):
    """A bounded request loop from 4 threads on 127.0.0.1 while the bundle is swapped by SIGHUP and
    by the admin endpoint, and a corrupt bundle refused: no request lost or failed."""
    running = Server(current, "--admin-token-env", "RECSCALE_TEST_ADMIN", env={"RECSCALE_TEST_ADMIN": TOKEN})
    users = Bundle(bundles / "ease").user_ids[:8].tolist()
    statuses, stop = [], threading.Event()

    def client_loop():
        with httpx.Client(base_url=running.base, timeout=10) as client:
            for n in range(150):
                if stop.is_set() and n > 20:
                    return
                statuses.append(client.post("/recommend", json={"user": users[n % 8], "k": 5}).status_code)

    def digest():
        return httpx.get(f"{running.base}/metadata").json()["digest"]

    def wait_for(expected, seconds=30):
        deadline = time.monotonic() + seconds
        while digest() != expected and time.monotonic() < deadline:
            time.sleep(0.05)
        return digest()

    try:
        threads = [threading.Thread(target=client_loop) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        point(current, bundles / "popularity")
        running.process.send_signal(signal.SIGHUP)
        assert wait_for(Bundle(bundles / "popularity").digest) == Bundle(bundles / "popularity").digest
        point(current, bundles / "ease")
        answer = httpx.post(f"{running.base}/admin/reload", headers={"X-Admin-Token": TOKEN}, timeout=30)
        assert answer.status_code == 200 and answer.json()["digest"] == Bundle(bundles / "ease").digest
        stop.set()
        for t in threads:
            t.join(60)
        assert running.process.poll() is None
    finally:
        code = running.stop()
    assert len(statuses) >= 4 * 20 and set(statuses) == {200}, (len(statuses), set(statuses))
    assert code == 0
