"""Slice datasets: every slice of a set of volumes, preprocessed once and held as tensors.

Volumes are read and preprocessed once when the dataset is built; a training step only indexes tensors
(which can live on the GPU), so no file is touched and no Python loop runs per sample. Slices that do not
fit in memory stay in an on-disk cache (:mod:`maclcore.data.cache`): ``images`` and ``labels`` are then
:class:`~maclcore.data.stream.StreamedArray` s, indexed the same way, and each batch is gathered from disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Union

import numpy as np
import torch

from ..errors import InputError
from ..io.pairing import Case
from ..io.segmentation import read_label_map
from ..io.volume import Geometry, read_geometry, read_volume
from ..labels import LabelSchema
from .preprocessing import PreparedVolume, PreprocessingConfig, prepare_volume, stack_slices
from .stream import SliceStream, StreamedArray

ProgressFn = Callable[[int, int, str], None]


def read_case_geometries(cases: Sequence[Case]) -> List[Geometry]:
    """Geometries of the cases' images (headers only), for planning the preprocessing."""
    return [read_geometry(case.image) for case in cases]


def load_case(case: Case, config: PreprocessingConfig, schema: Optional[LabelSchema] = None) -> PreparedVolume:
    """Read and preprocess one case; its label map too when ``schema`` is given and the case has one."""
    volume = read_volume(case.image)
    label = None
    if schema is not None and case.label is not None:
        label = read_label_map(case.label, schema, reference=volume.geometry)
        if not label.any():
            raise InputError(case.label, "is empty: it has no labelled voxels")
    try:
        prepared = prepare_volume(case.name, volume.array, volume.geometry, config, label,
                                  schema.num_classes if schema else 0)
    except InputError as exc:  # name the file, not the case
        raise InputError(case.image, exc.problem) from None
    prepared.meta["image"] = case.image
    return prepared


def load_cases(cases: Sequence[Case], config: PreprocessingConfig, schema: Optional[LabelSchema] = None,
               progress: Optional[ProgressFn] = None) -> List[PreparedVolume]:
    """Read and preprocess every case once."""
    prepared = []
    for index, case in enumerate(cases):
        prepared.append(load_case(case, config, schema))
        if progress is not None:
            progress(index + 1, len(cases), case.name)
    return prepared


@dataclass
class SliceData:
    """All slices of some volumes, padded to one size, with their positions and volume indices."""

    images: Union[torch.Tensor, StreamedArray]  # (N, 1, S, S) float32 in [0, 1]
    positions: torch.Tensor  # (N,) float32, p = (k + 0.5) / Z of the slice's volume
    volumes: torch.Tensor  # (N,) int64 index into ``names``
    names: List[str] = field(default_factory=list)
    labels: Optional[Union[torch.Tensor, StreamedArray]] = None  # (N, S, S) uint8

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def stream(self) -> Optional[SliceStream]:
        """The on-disk stream the images come from; None when they are in memory."""
        return self.images.stream if isinstance(self.images, StreamedArray) else None

    def to(self, device: torch.device) -> "SliceData":
        """A copy with the tensors on ``device`` (all slices move at once, not per step; streamed slices
        stay on disk and their batches go to ``device``)."""
        stream = self.stream
        if stream is not None:
            stream = stream.to(device)
            return SliceData(images=stream.view("images"), positions=self.positions.to(device),
                             volumes=self.volumes.to(device), names=list(self.names),
                             labels=None if self.labels is None else stream.view("labels"))
        return SliceData(images=self.images.to(device), positions=self.positions.to(device),
                         volumes=self.volumes.to(device), names=list(self.names),
                         labels=None if self.labels is None else self.labels.to(device))

    def prefetch(self, indices: torch.Tensor, rows: torch.Tensor) -> None:
        """Start gathering the batch that ``images[indices]`` will ask for (``rows``: the same indices on the
        CPU) while the current step runs. A no-op for slices in memory."""
        if self.stream is not None:
            self.stream.stage(indices, rows)

    def select_volumes(self, names: Sequence[str]) -> "SliceData":
        """The slices of the named volumes only (volume indices are renumbered)."""
        wanted = [self.names.index(n) for n in names]
        mask = torch.zeros(len(self), dtype=torch.bool, device=self.volumes.device)
        remap = torch.full((len(self.names),), -1, dtype=torch.int64, device=self.volumes.device)
        for new, old in enumerate(wanted):
            mask |= self.volumes == old
            remap[old] = new
        stream = self.stream
        if stream is not None:
            stream = stream.subset(mask.cpu().numpy())
            return SliceData(images=stream.view("images"), positions=self.positions[mask],
                             volumes=remap[self.volumes[mask]], names=list(names),
                             labels=None if self.labels is None else stream.view("labels"))
        return SliceData(images=self.images[mask], positions=self.positions[mask],
                         volumes=remap[self.volumes[mask]], names=list(names),
                         labels=None if self.labels is None else self.labels[mask])

    @classmethod
    def from_volumes(cls, volumes: Sequence[PreparedVolume], size: int, with_labels: bool = False) -> "SliceData":
        """Stack the slices of prepared volumes, zero-padded to ``size`` (which must fit every slice)."""
        if not volumes:
            raise ValueError("no volumes to build a slice dataset from")
        for volume in volumes:
            if max(volume.image.shape[-2:]) > size:
                raise ValueError(f"{volume.name}: slices of {volume.image.shape[-2:]} do not fit size {size}")
        images = stack_slices([v.image for v in volumes], size)
        labels = None
        if with_labels:
            missing = [v.name for v in volumes if v.label is None]
            if missing:
                raise ValueError(f"volumes without labels: {missing}")
            labels = stack_slices([v.label for v in volumes], size, channel=False)
        return cls(images=images,
                   positions=torch.from_numpy(np.concatenate([v.positions() for v in volumes])),
                   volumes=torch.cat([torch.full((v.num_slices,), i, dtype=torch.int64) for i, v in enumerate(volumes)]),
                   names=[v.name for v in volumes], labels=labels)
