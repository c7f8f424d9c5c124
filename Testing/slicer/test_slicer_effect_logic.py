"""The Qt-free pieces the SonoSAM effect stands on: helper nodes that stay out of the user's way, the
propagation as plan -> (server job) -> finish with nothing written before the end, the Segment Editor's
masking during propagation, and a GUI logic that never loads a model in Slicer's process."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed")
pytest.importorskip("torch")

from SonoSAMSegmentLib.logic import (NotConnectedError, SegmentationError, SegmentLogic,  # noqa: E402
                                     add_helper_node, editor_writer)
from test_slicer_propagate_evaluate import ball, read, stack, write_slice  # noqa: E402,F401


def test_helper_nodes_are_hidden_unsaved_and_not_the_active_markups_list(mrml):
    scene = mrml.scene
    selection = scene.GetFirstNodeByClass("vtkMRMLSelectionNode")
    user = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "user points")
    assert selection.GetActivePlaceNodeID() == user.GetID()  # Slicer makes every new list the active one
    for cls in ("vtkMRMLMarkupsFiducialNode", "vtkMRMLMarkupsLineNode", "vtkMRMLSegmentationNode"):
        node = add_helper_node(scene, cls, "SonoSAM helper")
        assert node.GetHideFromEditors() and not node.GetSaveWithScene() and node.GetDisplayNode() is not None
        assert selection.GetActivePlaceNodeID() == user.GetID()
        assert selection.GetActivePlaceNodeClassName() == "vtkMRMLMarkupsFiducialNode"


def test_gui_logic_never_loads_a_model_in_process(mrml):
    logic = SegmentLogic(in_process=False)
    with pytest.raises(NotConnectedError, match="not connected"):
        logic.predictor
    logic.set_predictor(object())
    assert logic.predictor is not None


def _seeded(ball):
    inside = stack(ball, ball.inside)
    c = int(np.argmax(inside.reshape(len(inside), -1).sum(1)))
    write_slice(ball, c, inside[c])
    return c, inside


def test_plan_task_finish_equals_propagate(ball):
    c, inside = _seeded(ball)
    plan = ball.logic.plan_propagation(ball.volume, ball.segmentation, ball.target, "axial")
    before = read(ball, ball.target).copy()
    task = ball.logic.start_propagation(plan)         # in-process predictor: runs now, writes nothing
    np.testing.assert_array_equal(read(ball, ball.target), before)
    assert task.poll()[0] == "done"
    summary = task.finish()
    via_task = read(ball, ball.target).copy()
    assert "1 accepted" in summary and via_task.sum() > before.sum()
    # the same through propagate() on a fresh segment with the same seed
    ball.logic._propagations.clear()
    from SonoSAMSegmentLib.logic import write_segment_block

    write_segment_block(ball.segmentation, ball.target, before, ball.m, ball.full)
    ball.logic.propagate(ball.volume, ball.segmentation, ball.target, "axial")
    np.testing.assert_array_equal(read(ball, ball.target), via_task)


def test_edit_during_propagation_refuses_to_write(ball):
    c, inside = _seeded(ball)
    plan = ball.logic.plan_propagation(ball.volume, ball.segmentation, ball.target, "axial")
    task = ball.logic.start_propagation(plan)
    write_slice(ball, c + 1, inside[c + 1])            # the user edits while the job runs
    edited = read(ball, ball.target).copy()
    with pytest.raises(SegmentationError, match="edited while propagating"):
        task.finish()
    np.testing.assert_array_equal(read(ball, ball.target), edited)


def test_propagation_honours_the_editable_area(ball, mrml):
    """Editable area "outside all segments": propagated slices never take the other segment's voxels."""
    import slicer

    c, inside = _seeded(ball)
    editor = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    editor.SetAndObserveSegmentationNode(ball.segmentation)
    editor.SetAndObserveSourceVolumeNode(ball.volume)
    editor.SetSelectedSegmentID(ball.target)
    editor.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedOutsideAllSegments)
    seed_slice = stack(ball, read(ball, ball.target))[c].copy()
    ball.logic.propagate(ball.volume, ball.segmentation, ball.target, "axial", modify=editor_writer(editor))
    got = read(ball, ball.target)
    other = stack(ball, ball.other_mask)
    got_stack = stack(ball, got)
    np.testing.assert_array_equal(got_stack[c], seed_slice)               # the seed as it was
    rest = np.ones(len(got_stack), bool)
    rest[c] = False
    assert not (got_stack[rest] & other[rest]).any()                      # nothing inside "other"
    assert (got_stack[rest] & ~other[rest]).sum() > 0                     # but it did propagate
    expected = inside & ~other
    for s in np.nonzero(got_stack.reshape(len(got_stack), -1).any(1))[0]:
        if s != c:   # the stand-in's answer, up to a boundary pixel (each prompt box follows the flow-moved mask)
            assert (got_stack[s] ^ expected[s]).sum() <= 0.01 * expected[s].sum() + 1, s
    np.testing.assert_array_equal(read(ball, ball.other), ball.other_mask)


def test_the_undo_state_is_saved_once_before_the_first_change_and_never_for_no_change(ball):
    """``before_first_write`` (the effect's ``saveStateForUndo``): once per action, before anything changes;
    an action that changes nothing saves no (empty) undo step; a hook that refuses leaves the segment as it was."""
    from SonoSAMSegmentLib.logic import write_segment_block

    c, inside = _seeded(ball)
    task = ball.logic.start_propagation(ball.logic.plan_propagation(ball.volume, ball.segmentation, ball.target,
                                                                    "axial"))
    before = read(ball, ball.target).copy()
    seen = []

    def save_state(segmentation, segment_id):
        seen.append((segmentation, segment_id, read(ball, ball.target).copy()))

    task.finish(modify=editor_writer(before_first_write=save_state))
    assert len(seen) == 1 and seen[0][:2] == (ball.segmentation, ball.target)
    np.testing.assert_array_equal(seen[0][2], before)            # the state saved is the one before the write
    after = read(ball, ball.target).copy()
    assert after.sum() > before.sum()
    seen.clear()
    assert not write_segment_block(ball.segmentation, ball.target, after, ball.m, ball.full,
                                   modify=editor_writer(before_first_write=save_state))
    assert seen == []                                            # nothing to write: no undo step

    def refuse(segmentation, segment_id):
        raise SegmentationError("The selected segment changed: select the segment again and apply.")

    with pytest.raises(SegmentationError, match="selected segment changed"):
        write_segment_block(ball.segmentation, ball.target, before, ball.m, ball.full,
                            modify=editor_writer(before_first_write=refuse))
    np.testing.assert_array_equal(read(ball, ball.target), after)


def test_a_segmentation_deleted_while_the_job_ran_gets_nothing(ball):
    """A propagation that ends after its segmentation was deleted (or the scene closed) writes nothing and says so;
    it used to write into the node nobody sees any more and report success."""
    c, inside = _seeded(ball)
    task = ball.logic.start_propagation(ball.logic.plan_propagation(ball.volume, ball.segmentation, ball.target,
                                                                    "axial"))
    before = read(ball, ball.target).copy()
    ball.volume.GetScene().RemoveNode(ball.segmentation)
    with pytest.raises(SegmentationError, match="no longer in the scene"):
        task.finish()
    np.testing.assert_array_equal(read(ball, ball.target), before)
