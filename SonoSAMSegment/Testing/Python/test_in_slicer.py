"""SonoSAMSegment checks that need no pytest: the Segment Editor masking checks (Testing/slicer/
masking_checks.py) on Slicer's own scene inside Slicer (registered with slicer_add_python_unittest), or on
a headless slicer-core scene elsewhere (``python SonoSAMSegment/Testing/Python/test_in_slicer.py``)."""

import os
import sys
import unittest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


def _scene():
    """Slicer's scene when running inside Slicer, else a new headless one (and its closer)."""
    import slicer

    if getattr(slicer, "mrmlScene", None) is not None:
        return slicer.mrmlScene, (lambda: None)
    from mrml_scene import make_scene

    ctx = make_scene()
    return ctx.scene, ctx.close


class SonoSAMSegmentMaskingInSlicer(unittest.TestCase):
    def setUp(self):
        for folder in (os.path.join(ROOT, "Testing", "slicer"), os.path.join(ROOT, "SonoSAMSegment"), ROOT):
            if folder not in sys.path:
                sys.path.insert(0, folder)

    def test_masking_settings_are_honoured(self):
        import masking_checks

        scene, close = _scene()
        try:
            for check in masking_checks.CHECKS:
                with self.subTest(check.__name__):
                    check(scene)
        finally:
            close()

    def test_a_masked_write_through_the_effect_honours_the_masking(self):
        """Inside Slicer only: Apply's write through the SonoSAM effect (``scriptedEffect.modifySelectedSegmentBy-
        Labelmap`` with an extent and bypassMasking, as PythonQt resolves the overload) keeps to the editable
        intensity range and the editable area; a write over the whole slab must not reach masked voxels."""
        import numpy as np
        import slicer

        if getattr(slicer, "app", None) is None or not hasattr(slicer, "qMRMLSegmentEditorWidget"):
            self.skipTest("needs the Slicer application (the Segment Editor widget and its effects)")
        from SonoSAMSegmentLib.logic import read_segment_block, write_segment_block

        scene = slicer.mrmlScene
        voxels = np.zeros((4, 20, 20), np.int16)
        voxels[:, :, 10:] = 100                      # right half bright: the editable intensity range
        volume = slicer.util.addVolumeFromArray(voxels, name="SonoSAM masking")
        segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        other = segmentation.GetSegmentation().AddEmptySegment("other")
        target = segmentation.GetSegmentation().AddEmptySegment("target")
        import vtk

        matrix = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(matrix)
        ijk = slicer.util.arrayFromVTKMatrix(matrix)
        full = [0, 19, 0, 19, 0, 3]
        taken = np.zeros((4, 20, 20), bool)
        taken[:, :5, :] = True                        # rows 0-4 belong to "other"
        write_segment_block(segmentation, other, taken, ijk, full)
        editorNode = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
        editor = slicer.qMRMLSegmentEditorWidget()
        editor.setMRMLScene(scene)
        editor.setMRMLSegmentEditorNode(editorNode)
        editor.setSegmentationNode(segmentation)
        editor.setSourceVolumeNode(volume)
        editorNode.SetSelectedSegmentID(target)
        editorNode.SetSourceVolumeIntensityMask(True)
        editorNode.SetSourceVolumeIntensityMaskRange(50, 150)
        editorNode.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedOutsideAllSegments)
        try:
            editor.setActiveEffectByName("SonoSAM")
            effect = editor.activeEffect().self()
            everything = np.ones((4, 20, 20), bool)
            write_segment_block(segmentation, target, everything, ijk, full, np.zeros_like(everything),
                                effect._writer())   # what Apply does
            written = read_segment_block(segmentation, target, ijk, full)
            expected = (voxels >= 50) & ~taken
            self.assertTrue(written.any(), "nothing was written")
            np.testing.assert_array_equal(written, expected)
        finally:
            editor.setActiveEffectByName("")
            for node in (editorNode, segmentation, volume):
                scene.RemoveNode(node)


if __name__ == "__main__":
    unittest.main()
