"""Typed errors. The engine raises these; the FUSE adapter turns FsError into an errno, the CLI turns
every DaxfsError into a one-line message and an exit code."""

from __future__ import annotations

import os


class DaxfsError(Exception):
    """Base of every error daxfs raises on purpose."""


class FsError(DaxfsError):
    """A POSIX error of a file system operation (ENOENT, ENOSPC, ...)."""

    def __init__(self, err: int, what: str = "") -> None:
        self.errno = err
        super().__init__(f"{what}: {os.strerror(err)}" if what else os.strerror(err))


class CorruptImage(DaxfsError):
    """The image does not hold what the format says it must; `blkno` is where it was found."""

    def __init__(self, message: str, blkno: int | None = None) -> None:
        self.blkno = blkno
        super().__init__(message)


class NotDaxfs(CorruptImage):
    """The file is not a daxfs image at all."""
