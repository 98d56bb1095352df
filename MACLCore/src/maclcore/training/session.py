"""What every training run does around its loop: lock the output, resume, checkpoint, stop, clean up."""

from __future__ import annotations

import contextlib
import inspect
import os
import random
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..data.dataset import SliceData, load_cases, read_case_geometries
from ..data.preprocessing import PreprocessingConfig, plan_preprocessing
from ..errors import InputError, MaclError, TrainingInterrupted
from ..io.atomic import remove_partials
from ..io.naming import cache_path, resume_path
from ..io.pairing import Case
from ..labels import LabelSchema
from ..models.global_norm import convert_to_global_batchnorm
from ..io.checkpoint import load_checkpoint, save_checkpoint
from .loop import LoopConfig, Trainer, TrainState, unwrap
from ..runtime.progress import Reporter
from ..runtime.control import RunLock, StopRequest
from ..runtime.processes import Processes, broadcast_object


# What a resume state holds besides the run's own record (config, cases, ...), checked before it is used.
RESUME_KEYS = ("stage", "config", "preprocessing", "cases", "model_state", "optimizer", "train_state")


def seed_everything(seed: int) -> None:
    """Seed weight initialisation (sampling and augmentation use their own per-step generators)."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def load_training_slices(cases: Sequence[Case], plan: PreprocessingConfig, schema: Optional[LabelSchema],
                         reporter: Reporter, session: Optional["TrainingSession"] = None) -> SliceData:
    """Read and preprocess every case once (with labels when ``schema`` is given) into one slice set.

    With ``session``, a stop request is honoured between cases.
    """
    reporter.message(f"preprocessing: {plan.spacing} mm in-plane, {plan.size}x{plan.size} slices")
    reporter.stage("load", len(cases))

    def progress(index: int, count: int, name: str) -> None:
        reporter.progress("load", index, count, case=name)
        if session is not None:
            session.check_stop()

    prepared = load_cases(cases, plan, schema, progress=progress)
    return SliceData.from_volumes(prepared, plan.size, with_labels=schema is not None)


@dataclass(frozen=True)
class SliceStorage:
    """Where training slices live: in the training device's memory when they fit, else in an on-disk cache
    that each batch is gathered from.

    Args:
        cache_dir: keep the preprocessed slices in this folder (reused while its sources are unchanged;
            rebuilt when stale). Without it, a cache beside the output (``MODEL.cache``) is made only when
            the slices do not fit in memory.
        max_memory: GB of slices to hold in the device's memory; more are streamed from the cache. None:
            half of the device's free memory (GPU memory on CUDA, RAM on the CPU).
        cache_dtype: float32 (exactly the in-memory values) or float16 (half the disk and I/O); None keeps an
            existing cache's and builds float32.
    """

    cache_dir: Optional[str] = None
    max_memory: Optional[float] = None
    cache_dtype: Optional[str] = None


def training_slices(cases: Sequence[Case], schema: Optional[LabelSchema], reporter: Reporter,
                    session: "TrainingSession", device: torch.device, storage: Optional[SliceStorage] = None,
                    plan: Optional[PreprocessingConfig] = None, spacing: Optional[float] = None,
                    size: Optional[int] = None, sources_given: bool = True) -> Tuple[SliceData, PreprocessingConfig]:
    """The training slices on ``device`` and the preprocessing plan, read through a cache where that helps.

    Without a cache folder and when the slices fit in the memory budget this is :func:`load_training_slices`
    (everything in device memory). Otherwise the slices are preprocessed once into the cache (or taken from it
    when it is up to date: no image is read, SimpleITK is not imported), then loaded into memory when they
    fit, else streamed batch by batch. ``plan`` (a resumed run's) is used as it is; otherwise it is derived
    from the headers with ``spacing``/``size`` overrides, or taken from an up-to-date cache. With
    ``sources_given=False`` (cases listed from the cache itself) the cache is used without checking sources.

    Under torchrun, rank 0 decides and builds; the other processes wait for it, then open the same cache.
    """
    from ..data import cache as slice_cache

    storage = storage or SliceStorage()
    procs = session.procs
    decision: Optional[Dict[str, Any]] = None
    if procs.is_main:
        decision = _plan_storage(cases, schema, reporter, session, device, storage, plan, spacing, size,
                                 sources_given)
    decision = broadcast_object(decision, procs)
    plan = PreprocessingConfig(spacing=decision["plan"]["spacing"], size=decision["plan"]["size"],
                               percentiles=tuple(decision["plan"]["percentiles"]))
    if decision["cache_dir"] is None:
        data = load_training_slices(cases, plan, schema, reporter, session)
        return data.to(device), plan
    cache = slice_cache.SliceCache.open(decision["cache_dir"])
    budget = slice_cache.memory_budget(device, storage.max_memory)
    with_labels = schema is not None
    needed = slice_cache.slice_bytes(len(cache), int(cache.manifest["size"]), with_labels)
    if needed <= budget:
        reporter.message(f"slices from the cache {cache.cache_dir}, held in {device.type} memory ({needed / 1e9:.2f} GB)")
        return cache.load(device, labels=with_labels), plan
    reporter.message(f"slices ({needed / 1e9:.2f} GB) exceed the memory budget ({budget / 1e9:.2f} GB): "
                     f"streaming each batch from the cache {cache.cache_dir}")
    return cache.stream(device, labels=with_labels), plan


def _plan_storage(cases: Sequence[Case], schema: Optional[LabelSchema], reporter: Reporter,
                  session: "TrainingSession", device: torch.device, storage: SliceStorage,
                  plan: Optional[PreprocessingConfig], spacing: Optional[float], size: Optional[int],
                  sources_given: bool) -> Dict[str, Any]:
    """Rank 0's part of :func:`training_slices`: the plan, and the cache folder to use (built if needed)."""
    from ..data import cache as slice_cache

    if storage.cache_dir is not None:
        manifest = slice_cache.read_manifest(storage.cache_dir)
        reason = slice_cache.stale_reason(manifest, cases, schema, storage.cache_dtype, spacing, size, plan,
                                          check_sources=sources_given)
        if reason is None:
            reporter.message(f"using the slice cache {storage.cache_dir} ({manifest['count']} slices)")  # type: ignore[index]
            return {"plan": manifest["preprocessing"], "cache_dir": storage.cache_dir}  # type: ignore[index]
        if not sources_given:
            raise MaclError(f"--cache-dir {storage.cache_dir} cannot be used ({reason}); give --images to rebuild it")
        if manifest is not None:
            reporter.message(f"rebuilding the slice cache {storage.cache_dir}: {reason}")
    geometries = read_case_geometries(cases)
    plan = plan or plan_preprocessing(geometries, spacing=spacing, size=size)
    counts = [g.size[2] for g in geometries]
    needed = slice_cache.slice_bytes(sum(counts), plan.size, schema is not None)
    budget = slice_cache.memory_budget(device, storage.max_memory)
    cache_dir = storage.cache_dir
    if cache_dir is None and needed > budget:
        cache_dir = cache_path(session.output)
        reporter.message(f"the slices ({needed / 1e9:.2f} GB) exceed the memory budget ({budget / 1e9:.2f} GB): "
                         f"caching them in {cache_dir} (choose the folder with --cache-dir)")
    plan_dict = {"spacing": plan.spacing, "size": plan.size, "percentiles": list(plan.percentiles)}
    if cache_dir is None:
        return {"plan": plan_dict, "cache_dir": None}
    if storage.cache_dir is None:  # an automatic cache beside the output: reuse it when up to date
        if slice_cache.stale_reason(slice_cache.read_manifest(cache_dir), cases, schema, storage.cache_dtype,
                                    spacing, size, plan) is None:
            return {"plan": plan_dict, "cache_dir": cache_dir}
    reporter.message(f"preprocessing: {plan.spacing} mm in-plane, {plan.size}x{plan.size} slices, into {cache_dir}")
    reporter.stage("load", len(cases))

    def progress(index: int, count: int, name: str) -> None:
        reporter.progress("load", index, count, case=name)
        session.check_stop()

    slice_cache.build_cache(cache_dir, cases, plan, counts, schema, storage.cache_dtype or "float32",
                            (spacing, size), progress)
    return {"plan": plan_dict, "cache_dir": cache_dir}


def prepare_model(model: nn.Module, procs: Processes, device: torch.device, loop: LoopConfig) -> nn.Module:
    """Put the network on its device in the fastest layout, wrap it for DDP under torchrun, compile on request.

    Under DDP, BatchNorm becomes global BatchNorm so that statistics are those of the global batch, as in a
    single-process run.
    """
    model = model.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # slice sizes are fixed within a run
        if loop.channels_last:
            model = model.to(memory_format=torch.channels_last)
    if procs.distributed:
        model = convert_to_global_batchnorm(model)
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if loop.compile:
        model = torch.compile(model)  # type: ignore[assignment]
    return model


def make_optimizer(optimizer_class: type, model: nn.Module, device: torch.device, **settings: Any) -> Any:
    """An optimizer over the model's parameters, with the fused (single-kernel) update on CUDA where torch has it."""
    if device.type == "cuda" and "fused" in inspect.signature(optimizer_class).parameters:
        settings["fused"] = True
    return optimizer_class(model.parameters(), **settings)


class TrainingSession:
    """Owns an output path for the length of a run.

    On entry it takes the output's lock (rank 0), removes temp files of writes a crash interrupted, starts
    listening for stop requests and, with ``resume``, loads the saved state; without ``resume`` it refuses to
    discard an interrupted run's state. :meth:`run` trains, saving the resumable state as it goes, and raises
    :class:`TrainingInterrupted` when stopped early.
    """

    def __init__(self, output: str, stage: str, procs: Processes, resume: bool,
                 stop_file: Optional[str] = None) -> None:
        self.output, self.stage, self.procs, self.resume = output, stage, procs, resume
        self.stop_file = stop_file
        self.resume_path = resume_path(output)
        self.state: Optional[Dict[str, Any]] = None
        self.stop = StopRequest(stop_file)
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "TrainingSession":
        if os.path.isdir(self.output):
            raise InputError(self.output, "is a folder; give the model file to write, such as model.pt")
        try:
            self._enter()
        except BaseException:
            self._stack.close()  # release the lock: __exit__ is not called when __enter__ fails
            raise
        return self

    def _enter(self) -> None:
        if self.procs.is_main:
            self._stack.enter_context(RunLock(self.output))
            remove_partials(self.output)
            remove_partials(self.resume_path)
        self._stack.enter_context(self.stop.installed())
        exists = os.path.exists(self.resume_path)
        if self.resume:
            if not exists:
                raise MaclError(f"--resume: nothing to resume, {self.resume_path} does not exist")
            self.state = load_checkpoint(self.resume_path, kinds=("resume",))
            missing = [key for key in RESUME_KEYS if key not in self.state]
            if missing:
                raise InputError(self.resume_path, f"is an incomplete training state (no {', '.join(missing)}); "
                                                   "delete it to start over")
            if self.state.get("stage") != self.stage:
                raise MaclError(f"--resume: {self.resume_path} is the state of a {self.state.get('stage')} run, "
                                f"not of {self.stage}")
        elif exists:
            raise MaclError(f"{self.resume_path}: an interrupted run's state is there; pass --resume to continue it, "
                            "or delete that file to start over")

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    def check_stop(self) -> None:
        """Raise :class:`TrainingInterrupted` when a stop was requested (before training: nothing new saved)."""
        if self.stop.requested:
            raise TrainingInterrupted(self.resume_path if os.path.exists(self.resume_path) else None)

    def check_cases(self, cases: Sequence[Case]) -> None:
        """When resuming, the cases must be those the interrupted run trained on."""
        if self.state is None:
            return
        recorded, given = sorted(self.state["cases"]), sorted(c.name for c in cases)
        if recorded != given:
            raise MaclError(f"--resume: the interrupted run used {len(recorded)} cases ({', '.join(recorded[:3])}, ...), "
                            f"but {len(given)} different cases were given; pass the same inputs as before")

    def run(self, trainer: Trainer, model: nn.Module, optimizer: torch.optim.Optimizer,
            payload: Dict[str, Any]) -> TrainState:
        """Train to the end (restoring the saved state first when resuming)."""
        state = TrainState()
        if self.state is not None:
            unwrap(model).load_state_dict(self.state["model_state"])
            optimizer.load_state_dict(self.state["optimizer"])
            state = TrainState.from_dict(self.state["train_state"])
            trainer.reporter.message(f"resuming at epoch {state.epoch}, step {state.global_step}")

        def save_state(current: TrainState) -> None:
            if self.procs.is_main:
                save_checkpoint(self.resume_path, "resume", {
                    **payload, "stage": self.stage, "model_state": unwrap(model).state_dict(),
                    "optimizer": optimizer.state_dict(), "train_state": current.to_dict()})

        trainer.save_state = save_state
        self.check_stop()
        state, finished = trainer.run(state, self.stop)
        if not finished:
            raise TrainingInterrupted(self.resume_path)
        return state

    def finish(self, kind: str, payload: Dict[str, Any]) -> None:
        """Write the final model and drop the resumable state (rank 0)."""
        if not self.procs.is_main:
            return
        save_checkpoint(self.output, kind, payload)
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.resume_path)

