"""The one way MACLCore writes a file: temp file, check what reached the disk, then rename over the target.

Every output (volumes, segmentations, model files, JSON reports, pictures) goes through :func:`atomic_path`
(or :func:`write_verified`, :func:`write_text_atomic`, :func:`write_json` on top of it). The file is
written beside the target under a temporary name, flushed to the disk (``os.fsync``), checked (not empty;
with a ``verify`` function: read back and compared with what was meant, since some writers, such as ITK's
NIfTI writer, do not report a failed write), and only then renamed over the target. Any failure raises an
:class:`InputError` naming the target and the problem, and leaves an earlier file at the target untouched.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import uuid
from typing import Any, Callable, Iterator, Optional

from ..errors import InputError, PathLike
from .naming import MAX_NAME_BYTES, short_name  # noqa: F401  (short_name is part of this module's API)

_PARTIAL = ".partial-"
_PARTIAL_RESERVE = len(_PARTIAL) + 9  # ".partial-" + 8 hex digits + "-"


class WriteCheckError(Exception):
    """Raised by a ``verify`` function: what was read back differs from what was meant to be written."""


def sidecar_path(path: PathLike, suffix: str, reserve: int = 0) -> str:
    """``path + suffix`` (e.g. a lock file), hashed to a shorter name where that name would be too long."""
    directory, name = os.path.split(os.fspath(path))
    return os.path.join(directory, short_name(name + suffix, reserve))


def _temp_name(path: str) -> str:
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f"{_PARTIAL}{uuid.uuid4().hex[:8]}-{short_name(name, _PARTIAL_RESERVE)}")


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


_ERRNO_PROBLEMS = {
    errno.ENOSPC: "no space left on device",
    errno.EFBIG: "file too large (a file-size limit was reached)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied (is the folder read-only?)",
    errno.EPERM: "permission denied (is the folder read-only?)",
    errno.ENAMETOOLONG: "the file name is too long",
    errno.EIO: "input/output error (a failing disk or a lost network drive?)",
}


def describe_os_error(exc: OSError) -> str:
    """An OSError as a short phrase (``no space left on device``), without the file name."""
    return _ERRNO_PROBLEMS.get(exc.errno or -1, exc.strerror or type(exc).__name__)


def _why_incomplete(tmp: str) -> Optional[str]:
    """The likely reason a write stopped short when the writer did not say: a full disk or a file-size limit."""
    try:
        stats = os.statvfs(os.path.dirname(tmp))
        if stats.f_bavail * stats.f_frsize < (1 << 20):
            return "no space left on device"
    except (OSError, AttributeError):
        pass
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        size = os.path.getsize(tmp) if os.path.exists(tmp) else 0
        if limit != resource.RLIM_INFINITY and size >= limit - 4096:
            return f"file too large (the file-size limit of {limit} bytes was reached)"
    except (ImportError, OSError, ValueError):
        pass
    return None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:200]


def _incomplete(path: str, tmp: str, detail: str, known: Optional[str] = None) -> InputError:
    """The error of a write that failed; ``known``: the writer's own reason (else it is guessed from the disk)."""
    reason = known or _why_incomplete(tmp)
    problem = f"could not be written completely: {reason or detail}"
    if os.path.exists(path):
        problem += "; the earlier file there is left as it was"
    return InputError(path, problem)


