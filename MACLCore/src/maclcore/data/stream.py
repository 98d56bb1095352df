"""Slices that stay on disk: batches gathered from memory-mapped arrays onto the training device.

A :class:`SliceStream` holds memory maps of on-disk arrays (``images`` (N, 1, S, S), ``labels`` (N, S, S))
and the device batches go to. :class:`StreamedArray` is one of its arrays seen as a read-only tensor:
``array[indices]`` returns the rows ``indices`` as a tensor on the device, so training code that indexes
``data.images[indices]`` works unchanged whether the slices live in memory or on disk.

A gather is one vectorised ``numpy.take`` per array into (pinned, on CUDA) host memory and one
non-blocking copy to the device; no Python loop runs per sample. The training loop knows the next step's
indices, and :meth:`SliceStream.stage` starts gathering them in a background thread while the current step
runs, so the device does not wait for the disk. A step whose indices were staged needs no host-device
synchronisation; one whose indices were not staged copies the indices to the host first (correct, slower).
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

# Batches staged ahead and kept until used: the current step's and the next one's.
STAGED_BATCHES = 2


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, dtype=dtype)).dtype


class SliceStream:
    """Rows of on-disk arrays, gathered batch by batch onto ``device``.

    Args:
        arrays: name -> array of N stored rows (normally ``numpy.memmap``; any array works).
        rows: which stored rows this stream shows, in order (None: all of them).
        device: where gathered batches go.
        present: name -> dtype batches are converted to on the device (e.g. float16 on disk, float32 seen).
    """

    def __init__(self, arrays: Dict[str, np.ndarray], device: Union[str, torch.device] = "cpu",
                 rows: Optional[np.ndarray] = None, present: Optional[Dict[str, torch.dtype]] = None) -> None:
        self.arrays = dict(arrays)
        self.device = torch.device(device)
        self.rows = None if rows is None else np.ascontiguousarray(rows, dtype=np.int64)
        self.present = dict(present or {})
        stored = len(next(iter(self.arrays.values())))
        if any(len(a) != stored for a in self.arrays.values()):
            raise ValueError("streamed arrays must have the same number of rows")
        if self.rows is not None and len(self.rows) and (self.rows.min() < 0 or self.rows.max() >= stored):
            raise ValueError("stream rows out of range")
        self._length = stored if self.rows is None else len(self.rows)
        self._staged: "OrderedDict[int, Tuple[torch.Tensor, Future, Dict[str, torch.Tensor]]]" = OrderedDict()
        self._pool: Optional[ThreadPoolExecutor] = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._length

    def view(self, name: str) -> "StreamedArray":
        return StreamedArray(self, name)

    def to(self, device: Union[str, torch.device]) -> "SliceStream":
        """The same rows, gathered onto another device."""
        return SliceStream(self.arrays, device, self.rows, self.present)

    def subset(self, mask: np.ndarray) -> "SliceStream":
        """The rows where ``mask`` (over this stream's rows) is true."""
        mask = np.asarray(mask, dtype=bool)
        shown = np.arange(self._length) if self.rows is None else self.rows
        return SliceStream(self.arrays, self.device, shown[mask], self.present)

    def nbytes(self, name: str) -> int:
        """Bytes of ``name``'s rows as they are presented (what holding them in memory would take)."""
        array = self.arrays[name]
        itemsize = torch.empty((), dtype=self.present.get(name, _torch_dtype(array.dtype))).element_size()
        return self._length * int(np.prod(array.shape[1:])) * itemsize

    # -- gathering ------------------------------------------------------------------------------------------

    def _stored(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < -self._length or rows.max() >= self._length):
            raise IndexError(f"slice index out of range for {self._length} slices")
        rows = np.where(rows < 0, rows + self._length, rows)
        return rows if self.rows is None else self.rows[rows]

    def gather_host(self, names: Sequence[str], rows: np.ndarray) -> Dict[str, torch.Tensor]:
        """Rows of the named arrays in host memory (pinned when the device is a GPU), one ``take`` each."""
        stored = self._stored(rows)
        pin = self.device.type == "cuda"
        out = {}
        for name in names:
            array = self.arrays[name]
            host = torch.empty((len(stored),) + tuple(array.shape[1:]), dtype=_torch_dtype(array.dtype), pin_memory=pin)
            # mode="clip" writes straight into ``out`` (mode="raise" buffers); _stored checked the range.
            np.take(array, stored, axis=0, out=host.numpy(), mode="clip")
            out[name] = host
        return out

    def _to_device(self, name: str, host: torch.Tensor) -> torch.Tensor:
        tensor = host.to(self.device, non_blocking=True) if self.device.type != "cpu" else host
        wanted = self.present.get(name)
        return tensor if wanted is None or tensor.dtype == wanted else tensor.to(wanted)

    def stage(self, indices: torch.Tensor, rows: torch.Tensor) -> None:
        """Start gathering the batch ``rows`` (a CPU tensor) in the background; ``indices`` is the tensor the
        training step will index with (the same object), on any device."""
        rows_np = rows.detach().cpu().numpy().copy()
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="maclcore-stream")
                weakref.finalize(self, self._pool.shutdown, wait=False)
            future = self._pool.submit(self.gather_host, list(self.arrays), rows_np)
            self._staged[id(indices)] = (indices, future, {})
            while len(self._staged) > STAGED_BATCHES:
                self._staged.popitem(last=False)

    def gather(self, name: str, indices: torch.Tensor) -> torch.Tensor:
        """Rows ``indices`` of array ``name`` on the device (staged: no wait for the device)."""
        with self._lock:
            entry = self._staged.get(id(indices))
        if entry is not None and entry[0] is indices:
            _, future, done = entry
            if name not in done:
                done[name] = self._to_device(name, future.result()[name])
            return done[name]
        rows = indices.detach().cpu().numpy()  # unstaged: a synchronisation on a GPU, but correct
        return self._to_device(name, self.gather_host([name], rows)[name])


