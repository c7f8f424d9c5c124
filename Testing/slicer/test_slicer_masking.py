"""The Segment Editor's masking settings (editable area, intensity range, overwrite modes) are honoured by
SonoSAM's writes, checked on a headless slicer-core scene through Slicer's own vtkSlicerSegmentEditorLogic.
The checks live in masking_checks.py (no pytest) so that they also run inside Slicer."""

import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed")

import masking_checks  # noqa: E402


@pytest.mark.parametrize("check", masking_checks.CHECKS, ids=lambda c: c.__name__)
def test_masking(mrml, check):
    check(mrml.scene)
