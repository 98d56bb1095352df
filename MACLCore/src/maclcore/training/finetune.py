"""Supervised finetuning of the segmentation U-Net on a few labelled volumes."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..config import from_dict, to_dict
from ..data.augment import AugmentationConfig, augment_batch, draw_augmentation
from ..data.dataset import SliceData, read_case_geometries
from ..data.preprocessing import TRAINING_MIN_SPACING, PreprocessingConfig, plan_preprocessing
from ..data.sampling import CropConfig, CropSampler, crop_affines, crop_pixels
from ..data.cache import SliceCache, cached_cases, read_manifest, stale_reason
from ..data.storage import SliceRequest, SliceStorage, source_cases, training_slices
from ..errors import ConfigError, InputError, MaclError, PathLike
from ..evaluation.metrics import overlap_per_class
from ..io.lineage import new_generation, parent_record
from ..io.pairing import Case
from ..io.volume import Geometry
from ..labels import CARDIAC, LabelSchema
from ..losses.segmentation import segmentation_loss
from ..models.unet import DEFAULT_CHANNELS, UNet, UNetConfig
from ..runtime.processes import joined_processes
from ..runtime.progress import Reporter
from .loop import LoopConfig, Trainer, TrainState, cosine_lr, unwrap
from .session import TrainingSession, announce_plan, make_optimizer, prepare_model, seed_everything
from .transfer import init_channels, load_initial_weights, read_init
from .unlabelled import IGNORE, PseudoLabels, UnlabelledConfig, copy_paste_corners, pseudo_rows, swap_squares

# Cardiac cine frames of one patient (ED/ES, or numbered frames) form one group: they are never split
# between training and validation.
DEFAULT_GROUP_PATTERN = r"^(?P<group>.+?)(?:[_-](?:ED|ES|frame\d+))?$"


@dataclass(frozen=True)
class FinetuneConfig:
    """Finetuning settings. The defaults are a recipe for a few labelled cases, chosen by measurement on ACDC
    (benchmarks/results/recipe_cpu): class-aware crops, flips, Adam 1e-3 with a 5% warm-up and a cosine to
    1e-5, a weight average kept as the model, 16 slices a step, and on a CPU a 10-minute time budget.

    Args:
        loop: length (epochs or a time budget), batch size, seed, checkpointing, weight average (see
            :class:`LoopConfig`).
        lr, min_lr: Adam learning rate, decayed per iteration by a cosine to ``min_lr``.
        warmup: fraction of the steps over which the learning rate rises linearly to ``lr``.
        dice_weight: weight of the soft Dice term added to cross-entropy (0: cross-entropy alone).
        channels: U-Net widths; None takes them from ``--init`` or the default.
        spacing, size: preprocessing f_r (mm) and f_s (pixels); None derives them (spacing from ``--init``
            when it has one, so pretrained features see the scale they were trained on; else the median
            spacing, not finer than :data:`TRAINING_MIN_SPACING`).
        crop: side in pixels of the training crops; None: about 240 mm (:func:`crop_pixels`); 0: whole
            slices. Inference always runs on the whole slice.
        foreground: share of the crops centred on a labelled voxel of a class drawn uniformly (so a small
            structure is seen as often as a large one); the rest are centred at random.
        unlabelled_loss: the self-training term on unlabelled volumes, when :func:`finetune` is given some.
        val_fraction: share of patient groups held out for validation and model selection, used only when
            there are at least ``min_val_groups`` groups; otherwise the last weights are kept.
        group_pattern: regular expression whose ``group`` names a case's patient.
    """

    loop: LoopConfig = field(default_factory=lambda: LoopConfig(batch_size=16, ema_decay=0.99))
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup: float = 0.05
    weight_decay: float = 0.0
    dice_weight: float = 1.0
    channels: Optional[Tuple[int, ...]] = None
    augmentation: AugmentationConfig = field(default_factory=lambda: AugmentationConfig(flip=True))
    spacing: Optional[float] = None
    size: Optional[int] = None
    crop: Optional[int] = None
    foreground: float = 0.67
    unlabelled_loss: UnlabelledConfig = field(default_factory=UnlabelledConfig)
    val_fraction: float = 0.2
    min_val_groups: int = 5
    group_pattern: str = DEFAULT_GROUP_PATTERN
    eval_batch_size: int = 32

    def __post_init__(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise ConfigError("val_fraction", f"must be in [0, 1), got {self.val_fraction}")
        if self.min_val_groups < 2:
            raise ConfigError("min_val_groups", f"must be >= 2 (one patient must remain for training), "
                                                f"got {self.min_val_groups}")
        if not self.lr > 0:
            raise ConfigError("lr", f"must be > 0, got {self.lr}")
        if not self.min_lr >= 0:
            raise ConfigError("min_lr", f"must be >= 0, got {self.min_lr}")
        if not 0 <= self.warmup < 1:
            raise ConfigError("warmup", f"must be in [0, 1), got {self.warmup}")
        if self.crop is not None and self.crop != 0:
            CropConfig(size=self.crop, foreground=self.foreground)  # checks both
        elif not 0 <= self.foreground <= 1:
            raise ConfigError("foreground", f"must be in [0, 1], got {self.foreground}")
        try:
            if "group" not in re.compile(self.group_pattern).groupindex:
                raise ConfigError("group_pattern", f"needs a named group (?P<group>...), got {self.group_pattern!r}")
        except re.error as exc:
            raise ConfigError("group_pattern", f"is not a valid regular expression: {exc}") from None


def case_group(name: str, pattern: str = DEFAULT_GROUP_PATTERN) -> str:
    match = re.match(pattern, name)
    return match.group("group") if match and match.group("group") else name


def split_validation(names: Sequence[str], config: FinetuneConfig) -> Tuple[List[str], List[str]]:
    """(train, validation) case names, holding out whole patient groups chosen by the seed."""
    groups = sorted({case_group(n, config.group_pattern) for n in names})
    if config.val_fraction == 0 or len(groups) < config.min_val_groups:
        return list(names), []
    count = max(1, int(round(config.val_fraction * len(groups))))
    order = np.random.default_rng(config.loop.seed).permutation(len(groups))
    held_out = {groups[i] for i in order[:count]}
    train = [n for n in names if case_group(n, config.group_pattern) not in held_out]
    val = [n for n in names if case_group(n, config.group_pattern) in held_out]
    return train, val


class FinetuneTask:
    """Cross-entropy (+ Dice) on augmented labelled slices, or class-aware crops of them; validation Dice on
    held-out volumes (always on whole slices)."""

    oom_hint = "start again with a smaller {batch_size} or {crop}"

    def __init__(self, model: torch.nn.Module, train: SliceData, val: Optional[SliceData],
                 config: FinetuneConfig, num_classes: int, crop: Optional[int] = None) -> None:
        self.model, self.train, self.val, self.config, self.num_classes = model, train, val, config, num_classes
        self.crop = crop
        self.sampler = (CropSampler(train.labels, num_classes, CropConfig(size=crop, foreground=config.foreground))
                        if crop else None)
        # Set when there are unlabelled volumes: their slices, the model that labels them, and what is told.
        self.pseudo: Optional[PseudoLabels] = None
        self.teacher: Optional[Callable[[], torch.nn.Module]] = None
        self.on_labelled: Optional[Callable[[int, Dict[str, float]], None]] = None
        self.labelling_seconds = 0.0

    def at_step(self, step: int, total: int) -> None:
        """Where the run stands: the unlabelled slices are (re)labelled when it reaches one of their passes
        (after a resume, at once by the restored weight average when a pass is due)."""
        progress = step / max(1, total)
        if self.pseudo is not None and self.teacher is not None and self.pseudo.due(progress):
            summary = self.pseudo.label(self.teacher(), self.config.eval_batch_size, self.config.loop.amp, progress)
            if self.on_labelled is not None:
                self.on_labelled(step, summary)

    def reserve_seconds(self) -> float:
        """Time a budgeted run keeps aside for work outside the timed steps: the labelling passes to come."""
        return self.labelling_seconds * self.pseudo.remaining_passes() if self.pseudo is not None else 0.0

    def prefetch(self, indices: torch.Tensor, rows: torch.Tensor) -> None:
        """Start gathering a coming step's slices (when they stream from disk; crops pick their own slices,
        which are then gathered unstaged)."""
        self.train.prefetch(indices, rows)

    def loss(self, indices: torch.Tensor, generator: torch.Generator, offset: int, global_batch: int) -> torch.Tensor:
        device = indices.device
        count = indices.shape[0]
        rows = torch.arange(offset, offset + count, device=device)
        augmentation = draw_augmentation(global_batch, rows, self.config.augmentation, generator, device)
        size = (self.crop, self.crop) if self.sampler is not None else None
        # Once the unlabelled slices are labelled, some rows take one of them instead; the batch keeps its
        # size, so a step costs the same. Which rows is known on the host (it depends on the row numbers
        # alone): the batch is ordered labelled rows first, so the two losses take slices of it, without a
        # device-to-host wait.
        labelled = torch.arange(count)
        pseudo = torch.arange(0)
        if self.pseudo is not None and self.pseudo.ready:
            taken = pseudo_rows(torch.arange(offset, offset + count), self.config.unlabelled_loss.share)
            labelled, pseudo = torch.nonzero(~taken)[:, 0], torch.nonzero(taken)[:, 0]
        order = torch.cat([labelled, pseudo]).to(device, non_blocking=True)
        own = order[:labelled.shape[0]]
        if self.sampler is not None:
            slices, centres = self.sampler.draw(indices[own], generator, rows[own], global_batch)
        else:
            slices, centres = indices[own], torch.zeros(own.shape[0], 2, device=device)
        images, labels = self.train.images[slices], self.train.labels[slices]
        if pseudo.shape[0]:
            theirs = order[labelled.shape[0]:]
            picks, around = self.pseudo.draw(rows[theirs], global_batch, generator)  # type: ignore[union-attr]
            images = torch.cat([images, self.pseudo.data.images[picks]])  # type: ignore[union-attr]
            labels = torch.cat([labels, self.pseudo.labels[picks]])  # type: ignore[union-attr,index]
            centres = torch.cat([centres, around])
        augmentation = replace(augmentation, theta=augmentation.theta[order], intensity=augmentation.intensity[order])
        if size is not None or pseudo.shape[0]:
            augmentation = replace(augmentation, theta=crop_affines(augmentation.theta, centres, self.crop or
                                                                      self.train.size, self.train.size))
        images, labels = augment_batch(images, labels, augmentation, size)
        mine = labelled.shape[0]
        terms = self.config.unlabelled_loss
        pairs = min(mine, pseudo.shape[0]) if terms.copy_paste else 0
        if pairs:  # the i-th labelled row and the i-th pseudo-labelled row swap a square
            side = max(1, round(terms.copy_paste * labels.shape[-1]))
            corners = copy_paste_corners(global_batch, rows[order[mine:mine + pairs]], tuple(labels.shape[-2:]),
                                         side, generator)
            pairing = torch.arange(pairs, device=device)
            images, labels = swap_squares(images, labels, pairing, pairing + mine, corners, side)
        logits = self.model(images)
        if not pseudo.shape[0]:
            return segmentation_loss(logits, labels, self.config.dice_weight)
        term = terms.weight * segmentation_loss(logits[mine:], labels[mine:], self.config.dice_weight,
                                                ignore_index=IGNORE)
        if not mine:
            return term
        # A labelled row that took a pseudo-labelled square holds ignored pixels too.
        return term + segmentation_loss(logits[:mine], labels[:mine], self.config.dice_weight,
                                        ignore_index=IGNORE if pairs else None)

    def epoch_metrics(self) -> Dict[str, float]:
        return {}

    @torch.no_grad()
    def validate(self, network: torch.nn.Module) -> Dict[str, float]:
        if self.val is None:
            return {}
        from ..inference.predict import predict_slices

        predictions = predict_slices(network, self.val.images, self.config.eval_batch_size,
                                     self.config.loop.amp).argmax(1).cpu().numpy()
        truth, volumes = self.val.labels.cpu().numpy(), self.val.volumes.cpu().numpy()
        dice = np.stack([overlap_per_class(predictions[volumes == v], truth[volumes == v], self.num_classes)["dice"]
                         for v in range(len(self.val.names))])
        return {"val_dice": float(dice.mean()), **{f"val_dice_{i + 1}": float(d) for i, d in enumerate(dice.mean(0))}}


def _plan(geometries: Sequence[Geometry], config: FinetuneConfig, init: Optional[Dict[str, Any]]) -> PreprocessingConfig:
    """The preprocessing: derived from the cases, with the init model's spacing (pretrained features see the
    scale they learnt). Continuing a segmentation model keeps its whole plan (spacing, intensity percentiles,
    and a size grown only if a new case needs more), so the weights keep seeing what they were trained on."""
    spacing = config.spacing
    if spacing is None and init is not None:
        spacing = float(init["preprocessing"]["spacing"])
    plan = plan_preprocessing(geometries, spacing=spacing, size=config.size, min_spacing=TRAINING_MIN_SPACING)
    if init is not None and init["kind"] == "segmentation" and config.size is None:
        inherited = from_dict(PreprocessingConfig, init["preprocessing"])
        if inherited.spacing == plan.spacing:
            plan = replace(inherited, size=max(inherited.size, plan.size))
    return plan


def finetune(cases: Sequence[Case], output: PathLike, config: FinetuneConfig = FinetuneConfig(),
             schema: LabelSchema = CARDIAC, init: Optional[PathLike] = None, device: str = "auto",
             reporter: Optional[Reporter] = None, resume: bool = False,
             stop_file: Optional[str] = None, storage: Optional[SliceStorage] = None,
             unlabelled: Sequence[Case] = (), unlabelled_cache: Optional[PathLike] = None) -> Dict[str, Any]:
    """Train a segmentation model on labelled cases and write it to ``output``.

    ``unlabelled`` volumes (images only), or the slices of ``unlabelled_cache`` (a slice cache built with the
    labelled slices' preprocessing), add the self-training term of :mod:`~maclcore.training.unlabelled`;
    they are held in memory.

    ``storage`` says where the slices live (device memory when they fit, else streamed from an on-disk cache).
    With a labelled cache folder there, ``cases`` may be empty: the cache's own volumes are used, and neither
    the source files nor SimpleITK are needed (a cache carried to a GPU machine).
    ``resume`` continues an interrupted run; the run stops (resumably) on Ctrl-C/SIGTERM or when
    ``stop_file`` appears. Returns a summary: output path, history, selected epoch, train/validation cases,
    init report.
    """
    started = time.perf_counter()
    output = os.fspath(output)
    storage = storage or SliceStorage()
    if unlabelled and unlabelled_cache is not None:
        raise ConfigError("unlabelled_cache", "and unlabelled volumes were both given: give one of them")
    cases, sources_given = source_cases(cases, storage, labelled=True)
    if unlabelled_cache is not None:
        unlabelled = cached_cases(unlabelled_cache)  # named in the model file; the slices come from the cache
    missing = [c.name for c in cases if c.label is None]
    if missing:
        raise MaclError(f"cases without a label map: {', '.join(missing[:5])}")
    with joined_processes(device) as (procs, device_), \
            TrainingSession(output, "finetune", procs, resume, stop_file) as session:
        reporter = procs.reporter(reporter or Reporter())
        session.check_cases(cases)
        config, schema, init_data = _settings(session.state, config, schema, init)
        seed_everything(config.loop.seed)
        saved = session.state
        # The unlabelled slices must fit the size too; a cache carries its own plan (the headers are not here).
        extra = (read_case_geometries(unlabelled) if unlabelled and unlabelled_cache is None and not saved
                 and sources_given else [])
        request = SliceRequest(cases, schema, default_cache=session.default_cache, sources_given=sources_given,
                               plan=from_dict(PreprocessingConfig, saved["preprocessing"]) if saved else None,
                               planner=((lambda geometries: _plan(list(geometries) + extra, config, init_data))
                                        if sources_given else None))
        data, plan = training_slices(request, storage, device_, procs, reporter, session.check_stop)
        if init_data is not None and not sources_given:
            _warn_init_spacing(init_data, plan, reporter)
        train_names, val_names = ((saved["split"]["train"], saved["split"]["val"]) if saved
                                  else split_validation([c.name for c in cases], config))
        train = data.select_volumes(train_names)
        val = data.select_volumes(val_names) if val_names else None
        reporter.message(f"training on {len(train_names)} volumes ({len(train)} slices)"
                         + (f", validating on {len(val_names)}: {', '.join(val_names)}" if val_names
                            else "; no validation split (too few patients): the last weights are kept"))
        network, init_report, parent = _network(config, schema, saved, init, init_data, reporter)
        model = prepare_model(network, procs, device_, config.loop)
        optimizer = make_optimizer(torch.optim.Adam, model, device_, lr=config.lr, weight_decay=config.weight_decay)
        crop = crop_pixels(config.crop, plan.spacing, plan.size)
        trainer = Trainer(FinetuneTask(model, train, val, config, schema.num_classes, crop), optimizer,
                          lambda step, total: cosine_lr(step, total, config.lr, config.min_lr,
                                                        warmup=int(config.warmup * total)),
                          config.loop, len(train), device_, procs, reporter, "finetune", started=started)
        if unlabelled:
            _pseudo_labels(unlabelled, unlabelled_cache, plan, config, schema, crop, trainer, device_, procs,
                           reporter, session)
        plan_line = announce_plan(trainer, reporter, "finetune", plan.spacing, plan.size, crop, config.channels)
        record = {"config": to_dict(config), "labels": schema.to_dict(), "preprocessing": to_dict(plan),
                  "cases": [c.name for c in cases], "unlabelled": [c.name for c in unlabelled],
                  "split": {"train": train_names, "val": val_names},
                  "init": init_report, "parent": parent}
        state = session.run(trainer, model, optimizer, record)
        training, lineage = _write_model(session, state, trainer, record, plan_line(state))
    metrics = {"selected_epoch": training["selected_epoch"],
               **({"val_dice": state.best_score} if state.best_score is not None else {})}
    reporter.done(output=output, metrics=metrics)
    return {"output": output, **training, "lineage": lineage}


def _pseudo_labels(unlabelled: Sequence[Case], cache_dir: Optional[PathLike], plan: PreprocessingConfig,
                   config: FinetuneConfig, schema: LabelSchema, crop: Optional[int], trainer: Trainer,
                   device: torch.device, procs: Any, reporter: Reporter, session: TrainingSession) -> None:
    """Give the trainer's task the unlabelled slices (preprocessed like the labelled ones, from their files or
    from the slice cache ``cache_dir``), the model that labels them (the weight average), and the time that
    labelling will take."""
    if cache_dir is not None:
        # Held in memory whatever their size (the labelling passes read every slice); the cache must have been
        # preprocessed exactly as the labelled slices, or the network would see another scale or contrast.
        reason = stale_reason(read_manifest(cache_dir), [], None, plan=plan, check_sources=False)
        if reason is not None:
            raise InputError(cache_dir, f"cannot serve as the unlabelled slices ({reason}): build it with the "
                                        f"labelled slices' preprocessing, i.e. both caches with the same --spacing "
                                        f"and --size")
        data = SliceCache.open(cache_dir).load(device, labels=False)
    else:
        data, _ = training_slices(SliceRequest(unlabelled, plan=plan), SliceStorage(), device, procs, reporter,
                                  session.check_stop)
    terms = config.unlabelled_loss
    task = trainer.task
    task.pseudo = PseudoLabels(data, schema, terms, crop, config.foreground if crop else 0.0)
    task.teacher = lambda: trainer.kept
    task.labelling_seconds = task.pseudo.estimate_seconds(trainer.kept, config.eval_batch_size, config.loop.amp)

    def labelled(step: int, summary: Dict[str, float]) -> None:
        changed = f", {100 * summary['changed']:.1f}% changed since the last" if summary["pass"] > 1 else ""
        reporter.message(f"step {step}: pass {summary['pass']:.0f} of {len(terms.passes)} labelled {len(data)} "
                         f"unlabelled slices with the weight average{' (flips averaged)' if terms.tta else ''}; "
                         f"{100 * summary['kept']:.0f}% of pixels kept (>= {terms.confidence:g} sure{changed}), a "
                         f"structure found in {summary['volumes_found']:.0f} of {summary['volumes']:.0f} volumes; "
                         f"{100 * terms.share:.0f}% of each batch from them")

    task.on_labelled = labelled
    passes = ", ".join(f"{100 * p:.0f}%" for p in terms.passes)
    reporter.message(f"self-training on {len(unlabelled)} unlabelled volumes ({len(data)} slices): labelled "
                     f"after {passes} of the steps (~{task.labelling_seconds:.0f} s a pass)")


def _warn_init_spacing(init: Dict[str, Any], plan: PreprocessingConfig, reporter: Reporter) -> None:
    """A slice cache fixes the spacing; the initial model may have learnt another: say so (it still trains)."""
    learnt = float(init["preprocessing"]["spacing"])
    if abs(learnt - plan.spacing) > 1e-6:
        reporter.message(f"note: the slice cache is at {plan.spacing:g} mm, the initial model learnt at "
                         f"{learnt:g} mm; build the cache with --spacing {learnt:g} to keep its scale")


def _settings(saved: Optional[Dict[str, Any]], config: FinetuneConfig, schema: LabelSchema,
              init: Optional[PathLike]) -> Tuple[FinetuneConfig, LabelSchema, Optional[Dict[str, Any]]]:
    """The run's settings: a resumed run's own, else the given ones with the widths of ``init`` (or the
    default); and the loaded ``init`` checkpoint (None when resuming or starting from random weights)."""
    init_data = None
    if saved is not None:
        config, schema = from_dict(FinetuneConfig, saved["config"]), LabelSchema.from_dict(saved["labels"])
    elif init is not None:
        init_data = read_init(init)
    channels = config.channels or (init_channels(init_data) if init_data else DEFAULT_CHANNELS)
    return replace(config, channels=channels), schema, init_data


def _network(config: FinetuneConfig, schema: LabelSchema, saved: Optional[Dict[str, Any]], init: Optional[PathLike],
             init_data: Optional[Dict[str, Any]], reporter: Reporter) -> Tuple[UNet, Any, Any]:
    """The U-Net to train, initialised from ``init`` when given; with the init report and the lineage parent."""
    network = UNet(UNetConfig(num_classes=schema.num_classes, channels=tuple(config.channels)))
    init_report = saved["init"] if saved else None
    parent = saved.get("parent") if saved else None
    if init_data is not None:
        init_report = load_initial_weights(network, init_data, init)  # type: ignore[arg-type]
        parent = parent_record(init, init_data)  # type: ignore[arg-type]
        reporter.message(f"initialised from {init}: loaded {', '.join(init_report['loaded'])}; "
                         f"random: {', '.join(init_report['random']) or 'nothing'}")
        _warn_label_names(init_data, schema, reporter)
    return network, init_report, parent


def _write_model(session: TrainingSession, state: TrainState, trainer: Trainer, record: Dict[str, Any],
                 plan: Dict[str, Any]) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """Write the finished model (the validation-selected weights, else the last, averaged, ones); its
    training record and lineage."""
    config = from_dict(FinetuneConfig, record["config"])
    selected = state.best_epoch if state.best_weights is not None else state.epoch
    weights = state.best_weights if state.best_weights is not None else trainer.kept_weights()
    training = {"config": record["config"], "plan": plan, "selected_epoch": selected, "history": state.history,
                "train_cases": record["split"]["train"], "val_cases": record["split"]["val"],
                "unlabelled_cases": record.get("unlabelled", []),
                "init": record["init"], "seed": config.loop.seed, "processes": trainer.procs.world_size}
    lineage = new_generation(session.output, record["parent"], record["cases"], state.best_score, selected,
                             trainer.epochs)
    session.finish("segmentation", {
        "model": to_dict(trainer.kept.config), "labels": record["labels"], "preprocessing": record["preprocessing"],
        "training": training, "lineage": lineage,
        "state_dict": {k: v.detach().cpu() for k, v in weights.items()}})
    return training, lineage


def _warn_label_names(init: Dict[str, Any], schema: LabelSchema, reporter: Reporter) -> None:
    """Continuing a segmentation model whose labels have other names keeps its head: say so."""
    if init["kind"] != "segmentation":
        return
    names = [str(n) for n in init.get("labels", {}).get("names", [])]
    if names and len(names) == len(schema.names) and [n.lower() for n in names] != [n.lower() for n in schema.names]:
        reporter.message(f"note: the initial model's labels are {', '.join(names)}; they are trained as "
                         f"{', '.join(schema.names)} (same order)")
