"""Self-describing checkpoints, written atomically and loaded without executing code.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts saved with ``torch.save`` and
read with ``torch.load(weights_only=True)``: the restricted unpickler refuses anything else, so a crafted
file cannot run code. Every file says what it is (``format``, ``kind``) and carries the configuration,
label schema and preprocessing needed to use it.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import pickle
import platform
import warnings
from typing import Any, Dict, Iterable, Optional

import torch

from .. import __version__
from ..errors import InputError, PathLike
from .atomic import atomic_path

FORMAT = "maclcore"
FORMAT_VERSION = 1
MODEL_KINDS = ("segmentation", "pretrain")
KIND_NAMES = {"segmentation": "a segmentation model (from maclcore finetune)",
              "pretrain": "a pretrained encoder (from maclcore pretrain)",
              "resume": "a training state for --resume"}


def provenance() -> Dict[str, Any]:
    """Versions and time, recorded in every checkpoint and report."""
    return {"maclcore": __version__, "torch": str(torch.__version__), "python": platform.python_version(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def file_sha256(path: PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (hex): identifies a model file, wherever it was copied to."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def plain_data(value: Any, where: str = "checkpoint") -> Any:
    """``value`` with numpy scalars turned into Python numbers; anything the safe loader would refuse raises.

    Integer keys stay integers: an optimizer's state is keyed by parameter index, and ``load_state_dict``
    silently ignores (so resets) state under string keys.
    """
    if isinstance(value, dict):
        return {(k if type(k) is int else str(k)): plain_data(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain_data(v, where) for v in value)
    if isinstance(value, torch.Tensor) or value is None or type(value) in (bool, int, float, str):
        return value
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        return value.item()
    if isinstance(value, (int, float, str)):  # subclasses such as torch's TorchVersion
        return type(value).__mro__[-2](value)
    raise TypeError(f"{where}: {type(value).__name__} cannot be stored in a weights-only checkpoint")


def save_checkpoint(path: PathLike, kind: str, payload: Dict[str, Any]) -> None:
    """Write ``payload`` as a checkpoint of ``kind``: temp file, fsync, rename."""
    data = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, "provenance": provenance()}
    data.update(plain_data(payload))
    with atomic_path(path) as tmp:
        torch.save(data, tmp)


def load_checkpoint(path: PathLike, kinds: Optional[Iterable[str]] = None) -> Dict[str, Any]:
    """Load a checkpoint safely, checking that it is one of ``kinds``.

    Raises:
        InputError: missing, truncated or foreign file; a file that would need code to unpickle; wrong kind.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise InputError(path, "is a folder, not a model file")
    if not os.path.isfile(path):
        raise InputError(path, "does not exist")
    if os.path.getsize(path) == 0:
        raise InputError(path, "is an empty file")
    try:
        with warnings.catch_warnings():  # e.g. about a foreign file's pickle protocol: the error says enough
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc) or "Unsupported global" in str(exc) or "GLOBAL" in str(exc):
            raise InputError(path, "contains Python objects that would run code when loaded; refusing to load "
                                   "it (MACLCore model files hold only tensors and plain data)") from None
        raise InputError(path, "is not a MACLCore model file (unreadable pickle data)") from None
    except Exception as exc:  # torch raises many types for broken or foreign files
        detail = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else type(exc).__name__
        raise InputError(path, f"is truncated or not a MACLCore model file ({detail[:120]})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(path, "is not a MACLCore model file (no 'format: maclcore' marker)")
    version = data.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise InputError(path, f"was written by a newer MACLCore (format {version!r}); please upgrade")
    if kinds is not None:
        kinds = tuple(kinds)
        if data.get("kind") not in kinds:
            wanted = " or ".join(KIND_NAMES.get(k, k) for k in kinds)
            found = KIND_NAMES.get(str(data.get("kind")), repr(data.get("kind")))
            raise InputError(path, f"is {found}, but {wanted} is needed here")
    return data
