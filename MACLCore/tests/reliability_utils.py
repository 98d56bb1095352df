"""Shared helpers of the reliability tests (bad inputs, crash/resume, cancel, OOM, untrusted files, determinism).

Runs are kept tiny: a few small phantoms, a 4..16-channel U-Net at 6 mm spacing, one or two steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import pytest
import torch

from maclcore.cli.main import main
from maclcore.data.phantom import make_phantom
from maclcore.io.volume import write_volume

TINY_NET = ["--channels", "4,8,8,16,16", "--spacing", "6", "--device", "cpu", "--progress", "none"]
TINY_TRAIN = ["--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2"] + TINY_NET
CHILD_ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny networks on a shared 2-core machine run many times faster on one thread (no spinning OpenMP workers
    competing with other jobs). Also the float32 default that another test module changes at import; both are
    restored afterwards."""
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_num_threads(threads)
    torch.set_default_dtype(dtype)


def write_case(folder: Path, name: str, seed: int, slices: int = 4, oblique: bool = False,
               label_name: Optional[str] = None) -> None:
    """One small phantom in nnU-Net layout: folder/imagesTr/NAME_0000.nii.gz and folder/labelsTr/NAME.nii.gz."""
    phantom = make_phantom(seed, oblique=oblique, slices=slices)
    write_volume(phantom.image, phantom.geometry, folder / "imagesTr" / f"{name}_0000.nii.gz")
    write_volume(phantom.labels, phantom.geometry, folder / "labelsTr" / f"{label_name or name}.nii.gz")


def write_cases(folder: Path, count: int, seed: int = 0, slices: int = 4) -> Path:
    for index in range(count):
        write_case(folder, f"case_{index:03d}", seed * 100 + index, slices=slices)
    return folder


def run_cli(argv: Sequence[str], capfd) -> tuple:
    """Run ``maclcore ARGV`` in this process; returns (exit code, stdout, stderr) as seen on the file descriptors,
    with the Python warnings a command-line user would see added to stderr (pytest would hide them)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse usage errors
            code = exc.code
    out, err = capfd.readouterr()
    err += "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno) for w in caught)
    return code, out, err


def run_child(argv: Sequence[str], timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python -m maclcore ARGV`` as a separate process."""
    return subprocess.run([sys.executable, "-m", "maclcore"] + [str(a) for a in argv], capture_output=True,
                          text=True, timeout=timeout, env=CHILD_ENV, **kwargs)


def start_child(argv: Sequence[str], stderr: Path, python: Optional[Sequence[str]] = None) -> subprocess.Popen:
    """Start ``python -m maclcore ARGV`` (or ``python *python ARGV``) without waiting: stdout is a pipe (for
    JSON progress), stderr goes to the file ``stderr``."""
    command = [sys.executable] + (list(python) if python else ["-m", "maclcore"]) + [str(a) for a in argv]
    with open(stderr, "w") as log:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=CHILD_ENV,
                                preexec_fn=_as_from_a_terminal if os.name == "posix" else None)


def _as_from_a_terminal() -> None:
    """Ctrl-C reaches the child as it would from a terminal: a test suite started in the background (`cmd &`
    in a script, nohup) inherits SIGINT *ignored*, and Python then installs no KeyboardInterrupt handler, so
    the ctrl-C tests' children would finish their work and exit 0."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def read_events(process: subprocess.Popen, until: Callable[[Dict], bool], timeout: float = 240) -> List[Dict]:
    """Read JSON progress lines from a child's stdout until ``until(event)`` holds (or the child ends)."""
    events: List[Dict] = []
    watchdog = threading.Timer(timeout, process.kill)  # a hung child must not hang the tests
    watchdog.start()
    try:
        for line in process.stdout:  # type: ignore[union-attr]
            if line.startswith("{"):
                events.append(json.loads(line))
                if until(events[-1]):
                    return events
    finally:
        watchdog.cancel()
    raise AssertionError(f"the child ended (or hung for {timeout} s) before the awaited progress event; "
                         f"last events: {events[-3:]}")


def finish(process: subprocess.Popen, timeout: float = 240) -> int:
    """Wait for a child, draining its stdout; kill it after ``timeout`` seconds."""
    try:
        process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError(f"child still running after {timeout} s") from None
    return process.returncode


def leftovers(folder: Path) -> List[str]:
    """Every file under ``folder``, hidden ones included (temp .partial-* files, .lock files), as relative paths."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def temp_or_lock_files(folder: Path) -> List[str]:
    return [p for p in leftovers(folder) if os.path.basename(p).startswith(".partial-") or p.endswith(".lock")]


def assert_one_line_error(code: int, out: str, err: str, names: Sequence[str], problem: str) -> str:
    """Exit code 1, exactly one line on stderr naming each of ``names`` and containing ``problem``, no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1, f"exit code {code}; stderr: {err[-2000:]}"
    assert "Traceback" not in out + err, err
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    line = lines[0]
    assert line.startswith("maclcore ") and ": error: " in line, line
    for name in names:
        assert str(name) in line, f"{name!r} not named in: {line}"
    assert problem.lower() in line.lower(), f"{problem!r} not in: {line}"
    assert "unexpected" not in line, line
    return line


def array_of(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
