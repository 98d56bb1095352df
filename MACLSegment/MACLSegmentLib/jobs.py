"""A ``maclcore`` command running in a background process, read without blocking.

The process prints JSON progress lines on stdout (``--progress json``). Two reader threads move its
stdout and stderr lines into a queue, so ``poll()`` (called from a GUI timer or a script loop) never
blocks. Cancelling creates the job's stop file, the portable request MACLCore honours after the current
step; a process that has not exited after a grace period is terminated, then killed.
"""

import collections
import logging
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence

from .errors import JobCancelled, JobError
from .progress import JobProgress

EXIT_INTERRUPTED = 130
STDERR_LINES = 200


class BackgroundJob:
    """One background process.

    Args:
        name: what the job does, for messages ("Finetuning").
        command: the command line (executable first).
        stopFile: file whose creation asks the process to stop cleanly; None: cancel terminates at once.
        finisher: called once after a successful exit; its return value is the job's result.
        cleanupFolder: a temporary folder removed when the job is finished (whatever the outcome).
        environment: variables added to the process's environment.
        cancelGrace: seconds to wait after the stop file before terminating, and again before killing.
    """

    def __init__(self, name: str, command: Sequence[str], stopFile: Optional[str] = None,
                 finisher: Optional[Callable[["BackgroundJob"], Any]] = None, cleanupFolder: Optional[str] = None,
                 environment: Optional[Dict[str, str]] = None, cancelGrace: float = 15.0) -> None:
        self.name = name
        self.command = [str(part) for part in command]
        self.stopFile = stopFile
        self.finisher = finisher
        self.cleanupFolder = cleanupFolder
        self.environment = dict(environment or {})
        self.cancelGrace = cancelGrace
        self.progress = JobProgress()
        self.stderrLines: Deque[str] = collections.deque(maxlen=STDERR_LINES)
        self.startTime: Optional[float] = None
        self._process: Optional[subprocess.Popen] = None
        self._lines: "queue.Queue[tuple]" = queue.Queue()
        self._readers: List[threading.Thread] = []
        self._cancelledAt: Optional[float] = None
        self._escalation = 0
        self._finished = False
        self._result: Any = None
        self._failure: Optional[JobError] = None

    # -- running -----------------------------------------------------------------------------------------
    def start(self) -> "BackgroundJob":
        if self._process is not None:
            raise RuntimeError(f"{self.name} was already started")
        if self.stopFile and os.path.exists(self.stopFile):
            os.remove(self.stopFile)
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8", **self.environment)
        extra: Dict[str, Any] = {}
        if os.name == "nt":
            extra["creationflags"] = getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            extra["start_new_session"] = True  # its own process group: kill() reaches torchrun's workers
        logging.info("MACLSegment: starting %s: %s", self.name, subprocess.list2cmdline(self.command))
        try:
            self._process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, text=True, encoding="utf-8",
                                             errors="replace", bufsize=1, env=env, **extra)
        except OSError as exc:
            self._cleanup()
            raise JobError(f"{self.name} could not start {self.command[0]}: {exc.strerror or exc}") from None
        self.startTime = time.monotonic()
        for stream, tag in ((self._process.stdout, "out"), (self._process.stderr, "err")):
            reader = threading.Thread(target=self._pump, args=(stream, tag), daemon=True)
            reader.start()
            self._readers.append(reader)
        return self

    def _pump(self, stream: Any, tag: str) -> None:
        try:
            for line in stream:
                self._lines.put((tag, line))
        except ValueError:  # stream closed under us
            pass
        finally:
            stream.close()

    @property
    def started(self) -> bool:
        return self._process is not None

    @property
    def returncode(self) -> Optional[int]:
        return None if self._process is None else self._process.returncode

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def cancelRequested(self) -> bool:
        return self._cancelledAt is not None

    @property
    def state(self) -> str:
        """``new``, ``running``, ``succeeded``, ``cancelled`` or ``failed``."""
        code = self.returncode
        if self._process is None:
            return "new"
        if code is None:
            return "running"
        if code == 0:
            return "succeeded"
        if code == EXIT_INTERRUPTED or self.cancelRequested:
            return "cancelled"
        return "failed"

    def poll(self) -> bool:
        """Read what the process has printed and check whether it exited; True while it runs."""
        if self._process is None:
            return False
        exited = self._process.poll() is not None
        if exited:
            for reader in self._readers:
                reader.join(timeout=5)
        self._drain()
        if not exited and self._cancelledAt is not None:
            self._escalateCancel()
        return not exited

    def _drain(self) -> None:
        while True:
            try:
                tag, line = self._lines.get_nowait()
            except queue.Empty:
                return
            if tag == "out":
                self.progress.update(line)
            elif line.strip():
                self.stderrLines.append(line.rstrip())

    def wait(self, timeout: Optional[float] = None, interval: float = 0.1) -> Optional[int]:
        """Poll until the process exits or ``timeout`` seconds pass; returns the exit code (None: running)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll():
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(interval)
        return self.returncode

    # -- cancelling ----------------------------------------------------------------------------------------
    def cancel(self) -> None:
        """Ask the process to stop: stop file first (resumable), terminate/kill later from ``poll``."""
        if not self.running or self._cancelledAt is not None:
            return
        self._cancelledAt = time.monotonic()
        if self.stopFile:
            try:
                with open(self.stopFile, "w") as handle:
                    handle.write("stop\n")
                return
            except OSError:
                pass
        self._escalation = 1
        self._signal(terminate=True)

    def _escalateCancel(self) -> None:
        waited = time.monotonic() - (self._cancelledAt or 0.0)
        if self._escalation == 0 and waited > self.cancelGrace:
            self._escalation = 1
            self._signal(terminate=True)
        elif self._escalation == 1 and waited > 2 * self.cancelGrace:
            self._escalation = 2
            self._signal(terminate=False)

    def _signal(self, terminate: bool) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        try:
            if os.name != "nt":
                os.killpg(process.pid, signal.SIGTERM if terminate else signal.SIGKILL)
            elif terminate:
                process.terminate()
            else:
                process.kill()
        except (ProcessLookupError, PermissionError):
            pass

    # -- outcome -------------------------------------------------------------------------------------------
    def errorMessage(self) -> str:
        """The process's own one-line explanation of its failure."""
        if self.progress.error:
            return self.progress.error
        lines = list(self.stderrLines)
        for line in reversed(lines):
            if "error:" in line:
                return line.split("error:", 1)[1].strip()
        if lines:
            return lines[-1]
        return f"exited with code {self.returncode}"

    def finish(self) -> Any:
        """The job's result after it exited; raises JobCancelled or JobError with a readable message."""
        if self.running or self._process is None:
            raise RuntimeError(f"{self.name} has not finished")
        if not self._finished:
            self._finished = True
            self.poll()
            try:
                self._conclude()
            finally:
                self._cleanup()
        if self._failure is not None:
            raise self._failure
        return self._result

    def _conclude(self) -> None:
        state = self.state
        if state == "succeeded":
            try:
                self._result = self.finisher(self) if self.finisher else self.progress.output
            except JobError as exc:
                self._failure = exc
            except Exception as exc:  # e.g. the result file cannot be loaded
                logging.exception("MACLSegment: %s result", self.name)
                self._failure = JobError(f"{self.name} finished, but its result could not be used: {exc}")
            return
        if state == "cancelled":
            resume = self.progress.messages[-1] if self.progress.messages else ""
            detail = f": {resume}" if "resume" in resume else ""
            self._failure = JobCancelled(f"{self.name} was cancelled{detail}")
            return
        self._failure = JobError(f"{self.name} failed: {self.errorMessage()}")

    def _cleanup(self) -> None:
        if self.stopFile and os.path.exists(self.stopFile):
            try:
                os.remove(self.stopFile)
            except OSError:
                pass
        if self.cleanupFolder:
            shutil.rmtree(self.cleanupFolder, ignore_errors=True)


def runToCompletion(job: BackgroundJob, timeout: Optional[float] = None, interval: float = 0.1) -> Any:
    """Start ``job`` if needed, wait for it (cancelling it after ``timeout`` seconds) and return its result."""
    if not job.started:
        job.start()
    if job.wait(timeout, interval) is None:
        job.cancel()
        job.wait(3 * job.cancelGrace, interval)
        raise JobError(f"{job.name} did not finish within {timeout:.0f} s and was cancelled")
    return job.finish()
