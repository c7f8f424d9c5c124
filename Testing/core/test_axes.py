"""The two axis numberings (the core's [k, j, i] array axes, Slicer's IJK axes) name the same slices."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from sonosam.errors import PromptError
from sonosam.image import AXES, array_axis, ijk_axis, take_slice

ROOT = Path(__file__).resolve().parents[2]


def _slicer_geometry():
    """SonoSAMSegmentLib/geometry.py is pure numpy: loaded from its file, without the MRML logic beside it."""
    spec = importlib.util.spec_from_file_location(
        "sonosam_slicer_geometry", ROOT / "SonoSAMSegment" / "SonoSAMSegmentLib" / "geometry.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module          # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def test_ijk_and_array_axes_name_the_same_slices():
    shape_kji = (4, 5, 6)
    k, j, i = np.indices(shape_kji)
    volume = 100 * k + 10 * j + i            # each voxel holds its own (k, j, i)
    geometry = _slicer_geometry()
    for ijk, name in enumerate("IJK"):
        axis = array_axis(ijk)
        assert ijk_axis(axis) == ijk and AXES[name.lower()] == axis
        plane = take_slice(volume, axis, 2)
        fixed = {"I": plane % 10, "J": plane // 10 % 10, "K": plane // 100}[name]
        assert (fixed == 2).all()            # the core's slice holds index 2 along the named axis, only
        # Slicer's geometry takes the same voxels for IJK axis `ijk` (its own layout: rows/columns may differ)
        others = [a for a in range(3) if a != ijk]
        layout = geometry.SliceGeometry(ijk, 2, shape_kji[::-1], x_axis=others[0], y_axis=others[1])
        assert sorted(layout.extract(volume).ravel()) == sorted(plane.ravel())
    with pytest.raises(PromptError, match="IJK axis"):
        array_axis(3)
