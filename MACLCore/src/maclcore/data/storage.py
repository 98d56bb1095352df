"""Where a run's training slices live: in the training device's memory, in an on-disk cache loaded into
memory, or streamed batch by batch from that cache.

Rank 0 of a distributed run decides (a :class:`StoragePlan`: the preprocessing and the cache folder, if
any) and builds the cache; every process then opens the same slices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from ..config import from_dict
from ..errors import ConfigError, InputError, MaclError
from ..io.pairing import Case
from ..io.volume import Geometry
from ..labels import LabelSchema
from ..runtime.processes import Processes, broadcast_object
from ..runtime.progress import Reporter
from . import cache as slice_cache
from .dataset import SliceData, load_cases, read_case_geometries
from .preprocessing import PreprocessingConfig, plan_preprocessing

Planner = Callable[[List[Geometry]], PreprocessingConfig]
CheckStop = Callable[[], None]


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

    def __post_init__(self) -> None:
        if self.max_memory is not None and not self.max_memory >= 0:
            raise ConfigError("storage.max_memory", f"must be >= 0 GB, got {self.max_memory}")
        if self.cache_dtype is not None and self.cache_dtype not in slice_cache.DTYPES:
            raise ConfigError("storage.cache_dtype", f"must be one of {', '.join(slice_cache.DTYPES)}, "
                                                     f"got {self.cache_dtype!r}")


@dataclass(frozen=True)
class StoragePlan:
    """Rank 0's decision, the same on every process: how slices are preprocessed and which cache holds them
    (None: they are read from the volumes straight into memory)."""

    preprocessing: PreprocessingConfig
    cache_dir: Optional[str] = None


@dataclass(frozen=True)
class SliceRequest:
    """What a run asks of its slices.

    Args:
        cases: the volumes (with labels when ``schema`` is given).
        schema: the label schema; None for unlabelled slices (pretraining).
        plan: a fixed preprocessing (a resumed run's); used as it is.
        planner: derives the preprocessing from the images' headers when there is no ``plan``.
        requested: the (spacing, size) the user asked for, which a cache records and is checked against.
        sources_given: False when ``cases`` were listed from the cache itself (no sources to check).
        default_cache: where a cache goes when the slices do not fit in memory and no folder is given.
    """

    cases: Sequence[Case]
    schema: Optional[LabelSchema] = None
    plan: Optional[PreprocessingConfig] = None
    planner: Optional[Planner] = None
    requested: Tuple[Optional[float], Optional[int]] = (None, None)
    sources_given: bool = True
    default_cache: Optional[str] = None


def source_cases(cases: Sequence[Case], storage: SliceStorage, labelled: bool) -> Tuple[List[Case], bool]:
    """The volumes a run trains on, and whether their source files were given: ``cases`` when there are any,
    else those of the slice cache in ``storage`` (built before, maybe on another machine; with labels when
    ``labelled``)."""
    if cases:
        return list(cases), True
    if storage.cache_dir is None:
        raise ConfigError("storage.cache_dir", "is not set and no volumes were given: give images, or a slice "
                                               "cache built before")
    cached = slice_cache.cached_cases(storage.cache_dir)
    if labelled and any(case.label is None for case in cached):
        raise InputError(storage.cache_dir, "is a slice cache without labels; build one with maclcore cache "
                                            "--images ... --labels ... to finetune from it")
    return cached, False


def training_slices(request: SliceRequest, storage: SliceStorage, device: torch.device, procs: Processes,
                    reporter: Reporter, check_stop: CheckStop) -> Tuple[SliceData, PreprocessingConfig]:
    """The training slices on ``device`` and their preprocessing, read through a cache where that helps.

    Without a cache folder and when the slices fit in the memory budget, every volume is read into device
    memory. Otherwise the slices are preprocessed once into the cache (or taken from it when it is up to
    date: no image is read, SimpleITK is not imported), then loaded into memory when they fit, else streamed
    batch by batch. ``check_stop`` is called between volumes (it raises to stop).
    """
    decision = decide_storage(request, storage, device, reporter, check_stop) if procs.is_main else None
    plan: StoragePlan = broadcast_object(decision, procs)
    with_labels = request.schema is not None
    if plan.cache_dir is None:
        data = _read_volumes(request.cases, plan.preprocessing, request.schema, reporter, check_stop)
        return data.to(device), plan.preprocessing
    cache = slice_cache.SliceCache.open(plan.cache_dir)
    budget = slice_cache.memory_budget(device, storage.max_memory)
    needed = slice_cache.slice_bytes(len(cache), int(cache.manifest["size"]), with_labels)
    if needed <= budget:
        reporter.message(f"slices from the cache {cache.cache_dir}, held in {device.type} memory "
                         f"({needed / 1e9:.2f} GB)")
        return cache.load(device, labels=with_labels), plan.preprocessing
    reporter.message(f"slices ({needed / 1e9:.2f} GB) exceed the memory budget ({budget / 1e9:.2f} GB): "
                     f"streaming each batch from the cache {cache.cache_dir}")
    return cache.stream(device, labels=with_labels), plan.preprocessing


def _read_volumes(cases: Sequence[Case], plan: PreprocessingConfig, schema: Optional[LabelSchema],
                  reporter: Reporter, check_stop: CheckStop) -> SliceData:
    """Read and preprocess every case once (with labels when ``schema`` is given) into one slice set."""
    reporter.message(f"preprocessing: {plan.spacing} mm in-plane, {plan.size}x{plan.size} slices")
    reporter.stage("load", len(cases))
    prepared = load_cases(cases, plan, schema, progress=_load_progress(reporter, check_stop))
    return SliceData.from_volumes(prepared, plan.size, with_labels=schema is not None)


def _load_progress(reporter: Reporter, check_stop: CheckStop) -> Callable[[int, int, str], None]:
    def progress(index: int, count: int, name: str) -> None:
        reporter.progress("load", index, count, case=name)
        check_stop()

    return progress


def decide_storage(request: SliceRequest, storage: SliceStorage, device: torch.device, reporter: Reporter,
                   check_stop: CheckStop) -> StoragePlan:
    """Rank 0's part of :func:`training_slices`: the preprocessing, and the cache folder to use (built if
    needed). Image headers are read at most once."""
    schema, (spacing, size) = request.schema, request.requested
    geometries: Optional[List[Geometry]] = None
    plan = request.plan
    if plan is None and request.planner is not None:
        geometries = read_case_geometries(request.cases)
        plan = request.planner(geometries)
    if storage.cache_dir is not None:
        manifest = slice_cache.read_manifest(storage.cache_dir)
        reason = slice_cache.stale_reason(manifest, request.cases, schema, storage.cache_dtype, spacing, size, plan,
                                          check_sources=request.sources_given)
        if reason is None:
            reporter.message(f"using the slice cache {storage.cache_dir} ({manifest['count']} slices)")  # type: ignore[index]
            return StoragePlan(from_dict(PreprocessingConfig, manifest["preprocessing"]), storage.cache_dir)  # type: ignore[index]
        if not request.sources_given:
            raise MaclError(f"{storage.cache_dir}: this slice cache cannot be used ({reason}); give the images "
                            "to rebuild it")
        if manifest is not None:
            reporter.message(f"rebuilding the slice cache {storage.cache_dir}: {reason}")
    if geometries is None:
        geometries = read_case_geometries(request.cases)
    plan = plan or plan_preprocessing(geometries, spacing=spacing, size=size)
    counts = [g.size[2] for g in geometries]
    needed = slice_cache.slice_bytes(sum(counts), plan.size, schema is not None)
    budget = slice_cache.memory_budget(device, storage.max_memory)
    cache_dir = storage.cache_dir
    if cache_dir is None and needed > budget:
        if request.default_cache is None:
            raise MaclError(f"the slices ({needed / 1e9:.2f} GB) exceed the memory budget ({budget / 1e9:.2f} GB) "
                            "and no {storage.cache_dir} is set")
        cache_dir = request.default_cache
        reporter.message(f"the slices ({needed / 1e9:.2f} GB) exceed the memory budget ({budget / 1e9:.2f} GB): "
                         f"caching them in {cache_dir} (choose the folder with {{storage.cache_dir}})")
    if cache_dir is None:
        return StoragePlan(plan)
    if storage.cache_dir is None:  # an automatic cache beside the output: reuse it when up to date
        if slice_cache.stale_reason(slice_cache.read_manifest(cache_dir), request.cases, schema, storage.cache_dtype,
                                    spacing, size, plan) is None:
            return StoragePlan(plan, cache_dir)
    reporter.message(f"preprocessing: {plan.spacing} mm in-plane, {plan.size}x{plan.size} slices, into {cache_dir}")
    reporter.stage("load", len(request.cases))
    slice_cache.build_cache(cache_dir, request.cases, plan, counts, schema, storage.cache_dtype or "float32",
                            (spacing, size), _load_progress(reporter, check_stop))
    return StoragePlan(plan, cache_dir)

