"""A ``maclcore`` command running in a background process, read without blocking.

The process prints JSON progress lines on stdout (``--progress json``). Two reader threads move its
stdout and stderr lines into a queue, so ``poll()`` (called from a GUI timer or a script loop) never
blocks and never joins a thread. Cancelling creates the job's stop file, the portable request MACLCore
honours after the current step; a process that has not exited after a grace period is terminated, then
killed, together with every process it started: Slicer's ``PythonSlicer`` is a launcher whose real
interpreter is its child (and holds the pipes), so ending the launcher alone leaves the work running.
The process tree is found with ``psutil`` (shipped with Slicer); without it, the process group (POSIX)
or ``taskkill /T`` (Windows).
"""

import logging
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from .errors import JobCancelled, JobError
from .progress import JobProgress

EXIT_INTERRUPTED = 130
PIPE_GRACE = 5.0  # seconds after the process exits to wait (without blocking) for its children to close the pipes


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
        stderrSink: called with each stderr line as it arrives (default: ``logging.info``, which Slicer shows in
            its Python console); every line is also kept in ``stderrLines`` and ``logLines``.
    """

    def __init__(self, name: str, command: Sequence[str], stopFile: Optional[str] = None,
                 finisher: Optional[Callable[["BackgroundJob"], Any]] = None, cleanupFolder: Optional[str] = None,
                 environment: Optional[Dict[str, str]] = None, cancelGrace: float = 15.0,
                 stderrSink: Optional[Callable[[str], None]] = None) -> None:
        self.name = name
        self.command = [str(part) for part in command]
        self.stopFile = stopFile
        self.finisher = finisher
        self.cleanupFolder = cleanupFolder
        self.environment = dict(environment or {})
        self.cancelGrace = cancelGrace
        self.progress = JobProgress()
        self.stderrSink = stderrSink or (lambda line: logging.info("maclcore: %s", line))
        self.stderrLines: List[str] = []  # every line: a long run's log is not cut short
        self.logLines: List[str] = []  # messages and stderr lines in arrival order, for the module's job log
        self.startTime: Optional[float] = None
        self._process: Optional[subprocess.Popen] = None
        self._lines: "queue.Queue[tuple]" = queue.Queue()
        self._readers: List[threading.Thread] = []
        self._cancelledAt: Optional[float] = None
        self._escalation = 0
        self._exitedAt: Optional[float] = None
        self._done = False
        self._tree: List[Any] = []  # psutil.Process objects of the process and its descendants seen so far
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
        """True until the process exited and its output is read (or its children were given up on)."""
        return self._process is not None and not self._done

    @property
    def cancelRequested(self) -> bool:
        return self._cancelledAt is not None

    @property
    def state(self) -> str:
        """``new``, ``running``, ``succeeded``, ``cancelled`` or ``failed``."""
        code = self.returncode
        if self._process is None:
            return "new"
        if code is None or not self._done:
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
        if self._done:
            self._drain()
            return False
        now = time.monotonic()
        exited = self._process.poll() is not None
        if exited and self._exitedAt is None:
            self._exitedAt = now
        pipesOpen = any(reader.is_alive() for reader in self._readers)
        if exited and pipesOpen and self._cancelledAt is not None:
            self._signal(terminate=False)  # a child of the launcher still holds the pipes: end it
        self._drain()
        if exited and (not pipesOpen or now - self._exitedAt > PIPE_GRACE):
            self._done = True
            self._drain()
            return False
        if not exited and self._cancelledAt is not None:
            self._escalateCancel()
        return True

    def _drain(self) -> None:
        while True:
            try:
                tag, line = self._lines.get_nowait()
            except queue.Empty:
                return
            if tag == "out":
                before = len(self.progress.messages)
                self.progress.update(line)
                self.logLines.extend(self.progress.messages[before:])
            elif line.strip():
                text = line.rstrip()
                self.stderrLines.append(text)
                self.logLines.append(text)
                try:
                    self.stderrSink(text)
                except Exception:  # a broken sink must not stop the job being read
                    pass

    def wait(self, timeout: Optional[float] = None, interval: float = 0.1,
             idle: Optional[Callable[[float], None]] = None) -> Optional[int]:
        """Poll until the process exits or ``timeout`` seconds pass; returns the exit code (None: running).

        ``idle(seconds)`` passes the time between polls (default ``time.sleep``); inside Slicer pass one that
        processes the application's events, so that a script or self-test waiting here does not freeze the GUI.
        """
        idle = idle or time.sleep
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll():
            if deadline is not None and time.monotonic() >= deadline:
                return None
            idle(interval)
        return self.returncode

    # -- cancelling ----------------------------------------------------------------------------------------
    def cancel(self) -> None:
        """Ask the process to stop: stop file first (resumable), terminate/kill later from ``poll``."""
        if not self.running or self._cancelledAt is not None:
            return
        self._cancelledAt = time.monotonic()
        self._processTree()  # remember the launcher's children now: they outlive it if it exits first
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

    def _processTree(self) -> Optional[List[Any]]:
        """The process and every descendant seen so far (psutil), remembered so that children orphaned by the
        launcher's exit are still found; None without psutil."""
        try:
            import psutil
        except ImportError:
            return None
        process = self._process
        if not self._tree:
            try:
                self._tree = [psutil.Process(process.pid)]
            except psutil.Error:
                return []
        known = {p.pid: p for p in self._tree}
        for parent in list(self._tree):
            try:
                for child in parent.children(recursive=True):
                    known.setdefault(child.pid, child)
            except psutil.Error:
                pass
        self._tree = list(known.values())
        alive = []
        for member in self._tree:
            try:
                if member.is_running() and member.status() != psutil.STATUS_ZOMBIE:
                    alive.append(member)
            except psutil.Error:
                pass
        return alive

    def _signal(self, terminate: bool) -> None:
        """Terminate (or kill) the process and all its descendants."""
        process = self._process
        if process is None:
            return
        tree = self._processTree()
        if tree is not None:
            import psutil

            for member in reversed(tree):  # children first, so none is restarted by its parent
                try:
                    member.terminate() if terminate else member.kill()
                except psutil.Error:
                    pass
            return
        if process.poll() is not None and os.name == "nt":
            return
        try:
            if os.name != "nt":
                os.killpg(process.pid, signal.SIGTERM if terminate else signal.SIGKILL)
            else:
                subprocess.run(["taskkill", "/PID", str(process.pid), "/T"] + ([] if terminate else ["/F"]),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
        except (ProcessLookupError, PermissionError, OSError, subprocess.SubprocessError):
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


def runToCompletion(job: BackgroundJob, timeout: Optional[float] = None, interval: float = 0.1,
                    idle: Optional[Callable[[float], None]] = None) -> Any:
    """Start ``job`` if needed, wait for it (cancelling it after ``timeout`` seconds) and return its result."""
    if not job.started:
        job.start()
    if job.wait(timeout, interval, idle) is None:
        job.cancel()
        job.wait(3 * job.cancelGrace, interval, idle)
        raise JobError(f"{job.name} did not finish within {timeout:.0f} s and was cancelled")
    return job.finish()
