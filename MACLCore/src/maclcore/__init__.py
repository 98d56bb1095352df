"""MACLCore: label-efficient segmentation of 3D cardiac volumes.

The data flows one way through the subpackages:
files (:mod:`maclcore.io`) -> preprocessing and slice datasets (:mod:`maclcore.data`) -> models
(:mod:`maclcore.models`) and losses (:mod:`maclcore.losses`) -> trainers and checkpoints
(:mod:`maclcore.training`) -> inference (:mod:`maclcore.inference`) -> metrics (:mod:`maclcore.evaluation`).
"""

__version__ = "0.1.0"
