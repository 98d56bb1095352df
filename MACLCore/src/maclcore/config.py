"""Settings are frozen dataclasses; these helpers turn them into plain data (for checkpoints and JSON) and back.

Plain data is what lets a checkpoint load with ``torch.load(weights_only=True)``: dicts, lists, strings
and numbers only.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Dict, Type, TypeVar

T = TypeVar("T")


def to_dict(config: Any) -> Dict[str, Any]:
    """A dataclass (nested ones too) as a dict of plain values; tuples become lists."""
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(config)


def _build(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin is typing.Union:
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _build(options[0], value) if len(options) == 1 else value
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value)
    if origin is tuple:
        args = typing.get_args(hint)
        inner = args[0] if args else Any
        if len(args) == 2 and args[1] is Ellipsis or len(args) <= 1:
            return tuple(_build(inner, v) for v in value)
        return tuple(_build(a, v) for a, v in zip(args, value))
    if hint in (int, float, bool, str):
        return hint(value)
    return value


def from_dict(cls: Type[T], data: Dict[str, Any]) -> T:
    """Rebuild a dataclass from :func:`to_dict`'s output. Missing keys take their defaults and unknown
    keys are ignored, so files from older and newer versions still load."""
    hints = typing.get_type_hints(cls)
    kwargs = {f.name: _build(hints[f.name], data[f.name]) for f in dataclasses.fields(cls)  # type: ignore[arg-type]
              if f.name in data}
    return cls(**kwargs)
