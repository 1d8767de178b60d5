"""Where published weights come from and how they are kept: the download cache.

- URLs (Zenodo, open_clip tags' plain URLs) download into ``cache_dir()`` through a ``.part``
  file that is renamed when complete; an interrupted download resumes where it stopped (HTTP
  Range). The first download records the file's sha256 beside it (``NAME.sha256``, in
  ``sha256sum`` format); every later load checks it.
- Hugging Face hub repos (``hf-hub:org/repo``, and open_clip tags that live on the hub) go
  through huggingface_hub into the same cache folder. Its blobs are content-addressed (an LFS
  blob is named by its sha256, a small file by its git blob id), so they verify by their names.

Nothing here builds a model; `clipag.load` does.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import ClipagError
from .fileio import atomic_path

CHUNK = 1 << 20
HF_CONFIG = "open_clip_config.json"
# open_clip's names for hub weights, in the order open_clip itself tries them
HF_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def cache_dir() -> Path:
    """Where downloads go: $CLIPAG_CACHE, else ~/.cache/clipag."""
    return Path(os.environ.get("CLIPAG_CACHE") or Path.home() / ".cache" / "clipag")


def one_line(exc: BaseException) -> str:
    """An exception's whole message on one line (no cut: the cause must survive)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- digests ---------------------------------------------------------------------------------

def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def record_digest(path: Path, digest: str | None = None) -> str:
    """Write `path`'s sha256 beside it (sha256sum format) and return it."""
    digest = digest or sha256_of(path)
    with atomic_path(digest_path(path)) as tmp:
        tmp.write_text(f"{digest}  {path.name}\n")
    return digest


def recorded_digest(path: Path) -> str | None:
    record = digest_path(path)
    if not record.is_file():
        return None
    fields = record.read_text().split()
    return fields[0] if fields else None


def check_digest(path: Path) -> str:
    """The file's sha256, checked against the one recorded at download; a one-line error on a
    mismatch (a truncated, replaced or corrupted file). A file with no record gets one."""
    expected = recorded_digest(path)
    actual = sha256_of(path)
    if expected is None:
        return record_digest(path, actual)
    if actual != expected:
        raise ClipagError(f"{path} does not match the sha256 recorded when it was downloaded "
                          f"({actual[:12]}… vs {expected[:12]}…): it was changed or corrupted; "
                          f"delete it and {digest_path(path).name} and load again to re-download")
    return actual


# --- URLs ------------------------------------------------------------------------------------

def url_filename(url: str) -> str:
    return Path(urllib.request.urlparse(url).path).name or "download.bin"


def partial_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def download(url: str, dest: Path, quiet: bool = False) -> Path:
    """Fetch `url` to `dest` through `dest.part`, resuming a partial download; record its
    sha256. A one-line error (with the whole cause) when it fails; the partial file is kept
    so the next try resumes."""
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                               TransferSpeedColumn)

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = partial_path(dest)
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url)
    if have and urllib.request.urlparse(url).scheme in ("http", "https"):
        request.add_header("Range", f"bytes={have}-")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            resumed = have and getattr(response, "status", 200) == 206
            mode = "ab" if resumed else "wb"
            done = have if resumed else 0
            length = int(response.headers.get("Content-Length") or 0)
            total = done + length if length else None
            with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                          TransferSpeedColumn(), disable=quiet, transient=True) as bar:
                task = bar.add_task(f"downloading {dest.name}", total=total, completed=done)
                with open(part, mode) as fh:
                    while chunk := response.read(CHUNK):
                        fh.write(chunk)
                        bar.advance(task, len(chunk))
        if total is not None and part.stat().st_size != total:
            raise OSError(f"connection closed after {part.stat().st_size} of {total} bytes")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None)  # URLError wraps the socket error
        cause = one_line(reason if isinstance(reason, BaseException) else exc)
        kept = f"; {part.stat().st_size} bytes kept in {part.name}, the next try resumes" \
            if part.is_file() and part.stat().st_size else ""
        raise ClipagError(f"could not download {url} ({cause}){kept}; or fetch it yourself, "
                          f"save it as {dest} and load again") from None
    os.replace(part, dest)
    record_digest(dest)
    return dest


def fetch(url: str, quiet: bool = False) -> Path:
    """The cached, verified copy of `url`, downloading it first when absent."""
    dest = cache_dir() / url_filename(url)
    if dest.is_file():
        check_digest(dest)
        return dest
    return download(url, dest, quiet=quiet)


# --- the Hugging Face hub ----------------------------------------------------------------------

@dataclass(frozen=True)
class HubFiles:
    repo: str
    config: Path | None
    weights: Path


def _hf_cached(repo: str, filename: str) -> Path | None:
    """The file from the local hub cache only (no network)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, cache_dir=str(cache_dir()))
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def _hf_download(repo: str, filename: str) -> tuple[Path | None, str | None, bool]:
    """(path, None, False) when downloaded; (None, why, unreachable) otherwise. The hub's
    retry messages are kept off the user's terminal: the error says what happened."""
    import logging

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return Path(hf_hub_download(repo, filename, cache_dir=str(cache_dir()),
                                    local_files_only=offline)), None, False
    except LocalEntryNotFoundError as exc:  # offline or unreachable, and not in the cache
        return None, one_line(exc), True
    except EntryNotFoundError:
        return None, f"the repo has no {filename}", False
    except Exception as exc:  # auth, missing repo, ...: keep the whole cause
        return None, one_line(exc), False
    finally:
        logger.setLevel(level)


