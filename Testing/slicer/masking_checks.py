"""The Segment Editor's masking settings, honoured by SonoSAM's writes: editable intensity range, editable
area, "modify other segments" (overwrite modes), for Apply (replace / add / remove). Propagation writes through the
same writer; a propagation and its re-run under masking: ``test_slicer_propagate_evaluate.py``.

Plain functions on an MRML scene, with no pytest: ``test_slicer_masking.py`` runs them on a headless
slicer-core scene, ``SonoSAMSegment/Testing/Python/test_in_slicer.py`` (unittest) on Slicer's own
scene. Each check builds its nodes, asserts with plain ``assert`` and leaves the scene as it found it.

The writes go through ``editor_writer(editor_node)``, i.e. ``vtkSlicerSegmentEditorLogic::
ModifySegmentByLabelmap`` -- what ``scriptedEffect.modifySelectedSegmentByLabelmap`` calls in Slicer 5.10+.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

# Volume (K, J, I) = (5, 20, 30), 1 x 1 x 2 mm: intensity 0 on the left half (I < 15), 100 on the right.
SHAPE = (5, 20, 30)
IJK_TO_RAS = np.diag([1.0, 1.0, 2.0, 1.0])
K = 2  # the slice that is segmented
RECT = (slice(4, 16), slice(5, 25))  # (J, I) of the prediction on slice K: crosses both halves


class RectPredictor:
    """Mask = a fixed rectangle of the slice image (whatever the prompt): the writing rules are under test,
    not the model. Works on volume slices laid out along K (x = I, y = J for this axis-aligned volume)."""

    def __init__(self, rect=RECT):
        self.rect = rect

    def predict(self, image, prompts=None, **kwargs):
        mask = np.zeros(np.shape(image)[:2], bool)
        mask[self.rect] = True
        return SimpleNamespace(mask=mask, score=1.0, logits=None, notes=[])


def _volume(scene):
    import vtk
    from vtk.util import numpy_support

    array = np.zeros(SHAPE, np.int16)
    array[:, :, SHAPE[2] // 2:] = 100
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "masking volume")
    image = vtk.vtkImageData()
    image.SetDimensions(SHAPE[2], SHAPE[1], SHAPE[0])
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(array.ravel(), deep=True,
                                                               array_type=vtk.VTK_SHORT))
    node.SetAndObserveImageData(image)
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, IJK_TO_RAS[r, c])
    node.SetIJKToRASMatrix(matrix)
    node.CreateDefaultDisplayNodes()
    return node


class Case:
    """A volume, a segmentation with segments "target" and "other", a segment editor node, the logic."""

    def __init__(self, scene):
        from SonoSAMSegmentLib.logic import SegmentLogic, editor_writer

        self.scene = scene
        self.volume = _volume(scene)
        self.segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "masking segmentation")
        self.segmentation.CreateDefaultDisplayNodes()
        self.segmentation.SetReferenceImageGeometryParameterFromVolumeNode(self.volume)
        segs = self.segmentation.GetSegmentation()
        self.other = segs.AddEmptySegment("other", "other")
        self.target = segs.AddEmptySegment("target", "target")
        self.editor = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode", "masking editor")
        self.editor.SetAndObserveSegmentationNode(self.segmentation)
        self.editor.SetAndObserveSourceVolumeNode(self.volume)
        self.editor.SetSelectedSegmentID(self.target)
        self.logic = SegmentLogic(predictor=RectPredictor())
        self.modify = editor_writer(self.editor)
        self.full = [0, SHAPE[2] - 1, 0, SHAPE[1] - 1, 0, SHAPE[0] - 1]

    def click_ras(self, k=K):
        return (IJK_TO_RAS @ np.array([10.0, 10.0, k, 1.0]))[:3]

    def segment(self, mode="replace", k=K):
        return self.logic.segment(self.volume, self.segmentation, self.target, points_ras=[self.click_ras(k)],
                                  labels=[1], sliceAxis="K", mode=mode, refine=False, modify=self.modify)

    def array(self, segment_id):
        from SonoSAMSegmentLib.logic import read_segment_block

        return read_segment_block(self.segmentation, segment_id, IJK_TO_RAS, self.full)

    def set(self, segment_id, block):
        """Write a segment directly (no masking: a fresh console writer)."""
        from SonoSAMSegmentLib.logic import write_segment_block

        write_segment_block(self.segmentation, segment_id, block, IJK_TO_RAS, self.full)

    def rect_block(self, k=K):
        block = np.zeros(SHAPE, bool)
        block[(k,) + RECT] = True
        return block

    def close(self):
        for node in (self.editor, self.segmentation, self.volume):
            self.scene.RemoveNode(node)


def _with_case(check):
    def run(scene):
        case = Case(scene)
        try:
            check(case)
        finally:
            case.close()
    run.__name__ = check.__name__
    run.__doc__ = check.__doc__
    return run


@_with_case
def check_everywhere_writes_the_prediction(case):
    """Default editor settings: the slice becomes the prediction, nothing else changes."""
    case.segment()
    np.testing.assert_array_equal(case.array(case.target), case.rect_block())


@_with_case
def check_intensity_range_limits_apply(case):
    """Editable intensity range 50..200: only the bright half of the prediction is written."""
    case.editor.SetSourceVolumeIntensityMask(True)
    case.editor.SetSourceVolumeIntensityMaskRange(50, 200)
    case.segment()
    expected = case.rect_block()
    expected[:, :, :SHAPE[2] // 2] = False
    np.testing.assert_array_equal(case.array(case.target), expected)


@_with_case
def check_intensity_range_limits_remove(case):
    """Remove with an intensity range: voxels outside the range stay in the segment."""
    case.set(case.target, case.rect_block())
    case.editor.SetSourceVolumeIntensityMask(True)
    case.editor.SetSourceVolumeIntensityMaskRange(50, 200)
    case.segment(mode="remove")
    expected = case.rect_block()
    expected[:, :, SHAPE[2] // 2:] = False
    np.testing.assert_array_equal(case.array(case.target), expected)


@_with_case
def check_editable_area_outside_all_segments(case):
    """Editable area "outside all segments": the target does not grow into "other", which is unchanged."""
    import slicer

    other = np.zeros(SHAPE, bool)
    other[K, 0:10, 0:12] = True  # overlaps the prediction's top-left corner
    case.set(case.other, other)
    case.editor.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedOutsideAllSegments)
    case.segment()
    np.testing.assert_array_equal(case.array(case.target), case.rect_block() & ~other)
    np.testing.assert_array_equal(case.array(case.other), other)


@_with_case
def check_editable_area_inside_one_segment(case):
    """Editable area "inside segment other": only the prediction's overlap with "other" is written."""
    import slicer

    other = np.zeros(SHAPE, bool)
    other[K, 0:10, 0:12] = True
    case.set(case.other, other)
    case.editor.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment)
    case.editor.SetMaskSegmentID(case.other)
    case.editor.SetOverwriteMode(case.editor.OverwriteNone)
    case.segment()
    np.testing.assert_array_equal(case.array(case.target), case.rect_block() & other)


