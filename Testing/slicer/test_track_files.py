"""SonoSAMTrack's logic on the real scene (slicer-core) where the model plays no part: `.seq.nrrd` files through
Slicer's own storage node (every frame of a text-indexed cine survives, names and colours travel in the header, an
existing file is never replaced unless asked, a file that is not a sequence is refused, no helper node is left in
the scene); the current frame from a browser that plays the cine; a start segmentation on another grid. A
stand-in tracker (known masks): the rules are under test, not the model."""

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed")

T, H, W = 4, 12, 16
NAMES, COLORS = ["LV", "LA"], [(0.9, 0.1, 0.2), (0.1, 0.5, 0.9)]


class KnownTracker:
    """The masks a tracker would hold: LV a square moving right, LA a bar below it."""

    n_frames = T
    events: list = []

    def __init__(self):
        self._masks = {name: np.zeros((T, H, W), bool) for name in NAMES}
        for t in range(T):
            self._masks["LV"][t, 2:6, 2 + t:6 + t] = True
            self._masks["LA"][t, 8:10, 1:12] = True

    def masks(self, name):
        return self._masks[name].copy()

    def confidences(self):
        return np.ones((T, len(NAMES)))

    def labelmap(self):
        labels = np.zeros((T, H, W), np.uint8)
        for i, name in enumerate(NAMES):
            labels[self._masks[name]] = i + 1
        return labels


def _session(scene, index_type):
    from mrml_scene import add_volume_from_array
    from SonoSAMTrackLib.logic import TrackLogic, TrackSession

    cine = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "cine")
    cine.SetIndexType(index_type)
    ijk_to_ras = np.diag([-0.5, -0.5, 1.0, 1.0])
    values = [f"frame{t}" for t in range(T)] if index_type == cine.TextIndex else [f"{t * 0.04:.2f}" for t in range(T)]
    for t, value in enumerate(values):
        node = add_volume_from_array(scene, np.full((1, H, W), 10 * t, np.uint8), ijk_to_ras, name=f"f{t}")
        cine.SetDataNodeAtValue(node, value)
        scene.RemoveNode(node)
    output = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "cine SonoSAMTrack")
    output.SetIndexType(cine.GetIndexType())
    logic = TrackLogic(scene, predictor=object())
    session = TrackSession(KnownTracker(), cine, output, ijk_to_ras, values, list(NAMES), list(COLORS), shape=(H, W))
    logic.update_output(session)
    return logic, session


@pytest.mark.parametrize("index_type", ["text", "numeric"])
def test_save_and_load_keep_every_frame_name_and_colour(mrml, tmp_path, index_type):
    import slicer

    scene = mrml.scene
    kind = {"text": slicer.vtkMRMLSequenceNode.TextIndex, "numeric": slicer.vtkMRMLSequenceNode.NumericIndex}
    logic, session = _session(scene, kind[index_type])
    nodes_before = scene.GetNumberOfNodes()
    path = tmp_path / "track.seq.nrrd"
    logic.save_sequence(session, str(path))
    assert scene.GetNumberOfNodes() == nodes_before                      # no helper node left
    loaded = logic.load_sequence(str(path))                              # no names given: the file's
    assert scene.GetNumberOfNodes() == nodes_before + 1                  # just the loaded sequence
    assert loaded.GetNumberOfDataNodes() == T
    assert [loaded.GetNthIndexValue(t) for t in range(T)] == [session.output_sequence.GetNthIndexValue(t)
                                                              for t in range(T)]
    for name, color in zip(NAMES, COLORS):
        np.testing.assert_array_equal(logic.sequence_masks(loaded, name, (H, W)), session.tracker.masks(name))
        segmentation = loaded.GetNthDataNode(0).GetSegmentation()
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(name))
        np.testing.assert_allclose(segment.GetColor(), color, atol=1e-3)


def test_an_existing_file_is_replaced_only_when_asked(mrml, tmp_path):
    from sonosam.errors import DataFileError

    import slicer

    logic, session = _session(mrml.scene, slicer.vtkMRMLSequenceNode.NumericIndex)
    path = tmp_path / "track.seq.nrrd"
    path.write_bytes(b"the user's earlier file")
    nodes_before = mrml.scene.GetNumberOfNodes()
    with pytest.raises(DataFileError, match="already exists; pass overwrite=True"):
        logic.save_sequence(session, str(path))
    assert path.read_bytes() == b"the user's earlier file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["track.seq.nrrd"]   # no temp file left
    assert mrml.scene.GetNumberOfNodes() == nodes_before
    logic.save_sequence(session, str(path), overwrite=True)
    assert logic.sequence_masks(logic.load_sequence(str(path)), "LV", (H, W)).sum() == session.tracker.masks("LV").sum()


def test_a_file_that_is_not_a_sequence_is_refused_and_leaves_no_node(mrml, tmp_path):
    from SonoSAMTrackLib.logic import TrackLogic
    from sonosam.errors import DataFileError

    path = tmp_path / "notes.seq.nrrd"
    path.write_text("not a NRRD file")
    nodes_before = mrml.scene.GetNumberOfNodes()
    with pytest.raises(DataFileError, match="could not read .* as a volume sequence"):
        TrackLogic(mrml.scene).load_sequence(str(path))
    assert mrml.scene.GetNumberOfNodes() == nodes_before


