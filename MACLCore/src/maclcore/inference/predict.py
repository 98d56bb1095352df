"""Segment whole volumes with a trained model, in slice batches, back on each input's own grid."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, TypeVar

import numpy as np
import torch

from ..config import from_dict
from ..data.preprocessing import (PreparedVolume, PreprocessingConfig, chunks, padded_size, prepare_volume,
                                  restore_probabilities, stack_slices)
from ..errors import ConfigError, InferenceStopped, InputError, MaclError, PathLike
from ..io.naming import LABEL_EXTENSIONS, case_name, split_extension
from ..io.segmentation import write_label_map
from ..io.volume import Volume, read_geometry, read_volume
from ..labels import LabelSchema
from ..models.unet import UNet, UNetConfig
from ..io.checkpoint import check_shapes, load_checkpoint
from ..io.guard import refuse_overwriting_inputs
from ..runtime.control import StopRequest
from ..runtime.progress import Reporter
from ..runtime.device import autocast, map_in_batches, resolve_device
from .postprocess import clean_prediction

T = TypeVar("T")


@dataclass
class SegmentationModel:
    """A trained U-Net with everything needed to apply it: labels and preprocessing."""

    network: UNet
    schema: LabelSchema
    preprocessing: PreprocessingConfig
    info: Dict[str, Any]

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device


def load_segmentation_model(path: PathLike, device: torch.device = torch.device("cpu")) -> SegmentationModel:
    """Rebuild a segmentation model from its self-describing file."""
    data = load_checkpoint(path, kinds=("segmentation",))  # bounded widths, finite weights
    check_network_shapes(path, data)
    try:
        network = UNet(from_dict(UNetConfig, data["model"]))
        network.load_state_dict(data["state_dict"])
        schema = LabelSchema.from_dict(data["labels"])
        preprocessing = from_dict(PreprocessingConfig, data["preprocessing"])
    except (KeyError, RuntimeError, TypeError, ValueError, ConfigError) as exc:
        # A ConfigError here is the file's settings, not the user's: say so, naming the file.
        raise InputError(path, f"is an incomplete or inconsistent model file ({str(exc).splitlines()[0][:150]})") from None
    if schema.num_classes != network.config.num_classes:
        raise InputError(path, f"names {len(schema.names)} labels but its network has "
                               f"{network.config.num_classes - 1} foreground outputs")
    info = {k: v for k, v in data.items() if k != "state_dict"}
    network = network.to(device).eval()
    # channels_last on CPUs too: with bf16 autocast the convolutions skip layout conversions (oneDNN)
    network = network.to(memory_format=torch.channels_last)
    return SegmentationModel(network, schema, preprocessing, info)


def check_network_shapes(path: PathLike, data: Dict[str, Any]) -> None:
    """Check a loaded model file's tensors against the U-Net it describes, before that network is built.

    The network is built on the meta device (shapes only, no memory), so a small file describing a huge
    network costs nothing; a segmentation model must hold exactly the network's tensors, a pretrained one
    (which also holds projection heads) only tensors of the right shapes.
    """
    try:
        config = from_dict(UNetConfig, data["model"])
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in UNet(config).state_dict().items()}
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise InputError(path, f"is an inconsistent model file: its network cannot be built ({exc})") from None
    check_shapes(path, data["state_dict"], expected, f"widths {tuple(config.channels)}, {config.num_classes} classes",
                 exact=data.get("kind") == "segmentation")


# Test-time augmentation: the in-plane flips the training's augmentation also draws (so the model has seen
# each); their probabilities, flipped back, are averaged. Costs one forward pass per flip (on a 2-core CPU
# 0.1 -> 0.24 min for 20 ACDC volumes). On by default, by measurement of the default finetune's models on ACDC's
# 20 evaluation volumes, 3 draws (benchmarks/results/acdc_defaults_cpu.json, "inference"): +0.3 to +0.9 points of
# mean Dice at 4 patients, 0.0 to +1.2 at 2, -0.7 to +1.1 at 1 (about 0 on average there). Only for models
# whose finetuning drew flips (the default recipe; see :func:`trained_with_flips`): the demo's phantom models,
# trained without, lost 1.3 and 3.6 points to it. `--no-tta` / ``tta=False`` for the plain prediction.
TTA_FLIPS: Sequence[Sequence[int]] = ((), (-1,), (-2,), (-2, -1))


@torch.no_grad()
def predict_slices(network: torch.nn.Module, images: torch.Tensor, batch_size: int = 16,
                   amp: bool = True, tta: bool = False) -> torch.Tensor:
    """Softmax probabilities (N, C, S, S) of a stack of preprocessed slices (N, 1, S, S), on their device;
    with ``tta`` the mean over :data:`TTA_FLIPS`."""
    network.eval()
    device = next(network.parameters()).device

    def probabilities(batch: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
        if not dims:
            return network(batch).float().softmax(1)
        return network(batch.flip(tuple(dims))).float().softmax(1).flip(tuple(dims))

    def run(start: int, stop: int) -> torch.Tensor:
        batch = images[start:stop].to(device, non_blocking=True)
        with autocast(device, amp):
            if not tta:
                return probabilities(batch, ())
            return torch.stack([probabilities(batch, dims) for dims in TTA_FLIPS]).mean(0)

    return torch.cat(map_in_batches(run, images.shape[0], batch_size, device=device))


def trained_with_flips(model: SegmentationModel) -> bool:
    """Whether the model's finetuning augmentation drew in-plane flips, as recorded in its file (False when
    the file does not say): what makes averaging over the flips (TTA) sound by default."""
    augmentation = model.info.get("training", {}).get("config", {}).get("augmentation", {})
    return bool(augmentation.get("enabled", True) and augmentation.get("flip", False))


def predict_labels(model: SegmentationModel, prepared: PreparedVolume, batch_size: int = 16,
                   tta: bool = False) -> np.ndarray:
    """Label map (Z, H, W, uint8) on the input's own slice grid, from a preprocessed volume.

    Slices go through the network and back to the input's resolution a chunk at a time (see
    :data:`~maclcore.data.preprocessing.CHUNK_VOXELS`): full-resolution probabilities of every class for the
    whole volume would take C float32 values per voxel, many times a scan's own voxel data. Resampling is
    in-plane, so the result is the same as for the whole volume at once.
    """
    shape = prepared.image.shape[-2:]
    size = padded_size(shape, model.preprocessing)
    height, width = prepared.geometry.size[1], prepared.geometry.size[0]
    labels = np.empty((prepared.num_slices, height, width), np.uint8)
    for part in chunks(prepared.num_slices, height * width * model.schema.num_classes):
        probs = predict_slices(model.network, stack_slices([prepared.image[part]], size), batch_size, tta=tta)
        labels[part] = restore_probabilities(probs, shape, prepared.geometry).argmax(1).to(torch.uint8).cpu().numpy()
    return labels


def predict_volume(model: SegmentationModel, volume: Volume, batch_size: int = 16,
                   postprocess: bool = True, tta: Optional[bool] = None) -> np.ndarray:
    """Label map (z, y, x, uint8) of ``volume`` on its own grid.

    ``tta``: average over the in-plane flips (:data:`TTA_FLIPS`); None: when the model was trained with flips.

    With ``postprocess``, :func:`~maclcore.inference.postprocess.clean_prediction`: each single-object label
    keeps its largest connected component (within the largest component of all foreground when the labels
    form one object, as the heart's do), then the background the schema's wall encloses becomes its cavity.
    """
    prepared = prepare_volume(volume.source or "volume", volume.array, volume.geometry, model.preprocessing)
    labels = predict_labels(model, prepared, batch_size, trained_with_flips(model) if tta is None else tta)
    del prepared  # its slices are not needed for the post-processing
    if postprocess:
        clean_prediction(labels, model.schema)
    return labels


def output_paths(images: Sequence[str], output: str, fmt: str) -> List[str]:
    """Where each prediction goes: ``output`` itself for one image and a file name, else ``output/CASE.fmt``."""
    fmt = fmt if fmt.startswith(".") else "." + fmt
    if fmt.lower() not in LABEL_EXTENSIONS:
        raise ConfigError("format", f"must be one of {', '.join(e.lstrip('.') for e in LABEL_EXTENSIONS)}, got {fmt!r}")
    names = [case_name(image) for image in images]
    if len(set(names)) != len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise MaclError(f"two input images have the same case name {duplicate!r}; their predictions would collide")
    is_file = split_extension(os.path.basename(output))[1].lower() in LABEL_EXTENSIONS and not os.path.isdir(output)
    if is_file:
        if len(images) != 1:
            raise ConfigError("output", f"{output} is a file name, but {len(images)} images were given; give a folder")
        return [output]
    return [os.path.join(output, name + fmt) for name in names]


def check_inputs(images: Sequence[str], targets: Sequence[str], batch_size: int,
                 model: Optional[PathLike] = None) -> None:
    """Refuse, before any work, an output that would overwrite an input (any image, the model; also through
    hard or symbolic links), and image files with a bad header."""
    if batch_size < 1:
        raise ConfigError("batch_size", f"must be >= 1, got {batch_size}")
    refuse_overwriting_inputs([("output", targets)], [("images", images), ("model", model)])
    for image in images:
        if not os.path.isdir(image):
            read_geometry(image)


def predict_files(model_path: PathLike, images: Sequence[str], output: str, fmt: str = "nii.gz",
                  device: str = "auto", batch_size: int = 16, postprocess: bool = True,
                  reporter: Optional[Reporter] = None, stop_file: Optional[str] = None,
                  tta: Optional[bool] = None) -> List[str]:
    """Segment image files and write one label file per image (atomically). Returns the written paths.

    ``tta``: average the predictions of the flipped slices too (:data:`TTA_FLIPS`; 4x the network's time);
    None: when the model was trained with flips, as the default recipe is.
    ``postprocess``: :func:`~maclcore.inference.postprocess.clean_prediction` (the wall's cavity, largest islands).

    When ``stop_file`` exists before a volume is started, raises :class:`InferenceStopped`; the volumes finished
    before keep their complete files, and nothing partial is left (every write is atomic).
    """
    reporter = reporter or Reporter()
    stop = StopRequest(stop_file)
    targets = output_paths(images, output, fmt)
    check_inputs(images, targets, batch_size, model_path)
    model = load_segmentation_model(model_path, resolve_device(device))
    reporter.stage("predict", len(images))
    written = []
    for index, (image, target) in enumerate(zip(images, targets)):
        if stop.requested:  # between volumes: a volume is never left half-predicted
            raise InferenceStopped(index, len(images), written)
        volume = read_volume(image)
        labels = predict_volume(model, volume, batch_size, postprocess, tta)
        write_label_map(labels, volume.geometry, target, model.schema)
        written.append(target)
        reporter.progress("predict", index + 1, len(images), case=os.path.basename(target))
    reporter.done(output=targets[0] if len(targets) == 1 else output)
    return written
