"""Replacing a file that other processes read, so that a reader sees the old bytes or the new ones,
and telling cheaply whether such a file changed since it was last read."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, data: bytes) -> None:
    """Write a sibling, then rename it over `path` (atomic on POSIX): never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # The sibling's name ends in random letters, so globs for the finished files never match it.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


FileKey = tuple[int, int, int]


def file_key(path: Path) -> FileKey:
    """What changes when the file is rewritten or replaced: (mtime in ns, size, inode). A reader that
    keeps the key of its last read re-reads only when the key differs. Raises OSError."""
    stat = os.stat(path)
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


__all__ = ["FileKey", "file_key", "write_atomically"]
