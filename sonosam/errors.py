"""Every error SonoSAM raises on purpose is a `SonoSAMError`: callers (CLI, Slicer widgets) catch one
type and show its message, which always names the problem and the fix."""


class SonoSAMError(Exception):
    """Base class: a problem the user can act on."""


class InputImageError(SonoSAMError, ValueError):
    """The image or volume cannot be segmented as given (empty, NaN, wrong dimensions...)."""


class PromptError(SonoSAMError, ValueError):
    """A point, box or mask prompt is malformed or lies outside the image."""


class UnsupportedPromptError(PromptError):
    """The model was not trained for this kind of prompt (e.g. clicks on a box-only model)."""


class CheckpointError(SonoSAMError):
    """A weights file is missing, truncated, unsafe, corrupt or of another architecture."""


class WeightsNotAvailableError(CheckpointError, FileNotFoundError):
    """The weights are not on disk and cannot be downloaded (offline or no known URL)."""


class UnknownModelError(SonoSAMError, KeyError):
    """No model of that name is registered."""

    def __str__(self):  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DataFileError(SonoSAMError, OSError):
    """A data file cannot be read or written (format, geometry, existing output)."""


class ServerError(SonoSAMError):
    """The SonoSAM server refused or failed a request (sonosam.client); `status` is the HTTP code (0: none)."""

    def __init__(self, message: str, status: int = 0, code: str = ""):
        super().__init__(message)
        self.status, self.code = status, code


class ServerUnavailableError(ServerError, ConnectionError):
    """The server does not answer: not started, stopped, crashed or unreachable."""


class JobCancelledError(SonoSAMError):
    """A server job was cancelled: it has no result (nothing was written)."""


class DeviceError(SonoSAMError, ValueError):
    """A device or backend that does not exist, or that this machine does not have."""


class TrainingError(SonoSAMError, ValueError):
    """A training run cannot start, resume or save as asked (too little data, a foreign resume file, a model or
    output that does not fit the command)."""
