"""Write files so that a reader never sees half of one: temp file, fsync, rename."""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from typing import Iterator

from ..errors import InputError, PathLike


def _fsync_dir(directory: str) -> None:
    # Makes the rename itself durable; not possible (nor needed) on every platform.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    The temporary name keeps the file's extension (writers pick the format from it). On an
    exception the temporary file is removed and ``path`` is left as it was.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InputError(directory, "cannot be made a folder: a file is in the way") from None
    tmp = os.path.join(directory, f".partial-{uuid.uuid4().hex[:8]}-{os.path.basename(path)}")
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(directory)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_partials(path: PathLike) -> None:
    """Remove the temporary files that writes of ``path`` killed mid-way (kill -9, power loss) left beside it.

    Call it only while holding the right to write ``path`` (its run lock): a running write's file would go too.
    """
    directory, name = os.path.split(os.path.abspath(path))
    temp_name = re.compile(r"\.partial-[0-9a-f]{8}-" + re.escape(name))
    for entry in os.listdir(directory) if os.path.isdir(directory) else []:
        if temp_name.fullmatch(entry):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(directory, entry))


def write_text_atomic(path: PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