class StreamedArray:
    """One array of a :class:`SliceStream`, indexed like a tensor: ``a[indices]``, ``a[start:stop]``, ``a[i]``."""

    def __init__(self, stream: SliceStream, name: str) -> None:
        self.stream, self.name = stream, name

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.stream),) + tuple(self.stream.arrays[self.name].shape[1:]))

    @property
    def device(self) -> torch.device:
        return self.stream.device

    @property
    def dtype(self) -> torch.dtype:
        return self.stream.present.get(self.name, _torch_dtype(self.stream.arrays[self.name].dtype))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def dim(self) -> int:
        return self.ndim

    def size(self, dim: Optional[int] = None) -> Union[int, torch.Size]:
        return self.shape if dim is None else self.shape[dim]

    def __len__(self) -> int:
        return len(self.stream)

    def __getitem__(self, index: object) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            if index.dtype == torch.bool:
                raise TypeError("boolean masks select whole volumes: use SliceData.select_volumes")
            if index.dim() == 1:  # the training step's own index tensor: it may have been staged
                return self.stream.gather(self.name, index)
            return self.stream.gather(self.name, index.reshape(-1)).reshape(tuple(index.shape) + self.shape[1:])
        if isinstance(index, slice):
            rows = np.arange(len(self.stream))[index]
            return self.stream._to_device(self.name, self.stream.gather_host([self.name], rows)[self.name])
        if isinstance(index, (int, np.integer)):
            return self[slice(int(index), int(index) + 1 or None)][0]
        if isinstance(index, (np.ndarray, list, tuple)):
            return self[torch.as_tensor(np.asarray(index, dtype=np.int64))]
        raise TypeError(f"cannot index a streamed array with {type(index).__name__}")

    def to(self, device: Union[str, torch.device]) -> "StreamedArray":
        return self.stream.to(device).view(self.name)

    def cpu(self) -> torch.Tensor:
        """Every row, in host memory (reads the whole array: for small validation sets)."""
        return self.to("cpu")[:]

    def __repr__(self) -> str:
        return f"StreamedArray({self.name}, shape={tuple(self.shape)}, device={self.device})"
