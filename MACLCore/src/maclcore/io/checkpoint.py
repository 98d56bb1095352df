"""Self-describing checkpoints, written atomically and loaded without executing code.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts saved with ``torch.save`` and
read with ``torch.load(weights_only=True)``: the restricted unpickler refuses anything else, so a crafted
file cannot run code. Every file says what it is (``format``, ``kind``) and carries the configuration,
label schema and preprocessing needed to use it.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import os
import pickle
import platform
import warnings
from typing import Any, Dict, Iterable, Optional, Tuple

import torch

from .. import __version__
from ..errors import InputError, PathLike
from ..labels import MAX_LABELS
from .atomic import WriteCheckError, atomic_path

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

    def verify(tmp: str) -> None:
        # Load it back as every reader will (weights only) and compare: a short write fails here, not later.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            back = torch.load(tmp, map_location="cpu", weights_only=True)
        difference = _difference(data, back, "checkpoint")
        if difference:
            raise WriteCheckError(f"{difference} differs when read back")

    with atomic_path(path, verify) as tmp:
        torch.save(data, tmp)


def _difference(meant: Any, found: Any, where: str) -> Optional[str]:
    """Where ``found`` (read back) differs from ``meant``; None when equal (tensors compared bit for bit)."""
    if isinstance(meant, torch.Tensor):
        if not isinstance(found, torch.Tensor) or meant.dtype != found.dtype or meant.shape != found.shape:
            return where
        a, b = meant.detach().cpu().contiguous().reshape(-1), found.contiguous().reshape(-1)
        return None if torch.equal(a.view(torch.uint8), b.view(torch.uint8)) else where
    if isinstance(meant, dict):
        if not isinstance(found, dict) or set(meant) != set(found):
            return where
        return next((d for k in meant if (d := _difference(meant[k], found[k], f"{where}.{k}"))), None)
    if isinstance(meant, (list, tuple)):
        if not isinstance(found, (list, tuple)) or len(meant) != len(found):
            return where
        return next((d for i, (m, f) in enumerate(zip(meant, found)) if (d := _difference(m, f, f"{where}[{i}]"))),
                    None)
    if isinstance(meant, float) and isinstance(found, float) and math.isnan(meant) and math.isnan(found):
        return None
    return None if meant == found else where


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
    if data.get("kind") in MODEL_KINDS:
        validate_model(path, data)
    return data


# Bounds of a network a model file may describe: far above any real U-Net, far below what would exhaust
# memory while the network is built.
MAX_WIDTH = 4096
MAX_LEVELS = 8
MAX_CLASSES = MAX_LABELS + 1  # background + the most labels a schema may have (8-bit label maps)


def _positive_ints(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(type(v) is int and v >= 1 for v in value)


def validate_model(path: PathLike, data: Dict[str, Any]) -> None:
    """Check a model file's network before anything is built from it or run with it.

    The description is bounded (widths, levels, classes), so that building the network cannot exhaust memory,
    and every weight and BatchNorm statistic is finite (a NaN weight predicts all background without any
    error). That each tensor has the shape of the described network is checked by those who build it
    (:func:`check_shapes`, with the network built on the meta device), before building it for real.

    Raises:
        InputError: naming the model file and the first problem found.
    """
    path = os.fspath(path)
    model, state = data.get("model"), data.get("state_dict")
    if not isinstance(model, dict) or not isinstance(state, dict):
        raise InputError(path, "is an incomplete model file (no network description or no weights)")
    channels = model.get("channels")
    if not _positive_ints(channels) or not 1 <= len(channels) <= MAX_LEVELS:
        raise InputError(path, f"describes a network with invalid widths {channels!r} (at most {MAX_LEVELS} "
                               "positive integers expected)")
    if max(channels) > MAX_WIDTH:
        raise InputError(path, f"describes a network of width {max(channels)}, more than the {MAX_WIDTH} a model "
                               "file may have; the file is damaged or not a MACLCore model")
    classes, inputs = model.get("num_classes", 2), model.get("in_channels", 1)
    if type(classes) is not int or not 2 <= classes <= MAX_CLASSES:
        raise InputError(path, f"describes a network with {classes!r} classes (2..{MAX_CLASSES} expected)")
    if inputs != 1:
        raise InputError(path, f"describes a network with {inputs!r} input channels; MACLCore models read one "
                               "(grayscale) channel")
    for name, tensor in state.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise InputError(path, f"has a weight {name!r} that is not a tensor")
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            what = "BatchNorm statistic" if "running_" in name else "weight"
            raise InputError(path, f"{what} {name} has {bad} NaN or infinite values; the model is broken "
                                   "(training diverged?) and would predict nonsense")
        if name.endswith("running_var") and bool((tensor < 0).any()):
            raise InputError(path, f"BatchNorm statistic {name} has negative variances; the model is broken")


def check_shapes(path: PathLike, state: Dict[str, torch.Tensor], expected: Dict[str, Tuple[int, ...]],
                 describe: str, exact: bool) -> None:
    """Every tensor of ``state`` has the shape ``expected`` (the described network's, built by the caller on the
    meta device); ``exact``: and none is missing or extra (a segmentation model is used whole; a pretrained
    file also holds projection heads that are never transferred).

    Raises:
        InputError: naming the model file and the first tensor that does not fit.
    """
    path = os.fspath(path)
    if exact:
        missing = sorted(set(expected) - set(state))
        extra = sorted(set(state) - set(expected))
        if missing or extra:
            detail = f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(extra[:3])}"
            raise InputError(path, f"is an inconsistent model file: its weights do not fit the network it "
                                   f"describes ({detail})")
    for name, tensor in state.items():
        if name in expected and tuple(tensor.shape) != tuple(expected[name]):
            raise InputError(path, f"is an inconsistent model file: weight {name} has shape {tuple(tensor.shape)}, "
                                   f"but the network it describes ({describe}) needs {tuple(expected[name])}")
