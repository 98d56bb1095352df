"""What a training run needs from its surroundings: device, processes, precision, a lock and stop signals."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist

from ..errors import ConfigError, MaclError, PathLike


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: no CUDA GPU is usable here (torch {torch.__version__}); "
                              "use --device cpu or auto")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"--device must be auto, cpu or cuda[:N], got {name!r}")


@dataclass(frozen=True)
class Processes:
    """This process's place in a (possibly single-process) run started by torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_processes(device_name: str) -> tuple:
    """Join the process group when launched by torchrun (it sets WORLD_SIZE/RANK/LOCAL_RANK), pick the device.

    Returns (Processes, torch.device). One process with no torchrun needs nothing: the same code path runs.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Processes(), resolve_device(device_name)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Processes(rank=rank, world_size=world_size, local_rank=local_rank), device


def teardown_processes() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def autocast(device: torch.device, enabled: bool) -> Any:
    """bf16 autocast on CUDA (fp32 master weights, no loss scaling needed); a no-op elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA (or CPU allocator) out-of-memory, as raised by torch."""
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """The random generator of one training step: a function of (seed, step) alone, so that a resumed run
    draws exactly what an uninterrupted run would have drawn."""
    generator = torch.Generator(device=device)
    generator.manual_seed((seed * 1_000_003 + step) % (2 ** 63))
    return generator


class RunLock:
    """An exclusive lock file beside an output, so two jobs never write the same model."""

    def __init__(self, output: PathLike) -> None:
        self.path = os.fspath(output) + ".lock"
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
            target = self.path[: -len(".lock")]
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
