"""An on-disk cache of preprocessed slices: read and preprocess the volumes once, train from it many times.

It serves two purposes:

* **Data larger than memory.** Training memory-maps the cache and gathers each batch from it
  (:mod:`maclcore.data.stream`) instead of holding every slice in (GPU) memory.
* **Preprocess here, train there.** The cache is compact and self-contained: it can be built on a machine
  with SimpleITK and the original files, copied to a GPU machine, and trained from with neither
  (``maclcore pretrain --cache-dir DIR`` with no ``--images``). Nothing on that path imports SimpleITK.

A cache folder holds::

    manifest.json   format, preprocessing plan, requested --spacing/--size, label schema, dtype, and for
                    every volume its name, slice range and source fingerprints (path, size, mtime)
    images.npy      (N, 1, S, S) float32 or float16, intensities in [0, 1]
    labels.npy      (N, S, S) uint8 (labelled caches only)
    positions.npy   (N,) float32 normalised slice positions
    volumes.npy     (N,) int64 volume index of each slice

The manifest is written last (atomically), so a folder without one is an unfinished build. A cache whose
sources changed (size or modification time), or that was built with other settings, is *stale* and is
rebuilt; arrays are replaced by rename, so a run reading the old cache keeps its files.

Build one without training (e.g. on the machine that has the data)::

    maclcore cache --images /data/unlabelled --cache-dir /scratch/cache [--spacing 1.25]
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .. import __version__
from ..errors import ConfigError, InputError, PathLike
from ..config import from_dict, to_dict
from ..io.atomic import write_text_atomic
from ..io.pairing import Case
from ..labels import LabelSchema
from ..runtime.control import RunLock  # a lock file against two builds of one cache
from .dataset import SliceData, load_case
from .preprocessing import PreprocessingConfig, pad_slices
from .stream import SliceStream

FORMAT, VERSION = "maclcore-slice-cache", 1
MANIFEST = "manifest.json"
DTYPES = ("float32", "float16")
# How much of the training device's free memory slices may take when --max-memory is not given: the
# rest is for the network, its activations and the optimizer.
AUTO_BUDGET_FRACTION = 0.5
COPY_CHUNK_BYTES = 256 << 20  # loading a cache into GPU memory goes through host memory in chunks of this

ProgressFn = Callable[[int, int, str], None]


def fingerprint(path: PathLike) -> Dict[str, Any]:
    """What identifies a source's content cheaply: absolute path, size and modification time (ns).

    A DICOM series folder counts as the sum of its files' sizes and their latest modification time.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        stats = [os.stat(os.path.join(path, e)) for e in sorted(os.listdir(path))
                 if os.path.isfile(os.path.join(path, e))]
        return {"path": path, "bytes": sum(s.st_size for s in stats),
                "mtime_ns": max((s.st_mtime_ns for s in stats), default=0)}
    stat = os.stat(path)
    return {"path": path, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def slice_bytes(count: int, size: int, labels: bool) -> int:
    """Memory that ``count`` slices of ``size`` x ``size`` take as training tensors (float32 images, uint8
    labels, float32 positions and int64 volume indices)."""
    return count * size * size * (4 + (1 if labels else 0)) + count * 12


def available_memory(device: torch.device) -> int:
    """Free bytes on the training device: GPU memory on CUDA, available RAM otherwise."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 << 30  # unknown (macOS, Windows): assume 8 GiB are free


def memory_budget(device: torch.device, max_memory: Optional[float] = None) -> int:
    """Bytes of training slices to hold in memory: ``max_memory`` GB when given (checked by
    :class:`~maclcore.data.storage.SliceStorage`), else half the free memory."""
    if max_memory is not None:
        return int(max_memory * 1e9)
    return int(available_memory(device) * AUTO_BUDGET_FRACTION)


def _path(cache_dir: str, name: str) -> str:
    return os.path.join(cache_dir, f"{name}.npy")


def read_manifest(cache_dir: PathLike) -> Optional[Dict[str, Any]]:
    """The manifest of a finished cache in ``cache_dir``; None when there is none (or it is unreadable)."""
    path = os.path.join(os.fspath(cache_dir), MANIFEST)
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == FORMAT else None


def _same_schema(stored: Optional[Dict[str, Any]], schema: LabelSchema) -> bool:
    """Whether a manifest's schema is ``schema``, read as a model file's is (fields added since the cache was
    written take their defaults, so a new post-processing setting does not make every cache stale)."""
    if stored is None:
        return False
    try:
        return LabelSchema.from_dict(stored) == schema
    except (ConfigError, KeyError, TypeError):
        return False


def stale_reason(manifest: Optional[Dict[str, Any]], cases: Sequence[Case], schema: Optional[LabelSchema],
                 dtype: Optional[str] = None, spacing: Optional[float] = None, size: Optional[int] = None,
                 plan: Optional[PreprocessingConfig] = None, check_sources: bool = True) -> Optional[str]:
    """Why a cache cannot serve these cases and settings (None: it can).

    With ``check_sources`` the cases must be the cache's, with unchanged files, and the requested
    ``spacing``/``size`` those it was built with; without, only the format, dtype, labels and ``plan`` count
    (a cache carried to a machine without its sources). ``plan`` (a resumed run's) must match exactly.
    """
    if manifest is None:
        return "no finished cache there"
    if manifest.get("version") != VERSION:
        return f"written by another cache format (version {manifest.get('version')}, this is {VERSION})"
    if dtype is not None and manifest.get("dtype") != dtype:
        return f"its slices are {manifest.get('dtype')}, {dtype} was asked for"
    if schema is not None and not _same_schema(manifest.get("schema"), schema):
        return "it has no labels" if manifest.get("schema") is None else "its labels follow another schema"
    if plan is not None and manifest.get("preprocessing") != to_dict(plan):
        return f"it was preprocessed as {manifest.get('preprocessing')}, this run uses {to_dict(plan)}"
    if not check_sources:
        return None
    if plan is None and manifest.get("requested") != {"spacing": spacing, "size": size}:
        return f"it was built with {manifest.get('requested')}, now {({'spacing': spacing, 'size': size})}"
    recorded = {entry["name"]: entry for entry in manifest.get("cases", [])}
    if sorted(recorded) != sorted(case.name for case in cases):
        return f"it holds other volumes ({len(recorded)} cached, {len(cases)} given)"
    for case in cases:
        entry = recorded[case.name]
        sources = [("image", case.image)] + ([("label", case.label)] if schema is not None else [])
        for kind, path in sources:
            try:
                current = fingerprint(path) if path else None
            except OSError:
                return f"{path} cannot be read"
            if current != entry.get(kind):
                return f"{path} changed since the cache was built"
    return None


def cached_cases(cache_dir: PathLike) -> List[Case]:
    """The cases a finished cache holds (their source paths as recorded, which need not exist here)."""
    manifest = read_manifest(cache_dir)
    if manifest is None:
        raise InputError(cache_dir, "holds no finished slice cache (build one with {images} and {storage.cache_dir})")
    return [Case(name=e["name"], image=e["image"]["path"], label=(e.get("label") or {}).get("path"))
            for e in manifest["cases"]]


def build_cache(cache_dir: PathLike, cases: Sequence[Case], plan: PreprocessingConfig, slice_counts: Sequence[int],
                schema: Optional[LabelSchema] = None, dtype: str = "float32",
                requested: Tuple[Optional[float], Optional[int]] = (None, None),
                progress: Optional[ProgressFn] = None) -> Dict[str, Any]:
    """Read and preprocess every case once, straight into the cache's arrays (one volume in memory at a time).

    ``slice_counts`` are the volumes' slice counts (from their headers), which size the arrays up front.
    Returns the manifest.
    """
    if dtype not in DTYPES:
        raise ConfigError("storage.cache_dtype", f"must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if len(slice_counts) != len(cases):
        raise ValueError("one slice count per case is needed")
    cache_dir = os.fspath(cache_dir)
    if os.path.exists(cache_dir) and not os.path.isdir(cache_dir):
        raise InputError(cache_dir, "is a file; {storage.cache_dir} needs a folder")
    os.makedirs(cache_dir, exist_ok=True)
    manifest_path = os.path.join(cache_dir, MANIFEST)
    with RunLock(manifest_path):
        if os.path.exists(manifest_path):
            os.remove(manifest_path)  # from now on the folder is an unfinished build
        entries = _write_arrays(cache_dir, cases, plan, slice_counts, schema, dtype, progress)
        manifest = {"format": FORMAT, "version": VERSION, "maclcore": __version__,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "preprocessing": to_dict(plan),
                    "requested": {"spacing": requested[0], "size": requested[1]},
                    "schema": schema.to_dict() if schema is not None else None, "dtype": dtype,
                    "count": int(sum(slice_counts)), "size": plan.size, "cases": entries}
        write_text_atomic(manifest_path, json.dumps(manifest, indent=1))
    return manifest


def _write_arrays(cache_dir: str, cases: Sequence[Case], plan: PreprocessingConfig, slice_counts: Sequence[int],
                  schema: Optional[LabelSchema], dtype: str, progress: Optional[ProgressFn]) -> List[Dict[str, Any]]:
    """Fill the cache's arrays case by case and put them in place; returns the manifest's case entries."""
    partial = {name: _path(cache_dir, name) + ".partial" for name in ("images", "labels")}
    try:
        return _fill_and_place(cache_dir, cases, plan, slice_counts, schema, dtype, progress, partial)
    except BaseException:  # also Ctrl-C: an unfinished build leaves no large .partial files behind
        for path in partial.values():
            with contextlib.suppress(OSError):
                os.remove(path)
        raise


def _fill_and_place(cache_dir: str, cases: Sequence[Case], plan: PreprocessingConfig, slice_counts: Sequence[int],
                    schema: Optional[LabelSchema], dtype: str, progress: Optional[ProgressFn],
                    partial: Dict[str, str]) -> List[Dict[str, Any]]:
    total, size = int(sum(slice_counts)), plan.size
    images = np.lib.format.open_memmap(partial["images"], mode="w+", dtype=dtype, shape=(total, 1, size, size))
    labels = (np.lib.format.open_memmap(partial["labels"], mode="w+", dtype=np.uint8, shape=(total, size, size))
              if schema is not None else None)
    positions, volumes, entries, start = [], [], [], 0
    for index, case in enumerate(cases):
        entry = {"name": case.name, "image": fingerprint(case.image),
                 "label": fingerprint(case.label) if schema is not None and case.label else None}
        prepared = load_case(case, plan, schema)
        count = prepared.num_slices
        if count != slice_counts[index]:
            raise InputError(case.image, f"has {count} slices, its header said {slice_counts[index]}")
        if max(prepared.image.shape[-2:]) > size:
            raise InputError(case.image, f"slices of {prepared.image.shape[-2:]} pixels do not fit size {size}")
        images[start:start + count, 0] = pad_slices(prepared.image, size)
        if labels is not None:
            labels[start:start + count] = pad_slices(prepared.label, size)
        positions.append(prepared.positions())
        volumes.append(np.full(count, index, dtype=np.int64))
        entries.append({**entry, "start": start, "slices": count})
        start += count
        if progress is not None:
            progress(index + 1, len(cases), case.name)
    for array in (images, labels):
        if array is not None:
            array.flush()
    del images, labels
    np.save(_path(cache_dir, "positions"), np.concatenate(positions).astype(np.float32))
    np.save(_path(cache_dir, "volumes"), np.concatenate(volumes))
    for name, path in partial.items():
        if os.path.exists(path):
            os.replace(path, _path(cache_dir, name))  # a reader of the old arrays keeps its files
    if schema is None and os.path.exists(_path(cache_dir, "labels")):
        os.remove(_path(cache_dir, "labels"))
    return entries


class SliceCache:
    """A finished cache, memory-mapped: load it into memory, or stream batches from it."""

    def __init__(self, cache_dir: PathLike, manifest: Dict[str, Any]) -> None:
        self.cache_dir, self.manifest = os.fspath(cache_dir), manifest
        try:
            self.images = np.load(_path(self.cache_dir, "images"), mmap_mode="r")
            self.labels = (np.load(_path(self.cache_dir, "labels"), mmap_mode="r")
                           if manifest.get("schema") is not None else None)
            self.positions = np.load(_path(self.cache_dir, "positions"))
            self.volumes = np.load(_path(self.cache_dir, "volumes"))
        except (OSError, ValueError) as exc:
            raise InputError(self.cache_dir, f"is an incomplete slice cache ({exc}); delete it to rebuild") from None
        count, size = int(manifest["count"]), int(manifest["size"])
        shapes = [(self.images, (count, 1, size, size)), (self.positions, (count,)), (self.volumes, (count,))]
        if self.labels is not None:
            shapes.append((self.labels, (count, size, size)))
        if any(array.shape != shape for array, shape in shapes):
            raise InputError(self.cache_dir, "has arrays that do not match its manifest; delete it to rebuild")

    @classmethod
    def open(cls, cache_dir: PathLike) -> "SliceCache":
        manifest = read_manifest(cache_dir)
        if manifest is None:
            raise InputError(cache_dir, "holds no finished slice cache")
        return cls(cache_dir, manifest)

    @property
    def plan(self) -> PreprocessingConfig:
        return from_dict(PreprocessingConfig, self.manifest["preprocessing"])

    @property
    def names(self) -> List[str]:
        return [entry["name"] for entry in self.manifest["cases"]]

    def __len__(self) -> int:
        return int(self.manifest["count"])

    @property
    def memory_bytes(self) -> int:
        """What the slices take as in-memory training tensors."""
        return slice_bytes(len(self), int(self.manifest["size"]), self.labels is not None)

    def _small(self, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.positions).to(device), torch.from_numpy(self.volumes).to(device)

    def load(self, device: Union[str, torch.device] = "cpu", labels: bool = True) -> SliceData:
        """Every slice in ``device`` memory (float32), copied in chunks (no second full copy on the host)."""
        device = torch.device(device)
        positions, volumes = self._small(device)

        def copy(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
            out = torch.empty(array.shape, dtype=dtype, device=device)
            rows = max(1, COPY_CHUNK_BYTES // max(1, array[:1].nbytes))
            for start in range(0, len(array), rows):
                out[start:start + rows] = torch.from_numpy(np.array(array[start:start + rows])).to(device)
            return out

        return SliceData(images=copy(self.images, torch.float32), positions=positions, volumes=volumes,
                         names=self.names,
                         labels=copy(self.labels, torch.uint8) if labels and self.labels is not None else None)

    def stream(self, device: Union[str, torch.device] = "cpu", labels: bool = True) -> SliceData:
        """Slices left on disk; each batch is gathered from the memory maps onto ``device``."""
        device = torch.device(device)
        arrays = {"images": self.images}
        if labels and self.labels is not None:
            arrays["labels"] = self.labels
        stream = SliceStream(arrays, device, present={"images": torch.float32})
        positions, volumes = self._small(device)
        return SliceData(images=stream.view("images"), positions=positions, volumes=volumes, names=self.names,
                         labels=stream.view("labels") if "labels" in arrays else None)