def _hub_unreachable() -> str | None:
    """Why the hub cannot be reached (one quick connection, 5 s), or None when it can: the hub
    client would otherwise retry each file with backoff for about a minute."""
    import socket
    import urllib.parse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in (
            "1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    url = urllib.parse.urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=5).close()
    except OSError as exc:
        return f"cannot reach {url.hostname}: {one_line(exc)}"
    return None


def _hf_first(repo: str, names: tuple[str, ...]) -> tuple[Path | None, list[str]]:
    """The first of `names` in the cache, else the first that downloads; stops at the first
    unreachable hub rather than waiting out its retries once per name."""
    for name in names:
        if (path := _hf_cached(repo, name)) is not None:
            return path, []
    if (why := _hub_unreachable()) is not None:
        return None, [f"not in the cache, and {why}"]
    reasons = []
    for name in names:
        path, why, unreachable = _hf_download(repo, name)
        if path is not None:
            return path, []
        reasons.append(f"{name}: {why}")
        if unreachable:
            break
    return None, reasons


def hub_files(repo: str, need_config: bool = True, weights: tuple[str, ...] = HF_WEIGHTS
              ) -> HubFiles:
    """A hub repo's open_clip config and weights, from the cache or downloaded. Never a config
    without weights: a one-line error names what is missing and how to fetch it."""
    config = None
    if need_config:
        config, why = _hf_first(repo, (HF_CONFIG,))
        if config is None:
            raise ClipagError(f"could not get {HF_CONFIG} of hf-hub:{repo} ({'; '.join(why)}); "
                              f"download it from https://huggingface.co/{repo} on a connected "
                              "machine (or copy its cache folder) and load again")
    path, reasons = _hf_first(repo, weights)
    if path is not None:
        return HubFiles(repo, config, path)
    have = "its config is cached but " if config is not None else ""
    raise ClipagError(f"hf-hub:{repo}: {have}no weights are available ({'; '.join(reasons)}); "
                      "the download was interrupted or this machine is offline: run the same "
                      "command on a connected machine to fetch them, or download "
                      f"{' or '.join(weights)} from https://huggingface.co/{repo} and pass "
                      "--model ARCH --checkpoint FILE")


def hub_repo_dir(repo: str) -> Path:
    return cache_dir() / f"models--{repo.replace('/', '--')}"


def _blob_ok(blob: Path) -> bool:
    """A hub blob matches its content-addressed name (sha256 for LFS, git blob sha1 else)."""
    name = blob.name
    if len(name) == 64:
        return sha256_of(blob) == name
    if len(name) == 40:
        digest = hashlib.sha1(f"blob {blob.stat().st_size}\0".encode())
        with open(blob, "rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
        return digest.hexdigest() == name
    return True


def hub_cache(repo: str) -> tuple[int, list[Path]]:
    """(bytes on disk, blobs) of a cached hub repo; each blob counted once (the snapshot
    folder only links to them)."""
    blobs = [p for p in (hub_repo_dir(repo) / "blobs").glob("*") if p.is_file()]
    return sum(p.stat().st_size for p in blobs), blobs


def verify_hub(repo: str) -> list[str]:
    """Names of the cached blobs of `repo` whose content does not match their name."""
    return [p.name for p in hub_cache(repo)[1] if not p.name.endswith(".incomplete")
            and not _blob_ok(p)]


# --- open_clip pretrained tags -------------------------------------------------------------------

@dataclass(frozen=True)
class TagSource:
    """Where an open_clip pretrained tag's weights live, and the activation they need."""

    hf_repo: str | None
    hf_file: str | None
    url: str | None
    quick_gelu: bool
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None


def tag_source(arch: str, tag: str) -> TagSource | None:
    """open_clip's record of `arch`'s pretrained `tag`, or None when it has none."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        return None
    parts = (cfg.get("hf_hub") or "").split("/")  # "org/repo/" or "org/repo/FILE"
    repo = "/".join(parts[:2]) if len(parts) >= 2 else None
    file = "/".join(parts[2:]) or None
    return TagSource(repo, file, cfg.get("url") or None,
                     bool(cfg.get("quick_gelu", False)), cfg.get("mean"), cfg.get("std"))


def tag_weights(arch: str, tag: str, source: TagSource, quiet: bool = False) -> Path:
    """The weights file of an open_clip tag: from the hub when open_clip names a repo (the
    safetensors first), else its URL."""
    if source.hf_repo:
        names = (source.hf_file,) if source.hf_file else HF_WEIGHTS
        return hub_files(source.hf_repo, need_config=False, weights=names).weights
    if source.url:
        return fetch(source.url, quiet=quiet)
    raise ClipagError(f"open_clip tag {tag!r} of {arch} names no download location")
