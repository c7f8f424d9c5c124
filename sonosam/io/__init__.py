"""Reading images and writing results, with their geometry, in the formats Slicer and researchers use.

One home for each thing (import them from `sonosam.io`):

- `read_image` (gate.py, on the shared checks in checks.py): the one reader behind every command, evaluation and the server. It checks a file
  before decoding it (exists, is a file, size, the dimensions its header declares against a memory budget)
  and the array after (finite, usable dimensions) and says in one line what is wrong.
- `Geometry` (geometry.py): ITK's LPS convention, with `ijk_to_ras()` for Slicer, which works in RAS.
- `Volume`, `read_volume`, `write_volume` (volumes.py): NRRD, NIfTI, MHA and DICOM series via SimpleITK,
  arrays indexed [k, j, i].
- `Cine`, `read_cine` (cine.py): multi-frame ultrasound DICOM -> uint8 grayscale frames, physical spacing
  from SequenceOfUltrasoundRegions, frame time.
- `Segment` / `Segmentation`, `write_segmentation`, `read_segmentation` (segmentations.py): `.seg.nrrd` as
  Slicer writes it (through slicerio), plain labelmaps and 2D `.png` masks.
- `save_overlay_png` (overlays.py): image + masks + prompt markers.
- `atomic_output` (atomic.py): every write goes through it (temp file beside the target, then rename;
  never replaces an existing file unless `overwrite=True`).
"""

from .atomic import (PathLike, atomic_output, check_output_folder, check_output_path, file_suffix, output_set,
                     write_bytes, write_error, write_text)
from .cine import Cine, _luminance, read_cine
from .checks import MemoryBudget, check_array, check_input_file, default_budget, read_npy
from .gate import LoadedImage, read_image
from .geometry import Geometry
from .overlays import _outline, _to_rgb8, save_overlay_png
from .segmentations import (DEFAULT_COLORS, Segment, Segmentation, check_name, check_seg_header,
                            read_segmentation, write_segmentation)
from .volumes import Volume, labels_on_grid, read_labels, read_volume, write_volume

_atomic_output = atomic_output  # the name the tests and older callers use

__all__ = ["Geometry", "Volume", "labels_on_grid", "read_labels", "read_volume", "write_volume", "Cine", "read_cine", "Segment", "Segmentation",
           "write_segmentation", "read_segmentation", "save_overlay_png", "DEFAULT_COLORS", "read_image",
           "LoadedImage", "MemoryBudget", "default_budget", "check_input_file", "check_array", "read_npy",
           "check_name", "check_seg_header", "atomic_output", "check_output_path", "check_output_folder",
           "output_set", "write_text", "write_bytes"]
