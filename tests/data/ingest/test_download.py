"""Downloads against a local HTTP server on 127.0.0.1 serving archives the tests build: a round
trip, a tampered archive, an archive with a '../' member, trust on first use, and no network."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import socket
import tarfile
import threading
import zipfile

import pytest

from recscale.cli import main
from recscale.data.ingest import sources
from recscale.data.ingest.download import Remote, ensure_dataset
from recscale.errors import RecscaleError

U_DATA = "".join(f"{u}\t{i}\t{(u + i) % 5 + 1}\t{1000 + u * 40 + i}\n" for u in range(1, 21) for i in range(1, 31)
                 if (u + i) % 3)
U_ITEM = "".join(f"{i}|Film {i} (1995)|01-Jan-1995||http://x|" + "|".join("1" if g == i % 19 else "0" for g in range(19))
                 + "\n" for i in range(1, 31))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture()
def server(tmp_path):
    """(directory served, base URL) of an HTTP server on 127.0.0.1."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _zip(path, members: dict[str, str]) -> str:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, text in members.items():
            z.writestr(name, text)
    path.write_bytes(buffer.getvalue())
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def _tiny(served, base, checksum=None, name="tiny.zip") -> Remote:
    digest = _zip(served / name, {"tiny/u.data": U_DATA, "tiny/u.item": U_ITEM, "tiny/README": "test data"})
    url = f"{base}/{name}"
    return Remote("tiny", "movielens-100k", (url,), {url: ("sha256", checksum or digest)}, "tiny")


def test_download_round_trip_then_served_from_the_cache(server, tmp_path):
    served, base = server
    remote = _tiny(served, base)
    files = ensure_dataset(remote, tmp_path / "cache")
    assert files == tmp_path / "cache" / "tiny" / "tiny" and (files / "u.data").read_text() == U_DATA
    (served / "tiny.zip").unlink()  # the second call must not need the server
    assert ensure_dataset(remote, tmp_path / "cache") == files


def test_tampered_archive_is_refused_and_nothing_kept(server, tmp_path):
    served, base = server
    remote = _tiny(served, base, checksum="0" * 64)
    with pytest.raises(RecscaleError, match=r"checksum mismatch: http://127\.0\.0\.1:\d+/tiny\.zip: sha256 [0-9a-f]{64}, expected 0{64}"):
        ensure_dataset(remote, tmp_path / "cache")
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert leftovers == [] and not (tmp_path / "cache" / "tiny").exists()


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_archive_with_a_path_escaping_member_is_refused(server, tmp_path, kind):
    served, base = server
    if kind == "zip":
        digest = _zip(served / "evil.zip", {"tiny/u.data": U_DATA, "../escaped.txt": "gotcha"})
        name = "evil.zip"
    else:
        name = "evil.tar.gz"
        with tarfile.open(served / name, "w:gz") as t:
            data = b"gotcha"
            info = tarfile.TarInfo("tiny/../../escaped.txt")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        digest = hashlib.sha256((served / name).read_bytes()).hexdigest()
    url = f"{base}/{name}"
    remote = Remote("tiny", "movielens-100k", (url,), {url: ("sha256", digest)}, "tiny")
    cache = tmp_path / "deep" / "cache"
    with pytest.raises(RecscaleError, match="would land outside the target directory"):
        ensure_dataset(remote, cache)
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not (cache / "tiny").exists() and [p for p in cache.rglob("*") if p.is_file()] == []


def test_unpinned_download_is_pinned_on_first_use(server, tmp_path):
    served, base = server
    _zip(served / "tiny.zip", {"tiny/u.data": U_DATA, "tiny/u.item": U_ITEM})
    url = f"{base}/tiny.zip"
    remote = Remote("tiny", "movielens-100k", (url,), {}, "tiny")
    ensure_dataset(remote, tmp_path / "cache")
    recorded = (tmp_path / "cache" / "downloads" / "sha256.txt").read_text()
    assert recorded.startswith(hashlib.sha256((served / "tiny.zip").read_bytes()).hexdigest())
    # the publisher's file changes: a fresh download (cache emptied) no longer matches
    import shutil
    shutil.rmtree(tmp_path / "cache" / "tiny")
    (tmp_path / "cache" / "downloads" / "tiny.zip").unlink()
    _zip(served / "tiny.zip", {"tiny/u.data": U_DATA + "99\t1\t5\t1\n", "tiny/u.item": U_ITEM})
    with pytest.raises(RecscaleError, match="checksum mismatch"):
        ensure_dataset(remote, tmp_path / "cache")


