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


class ChangedFile:
    """A file that other hands replace, read again only when its key changed: the one "file changed,
    re-read it" of the package (discovery's backends file, the shared admin state, worker snapshots)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: FileKey | None = None  # the file as last read or written here; None: never, or gone

    def read_if_changed(self) -> bytes | None:
        """The file's bytes when it changed since the last read (or was never read); None when not.
        Raises OSError (FileNotFoundError when absent) and then forgets the file, so it is read
        again once it comes back."""
        try:
            key = file_key(self.path)
            if key == self.seen:
                return None
            data = self.path.read_bytes()
        except OSError:
            self.seen = None
            raise
        self.seen = key
        return data

    def written(self) -> None:
        """This process just wrote the file: no need to read it back."""
        self.seen = file_key(self.path)


__all__ = ["ChangedFile", "FileKey", "file_key", "write_atomically"]
