"""The Widget's behaviour without Qt: parameter <-> widget synchronisation, the running job, button states.

``MACLSegment.py`` wires these to real widgets; the tests drive them with real Qt widgets (PySide6, offscreen)
and real MRML parameter nodes. Each class exists because Slicer's generic machinery gets a case wrong:

* :class:`TextSync`: ``parameterNodeWrapper`` rewrites a bound QTextEdit with ``setPlainText`` on every
  Modified event, so each keystroke moves the cursor to the start. Here the widget is rewritten only when the
  parameter differs from what it shows, and never while the widget itself is writing.
* :class:`PathSync`: ``ctkPathLineEdit`` emits ``currentPathChanged`` only for text its validator accepts, so
  an emptied field never reaches the parameter (and an empty ``pathlib.Path`` shows as ``.``). Here every
  edit of the field's text counts, an empty field is "not set", and "not set" shows as an empty field.
* :class:`ValueWatcher`: calls back when a parameter's value changed, whatever the order in which Qt calls
  the slots of one signal (a slot connected before the parameter binding reads the old value).
* :class:`JobMonitor`: polls the job and concludes it; the outcome (including an error) is returned, never
  raised, so the Widget re-enables its buttons before it shows an error.
"""

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from .errors import JobCancelled, JobError
from .parameters import pathOrNone


class TextSync:
    """Keeps a text widget and a string parameter equal without a feedback loop."""

    def __init__(self, getParameter: Callable[[], str], setParameter: Callable[[str], None],
                 getWidgetText: Callable[[], str], setWidgetText: Callable[[str], None]) -> None:
        self._getParameter, self._setParameter = getParameter, setParameter
        self._getWidgetText, self._setWidgetText = getWidgetText, setWidgetText
        self._writing = False

    def widgetEdited(self, *unused: Any) -> None:
        """Connect to the widget's textChanged: writes the parameter when it differs."""
        text = self._getWidgetText()
        if self._writing or text == (self._getParameter() or ""):
            return
        self._writing = True
        try:
            self._setParameter(text)
        finally:
            self._writing = False

    def parameterModified(self, *unused: Any) -> None:
        """Call on the parameter node's Modified event: rewrites the widget only when it shows something else."""
        if self._writing:
            return
        text = self._getParameter() or ""
        if text != self._getWidgetText():
            self._writing = True
            try:
                self._setWidgetText(text)
            finally:
                self._writing = False


class PathSync(TextSync):
    """A path parameter and a path field; an empty field means "not set" (stored as an empty path)."""

    def __init__(self, getParameter: Callable[[], Any], setParameter: Callable[[Optional[str]], None],
                 getWidgetText: Callable[[], str], setWidgetText: Callable[[str], None]) -> None:
        super().__init__(lambda: pathOrNone(getParameter()) or "",
                         lambda text: setParameter(text.strip() or None),
                         lambda: (getWidgetText() or "").strip(), setWidgetText)


class ValueWatcher:
    """Calls ``callback(value)`` when ``get()`` returns something new; ``check`` goes on Modified events."""

    _UNSET = object()

    def __init__(self, get: Callable[[], Any], callback: Callable[[Any], None]) -> None:
        self._get, self._callback, self._last = get, callback, self._UNSET

    def check(self, *unused: Any) -> bool:
        value = self._get()
        if value == self._last:
            return False
        self._last = value
        self._callback(value)
        return True

    def reset(self) -> None:
        self._last = self._UNSET


@dataclass
class JobUpdate:
    """What the Widget shows after one poll."""

    percent: int = 0
    status: str = ""
    newLogLines: List[str] = field(default_factory=list)
    finished: bool = False
    error: Optional[str] = None  # set when the job failed or its result could not be used (shown after)


class JobMonitor:
    """The one job the panel runs: ``watch`` it, ``poll`` it from a timer, ``cancel`` it."""

    def __init__(self) -> None:
        self.job: Any = None
        self._onSuccess: Optional[Callable[[Any], None]] = None
        self._shown = 0
        self._concluded = False

    @property
    def running(self) -> bool:
        return self.job is not None and not self._concluded

    def watch(self, job: Any, onSuccess: Callable[[Any], None]) -> None:
        if self.running:
            raise JobError(f"{self.job.name} is still running; cancel it first")
        self.job, self._onSuccess, self._shown, self._concluded = job, onSuccess, 0, False

    def cancel(self) -> Optional[str]:
        """Ask the job to stop (returns at once; the process tree is ended from later polls)."""
        if not self.running:
            return None
        self.job.cancel()
        return f"{self.job.name}: stopping after the current step..."

    def poll(self) -> JobUpdate:
        job = self.job
        if job is None:
            return JobUpdate(finished=True)
        if self._concluded:
            return JobUpdate(percent=100 if job.state == "succeeded" else 0, finished=True)
        stillRunning = job.poll()
        progress = job.progress
        update = JobUpdate(percent=int(round(100 * progress.fraction)), status=f"{job.name}: {progress.describe()}")
        update.newLogLines = list(job.logLines[self._shown:])
        self._shown = len(job.logLines)
        if stillRunning:
            return update
        self._concluded = update.finished = True
        try:
            result = job.finish()
        except JobCancelled as exc:
            update.status = str(exc)
            return update
        except JobError as exc:
            update.status, update.error = f"{job.name} did not complete.", str(exc)
            return update
        try:
            if self._onSuccess is not None:
                self._onSuccess(result)
        except Exception as exc:  # e.g. the result could not be shown: report it, the panel stays usable
            update.status, update.error = f"{job.name} did not complete.", f"{job.name} finished, but: {exc}"
            return update
        update.status, update.percent = f"{job.name} finished.", 100
        return update


ACTION_BUTTONS = ("pretrainButton", "annotateButton", "finetuneButton", "segmentButton", "suggestButton",
                  "acceptCorrectionButton")


def buttonStates(ready: bool, jobRunning: bool, hasSuggestions: bool, historyLength: int,
                 canUndoSegment: bool = False) -> Dict[str, bool]:
    """Which of the panel's buttons are enabled (``canUndoSegment``: the Logic holds the last Segment's undo)."""
    idle = ready and not jobRunning
    states = {name: idle for name in ACTION_BUTTONS}
    states.update(loadSuggestionButton=idle and hasSuggestions, revertModelButton=idle and historyLength > 1,
                  undoSegmentButton=not jobRunning and canUndoSegment, cancelButton=jobRunning)
    return states


def cpuTrainingWarning(gpus: Optional[List[str]], device: str) -> Optional[str]:
    """The question to ask before a training job that would run on the CPU (None: it runs on a GPU, or the GPUs
    are not known yet)."""
    if gpus is None or (gpus and device != "cpu"):
        return None
    reason = "Compute on is set to cpu" if device == "cpu" else "PyTorch sees no usable GPU"
    return (f"{reason}: training runs on the CPU, under a time budget of about 10 minutes unless Time budget "
            "or Epochs say otherwise (a GPU trains the full schedule in minutes). Start anyway?")


# Parameters kept in step by this module rather than by parameterNodeWrapper (the .ui marks each of these
# widgets with the dynamic property ``MACLSegmentSyncedParameter``; a test checks both agree).
SYNCED_TEXT = {"schemaText": "schemaTextEdit"}
SYNCED_PATHS = {"pretrainFolder": "pretrainFolderPathLineEdit", "pretrainOutput": "pretrainOutputPathLineEdit",
                "finetunePretrained": "finetunePretrainedPathLineEdit",
                "finetuneOutput": "finetuneOutputPathLineEdit", "segmentModel": "segmentModelPathLineEdit"}