@contextlib.contextmanager
def atomic_path(path: PathLike, verify: Optional[Callable[[str], None]] = None) -> Iterator[str]:
    """Yield a temporary path beside ``path``; when the block has written it, check it and rename it over ``path``.

    The temporary name keeps the file's extension (writers pick the format from it) and stays within the
    file-name limit for long names. After the block: the file must be non-empty and flushed; ``verify(tmp)``
    (when given) reads it back and raises (:class:`WriteCheckError` or any reader's error) if it differs from
    what was meant. Any failure raises an :class:`InputError` naming ``path``; ``path`` is then left as it was
    and the temporary file is removed.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise InputError(path, "is a folder; give a file name to write")
    try:
        os.makedirs(directory, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InputError(directory, "cannot be made a folder: a file is in the way") from None
    except OSError as exc:
        raise InputError(directory, f"cannot be made a folder: {describe_os_error(exc)}") from None
    tmp = _temp_name(path)
    try:
        try:
            yield tmp
        except OSError as exc:  # the writer said what went wrong (Python writers do)
            raise _incomplete(path, tmp, "", describe_os_error(exc)) from None
        except RuntimeError as exc:  # ITK's and torch's writers raise RuntimeError for I/O failures
            raise _incomplete(path, tmp, _first_line(exc)) from None
        try:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
                size = os.fstat(handle.fileno()).st_size
        except FileNotFoundError:
            raise InputError(path, "could not be written: the writer produced no file") from None
        except OSError as exc:  # the data could not be flushed to the disk (full disk on close, I/O error)
            raise _incomplete(path, tmp, "", describe_os_error(exc)) from None
        if size == 0:
            raise _incomplete(path, tmp, "nothing reached the disk")
        if verify is not None:
            try:
                verify(tmp)
            except MemoryError:
                raise
            except Exception as exc:  # any reader's error means the file is not what was meant
                detail = exc.problem if isinstance(exc, InputError) else _first_line(exc)
                raise _incomplete(path, tmp, f"what was read back differs from what was written ({detail})") from None
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise InputError(path, f"could not replace the file there: {describe_os_error(exc)}") from None
        _fsync_dir(directory)
    finally:
        with contextlib.suppress(OSError):
            if os.path.lexists(tmp):
                os.remove(tmp)


def write_verified(path: PathLike, write: Callable[[str], None], verify: Optional[Callable[[str], None]] = None) -> None:
    """``write(tmp)`` through :func:`atomic_path`: checked, then renamed over ``path``."""
    with atomic_path(path, verify) as tmp:
        write(tmp)


def remove_partials(path: PathLike) -> None:
    """Remove the temporary files that writes of ``path`` killed mid-way (kill -9, power loss) left beside it.

    Call it only while holding the right to write ``path`` (its run lock): a running write's file would go too.
    """
    directory, name = os.path.split(os.path.abspath(path))
    temp_name = re.compile(re.escape(_PARTIAL) + r"[0-9a-f]{8}-" + re.escape(short_name(name, _PARTIAL_RESERVE)))
    for entry in os.listdir(directory) if os.path.isdir(directory) else []:
        if temp_name.fullmatch(entry):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(directory, entry))


def _same_bytes(expected: bytes) -> Callable[[str], None]:
    def verify(tmp: str) -> None:
        with open(tmp, "rb") as handle:
            found = handle.read(len(expected) + 1)
        if found != expected:
            raise WriteCheckError(f"{len(found)} of {len(expected)} bytes read back")
    return verify


def write_text_atomic(path: PathLike, text: str) -> None:
    """Write a text file (UTF-8) atomically, checked by reading it back."""
    data = text.encode("utf-8")

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data)

    write_verified(path, write, _same_bytes(data))


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) replaced by None, which JSON writes as ``null``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # numpy / torch scalars
        return finite_or_none(value.item())
    return value


def write_json(path: PathLike, data: Any, indent: Optional[int] = 1) -> None:
    """Write strict JSON (no NaN/Infinity tokens: they become ``null``) atomically, checked by parsing it back."""
    text = json.dumps(finite_or_none(data), indent=indent, allow_nan=False)
    encoded = text.encode("utf-8")

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(encoded)

    def verify(tmp: str) -> None:
        _same_bytes(encoded)(tmp)
        with open(tmp, encoding="utf-8") as handle:
            json.load(handle, parse_constant=_refuse_constant)

    write_verified(path, write, verify)


def _refuse_constant(token: str) -> Any:
    raise WriteCheckError(f"{token} is not valid JSON")
