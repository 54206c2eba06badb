"""Errors a user can cause. The CLI prints their message (no traceback) and exits non-zero."""


class OptDepthError(Exception):
    """Base class: a problem with the user's input, data, config or files, with a fix to try."""


class DataError(OptDepthError):
    """Data files are missing, unreadable, corrupt, or of the wrong shape for the model."""


class ConfigError(OptDepthError, ValueError):
    """A configuration value is invalid (unknown name, negative rate, ...)."""


class CheckpointError(OptDepthError):
    """A checkpoint is missing, corrupt, from another architecture, or from a newer format."""


class TrainingError(OptDepthError):
    """Training diverged (NaN/inf loss) or cannot continue."""


class RunDirError(OptDepthError):
    """An output folder is not ours to write (it holds someone else's files), or it or a file
    in it cannot be written (a full disk, a folder where a file should be, no permission)."""


class RunBusyError(RunDirError):
    """Another process is writing the same run directory."""


class TraceError(DataError, ValueError):
    """A trace file is missing, unreadable, truncated, or holds inconsistent arrays."""
