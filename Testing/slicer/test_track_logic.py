"""SonoSAMTrack logic against real MRML sequence nodes (slicer-core): volume sequence in, segmentation sequence
out, `.seq.nrrd` round trip through Slicer's storage node into a new scene, and the CLI's `.seq.nrrd` read
by Slicer's storage node."""

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # a real-frame loop tracked with the real model

N = 5


@pytest.fixture(scope="module")
def small_loop(default_model):
    """5 frames of the synthetic loop (a real A4C frame warped by a known contraction), half size."""
    from sonosam.predictor import Predictor
    from sonosam.track import echo_synthetic_loop

    return echo_synthetic_loop(Predictor(default_model), n_frames=N, scale=0.5), Predictor(default_model)


def _volume_sequence(scene, frames, spacing=(0.5, 0.5)):
    from mrml_scene import add_volume_from_array

    seq = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "cine")
    seq.SetIndexName("time")
    seq.SetIndexUnit("s")
    ijk_to_ras = np.diag([-spacing[0], -spacing[1], 1.0, 1.0])  # LPS-identity DICOM frame in RAS
    for t, frame in enumerate(frames):
        node = add_volume_from_array(scene, frame[np.newaxis], ijk_to_ras, name=f"frame{t}")
        seq.SetDataNodeAtValue(node, f"{t * 0.0333:.4f}")
        scene.RemoveNode(node)
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "browser")
    browser.SetAndObserveMasterSequenceNodeID(seq.GetID())
    return seq, browser


def test_track_logic_sequence_round_trip(mrml, small_loop, tmp_path):
    from mrml_scene import make_scene
    from SonoSAMTrackLib.logic import TrackLogic

    loop, predictor = small_loop
    seq, browser = _volume_sequence(mrml.scene, loop.frames)
    logic = TrackLogic(mrml.scene, predictor=predictor)
    gt = loop.masks["LV"]
    other = np.zeros_like(gt[0])
    other[gt[0].nonzero()[0].max() + 2:, 120:200] = True            # a second, non-overlapping object
    session = logic.start(seq, [{"name": "LV", "frame": 0, "mask": gt[0]}, {"name": "LA", "frame": 0, "mask": other}],
                          browser=browser, threshold=0.0, model_every=4)
    report = logic.run(session)
    assert not report.paused
    out = session.output_sequence
    assert out.GetNumberOfDataNodes() == N and out.GetNthIndexValue(2) == seq.GetNthIndexValue(2)
    assert browser.IsSynchronizedSequenceNode(out.GetID()) if hasattr(browser, "IsSynchronizedSequenceNode") else True
    tracked = session.tracker.masks("LV")
    assert np.array_equal(logic.output_masks(session, "LV"), tracked)
    assert np.array_equal(logic.output_masks(session, "LA"), session.tracker.masks("LA"))
    assert session.table.GetTable().GetNumberOfRows() == N

    path = tmp_path / "lv.seq.nrrd"
    logic.save_sequence(session, str(path))
    other_scene = make_scene()
    try:
        loaded = TrackLogic(other_scene.scene).load_sequence(str(path), names=["LV", "LA"])
        assert loaded.GetNumberOfDataNodes() == N
        for name in ("LV", "LA"):
            back = TrackLogic.sequence_masks(loaded, name, loop.frames.shape[1:])
            assert np.array_equal(back, session.tracker.masks(name)), name
    finally:
        other_scene.close()


def test_correction_is_kept_in_output(mrml, small_loop):
    from SonoSAMTrackLib.logic import TrackLogic

    loop, predictor = small_loop
    seq, browser = _volume_sequence(mrml.scene, loop.frames)
    logic = TrackLogic(mrml.scene, predictor=predictor)
    session = logic.start(seq, [{"name": "LV", "frame": 0, "mask": loop.masks["LV"][0]}], threshold=1.0, model_every=4)
    report = logic.run(session)
    assert report.paused and report.frame == 1
    logic.correct(session, 1, "LV", mask=loop.masks["LV"][1])
    session.tracker.pause = False
    logic.run(session)
    assert np.array_equal(logic.output_masks(session, "LV")[1], loop.masks["LV"][1])
    assert logic.next_attention(session, 1) == 2


def test_cli_seq_nrrd_is_read_by_slicer_storage_node(mrml, small_loop, tmp_path):
    from SonoSAMTrackLib.logic import TrackLogic
    from sonosam.track.outputs import read_sequence_nrrd, write_sequence_nrrd

    loop, _ = small_loop
    labels = loop.masks["LV"].astype(np.uint8)
    path = write_sequence_nrrd(tmp_path / "cli.seq.nrrd", labels, ["LV"], spacing_xy=(0.5, 0.5), frame_time_ms=33.3)
    data, segments, _ = read_sequence_nrrd(path)
    assert np.array_equal(data, labels) and segments[0]["name"] == "LV"
    loaded = TrackLogic(mrml.scene).load_sequence(str(path))   # names from the file's header
    assert loaded.GetNumberOfDataNodes() == N
    assert np.array_equal(TrackLogic.sequence_masks(loaded, "LV", labels.shape[1:]), loop.masks["LV"])


def test_start_run_reports_a_pause_and_refreshes_the_output(mrml, small_loop):
    """The module's path (start_run -> poll -> finish), in-process here; test_server_logic.py runs it on a server."""
    from SonoSAMTrackLib.logic import TrackLogic

    loop, predictor = small_loop
    seq, browser = _volume_sequence(mrml.scene, loop.frames)
    logic = TrackLogic(mrml.scene, predictor=predictor)
    session = logic.start(seq, [{"name": "LV", "frame": 0, "mask": loop.masks["LV"][0]}], threshold=1.0, model_every=4)
    run = logic.start_run(session)
    assert run.poll()[0] == "done"
    report = run.finish()
    assert report.paused and report.frame == 1 and report.events[0]["object"] == "LV"
    assert np.array_equal(logic.output_masks(session, "LV")[1], session.tracker.masks("LV")[1])
    assert logic.output_masks(session, "LV")[1].any() and not logic.output_masks(session, "LV")[2].any()


