"""Self-supervised MACL pretraining on unlabelled volumes (and the baseline variants, same code)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from ..config import from_dict, to_dict
from ..data.augment import AugmentationConfig, augment_batch, draw_augmentation
from ..data.dataset import SliceData
from ..data.preprocessing import TRAINING_MIN_SPACING, PreprocessingConfig, plan_preprocessing
from ..data.storage import SliceRequest, SliceStorage, source_cases, training_slices
from ..errors import PathLike
from ..io.pairing import Case
from ..losses.mlc import MLCLossConfig, mlc_loss
from ..models.macl import MACLNet, MACLNetConfig
from ..models.unet import DEFAULT_CHANNELS, UNetConfig
from ..models.variants import get_variant
from .loop import LoopConfig, Trainer, cosine_lr
from ..runtime.progress import Reporter
from ..runtime.processes import Processes, joined_processes, mean_over_processes
from .session import TrainingSession, announce_plan, make_optimizer, prepare_model, seed_everything


# Pretraining augments less than finetuning: with the finetuning's full-circle rotation the two views of a
# slice are too different, and the contrastive terms stay at chance (log of the keys per anchor) while only
# L_ER falls, i.e. the features collapse (measurements: benchmarks/results/pretrain_recipe.md).
PRETRAIN_AUGMENTATION = AugmentationConfig(rotation=30.0, scale=(0.85, 1.15))


@dataclass(frozen=True)
class PretrainConfig:
    """Pretraining settings. Build it with :func:`pretrain_config` to start from a named variant.

    From the paper: SGD with momentum 0.9 and per-iteration cosine decay, 100 epochs (the length without a
    time budget; on a CPU the default is a 10-minute budget, see :class:`LoopConfig`), 16 slices per process,
    lambdas (1, 0.5, 1), tau 0.1, t 0.1 (the last three live in ``loss``). Our choices, from measurements:
    learning rate 0.03 with a 5% linear warm-up (the paper's 0.1 collapses the contrastive terms to chance
    here; ``--lr 0.1 --warmup 0`` restores it), milder augmentation than finetuning
    (:data:`PRETRAIN_AUGMENTATION`), weight decay 1e-4 (the paper gives none).
    """

    loop: LoopConfig = field(default_factory=lambda: LoopConfig(batch_size=16))
    variant: str = "macl"
    network: MACLNetConfig = field(default_factory=MACLNetConfig)
    loss: MLCLossConfig = field(default_factory=MLCLossConfig)
    lr: float = 0.03
    min_lr: float = 0.0
    warmup: float = 0.05  # fraction of the steps over which the learning rate rises linearly to lr
    momentum: float = 0.9
    weight_decay: float = 1e-4
    channels: Tuple[int, ...] = DEFAULT_CHANNELS
    augmentation: AugmentationConfig = field(default_factory=lambda: PRETRAIN_AUGMENTATION)
    spacing: Optional[float] = None
    size: Optional[int] = None


def pretrain_config(variant: str = "macl", **overrides: Any) -> PretrainConfig:
    """A :class:`PretrainConfig` with the network and loss of a registered variant, then ``overrides``."""
    spec = get_variant(variant)
    base = PretrainConfig(variant=variant,
                          network=MACLNetConfig(decoder_depth=spec.decoder_depth, symmetric=spec.symmetric),
                          loss=MLCLossConfig(lambdas=spec.lambdas, positives=spec.positives))
    return with_needed_heads(replace(base, **overrides))


def with_needed_heads(config: PretrainConfig) -> PretrainConfig:
    """Build only the projectors the loss uses: instance for L_g, pixel for L_d."""
    l_global, l_dense, _ = config.loss.lambdas
    return replace(config, network=replace(config.network, instance_head=l_global > 0, pixel_head=l_dense > 0))


class PretrainTask:
    """Two augmented views per slice through both branches; the MLC loss over the (global) batch."""

    oom_hint = ("each slice is two augmented views: start again with a smaller {batch_size} or {size} "
                "(or a larger {spacing})")

    def __init__(self, model: torch.nn.Module, data: SliceData, config: PretrainConfig, procs: Processes) -> None:
        self.model, self.data, self.config, self.procs = model, data, config, procs
        self.scale = 2 ** config.network.decoder_depth
        zero = torch.zeros((), device=data.images.device)
        self._sums = {"global": zero.clone(), "dense": zero.clone(), "er": zero.clone()}
        self._steps = 0

    def prefetch(self, indices: torch.Tensor, rows: torch.Tensor) -> None:
        """Start gathering a coming step's slices (when they stream from disk)."""
        self.data.prefetch(indices, rows)

    def loss(self, indices: torch.Tensor, generator: torch.Generator, offset: int, global_batch: int) -> torch.Tensor:
        count = indices.shape[0]
        # Views 0 and 1 of global slice g take the global draws g and global_batch + g.
        ids = torch.arange(offset, offset + count, device=indices.device).repeat(2)
        rows = ids + torch.arange(2, device=indices.device).repeat_interleave(count) * global_batch
        augmentation = draw_augmentation(2 * global_batch, rows, self.config.augmentation, generator, indices.device)
        views, _ = augment_batch(self.data.images[indices].repeat(2, 1, 1, 1), None, augmentation)
        terms = mlc_loss(self.model(views), self.data.positions[indices].repeat(2), ids, self.config.loss, self.scale)
        for name in self._sums:
            self._sums[name] += terms[name].detach()
        self._steps += 1
        return terms["loss"]

    def epoch_metrics(self) -> Dict[str, float]:
        """Mean loss terms over the epoch's steps and all processes."""
        if not self._steps:
            return {}
        means = {f"loss_{name}": mean_over_processes(total / self._steps, self.procs)
                 for name, total in self._sums.items()}
        for total in self._sums.values():
            total.zero_()
        self._steps = 0
        return means

    def validate(self, network: torch.nn.Module) -> Dict[str, float]:
        return {}  # no labels in pretraining


