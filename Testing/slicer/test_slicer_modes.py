"""SAM^assist ("Learn from accepted slices") and the prompt predictor ("Auto") through the Qt-free Slicer logic,
on slicer-core's real MRML with real Colin27 slices and the real LiteMedSAM, in-process and through a real
`sonosam serve` subprocess (127.0.0.1, port 0): the same results both ways.

Auto uses a PPN trained for 3 steps (tests/conftest.py `brief_ppn`): what is checked is behaviour - which slices
are written, that nothing else changes, that a cancelled run writes nothing, that a class judged absent leaves
the slices empty, one undo step - not its accuracy (docs/seeds.md has the figures). Its objectness after 3
steps means nothing, so the tests set the threshold to 0 (every slice "present") or 1 (every slice "absent").
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

pytest.importorskip("slicer", reason="slicer-core is not installed")
pytest.importorskip("torch")

from mrml_scene import add_volume_from_array  # noqa: E402
from SonoSAMSegmentLib.logic import (SegmentationError, SegmentLogic, editor_writer, read_segment_block,  # noqa: E402
                                      write_segment_block)

from sonosam.errors import JobCancelledError, PromptError, UnsupportedPromptError  # noqa: E402

pytestmark = pytest.mark.slow   # real encoders in two processes

ROOT = Path(__file__).resolve().parents[2]
THALAMUS_L = 77
RESULTS: dict = {}   # each test's outcome per side, compared once both sides ran
M = np.array([[-1.0, 0, 0, 90], [0, -1.0, 0, 126], [0, 0, 1.0, 0], [0, 0, 0, 1]])   # Colin27's 1 mm, RAS


@pytest.fixture(scope="module")
def server(tmp_path_factory, brief_ppn):
    from sonosam.client import start_local_server

    cache = tmp_path_factory.mktemp("slicer-modes") / "cache"
    (cache / "ppn").mkdir(parents=True)
    shutil.copy(brief_ppn, cache / "ppn" / "thalamus.ppn.pt")
    local = start_local_server(model="litemedsam", backend="eager", timeout=600,
                               env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                               args=["--threads", "1", "--cache-dir", str(cache)])
    yield local
    local.stop()


@pytest.fixture(scope="module")
def predictors(server, default_model):
    """(in-process Predictor, server client): the same model and backend on both sides."""
    from sonosam.predictor import Predictor

    return {"in-process": Predictor(default_model), "server": server.client()}


@pytest.fixture
def colin(mrml, colin_stack):
    stack, labels, _ = colin_stack
    volume = add_volume_from_array(mrml.scene, stack, M, "colin")
    segmentation = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    full = [0, stack.shape[2] - 1, 0, stack.shape[1] - 1, 0, stack.shape[0] - 1]
    return dict(scene=mrml.scene, volume=volume, segmentation=segmentation, labels=labels, full=full)


def _segment(colin, name, block):
    sid = colin["segmentation"].GetSegmentation().AddEmptySegment(name, name)
    write_segment_block(colin["segmentation"], sid, block, M, colin["full"])
    return sid


def _array(colin, sid):
    return read_segment_block(colin["segmentation"], sid, M, colin["full"])


def _centre_ras(mask_ji, k):
    rows, cols = np.nonzero(mask_ji)
    i = int(np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2))
    return (M @ np.r_[cols[i], rows[i], k, 1.0])[:3]


@pytest.mark.parametrize("side", ["in-process", "server"])
def test_learn_from_accepted_slices_then_clicks_use_it_and_the_base_comes_back(colin, predictors, side, tmp_path):
    labels = colin["labels"]
    accepted = np.zeros(labels.shape, bool)
    accepted[[1, 5]] = labels[[1, 5]] == THALAMUS_L
    sid = _segment(colin, "thalamus", accepted)
    logic = SegmentLogic(predictor=predictors[side])
    volume, seg = colin["volume"], colin["segmentation"]
    assert logic.accepted_slices(volume, seg, sid, "axial") == [1, 5]
    click = _centre_ras(labels[3] == THALAMUS_L, 3)
    with pytest.raises(UnsupportedPromptError):   # box-only litemedsam: a single click is refused
        logic.predict(volume, points_ras=[click], labels=[1], sliceAxis="axial")

    if side == "server":   # the user connects another server (here: another client) while Learn runs: refused,
        import copy        # rather than a learned model named on a server that does not hold it

        task = logic.start_learning(volume, seg, sid, "axial", steps=1)
        logic.set_predictor(copy.copy(predictors[side]))
        with pytest.raises(SegmentationError, match="server changed while Learn ran"):
            task.wait(600)
            task.finish()
        logic.set_predictor(predictors[side])
    info = logic.learn_from_segment(volume, seg, sid, "axial", steps=3, seed=2)
    assert info.slices == [1, 5] and len(info.losses) == 3 and info.seconds > 0 and "1, 5" in info.summary()
    assert {"box", "point"} <= set(logic.prompt_kinds())
    prediction = logic.predict(volume, points_ras=[click], labels=[1], sliceAxis="axial")
    assert prediction.mask.any() and prediction.geometry.index == 3
    np.testing.assert_array_equal(_array(colin, sid), accepted)   # learning writes nothing
    if side == "server":   # the module hands it to every module's logic (the effect's too) through the connection
        from SonoSAMSegmentLib.connection import Connection

        connection = Connection(work_dir=tmp_path)
        connection.client, connection.state = predictors["server"], "ready"
        effect_logic = SegmentLogic(in_process=False)
        connection.listeners.append(lambda c: effect_logic.set_predictor(c.client))
        connection.use_assist(logic.predictor)
        np.testing.assert_array_equal(
            effect_logic.predict(volume, points_ras=[click], labels=[1], sliceAxis="axial").mask, prediction.mask)
        connection.use_assist(None)
        with pytest.raises(UnsupportedPromptError):
            effect_logic.predict(volume, points_ras=[click], labels=[1], sliceAxis="axial")

    # the refiner through the learned prompt encoder (its clicks need one: the base model is box-only)
    rough = np.zeros(labels.shape, bool)
    rough[3] = ndimage.binary_erosion(labels[3] == THALAMUS_L, iterations=2)
    rough_id = _segment(colin, "rough", rough)
    preview = logic.refine_segment(volume, seg, rough_id, sliceAxis="axial", sliceIndex=3, steps=3, seed=1)
    assert preview.mask.any() and (preview.labels == 1).sum() >= 4 and preview.geometry.index == 3
    np.testing.assert_array_equal(_array(colin, rough_id), rough)   # a preview: nothing written

    logic.use_base_model()
    with pytest.raises(UnsupportedPromptError):
        logic.predict(volume, points_ras=[click], labels=[1], sliceAxis="axial")
    # the same learning on both sides gives the same losses and the same mask (kept for the other side's run)
    done = RESULTS.setdefault("learn", {})
    done[side] = (info.losses, prediction.mask, preview.mask)
    if len(done) == 2:
        np.testing.assert_allclose(done["in-process"][0], done["server"][0], rtol=1e-4)
        np.testing.assert_array_equal(done["in-process"][1], done["server"][1])
        np.testing.assert_array_equal(done["in-process"][2], done["server"][2])

    one = np.zeros(labels.shape, bool)
    one[2] = labels[2] == THALAMUS_L
    with pytest.raises(PromptError, match="2-5 accepted slices"):
        logic.learn_from_segment(volume, seg, _segment(colin, "one slice", one), "axial")


@pytest.mark.parametrize("side", ["in-process", "server"])
def test_auto_writes_the_slices_it_finds_and_nothing_else(colin, predictors, brief_ppn, side):
    import slicer

    labels = colin["labels"]
    other_block = np.zeros(labels.shape, bool)
    other_block[:, 80:140, 60:120] = True             # another structure over the thalamus region
    other = _segment(colin, "other", other_block)
    logic = SegmentLogic(predictor=predictors[side])
    volume, seg = colin["volume"], colin["segmentation"]
    ppn = "thalamus.ppn.pt" if side == "server" else str(brief_ppn)
    if side == "in-process":
        with pytest.raises(Exception, match="thalamus.ppn.pt"):   # a name is looked for in $SONOSAM_HOME/ppn
            logic.start_auto_segment(volume, seg, "Thalamus_L", "thalamus.ppn.pt")

    # cancelled: nothing written, no segment created
    if side == "server":
        task = logic.start_auto_segment(volume, seg, "Thalamus_L", ppn, sliceAxis="axial", threshold=0.0)
        task.cancel()
    else:
        stop = threading.Event()
        stop.set()
        task = logic.start_auto_segment(volume, seg, "Thalamus_L", ppn, sliceAxis="axial", threshold=0.0, cancel=stop)
    with pytest.raises(JobCancelledError):
        task.wait(600)
        task.finish()
    assert seg.GetSegmentation().GetNumberOfSegments() == 1

    # one undo step (the Segment Editor's own history, as the module's saveStateForUndo() uses)
    editor = slicer.vtkSlicerSegmentEditorLogic()
    editor_node = colin["scene"].AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    editor.SetMRMLScene(colin["scene"])
    editor.SetSegmentEditorNode(editor_node)
    editor.SetSegmentationNode(seg)
    saved = []   # the module's writer saves the undo state once, before Auto adds its segment
    writer = editor_writer(before_first_write=lambda *_: saved.append(
        (seg.GetSegmentation().GetNumberOfSegments(), editor.SaveStateForUndo())))
    outcome = logic.auto_segment(volume, seg, "Thalamus_L", ppn, sliceAxis="axial", sliceRange=(2, 5),
                                 threshold=0.0, timeout=900, modify=writer)
    assert saved == [(1, True)]
    assert outcome.written == [2, 3, 4, 5] and outcome.absent == [] and outcome.created
    assert seg.GetSegmentation().GetSegment(outcome.segment_id).GetName() == "Thalamus_L"
    auto = _array(colin, outcome.segment_id)
    assert auto[2:6].any(axis=(1, 2)).all() and not auto[[0, 1, 6, 7]].any()   # only the range
    np.testing.assert_array_equal(_array(colin, other), other_block)            # other segments untouched
    # correcting an Auto slice does not encode the slice again (the server keyed the job's slices by content, as
    # clicks): only the box's two zoomed crops are new (litemedsam's box scales, docs/training.md)
    calls = predictors[side].encoder_calls
    rows, cols = np.nonzero(labels[3] == THALAMUS_L)
    corners = [(M @ np.r_[c, r, 3, 1.0])[:3] for c, r in ((cols.min(), rows.min()), (cols.max(), rows.max()))]
    logic.predict(volume, box_ras=corners, sliceAxis="axial")
    assert predictors[side].encoder_calls == calls + 2 or side == "in-process"
    editor.Undo()
    assert seg.GetSegmentation().GetNumberOfSegments() == 1
    np.testing.assert_array_equal(_array(colin, other), other_block)

    # the class judged absent everywhere: a chosen segment keeps what it had, slices stay as they were
    mine = np.zeros(labels.shape, bool)
    mine[6] = labels[6] == THALAMUS_L
    target = _segment(colin, "mine", mine)
    outcome_absent = logic.auto_segment(volume, seg, "Thalamus_L", ppn, segmentId=target, sliceAxis="axial",
                                        threshold=1.0, timeout=900)
    assert outcome_absent.written == [] and outcome_absent.absent == list(range(8)) and not outcome_absent.created
    np.testing.assert_array_equal(_array(colin, target), mine)
    assert seg.GetSegmentation().GetNumberOfSegments() == 2

    # in-process and the server write the same masks
    done = RESULTS.setdefault("auto", {})
    done[side] = auto
    if len(done) == 2:
        np.testing.assert_array_equal(done["in-process"], done["server"])

    # the segmentation deleted while Auto ran: nothing touches it (no undo state saved, no segment added)
    task = logic.start_auto_segment(volume, seg, "Thalamus_L", ppn, sliceAxis="axial", sliceRange=(2, 3),
                                    threshold=0.0)
    task.wait(900)
    count = seg.GetSegmentation().GetNumberOfSegments()
    colin["scene"].RemoveNode(seg)
    hooks = []
    with pytest.raises(SegmentationError, match="no longer in the scene"):
        task.finish(modify=editor_writer(before_first_write=lambda *args: hooks.append(args)))
    assert hooks == [] and seg.GetSegmentation().GetNumberOfSegments() == count


def test_auto_sends_a_local_ppn_file_to_the_server(colin, predictors, brief_ppn):
    logic = SegmentLogic(predictor=predictors["server"])
    outcome = logic.auto_segment(colin["volume"], colin["segmentation"], "Putamen_R", str(brief_ppn),
                                 sliceAxis="axial", sliceRange=(4, 4), threshold=0.0, timeout=900)
    assert outcome.written == [4] and _array(colin, outcome.segment_id)[4].any()
    assert [p["name"] for p in logic.available_ppns()] == ["thalamus.ppn.pt"]