@_with_case
def check_overwrite_all_takes_voxels_from_other_segments(case):
    """"Modify other segments: overwrite all" (Slicer's default): the overlap leaves "other"."""
    other = np.zeros(SHAPE, bool)
    other[K, 0:10, 0:12] = True
    case.set(case.other, other)
    case.editor.SetOverwriteMode(case.editor.OverwriteAllSegments)
    case.segment()
    np.testing.assert_array_equal(case.array(case.target), case.rect_block())
    np.testing.assert_array_equal(case.array(case.other), other & ~case.rect_block())


@_with_case
def check_overwrite_none_and_hidden_segments_keep_their_voxels(case):
    """"Allow overlap": "other" keeps its voxels; "overwrite visible" also keeps them when it is hidden."""
    other = np.zeros(SHAPE, bool)
    other[K, 0:10, 0:12] = True
    case.set(case.other, other)
    case.editor.SetOverwriteMode(case.editor.OverwriteNone)
    case.segment()
    np.testing.assert_array_equal(case.array(case.other), other)
    np.testing.assert_array_equal(case.array(case.target), case.rect_block())
    # hidden "other", overwrite visible segments only: a new slice next to it leaves it alone
    other2 = other.copy()
    other2[K + 1, 0:10, 0:12] = True
    case.set(case.other, other2)
    case.segmentation.GetDisplayNode().SetSegmentVisibility(case.other, False)
    case.editor.SetOverwriteMode(case.editor.OverwriteVisibleSegments)
    case.segment(k=K + 1)
    np.testing.assert_array_equal(case.array(case.other), other2)


