"""The SonoSAM effect's propagation rules (logic.PropagationControl; the effect only shows what it says), on the
real MRML scene with real propagations (the core's propagate over a real Predictor with the stand-in model of
test_slicer_propagate_evaluate, run in-process: a task that is finished at once). A running job's rules (Stop,
leaving the effect) are tested against the real server in test_server_logic.py."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed")
pytest.importorskip("torch")

from SonoSAMSegmentLib.logic import PropagationControl, SegmentationError, editor_writer  # noqa: E402
from test_slicer_propagate_evaluate import ball, read, stack, write_slice  # noqa: E402,F401


@pytest.fixture
def setup(ball, mrml):  # noqa: F811
    """A finished propagation of the target segment (nothing written yet), the editor node the effect writes
    with, and a writer factory counting undo states (the effect's saveStateForUndo)."""
    import slicer

    inside = stack(ball, ball.inside)
    c = int(np.argmax(inside.reshape(len(inside), -1).sum(1)))
    write_slice(ball, c, inside[c])
    editor = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    editor.SetAndObserveSegmentationNode(ball.segmentation)
    editor.SetAndObserveSourceVolumeNode(ball.volume)
    editor.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteNone)
    undo = []

    def writer():
        return editor_writer(editor, before_first_write=lambda node, sid: undo.append(sid))

    control = PropagationControl()
    plan = ball.logic.plan_propagation(ball.volume, ball.segmentation, ball.target, "axial")
    control.start(ball.logic.start_propagation(plan))
    return control, writer, undo, read(ball, ball.target).copy()


def test_a_finished_propagation_is_written_at_once_when_its_segment_is_selected(ball, setup):  # noqa: F811
    control, writer, undo, before = setup
    assert control.busy                                          # Propagate off, Stop on
    tick = control.poll(ball.segmentation, ball.target, writer)
    assert tick.ended and tick.changed and "accepted" in tick.status
    assert read(ball, ball.target).sum() > before.sum() and undo == [ball.target]
    assert not control.busy and control.poll(ball.segmentation, ball.target, writer).status is None


def test_held_while_another_segment_is_selected_said_once_then_written_on_reselect(ball, setup):  # noqa: F811
    control, writer, undo, before = setup
    tick = control.poll(ball.segmentation, ball.other, writer)
    assert tick.ended and "finished: select 'target' of 'seg' to write it, or Stop" in tick.status
    assert control.held is not None and control.busy            # Propagate stays off while one is held
    assert control.poll(ball.segmentation, ball.other, writer).status is None   # said once, not every tick
    assert control.poll(ball.segmentation, None, writer).status is None
    np.testing.assert_array_equal(read(ball, ball.target), before)
    assert undo == []
    tick = control.poll(ball.segmentation, ball.target, writer)  # the user selects it again
    assert "accepted" in tick.status and tick.changed and not control.busy
    assert read(ball, ball.target).sum() > before.sum() and undo == [ball.target]   # one undo state


def test_stop_discards_a_held_one_and_nothing_is_written(ball, setup):  # noqa: F811
    control, writer, undo, before = setup
    control.poll(ball.segmentation, ball.other, writer)
    assert control.stop() == "The finished propagation was discarded: nothing was written."
    assert not control.busy and control.stop() is None
    assert control.poll(ball.segmentation, ball.target, writer).status is None
    np.testing.assert_array_equal(read(ball, ball.target), before)
    assert undo == []


def test_leaving_the_effect_keeps_a_held_one_and_says_it_again_on_return(ball, setup):  # noqa: F811
    control, writer, undo, before = setup
    said = control.poll(ball.segmentation, ball.other, writer).status
    assert control.end(keep_held=True) is False                  # nothing running was stopped
    assert control.held is not None
    assert control.poll(ball.segmentation, ball.other, writer).status == said   # back in the effect: said again
    control.poll(ball.segmentation, ball.target, writer)
    assert read(ball, ball.target).sum() > before.sum()


def test_closing_the_scene_discards_a_held_one(ball, setup):  # noqa: F811
    control, writer, undo, before = setup
    control.poll(ball.segmentation, ball.other, writer)
    assert control.end() is True and not control.busy
    control.poll(ball.segmentation, ball.target, writer)
    np.testing.assert_array_equal(read(ball, ball.target), before)


def test_a_held_one_whose_segment_was_deleted_is_an_error_said_once(ball, setup):  # noqa: F811
    control, writer, undo, before = setup
    control.poll(ball.segmentation, ball.other, writer)
    ball.segmentation.GetSegmentation().RemoveSegment(ball.target)
    with pytest.raises(SegmentationError, match="was deleted: nothing was written"):
        control.poll(ball.segmentation, ball.other, writer)
    assert not control.busy and control.poll(ball.segmentation, ball.other, writer).status is None


def test_an_edit_while_held_refuses_the_write_and_drops_it(ball, setup):  # noqa: F811
    """The write on reselect goes through finish's checks: a segment edited meanwhile is not overwritten."""
    control, writer, undo, before = setup
    control.poll(ball.segmentation, ball.other, writer)
    inside = stack(ball, ball.inside)
    c = int(np.argmax(inside.reshape(len(inside), -1).sum(1)))
    write_slice(ball, c + 1, inside[c + 1])
    edited = read(ball, ball.target).copy()
    with pytest.raises(SegmentationError, match="edited while propagating"):
        control.poll(ball.segmentation, ball.target, writer)
    np.testing.assert_array_equal(read(ball, ball.target), edited)
    assert not control.busy and undo == []
