"""Fetching public datasets: download to a temporary file, verify its checksum, rename it into the
cache, unpack it safely (no member may land outside the target directory), rename that into place.

Cache: `$RECSCALE_HOME` or `~/.cache/recscale`; `<cache>/<name>/` holds the unpacked files and
`<cache>/downloads/` the archives. A dataset directory exists only when complete. Every archive is
verified before it is unpacked, whether we downloaded it or someone put it in the downloads folder:
against the publisher's checksum, a checksum the user gave (`--sha256 FILE=HEX`), or, where neither
exists, the SHA-256 recorded when it was first seen (trust on first use, said so on stderr and in
`recscale datasets list`). An archive that no checksum vouches for is only fetched over HTTPS (or
from this machine): over plain HTTP anyone on the path could hand us a file we would then trust.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from recscale.errors import RecscaleError
from recscale.fsutil import atomic_directory
from recscale.progress import LOGGER, bar


@dataclass(frozen=True)
class Remote:
    """A downloadable dataset: files (archives or plain) and the format its unpacked files are in."""

    name: str
    format: str
    urls: tuple[str, ...]
    checksums: dict  # url -> (algorithm, hex digest) as the publisher gives it; absent: trust on first use
    subdir: str = ""  # the directory inside the archive that holds the files
    note: str = ""


def cache_root() -> Path:
    return Path(os.environ.get("RECSCALE_HOME") or Path.home() / ".cache" / "recscale").expanduser()


def dataset_dir(remote: Remote, root: Path | None = None) -> Path:
    return (root or cache_root()) / remote.name


def fetch(url: str, target: Path, expected: tuple[str, str] | None, hint: str, timeout: float = 60) -> str:
    """Download `url` to `target` via a temporary file in the same directory; returns the SHA-256.
    A checksum mismatch leaves nothing behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digests = {"sha256": hashlib.sha256(), "md5": hashlib.md5(usedforsecurity=False)}
    handle, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(handle, "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=timeout)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                reason = getattr(exc, "reason", None) or exc
                raise RecscaleError(f"download failed: {url}: {reason}; {hint}") from None
            total = int(response.headers.get("Content-Length") or 0) or None
            with response, bar(total=total, desc=f"download {target.name}", unit="B", unit_scale=True,
                               unit_divisor=1024) as shown:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    for d in digests.values():
                        d.update(chunk)
                    shown.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        if expected is not None:
            algorithm, want = expected
            got = digests[algorithm].hexdigest()
            if got != want.lower():
                raise RecscaleError(f"checksum mismatch: {url}: {algorithm} {got}, expected {want} "
                                    f"(corrupt or tampered download; nothing was kept)")
        os.replace(tmp, target)
        return digests["sha256"].hexdigest()
    finally:
        tmp.unlink(missing_ok=True)


def _safe_member(name: str, archive: Path) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise RecscaleError(f"{archive}: refusing member {name!r}: it would land outside the target directory")
    return path


def extract(archive: Path, target: Path) -> None:
    """Unpack a .zip or .tar(.gz) into `target`, refusing absolute paths, '..' and links."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                _safe_member(info.filename, archive)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise RecscaleError(f"{archive}: refusing member {info.filename!r}: a symbolic link")
            z.extractall(target)
        return
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            for member in t.getmembers():
                _safe_member(member.name, archive)
                if not (member.isfile() or member.isdir()):
                    raise RecscaleError(f"{archive}: refusing member {member.name!r}: not a plain file or directory")
            t.extractall(target, filter="data")
        return
    shutil.copy2(archive, target / archive.name)  # a plain file (e.g. the NCF paper's splits)


def _digests(path: Path) -> dict[str, str]:
    digests = {"sha256": hashlib.sha256(), "md5": hashlib.md5(usedforsecurity=False)}
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            for d in digests.values():
                d.update(chunk)
    return {name: d.hexdigest() for name, d in digests.items()}


def verify(path: Path, expected: tuple[str, str], source: str) -> None:
    """Raise (and remove `path`) unless it has the expected checksum."""
    algorithm, want = expected
    got = _digests(path)[algorithm]
    if got != want.lower():
        path.unlink(missing_ok=True)
        raise RecscaleError(f"checksum mismatch: {source}: {algorithm} {got}, expected {want} "
                            f"(corrupt or tampered file; nothing was kept)")


def _secure(url: str) -> bool:
    """HTTPS, or a server on this machine (tests, a local mirror)."""
    parsed = urllib.parse.urlparse(url)
    return parsed.scheme == "https" or (parsed.hostname or "") in ("localhost", "::1") or \
        (parsed.hostname or "").startswith("127.")


def parse_checksums(pairs: list[str] | None) -> dict[str, str]:
    """--sha256 FILE=HEX (FILE: the archive's file name) -> {file name: hex digest}."""
    out = {}
    for pair in pairs or []:
        name, sep, digest = pair.partition("=")
        digest = digest.strip().lower()
        if not sep or not name.strip() or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise RecscaleError(f"--sha256: expected FILE=HEX with a 64-digit SHA-256, got {pair!r}")
        out[name.strip()] = digest
    return out


def _trusted(root: Path, url: str) -> str | None:
    """The SHA-256 recorded for `url` (the latest record: a user-given checksum replaces one
    recorded on first use)."""
    record = root / "downloads" / "sha256.txt"
    found = None
    if record.is_file():
        for line in record.read_text().splitlines():
            digest, _, recorded = line.partition("  ")
            if recorded == url:
                found = digest
    return found


def _remember(root: Path, url: str, digest: str) -> None:
    record = root / "downloads" / "sha256.txt"
    record.parent.mkdir(parents=True, exist_ok=True)
    with open(record, "a") as handle:
        handle.write(f"{digest}  {url}\n")


def ensure_dataset(remote: Remote, root: Path | None = None, checksums: dict[str, str] | None = None) -> Path:
    """The directory holding the dataset's unpacked files, downloading, verifying and unpacking it
    if missing. `checksums` (archive file name -> SHA-256) are the user's own, and take precedence
    over a checksum recorded on first use."""
    root = root or cache_root()
    target = dataset_dir(remote, root)
    files = target / remote.subdir if remote.subdir else target
    if target.is_dir():
        return files
    hint = (f"put the unpacked files in a directory and pass --raw-dir DIR "
            f"(or place them in {files})")
    archives = []
    for url in remote.urls:
        filename = PurePosixPath(url.split("?")[0]).name
        archive = root / "downloads" / filename
        given = (checksums or {}).get(filename)
        known = _trusted(root, url)
        expected = remote.checksums.get(url) or (("sha256", given or known) if (given or known) else None)
        if not archive.is_file():
            if expected is None and not _secure(url):
                raise RecscaleError(f"{url}: no checksum vouches for this file and it would come over plain HTTP; "
                                    f"download it yourself and pass --sha256 {filename}=HEX, or use --raw-dir")
            digest = fetch(url, archive, expected, hint)
        elif expected is not None:
            verify(archive, expected, str(archive))  # also an archive someone else put there
            digest = _digests(archive)["sha256"]
        else:
            digest = _digests(archive)["sha256"]
            LOGGER.info(f"recscale: {archive} has no published checksum; recorded its sha256 {digest} "
                        f"(trust on first use: later copies must match)")
        if expected is None or (given and given != known):
            _remember(root, url, digest)
        archives.append(archive)
    try:
        with atomic_directory(target) as tmp:
            for archive in archives:
                extract(archive, tmp)
    except RecscaleError:
        for archive in archives:  # a refused archive is not kept either
            archive.unlink(missing_ok=True)
        raise
    return files
