"""Qt-free parts of the SonoSAMSegment module: geometry (pure numpy) and the MRML logic."""

import importlib.util
import os
import sys

if importlib.util.find_spec("sonosam") is None:
    # Slicer's "Additional module paths" put each module's own folder on sys.path, not the source tree's root that
    # holds the core package beside the modules (a built extension installs the core where Slicer finds it)
    _root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if os.path.isfile(os.path.join(_root, "sonosam", "__init__.py")):
        sys.path.insert(0, _root)

from .logic import (MODES, MissingDependencyError, NoVolumeError, NotConnectedError, SegmentationError,  # noqa: E402,F401
                    SegmentLogic, SlicePrediction)