def test_unreachable_server_names_the_url_and_the_manual_route(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    url = f"http://127.0.0.1:{port}/tiny.zip"
    remote = Remote("tiny", "movielens-100k", (url,), {}, "tiny")
    with pytest.raises(RecscaleError, match=rf"download failed: {url}: .*--raw-dir DIR"):
        ensure_dataset(remote, tmp_path / "cache")
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []


def test_prepare_dataset_downloads_when_missing(server, tmp_path, monkeypatch, capsys):
    served, base = server
    monkeypatch.setitem(sources.REMOTES, "tiny", _tiny(served, base))
    monkeypatch.setenv("RECSCALE_HOME", str(tmp_path / "home"))
    code = main(["prepare", "--dataset", "tiny", "--test-negatives", "5", "--out", str(tmp_path / "p")])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "home" / "tiny" / "tiny" / "u.item").is_file()
    assert (tmp_path / "p" / "meta.json").is_file()
    code = main(["datasets", "list"])
    listing = capsys.readouterr().out
    assert code == 0 and "ml-20m" in listing and f"cache: {tmp_path / 'home'}" in listing


def test_an_archive_put_in_the_cache_by_hand_is_verified_before_use(server, tmp_path, capsys):
    served, base = server
    remote = _tiny(served, base)  # pinned to the served archive's checksum
    downloads = tmp_path / "cache" / "downloads"
    downloads.mkdir(parents=True)
    _zip(downloads / "tiny.zip", {"tiny/u.data": U_DATA + "99\t1\t5\t1\n", "tiny/u.item": U_ITEM})  # not the real one
    with pytest.raises(RecscaleError, match=r"checksum mismatch: .*downloads/tiny.zip: sha256"):
        ensure_dataset(remote, tmp_path / "cache")
    assert not (downloads / "tiny.zip").exists() and not (tmp_path / "cache" / "tiny").exists()
    # unpinned: the first copy seen is recorded (and said so), later copies must match it
    unpinned = Remote("tiny", "movielens-100k", (f"{base}/tiny.zip",), {}, "tiny")
    digest = _zip(downloads / "tiny.zip", {"tiny/u.data": U_DATA, "tiny/u.item": U_ITEM})
    ensure_dataset(unpinned, tmp_path / "cache")
    assert "trust on first use" in capsys.readouterr().err
    assert (downloads / "sha256.txt").read_text().startswith(digest)


def test_unpinned_downloads_need_https_and_a_given_checksum_replaces_trust_on_first_use(server, tmp_path):
    remote = Remote("far", "movielens-100k", ("http://example.invalid/far.zip",), {}, "far")
    with pytest.raises(RecscaleError, match=r"would come over plain HTTP; .*--sha256 far.zip=HEX"):
        ensure_dataset(remote, tmp_path / "cache")
    served, base = server
    url = f"{base}/tiny.zip"
    first = _zip(served / "tiny.zip", {"tiny/u.data": U_DATA, "tiny/u.item": U_ITEM})
    unpinned = Remote("tiny", "movielens-100k", (url,), {}, "tiny")
    ensure_dataset(unpinned, tmp_path / "cache")  # recorded on first use
    import shutil
    shutil.rmtree(tmp_path / "cache" / "tiny")
    (tmp_path / "cache" / "downloads" / "tiny.zip").unlink()
    second = _zip(served / "tiny.zip", {"tiny/u.data": U_DATA + "99\t1\t5\t1\n", "tiny/u.item": U_ITEM})
    with pytest.raises(RecscaleError, match="checksum mismatch"):
        ensure_dataset(unpinned, tmp_path / "cache")
    ensure_dataset(unpinned, tmp_path / "cache", checksums={"tiny.zip": second})  # the user vouches for it
    assert (tmp_path / "cache" / "tiny" / "tiny" / "u.data").read_text().endswith("99\t1\t5\t1\n")
    assert first != second
