"""MACLCore: label-efficient segmentation of 3D cardiac volumes.

The data flows through one subpackage per stage: files (:mod:`maclcore.io`) -> preprocessed slices
(:mod:`maclcore.data`) -> the networks (:mod:`maclcore.models`) and their losses (:mod:`maclcore.losses`) ->
pretraining and finetuning (:mod:`maclcore.training`) -> a self-describing model file -> segmentation of
whole volumes (:mod:`maclcore.inference`) -> metrics (:mod:`maclcore.evaluation`); :mod:`maclcore.active`
ranks unlabelled volumes for annotation, and :mod:`maclcore.cli` is the ``maclcore`` command.

The imports form floors, lowest first; a module imports only from its own floor and the floors below, and no
packages import each other in a circle (``tests/test_layering.py`` checks every import, lazy ones too):

1. :mod:`~maclcore.errors`, :mod:`~maclcore.config`, :mod:`~maclcore.labels`: errors a user can fix, settings as
   frozen dataclasses, label schemas.
2. :mod:`maclcore.runtime`: the services every stage uses: device and precision, the processes of a
   (distributed) run, output locks and stop requests, progress reporting.
3. :mod:`maclcore.io`: volumes, label maps and segmentations on disk, atomic writes, checkpoints, lineage,
   and the naming rules (case names, the files beside a model) that the Slicer module uses too.
4. :mod:`maclcore.data`: preprocessing and its inverse, slice datasets, where slices live (memory, cache,
   stream), augmentation, crop sampling, phantoms.
5. :mod:`maclcore.models` and :mod:`maclcore.losses`.
6. :mod:`maclcore.evaluation`, then 7. :mod:`maclcore.inference`, then 8. :mod:`maclcore.active` (which uses
   inference and never training).
9. :mod:`maclcore.training`: one loop for both tasks, the run's session, time budget, weight averaging, and
   the finetune and pretrain tasks.
10. :mod:`maclcore.cli` and :mod:`maclcore.demo`.
"""

__version__ = "0.1.0"
