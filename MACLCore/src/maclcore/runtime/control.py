"""Run control: an exclusive lock on an output, and polite stop requests (signals or a stop file)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import threading
from typing import Any, Iterator, Optional

from ..errors import MaclError, PathLike


def _lock_path(output: str) -> str:
    """``OUTPUT.lock``; for an output name near the 255-byte limit, a stable hash of it (the draft beside the lock
    adds ``.PID.THREAD``), so a long but legal output name still locks."""
    directory, name = os.path.split(output)
    name += ".lock"
    if len(os.fsencode(name)) > 200:
        name = hashlib.sha256(os.fsencode(name)).hexdigest()[:32] + ".lock"
    return os.path.join(directory, name)


class RunLock:
    """An exclusive lock file beside an output, so two jobs never write the same model."""

    def __init__(self, output: PathLike) -> None:
        self.target = os.fspath(output)
        # The lock and its draft (lock + ".PID.THREAD") stay within the file-name limit for long output names.
        self.path = _lock_path(self.target)
        self._held = False

    def acquire(self) -> bool:
        """Take the lock; False when a live process holds it (a dead one's lock is stale and taken over)."""
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        # The lock appears with its owner's pid already in it (written beside it, then hard-linked into place,
        # which fails when the lock exists): a rival never sees an empty lock and mistakes it for a stale one.
        draft = f"{self.path}.{os.getpid()}.{threading.get_ident()}"
        with open(draft, "w") as handle:
            handle.write(str(os.getpid()))
        try:
            for _ in range(2):
                try:
                    os.link(draft, self.path)
                except FileExistsError:
                    owner = self._owner()
                    if owner is not None and _alive(owner):
                        return False
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(self.path)  # stale: its process is gone
                    continue
                self._held = True
                return True
        finally:
            os.remove(draft)
        raise MaclError(f"{self.path}: could not take the lock")

    def release(self) -> None:
        if self._held:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)
            self._held = False

    def __enter__(self) -> "RunLock":
        if not self.acquire():
            target = self.target
            raise MaclError(f"{target}: another job (pid {self._owner()}) is writing it; wait for it or cancel "
                            f"it (a stale lock can be removed: {self.path})")
        return self

    def _owner(self) -> Optional[int]:
        try:
            with open(self.path) as handle:
                return int(handle.read().strip() or "0") or None
        except (OSError, ValueError):
            return None

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StopRequest:
    """A polite request to stop, checked by the training loop between steps.

    It comes from the first SIGINT/SIGTERM (a second one interrupts at once: the default behaviour is
    restored after the first), or from ``stop_file`` appearing: the portable way for a GUI to cancel a
    background job (Windows has no SIGTERM that a process can catch).
    """

    def __init__(self, stop_file: Optional[str] = None) -> None:
        self.stop_file = stop_file
        self._signalled = False
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self._signalled or (self.stop_file is not None and os.path.exists(self.stop_file))

    def _handle(self, signum: int, frame: Any) -> None:
        self._signalled = True
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @contextlib.contextmanager
    def installed(self) -> Iterator["StopRequest"]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # signals can only be handled in the main thread
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
            self._previous.clear()