def test_a_correction_painted_on_the_browsers_proxy_becomes_a_keyframe(mrml, small_loop):
    """The module's "Use my correction": the user edits the output's proxy segmentation on the paused frame (the
    Segment Editor writes the segment's labelmap in the frame's geometry). The browser saves the edit into the
    output, so going to another frame and back keeps it, and Accept or Resume, which would overwrite it, are
    refused until it is used; then the tracker takes that mask as a keyframe and the output sequence holds it."""
    import slicer
    import vtk
    from vtk.util import numpy_support
    from SonoSAMTrackLib.logic import TrackLogic
    from sonosam.errors import SonoSAMError

    loop, predictor = small_loop
    seq, browser = _volume_sequence(mrml.scene, loop.frames)
    logic = TrackLogic(mrml.scene, predictor=predictor)
    session = logic.start(seq, [{"name": "LV", "frame": 0, "mask": loop.masks["LV"][0]}], browser=browser,
                          threshold=1.0, model_every=4)
    report = logic.run(session)
    assert report.paused and report.frame == 1
    browser.SetSelectedItemNumber(1)
    mrml.logic("Sequences").UpdateProxyNodesFromSequences(browser)
    proxy = browser.GetProxyNode(session.output_sequence)
    assert proxy is not None and proxy.IsA("vtkMRMLSegmentationNode")

    truth = loop.masks["LV"][1]
    painted = slicer.vtkOrientedImageData()   # what a Segment Editor stroke leaves: the mask on the frame's grid
    painted.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(session.ijk_to_ras))
    painted.SetExtent(0, truth.shape[1] - 1, 0, truth.shape[0] - 1, 0, 0)
    painted.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(painted.GetPointData().GetScalars())[:] = truth.astype(np.uint8).ravel()
    segment_id = proxy.GetSegmentation().GetSegmentIdBySegmentName("LV")
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        painted, proxy, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    assert not np.array_equal(session.tracker.masks("LV")[1], truth)   # the correction changes something
    for frame in (2, 1):   # another frame and back: the edit is kept
        browser.SetSelectedItemNumber(frame)
        mrml.logic("Sequences").UpdateProxyNodesFromSequences(browser)
    assert np.array_equal(logic.output_masks(session, "LV")[1], truth)
    assert logic.edited_frames(session) == {1: ["LV"]}
    with pytest.raises(SonoSAMError, match=r"Nothing accepted: the output holds edits not yet used \(frame 1: LV\)"):
        logic.accept(session, 1)
    with pytest.raises(SonoSAMError, match=r"Nothing tracked: .*frame 1: LV.*Use my correction"):
        logic.start_run(session)
    assert np.array_equal(logic.output_masks(session, "LV")[1], truth)

    assert logic.use_edits(session) == {1: ["LV"]}
    assert np.array_equal(session.tracker.masks("LV")[1], truth)
    assert np.array_equal(logic.output_masks(session, "LV")[1], truth)
    assert logic.edited_frames(session) == {}
    with pytest.raises(SonoSAMError, match="Nothing to use: no frame of 'cine SonoSAMTrack' was edited"):
        logic.use_edits(session)
    # the console's route from any segmentation node, the proxy here
    logic.correct_from_segmentation(session, 1, proxy)
    assert np.array_equal(session.tracker.masks("LV")[1], truth)


def test_accept_is_all_or_nothing_and_shows_in_the_output(mrml, small_loop):
    """The module's Accept: every object's mask on the frame becomes a keyframe, or, where one object has no mask
    there yet, none does and the error says which; the confidence table shows the accepted frame at once."""
    from SonoSAMTrackLib.logic import TrackLogic
    from sonosam.errors import SonoSAMError

    loop, predictor = small_loop
    seq, _ = _volume_sequence(mrml.scene, loop.frames)
    logic = TrackLogic(mrml.scene, predictor=predictor)
    gt = loop.masks["LV"]
    other = np.zeros_like(gt[0])
    other[gt[0].nonzero()[0].max() + 2:, 120:200] = True
    session = logic.start(seq, [{"name": "LV", "frame": 0, "mask": gt[0]}, {"name": "LA", "frame": 0, "mask": other}],
                          threshold=1.0, model_every=4)
    assert logic.run(session).paused
    logic.correct(session, 3, "LA", mask=other)      # frame 3: LA has a mask (a keyframe), LV none yet
    with pytest.raises(SonoSAMError, match="Nothing accepted: LV has no mask on frame 3"):
        logic.accept(session, 3)
    assert session.tracker.result(3, "LV") is None
    with pytest.raises(SonoSAMError, match="No tracked object 'RV'"):
        logic.accept(session, 1, "RV")

    before = session.tracker.masks("LV")[1]
    assert 0 < session.tracker.confidences()[1, 0] < 1
    logic.accept(session, 1)
    assert np.array_equal(session.tracker.masks("LV")[1], before)           # kept as it was ...
    assert session.tracker.result(1, "LV").source == "keyframe"              # ... as a keyframe
    assert session.tracker.confidences()[1].tolist() == [1.0, 1.0]
    table = session.table.GetTable()
    assert table.GetValueByName(1, "LV confidence").ToDouble() == 1.0       # the table shows it without a re-run
    assert np.array_equal(logic.output_masks(session, "LV")[1], before)
