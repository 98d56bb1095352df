"""The state of a background job, built from the JSON lines ``maclcore --progress json`` prints."""

import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional



def formatDuration(seconds: Optional[float]) -> str:
    """``1 h 02 min``, ``3 min 05 s`` or ``12 s``; empty when unknown."""
    if seconds is None or seconds < 0:
        return ""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


@dataclass
class JobProgress:
    """What a job has reported so far. ``update`` takes one line of the process's stdout."""

    stage: str = ""
    step: int = 0
    total: int = 0
    epoch: Optional[int] = None
    epochs: Optional[int] = None
    loss: Optional[float] = None
    eta: Optional[float] = None
    elapsed: Optional[float] = None
    metrics: Dict[str, Any] = field(default_factory=dict)
    messages: List[str] = field(default_factory=list)
    events: int = 0
    output: Optional[str] = None
    done: bool = False
    error: Optional[str] = None

    @property
    def fraction(self) -> float:
        """Share of the current stage that is done, 0..1."""
        if self.done:
            return 1.0
        if self.total <= 0:
            return 0.0
        return min(1.0, max(0.0, self.step / self.total))

    @property
    def valDice(self) -> Optional[float]:
        value = self.metrics.get("val_dice")
        return float(value) if isinstance(value, (int, float)) else None

    def update(self, line: str) -> None:
        """Take one stdout line: a JSON event, or any other text (kept as a message)."""
        line = line.strip()
        if not line:
            return
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if not isinstance(event, dict) or "event" not in event:
            self._message(line)
            return
        self.events += 1
        handler = getattr(self, "_on_" + str(event["event"]), None)
        if handler is not None:
            handler(event)

    def _message(self, text: str) -> None:
        self.messages.append(text)  # every message is kept: the job log shows a whole run

    def _on_stage(self, event: Dict[str, Any]) -> None:
        self.stage = str(event.get("stage") or "")
        self.step, self.total = 0, int(event.get("total") or 0)

    def _on_progress(self, event: Dict[str, Any]) -> None:
        self.stage = str(event.get("stage") or self.stage)
        self.step, self.total = int(event.get("step") or 0), int(event.get("total") or 0)
        for name in ("epoch", "epochs", "loss", "eta", "elapsed"):
            if event.get(name) is not None:
                setattr(self, name, event[name])
        if event.get("metrics"):
            self.metrics.update(event["metrics"])

    def _on_message(self, event: Dict[str, Any]) -> None:
        self._message(str(event.get("message", "")))

    def _on_done(self, event: Dict[str, Any]) -> None:
        self.done = True
        self.output = event.get("output")
        if event.get("metrics"):
            self.metrics.update(event["metrics"])

    def _on_error(self, event: Dict[str, Any]) -> None:
        self.error = str(event.get("message", "")) or "unknown error"

    def describe(self) -> str:
        """One line for a status label: stage, epoch, loss, validation Dice and time left."""
        parts = []
        if self.epoch is not None and self.epochs:
            parts.append(f"epoch {self.epoch}/{self.epochs}")
        elif self.total:
            parts.append(f"{self.stage or 'step'} {self.step}/{self.total}")
        elif self.stage:
            parts.append(self.stage)
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.valDice is not None:
            parts.append(f"validation Dice {self.valDice:.3f}")
        if self.eta is not None and not self.done:
            parts.append(f"{formatDuration(self.eta)} left")
        return " · ".join(parts) if parts else "starting..."
