"""Settings of the module's jobs, as frozen dataclasses that turn into ``maclcore`` options.

Every setting is optional: None means "not set by the user", and an unset setting is not passed, so that
MACLCore's own default applies. The engine's defaults live in the engine only (its ``--help`` states them).
"""

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from .errors import InputError

DEVICES = ("auto", "cpu", "cuda")
# Slices per forward pass of Segment and Suggest; None: MACLCore's default (halved there when memory runs out).
INFERENCE_BATCH_SIZE: Optional[int] = None


def optionalCount(value: Optional[int]) -> Optional[int]:
    """A spin box value where 0 (shown as "default") means not set."""
    return None if value is None or int(value) <= 0 else int(value)


def optionalMinutes(value: Optional[float]) -> Optional[float]:
    """A minutes spin box value where 0 (shown as "default") means not set."""
    return None if value is None or float(value) <= 0 else float(value)


def _given(*pairs: Tuple[str, object]) -> List[str]:
    """``--option value`` for each value that is set."""
    args: List[str] = []
    for option, value in pairs:
        if value is not None:
            args += [option, str(value)]
    return args


def _checkDevice(device: str) -> None:
    if not (device in DEVICES or device.startswith("cuda:")):
        raise InputError(f"Device must be one of {', '.join(DEVICES)} (or cuda:N), got {device!r}")


def _checkPositive(name: str, value: Optional[float]) -> None:
    if value is not None and value <= 0:
        raise InputError(f"{name} must be greater than 0, got {value}")


@dataclass(frozen=True)
class PretrainOptions:
    """Self-supervised pretraining on unlabelled volumes.

    Args:
        epochs: passes over the slices (None: MACLCore's default).
        timeBudget: minutes the run may take (None: MACLCore's default, about 10 on a CPU when epochs are
            not set either, the full schedule on a GPU).
        batchSize: slices per step and GPU (None: MACLCore's default).
        device: auto (CUDA when present), cpu, cuda or cuda:N.
        gpus: number of GPUs; more than one launches the same job under torchrun, one process per GPU.
        resume: continue the interrupted run whose state lies beside the output (``MODEL.resume.pt``).
        extraArgs: further ``maclcore pretrain`` options, passed as given.
    """

    epochs: Optional[int] = None
    timeBudget: Optional[float] = None
    batchSize: Optional[int] = None
    device: str = "auto"
    gpus: int = 1
    resume: bool = False
    extraArgs: Tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        _checkPositive("Epochs", self.epochs)
        _checkPositive("Time budget", self.timeBudget)
        _checkPositive("Batch size", self.batchSize)
        _checkPositive("Number of GPUs", self.gpus)
        _checkDevice(self.device)
        if self.gpus > 1 and self.device == "cpu":
            raise InputError(f"{self.gpus} GPUs were asked for, but the device is cpu")

    def arguments(self) -> List[str]:
        device = "cuda" if self.gpus > 1 else self.device
        args = _given(("--epochs", self.epochs), ("--time-budget", self.timeBudget),
                      ("--batch-size", self.batchSize)) + ["--device", device]
        return args + (["--resume"] if self.resume else []) + list(self.extraArgs)


@dataclass(frozen=True)
class FinetuneOptions:
    """Supervised finetuning on annotated cases.

    Args:
        epochs: passes over the training slices (None: MACLCore's default).
        timeBudget: minutes the run may take (None: MACLCore's default, as for pretraining).
        batchSize: slices per step (None: MACLCore's default).
        device: auto, cpu, cuda or cuda:N.
        stepsPerEpoch: steps per epoch (None: one pass over the slices).
        spacing, size, channels: preprocessing and network width (None: MACLCore derives them).
        seed: random seed (None: MACLCore's default).
        resume: continue the interrupted run whose state lies beside the output (``MODEL.resume.pt``).
        extraArgs: further ``maclcore finetune`` options, passed as given.
    """

    epochs: Optional[int] = None
    timeBudget: Optional[float] = None
    batchSize: Optional[int] = None
    device: str = "auto"
    stepsPerEpoch: Optional[int] = None
    spacing: Optional[float] = None
    size: Optional[int] = None
    channels: Optional[Tuple[int, ...]] = None
    seed: Optional[int] = None
    resume: bool = False
    extraArgs: Tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        for name, value in (("Epochs", self.epochs), ("Time budget", self.timeBudget), ("Batch size", self.batchSize),
                            ("Steps per epoch", self.stepsPerEpoch), ("Spacing", self.spacing),
                            ("Size", self.size)):
            _checkPositive(name, value)
        _checkDevice(self.device)

    def arguments(self) -> List[str]:
        args = _given(("--epochs", self.epochs), ("--time-budget", self.timeBudget),
                      ("--batch-size", self.batchSize)) + ["--device", self.device]
        args += _given(("--steps-per-epoch", self.stepsPerEpoch), ("--spacing", self.spacing), ("--size", self.size),
                       ("--seed", self.seed))
        if self.channels:
            args += ["--channels", ",".join(str(c) for c in self.channels)]
        if self.resume:
            args.append("--resume")
        return args + list(self.extraArgs)


@dataclass(frozen=True)
class SegmentOptions:
    """Inference on one volume.

    Args:
        device: auto, cpu, cuda or cuda:N.
        batchSize: slices per forward pass (None: MACLCore's default, halved there when memory runs out).
    """

    device: str = "auto"
    batchSize: Optional[int] = INFERENCE_BATCH_SIZE

    def __post_init__(self) -> None:
        _checkPositive("Batch size", self.batchSize)
        _checkDevice(self.device)

    def arguments(self) -> List[str]:
        return ["--device", self.device] + _given(("--batch-size", self.batchSize))


@dataclass(frozen=True)
class SuggestOptions:
    """Ranking volumes for annotation (``maclcore suggest``).

    Args:
        device: auto, cpu, cuda or cuda:N.
        rotations: test-time rotations (1, 2 or 4 quarter turns averaged; None: MACLCore's default).
        batchSize: slices per forward pass (None: MACLCore's default).
    """

    device: str = "auto"
    rotations: Optional[int] = None
    batchSize: Optional[int] = INFERENCE_BATCH_SIZE

    def __post_init__(self) -> None:
        _checkPositive("Batch size", self.batchSize)
        _checkDevice(self.device)
        if self.rotations not in (None, 1, 2, 4):
            raise InputError(f"Rotations must be 1, 2 or 4, got {self.rotations}")

    def arguments(self) -> List[str]:
        return ["--device", self.device] + _given(("--rotations", self.rotations), ("--batch-size", self.batchSize))
