"""Errors a user can fix. The CLI prints them as one line, without a traceback."""

from __future__ import annotations

import os
from typing import Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


class MaclError(Exception):
    """A problem with the user's input or settings, explained in one line."""


class InputError(MaclError):
    """A file or folder that cannot be used; the message names it and says what is wrong."""

    def __init__(self, path: PathLike, problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(MaclError):
    """A setting with a value that cannot work; the message names the setting."""


class TrainingInterrupted(MaclError):
    """Training stopped on request (Ctrl-C or cancel); ``checkpoint`` is the resumable state (None: stopped
    before there was any)."""

    def __init__(self, checkpoint: Optional[PathLike] = None) -> None:
        self.checkpoint = os.fspath(checkpoint) if checkpoint is not None else None
        super().__init__(f"stopped; progress saved in {self.checkpoint} (run again with --resume to continue)"
                         if self.checkpoint else "stopped before training began; nothing was saved")
