"""Atomic writes: a file is either absent or complete, never half written."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename. A
    writer that fails for want of room or rights raises an OSError here, whatever its own
    type for it (see `write_failure`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        try:
            yield tmp
        except Exception as exc:
            failure = write_failure(exc)
            if failure is None or failure is exc:
                raise
            raise failure from exc
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp (and some writers) make 0600
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_atomic(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Call `writer(tmp_path)` and move the result to `path` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_failure(exc: BaseException) -> OSError | None:
    """The OSError behind a writer's exception, or None when it is not an I/O failure. Writers
    that do their own I/O report a full disk in their own types: safetensors' SafetensorError
    says "... (os error 28)"; torch.save's RuntimeError says "unexpected pos" and, when it
    wrote through a Python file, carries the OSError as its context."""
    from .errors import ClipagError

    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, ClipagError):
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    if isinstance(exc, ClipagError):
        return None
    text = str(exc)
    code = re.search(r"\(os error (\d+)\)", text)
    if code:
        return OSError(int(code.group(1)), os.strerror(int(code.group(1))))
    if "unexpected pos" in text or "file write failed" in text:
        return OSError(errno.EIO, "the file could not be written whole (is the disk full?)")
    return None
