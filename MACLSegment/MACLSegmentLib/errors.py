"""Errors the module shows to its user as one readable line."""


class InputError(ValueError):
    """Bad input to a Logic action (nothing selected, empty or mismatching segmentation, missing file).

    The message names the node or file and says what to do; the Widget shows it with ``errorDisplay``.
    """


class JobError(RuntimeError):
    """A background job failed; the message is the job's own one-line explanation, not a traceback."""


class JobCancelled(JobError):
    """A background job stopped because the user cancelled it."""
