"""Progress reporting: a tqdm bar for people, JSON lines for programs (the Slicer module reads these).

JSON mode prints one object per line on stdout, flushed at once. Every object has ``event``:

* ``{"event": "stage", "stage": "load", "total": 12}`` a stage starts;
* ``{"event": "progress", "stage": "finetune", "epoch": 3, "epochs": 100, "step": 120, "total": 800,
  "loss": 0.34, "lr": 0.0004, "metrics": {"val_dice": 0.81}, "eta": 12.5, "elapsed": 30.1}``;
* ``{"event": "message", "message": "..."}`` a line of information;
* ``{"event": "done", "output": "MODEL.pt", "metrics": {...}}`` the job finished;
* ``{"event": "error", "message": "..."}`` the job failed (exit code is non-zero too).
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any, Dict, Optional, TextIO


def _clean(value: Any) -> Any:
    """JSON-safe numbers: NaN and infinities become null, numpy/torch scalars become floats."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else None
    return value


class Reporter:
    """Silent base reporter; subclasses show progress. Only rank 0 of a distributed run reports."""

    def stage(self, name: str, total: Optional[int] = None) -> None:
        pass

    def progress(self, stage: str, step: int, total: int, **fields: Any) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def done(self, output: Optional[str] = None, metrics: Optional[Dict[str, Any]] = None) -> None:
        pass

    def error(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class JsonReporter(Reporter):
    """One JSON object per line on ``stream`` (stdout by default)."""

    def __init__(self, stream: Optional[TextIO] = None) -> None:
        self.stream = stream or sys.stdout

    def _emit(self, **fields: Any) -> None:
        self.stream.write(json.dumps(_clean(fields), allow_nan=False) + "\n")
        self.stream.flush()

    def stage(self, name: str, total: Optional[int] = None) -> None:
        self._emit(event="stage", stage=name, total=total)

    def progress(self, stage: str, step: int, total: int, **fields: Any) -> None:
        self._emit(event="progress", stage=stage, step=step, total=total, **fields)

    def message(self, text: str) -> None:
        self._emit(event="message", message=text)

    def done(self, output: Optional[str] = None, metrics: Optional[Dict[str, Any]] = None) -> None:
        self._emit(event="done", output=output, metrics=metrics or {})

    def error(self, text: str) -> None:
        self._emit(event="error", message=text)


class TqdmReporter(Reporter):
    """A tqdm progress bar per stage on stderr, messages printed above it."""

    def __init__(self, stream: Optional[TextIO] = None) -> None:
        self.stream = stream or sys.stderr
        self._bar: Any = None
        self._stage: Optional[str] = None

    def stage(self, name: str, total: Optional[int] = None) -> None:
        from tqdm.auto import tqdm

        self.close()
        self._stage = name
        self._bar = tqdm(total=total, desc=name, file=self.stream, dynamic_ncols=True, leave=True)

    def progress(self, stage: str, step: int, total: int, **fields: Any) -> None:
        if self._bar is None or self._stage != stage:
            self.stage(stage, total)
        bar = self._bar
        bar.total = total
        bar.update(step - bar.n)
        postfix = {}
        if "epoch" in fields:
            postfix["epoch"] = f"{fields['epoch']}/{fields.get('epochs') or '?'}"
        if fields.get("loss") is not None:
            postfix["loss"] = f"{fields['loss']:.4f}"
        for key, value in (fields.get("metrics") or {}).items():
            if isinstance(value, float):
                postfix[key] = f"{value:.4f}"
        bar.set_postfix(postfix, refresh=False)

    def message(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def done(self, output: Optional[str] = None, metrics: Optional[Dict[str, Any]] = None) -> None:
        self.close()
        if output:
            print(f"wrote {output}", file=self.stream, flush=True)

    def error(self, text: str) -> None:
        self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._stage = None


def make_reporter(kind: str) -> Reporter:
    """``bar`` (people), ``json`` (programs) or ``none``."""
    if kind == "json":
        return JsonReporter()
    if kind == "none":
        return Reporter()
    return TqdmReporter()
