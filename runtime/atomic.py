"""Files that appear whole or not at all: write to a temp file beside the target, fsync, rename."""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from sealinfer.runtime.errors import ConfigurationError, SealinferError

# Errors of the output side (the disk is full or failing), told apart from the caller's own OSErrors.
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS})


class OutputWriteError(SealinferError):
    """An output file could not be written (disk full, quota, I/O error); nothing was left behind."""

    code = "output_write_failed"


@contextmanager
def atomic_output(path: Path, *, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``path`` only if the block completes.

    The temp file is created with ``mode`` (O_EXCL, so never through a planted link) and fsynced
    before the rename; on any error it is removed and ``path`` is left as it was. A folder that does
    not exist or cannot be written is a ``ConfigurationError``; a full or failing disk an
    ``OutputWriteError``.
    """
    if path.is_dir():
        raise ConfigurationError(f"Cannot write {path}: it is a folder.", hint="Give a file path to write.")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileNotFoundError:
        raise ConfigurationError(f"Cannot write {path}: the folder {path.parent} does not exist.",
                                 hint="Create the folder first, or choose another output path.") from None
    except OSError as exc:
        raise ConfigurationError(f"Cannot write {path}: {exc.strerror or exc}.",
                                 hint="Check the folder's permissions, or choose another path.") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in _DISK_ERRNOS:
            raise OutputWriteError(f"Writing {path} failed: {exc.strerror}; nothing was left at {path}.",
                                   hint="Free disk space (or fix the disk) and run the command again.") from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