@_with_case
def check_replace_keeps_other_slices_and_removes_only_editable_voxels(case):
    """Replace on slice K under an intensity range: other slices unchanged; on K, voxels outside the
    range keep their old value (neither added nor removed)."""
    before = np.zeros(SHAPE, bool)
    before[K - 1, 2:8, 2:28] = True      # another slice: untouched
    before[K, 0:3, 0:30] = True          # on K, outside the prediction: removed only where editable
    case.set(case.target, before)
    case.editor.SetSourceVolumeIntensityMask(True)
    case.editor.SetSourceVolumeIntensityMaskRange(50, 200)
    case.segment()
    got = case.array(case.target)
    np.testing.assert_array_equal(got[K - 1], before[K - 1])
    bright = np.zeros(SHAPE[1:], bool)
    bright[:, SHAPE[2] // 2:] = True
    expected_k = np.where(bright, case.rect_block()[K], before[K])
    np.testing.assert_array_equal(got[K], expected_k)


@_with_case
def check_intensity_range_on_a_finer_segmentation_grid(case):
    """The segmentation's own grid is 2x finer in-plane than the volume's (its reference geometry): the
    editor computes the intensity mask on that grid, so the write is resampled there first (without that,
    Slicer's rule writes nothing at all)."""
    import slicer

    reference = slicer.vtkOrientedImageData()
    reference.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(np.diag([0.5, 0.5, 2.0, 1.0])))
    reference.SetExtent(0, 2 * SHAPE[2] - 1, 0, 2 * SHAPE[1] - 1, 0, SHAPE[0] - 1)
    case.segmentation.GetSegmentation().SetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(),
        slicer.vtkSegmentationConverter.SerializeImageGeometry(reference))
    case.editor.SetSourceVolumeIntensityMask(True)
    case.editor.SetSourceVolumeIntensityMaskRange(50, 200)
    case.segment()
    got = case.array(case.target)
    expected = case.rect_block()
    expected[:, :, :SHAPE[2] // 2] = False
    assert not (got & ~case.rect_block()).any()          # nothing outside the prediction
    assert not got[:, :, :SHAPE[2] // 2 - 1].any()       # nothing in the dark half (its edge column may blur)
    np.testing.assert_array_equal(got[:, :, SHAPE[2] // 2:], expected[:, :, SHAPE[2] // 2:])


def _inside_other_with_target_outside_it(case):
    """Editable area "inside segment other" (other = the prediction's top-left corner on slice K, overwrite
    all: Slicer's default); the target already holds a bar on slice K, outside both "other" and the
    prediction. Returns (other, target) as they were."""
    import slicer

    other = np.zeros(SHAPE, bool)
    other[K, 0:10, 0:12] = True
    target = np.zeros(SHAPE, bool)
    target[K, 17:20, 0:30] = True
    case.set(case.other, other)
    case.set(case.target, target)
    case.editor.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment)
    case.editor.SetMaskSegmentID(case.other)
    case.editor.SetOverwriteMode(case.editor.OverwriteAllSegments)
    return other, target


@_with_case
def check_replace_inside_one_segment_keeps_the_target_outside_it(case):
    """Replace under "inside segment other", as Slicer's own "set": the target gains the prediction inside
    "other" and keeps its voxels outside "other"; "other" loses the overlap and gains nothing."""
    other, target = _inside_other_with_target_outside_it(case)
    case.segment()
    written = case.rect_block() & other
    np.testing.assert_array_equal(case.array(case.target), target | written)
    np.testing.assert_array_equal(case.array(case.other), other & ~written)


@_with_case
def check_remove_inside_one_segment_gives_the_voxels_to_it(case):
    """Remove under "inside segment other" is Slicer's Erase (how a segment is split by painting): the
    target's voxels under the prediction leave it, also outside "other", and go to "other"."""
    other, target = _inside_other_with_target_outside_it(case)
    target[K, 4:16, 20:25] = True  # under the prediction, outside "other"
    case.set(case.target, target)
    case.segment(mode="remove")
    np.testing.assert_array_equal(case.array(case.target), target & ~case.rect_block())
    np.testing.assert_array_equal(case.array(case.other), other | (target & case.rect_block()))


@_with_case
def check_replace_inside_one_segment_on_a_finer_offset_grid(case):
    """The same rule where the segmentation's own grid is 2x finer and offset by a quarter voxel (its reference
    geometry; "other" in a layer of its own): a replace that empties slice K removes the target only inside
    "other", and "other" gains nothing (the removals are limited to "other" again on the grid Slicer writes on)."""
    import slicer
    import vtk
    from vtk.util import numpy_support
    from SonoSAMSegmentLib.logic import read_segment_block, write_segment_block

    fine = np.diag([0.5, 0.5, 2.0, 1.0])
    fine[0, 3] = fine[1, 3] = 0.25
    shape = (SHAPE[0], 2 * SHAPE[1], 2 * SHAPE[2])
    extent = [0, shape[2] - 1, 0, shape[1] - 1, 0, shape[0] - 1]
    reference = slicer.vtkOrientedImageData()
    reference.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(fine))
    reference.SetExtent(*extent)
    case.segmentation.GetSegmentation().SetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(),
        slicer.vtkSegmentationConverter.SerializeImageGeometry(reference))

    def set_fine(segment_id, block):
        image = slicer.vtkOrientedImageData()
        image.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(fine))
        image.SetExtent(*extent)
        image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = block.astype(np.uint8).ravel()
        slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            image, case.segmentation, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)

    target, other = np.zeros(shape, bool), np.zeros(shape, bool)
    target[K, 8:32, 0:60] = True
    other[K, 0:40, 0:26] = True   # its edge falls mid-way through a volume voxel
    set_fine(case.other, other)
    set_fine(case.target, target)
    case.editor.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment)
    case.editor.SetMaskSegmentID(case.other)
    case.editor.SetOverwriteMode(case.editor.OverwriteNone)
    slice_k = list(case.full)
    slice_k[4] = slice_k[5] = K
    current = read_segment_block(case.segmentation, case.target, IJK_TO_RAS, slice_k)
    write_segment_block(case.segmentation, case.target, np.zeros_like(current), IJK_TO_RAS, slice_k, current,
                        case.modify)
    np.testing.assert_array_equal(read_segment_block(case.segmentation, case.target, fine, extent), target & ~other)
    np.testing.assert_array_equal(read_segment_block(case.segmentation, case.other, fine, extent), other)