def _cine(scene, name, values):
    from mrml_scene import add_volume_from_array

    cine = scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
    for t, value in enumerate(values):
        node = add_volume_from_array(scene, np.full((1, H, W), t, np.uint8), np.diag([-0.5, -0.5, 1.0, 1.0]))
        cine.SetDataNodeAtValue(node, value)
        scene.RemoveNode(node)
    return cine


def test_the_frame_comes_from_a_browser_that_plays_the_cine(mrml):
    """The module's current frame: refused from a browser that plays another cine (it used to be that cine's item
    number, or frame 0 without a browser); matched by index value where the cine is not the browser's master."""
    from SonoSAMTrackLib.logic import TrackLogic
    from sonosam.errors import SonoSAMError

    scene = mrml.scene
    a = _cine(scene, "cine A", ["0", "1", "2", "3"])
    b = _cine(scene, "cine B", ["1", "2", "3"])
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "browser A")
    browser.SetAndObserveMasterSequenceNodeID(a.GetID())
    browser.SetSelectedItemNumber(2)
    assert TrackLogic.browser_frame(browser, a) == 2
    for chosen in (browser, None):
        with pytest.raises(SonoSAMError, match="Choose the sequence browser that plays 'cine B'"):
            TrackLogic.browser_frame(chosen, b)
    browser.AddSynchronizedSequenceNode(b)
    assert TrackLogic.browser_frame(browser, b) == 1              # index value "2": B's second frame
    TrackLogic.show_frame(browser, b, 2)                          # B's value "3": A's item 3
    assert browser.GetSelectedItemNumber() == 3
    c = _cine(scene, "cine C", ["0", "2", "4"])                   # every other frame of A's
    browser.AddSynchronizedSequenceNode(c)
    browser.SetSelectedItemNumber(3)
    with pytest.raises(SonoSAMError, match="'cine C' has no frame at .* = 3"):
        TrackLogic.browser_frame(browser, c)                      # not C's frame "2", the one shown before
    browser.SetSelectedItemNumber(2)
    assert TrackLogic.browser_frame(browser, c) == 1


def test_a_start_segment_on_another_grid_is_read_where_it_lies(mrml):
    """The user's start segmentation lies on a grid shifted by 2 columns from the frames' (made on another volume):
    read on the frame grid, the mask sits where it is in space, not 2 columns off."""
    import slicer
    import vtk
    from vtk.util import numpy_support
    from SonoSAMTrackLib.logic import mask_from_segment

    ijk_to_ras = np.diag([-0.5, -0.5, 1.0, 1.0])
    shifted = ijk_to_ras.copy()
    shifted[0, 3] = -1.0                                          # origin 2 columns (0.5 mm each) along I
    painted = np.zeros((H, W), bool)
    painted[3:7, 4:9] = True
    image = slicer.vtkOrientedImageData()
    image.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(shifted))
    image.SetExtent(0, W - 1, 0, H - 1, 0, 0)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = painted.astype(np.uint8).ravel()
    segmentation = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "start")
    segment_id = segmentation.GetSegmentation().AddEmptySegment("LV")
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        image, segmentation, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    expected = np.zeros((H, W), bool)
    expected[3:7, 6:11] = True
    np.testing.assert_array_equal(mask_from_segment(segmentation, segment_id, (H, W), ijk_to_ras), expected)


def test_browsing_a_longer_master_adds_no_frame_to_the_output(mrml):
    """The browser's master has frames the cine lacks: showing them leaves the output's frames as they were (Slicer's
    default would copy the previous item into each), so no edit is seen where the user made none."""
    import slicer

    logic, session = _session(mrml.scene, slicer.vtkMRMLSequenceNode.NumericIndex)
    master = _cine(mrml.scene, "longer", [f"{t * 0.02:.2f}" for t in range(2 * T)])   # every 0.02 s; the cine's 0.04
    browser = mrml.scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "browser")
    browser.SetAndObserveMasterSequenceNodeID(master.GetID())
    browser.AddSynchronizedSequenceNode(session.input_sequence)
    logic.show_output(session, browser)
    for item in range(2 * T):
        browser.SetSelectedItemNumber(item)
        mrml.logic("Sequences").UpdateProxyNodesFromSequences(browser)
    assert session.output_sequence.GetNumberOfDataNodes() == T
    assert logic.edited_frames(session) == {}


def test_a_deleted_output_is_named_and_a_deleted_table_comes_back(mrml):
    """The user deleted the output sequence (or closed the scene): every action says so instead of writing into a
    node nobody sees; a deleted confidence table or chart is made again on the next refresh."""
    import slicer
    from sonosam.errors import SonoSAMError

    logic, session = _session(mrml.scene, slicer.vtkMRMLSequenceNode.NumericIndex)
    old_table = session.table
    mrml.scene.RemoveNode(session.table)
    mrml.scene.RemoveNode(session.chart)
    logic.update_output(session)
    assert session.table is not old_table and session.table.GetScene() is mrml.scene
    assert session.chart.GetScene() is mrml.scene and session.table.GetTable().GetNumberOfRows() == T
    mrml.scene.RemoveNode(session.output_sequence)
    for action in (lambda: logic.accept(session, 1), lambda: logic.update_output(session),
                   lambda: logic.use_edits(session)):
        with pytest.raises(SonoSAMError, match="'cine SonoSAMTrack' is no longer in the scene.*press Start"):
            action()