def pretrain(cases: Sequence[Case], output: PathLike, config: PretrainConfig = PretrainConfig(),
             device: str = "auto", reporter: Optional[Reporter] = None, resume: bool = False,
             stop_file: Optional[str] = None, storage: Optional[SliceStorage] = None) -> Dict[str, Any]:
    """Pretrain the U-Net encoder and first decoder blocks on unlabelled volumes; write ``output``.

    ``storage`` says where the slices live (memory, or an on-disk cache they stream from; see
    :class:`SliceStorage`). With a cache folder, ``cases`` may be empty: the cache's own volumes are used,
    and neither the source files nor SimpleITK are needed.

    Returns a summary with the output path and the per-epoch history of the loss and its terms.
    """
    started = time.perf_counter()
    output = os.fspath(output)
    storage = storage or SliceStorage()
    cases, sources_given = source_cases(cases, storage, labelled=False)
    with joined_processes(device) as (procs, device_), \
            TrainingSession(output, "pretrain", procs, resume, stop_file) as session:
        reporter = procs.reporter(reporter or Reporter())
        session.check_cases(cases)
        config = from_dict(PretrainConfig, session.state["config"]) if session.state else with_needed_heads(config)
        seed_everything(config.loop.seed)
        saved_plan = from_dict(PreprocessingConfig, session.state["preprocessing"]) if session.state else None
        # Derived from the headers when the images are given (a cache of its own carries its plan).
        planner = ((lambda geometries: plan_preprocessing(geometries, config.spacing, config.size,
                                                          min_spacing=TRAINING_MIN_SPACING))
                   if sources_given else None)
        request = SliceRequest(cases, plan=saved_plan, planner=planner, requested=(config.spacing, config.size),
                               sources_given=sources_given, default_cache=session.default_cache)
        data, plan = training_slices(request, storage, device_, procs, reporter, session.check_stop)
        reporter.message(f"pretraining ({config.variant}) on {len(cases)} volumes, {len(data)} slices, "
                         f"{procs.world_size} process(es) x {config.loop.batch_size} slices per step")
        unet = UNetConfig(channels=tuple(config.channels))
        model = prepare_model(MACLNet(unet, config.network), procs, device_, config.loop)
        optimizer = make_optimizer(torch.optim.SGD, model, device_, lr=config.lr, momentum=config.momentum,
                                   weight_decay=config.weight_decay)
        trainer = Trainer(PretrainTask(model, data, config, procs), optimizer,
                          lambda step, total: cosine_lr(step, total, config.lr, config.min_lr,
                                                        warmup=int(config.warmup * total)),
                          config.loop, len(data), device_, procs, reporter, "pretrain", started=started)
        plan_line = announce_plan(trainer, reporter, "pretrain", plan.spacing, plan.size, None, config.channels)
        record = {"config": to_dict(config), "preprocessing": to_dict(plan), "cases": [c.name for c in cases]}
        state = session.run(trainer, model, optimizer, record)
        pretraining = {"variant": config.variant, "decoder_depth": config.network.decoder_depth,
                       "config": record["config"], "plan": plan_line(state), "history": state.history,
                       "cases": record["cases"],
                       "seed": config.loop.seed, "processes": procs.world_size}
        session.finish("pretrain", {"model": to_dict(unet), "preprocessing": record["preprocessing"],
                                    "pretraining": pretraining,
                                    "state_dict": trainer.kept_weights()})
    reporter.done(output=output, metrics={"final_loss": state.history[-1]["loss"] if state.history else None})
    return {"output": output, **pretraining}