@_with_case
def check_a_deleted_mask_segment_is_refused(case):
    """Editable area "inside segment other", and "other" deleted since: refused with a message naming it (Slicer
    itself would write nothing, silently); the target is unchanged."""
    import slicer
    from SonoSAMSegmentLib.logic import SegmentationError

    case.set(case.target, case.rect_block(K - 1))
    case.editor.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment)
    case.editor.SetMaskSegmentID(case.other)
    case.segmentation.GetSegmentation().RemoveSegment(case.other)
    try:
        case.segment()
    except SegmentationError as error:
        assert "inside segment other" in str(error) and "nothing was written" in str(error), error
    else:
        raise AssertionError("a write inside a deleted segment was not refused")
    np.testing.assert_array_equal(case.array(case.target), case.rect_block(K - 1))


@_with_case
def check_a_slice_between_a_coarser_grid_s_voxels_is_refused(case):
    """The segmentation's own grid is 2x coarser than the volume's (Segment Editor > Specify geometry, oversampling
    0.5): slice K + 1 falls between its voxels, where a write would silently change nothing; it is refused, and the
    segment is unchanged."""
    import slicer
    from SonoSAMSegmentLib.logic import SegmentationError

    reference = slicer.vtkOrientedImageData()
    reference.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(np.diag([2.0, 2.0, 4.0, 1.0])))
    reference.SetExtent(0, SHAPE[2] // 2 - 1, 0, SHAPE[1] // 2 - 1, 0, SHAPE[0] // 2)
    case.segmentation.GetSegmentation().SetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(),
        slicer.vtkSegmentationConverter.SerializeImageGeometry(reference))
    try:
        case.segment(k=K + 1)
    except SegmentationError as error:
        assert "coarser geometry" in str(error) and "Specify geometry" in str(error), error
    else:
        raise AssertionError("a write that changes nothing was not refused")
    assert not case.array(case.target).any()


CHECKS = [check_everywhere_writes_the_prediction, check_intensity_range_limits_apply,
          check_intensity_range_limits_remove, check_editable_area_outside_all_segments,
          check_editable_area_inside_one_segment, check_overwrite_all_takes_voxels_from_other_segments,
          check_overwrite_none_and_hidden_segments_keep_their_voxels,
          check_replace_keeps_other_slices_and_removes_only_editable_voxels,
          check_intensity_range_on_a_finer_segmentation_grid,
          check_replace_inside_one_segment_keeps_the_target_outside_it,
          check_remove_inside_one_segment_gives_the_voxels_to_it,
          check_replace_inside_one_segment_on_a_finer_offset_grid, check_a_deleted_mask_segment_is_refused,
          check_a_slice_between_a_coarser_grid_s_voxels_is_refused]
