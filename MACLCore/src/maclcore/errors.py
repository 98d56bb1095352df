"""Errors a user can fix. The CLI prints them as one line, without a traceback.

The engine speaks in its own terms: a message names a setting by its configuration field, written
``{field}`` in the message (e.g. ``"{batch_size} must be >= 1"``). ``str(error)`` shows the field name
(``batch_size``); a front end shows its own name for it with :meth:`MaclError.render` (the CLI:
``--batch-size``), so no engine message names a flag that a front end may not have.
"""

from __future__ import annotations

import os
import re
from typing import Callable, Optional, Sequence, Union

PathLike = Union[str, "os.PathLike[str]"]

# A setting named in a message: {field} or {section.field}, lower case (other braces are left alone).
_SETTING = re.compile(r"\{([a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)*)\}")


def _field_name(setting: str) -> str:
    return setting


class MaclError(Exception):
    """A problem with the user's input or settings, explained in one line."""

    def __init__(self, message: str, prefix: str = "") -> None:
        super().__init__(prefix + message)
        self.template, self.prefix = message, prefix  # the prefix (a file's path) is shown as it is

    def render(self, name: Callable[[str], str] = _field_name) -> str:
        """The message with each ``{setting}`` shown as ``name(setting)``."""
        return self.prefix + _SETTING.sub(lambda match: name(match.group(1)), self.template)

    def __str__(self) -> str:
        return self.render()


class InputError(MaclError):
    """A file or folder that cannot be used; the message names it and says what is wrong."""

    def __init__(self, path: PathLike, problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(problem, prefix=f"{self.path}: ")


class ConfigError(MaclError):
    """A setting with a value that cannot work; ``setting`` is its configuration field."""

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        self.problem = problem
        super().__init__(f"{{{setting}}} {problem}")


class Stopped(MaclError):
    """A run stopped on request (Ctrl-C, SIGTERM or its stop file); the CLI exits with code 130."""


class TrainingInterrupted(Stopped):
    """Training stopped on request (Ctrl-C or cancel); ``checkpoint`` is the resumable state (None: stopped
    before there was any)."""

    def __init__(self, checkpoint: Optional[PathLike] = None) -> None:
        self.checkpoint = os.fspath(checkpoint) if checkpoint is not None else None
        super().__init__(f"stopped; progress saved in {self.checkpoint} (run again with {{resume}} to continue)"
                         if self.checkpoint else "stopped before training began; nothing was saved")


class InferenceStopped(Stopped):
    """Prediction or ranking stopped on request between two volumes; ``written`` are the complete outputs of the
    volumes finished before (each written atomically: no partial file is left)."""

    def __init__(self, done: int, total: int, written: Sequence[PathLike] = ()) -> None:
        self.done, self.total = done, total
        self.written = [os.fspath(path) for path in written]
        kept = (f"; {len(self.written)} complete output(s) kept" if self.written else "; nothing was written")
        super().__init__(f"stopped after {done} of {total} volume(s){kept}")
