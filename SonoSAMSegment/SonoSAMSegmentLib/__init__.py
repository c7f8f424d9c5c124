"""Qt-free parts of the SonoSAMSegment module: geometry (pure numpy) and the MRML logic."""

from .logic import (MODES, MissingDependencyError, NoVolumeError, NotConnectedError, SegmentationError,  # noqa: F401
                    SegmentLogic, SlicePrediction)
