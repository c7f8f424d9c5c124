"""SegmentLogic.propagate / .evaluate against the real MRML scene (slicer-core, headless) and the real
core (`sonosam.volume.propagate`, `sonosam.evaluate`).

Propagation rules are the core's (tested in Testing/core); here: the right slices of the right segment are
written through a rotated, flipped, anisotropic volume geometry, seeds and other segments are never touched,
and a re-run after a correction recomputes only the slices next to it. The stand-in model is the core's
kind of model (encode/decode, inside a real Predictor): bright pixels inside the box. One test evaluates the
real default model on 3 slices of the real MRI.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed")
torch = pytest.importorskip("torch")

from SonoSAMSegmentLib.logic import SegmentLogic, write_segment_block  # noqa: E402
from test_slicer_segment_logic import (CENTER_IJK, DIMS, add_segment, colin, real_logic,  # noqa: E402,F401
                                       segment_array, synthetic_matrix, voxel_ras)
from mrml_scene import add_volume_from_array  # noqa: E402

from sonosam.errors import JobCancelledError, PromptError, SonoSAMError  # noqa: E402
from sonosam.models import Embedding, Prediction  # noqa: E402
from sonosam.predictor import Predictor  # noqa: E402


class _Spec:
    name, prompt_kinds, image_size, multimask = "threshold", frozenset({"box"}), 256, False


class ThresholdModel:
    """Pixels above `level` inside the box; the embedding is the padded image itself."""

    def __init__(self, level=60.0):
        self.spec, self.model_id, self.level, self.decodes = _Spec(), "threshold:1", level, 0

    def encode(self, image, window=None):
        image = np.asarray(image, np.float32)
        if image.ndim == 3:
            image = image[..., 0]
        height, width = image.shape
        side = max(height, width)
        grid = np.pad(image, ((0, side - height), (0, side - width)))
        return Embedding(torch.as_tensor(grid)[None, None], image.shape,
                         (round(height * 256 / side), round(width * 256 / side)), self.model_id)

    def decode(self, embedding, prompts, multimask=False):
        box = prompts.box
        self.decodes += 1
        height, width = embedding.original_size
        mask = embedding.features[0, 0, :height, :width].numpy() > self.level
        if box is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            inside = np.zeros_like(mask)
            inside[max(y0, 0):y1 + 1, max(x0, 0):x1 + 1] = True
            mask &= inside
        return Prediction(mask[None], np.array([0.9 if mask.any() else 0.05], np.float32),
                          np.zeros((1, 256, 256), np.float32))


RADIUS = 11.0  # mm; the volume's K spacing is 2.1 mm, so ~10 slices along K


@pytest.fixture
def ball(mrml):
    """A bright ball (100 +- 3) on a dim background (20 +- 3) in a volume with a rotated, flipped direction
    matrix and anisotropic spacing; a segmentation with the target segment and an overlapping other one."""
    m = synthetic_matrix()
    center_ras = (m @ np.r_[CENTER_IJK, 1])[:3]
    inside = np.linalg.norm(voxel_ras(m) - center_ras, axis=-1) <= RADIUS  # (K, J, I)
    rng = np.random.default_rng(0)
    voxels = np.where(inside, 100.0, 20.0) + rng.normal(0, 3, inside.shape)
    volume = add_volume_from_array(mrml.scene, voxels.astype(np.float32), m, "ball")
    segmentation = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    other = add_segment(segmentation, "other")
    other_mask = np.zeros_like(inside)
    other_mask[5:20, 10:25, 8:30] = True  # overlaps the ball
    full = [0, DIMS[0] - 1, 0, DIMS[1] - 1, 0, DIMS[2] - 1]
    write_segment_block(segmentation, other, other_mask, m, full)
    target = add_segment(segmentation, "target")
    model = ThresholdModel()
    logic = SegmentLogic(predictor=Predictor(model))
    _, layout, _ = logic._volume_stack(volume, "axial")
    return SimpleNamespace(m=m, inside=inside, volume=volume, segmentation=segmentation, other=other,
                           other_mask=other_mask, target=target, logic=logic, model=model, layout=layout, full=full)


def read(b, sid):
    return segment_array(b.segmentation, sid, b.m)


def stack(b, array_kji):
    return b.layout.stack(array_kji)


def write_slice(b, index, mask2d):
    """Set the target segment on one slice of the layout (as a user drawing or correcting it would)."""
    new = stack(b, read(b, b.target)).copy()
    new[index] = mask2d
    write_segment_block(b.segmentation, b.target, b.layout.unstack(new), b.m, b.full)


def seeded_and_propagated(b):
    """The ball's widest slice drawn and propagated once: (the ball as a stack, that slice, the segment after)."""
    inside = stack(b, b.inside)
    c = int(np.argmax(inside.reshape(len(inside), -1).sum(1)))
    write_slice(b, c, inside[c])
    b.logic.propagate(b.volume, b.segmentation, b.target, "axial")
    return inside, c, stack(b, read(b, b.target)).copy()


def left_half(mask):
    """A correction: only the left half of a slice's mask."""
    corrected = mask.copy()
    cols = np.nonzero(corrected.any(0))[0]
    corrected[:, (cols.min() + cols.max()) // 2:] = False
    return corrected


def test_a_slice_shown_rotated_in_another_view_is_its_own_image(mrml):
    """The same axial slice in a view rotated by 90 degrees is another image: its box is answered on that image,
    not on the embedding cached for the first view's layout (which gave a wrong mask, silently)."""
    k, j, i = np.mgrid[:5, :60, :60]
    bright = ((i - 44) / 10.0) ** 2 + ((j - 18) / 6.0) ** 2 < 1            # off centre, longer along I
    volume = add_volume_from_array(mrml.scene, np.where(bright, 100.0, 20.0).astype(np.float32), np.eye(4), "v")
    axial = np.eye(4)
    axial[:3, :3] = [[-1, 0, 0], [0, 1, 0], [0, 0, 1]]
    rotated = np.eye(4)
    rotated[:3, :3] = [[0, 1, 0], [1, 0, 0], [0, 0, -1]]
    box = [[30.0, 8.0, 2.0], [58.0, 28.0, 2.0]]
    logic = SegmentLogic(predictor=Predictor(ThresholdModel()))
    first = logic.predict(volume, box_ras=box, sliceToRAS=axial)
    second = logic.predict(volume, box_ras=box, sliceToRAS=rotated)
    fresh = SegmentLogic(predictor=Predictor(ThresholdModel())).predict(volume, box_ras=box, sliceToRAS=rotated)
    assert (first.geometry.x_axis, second.geometry.x_axis) == (0, 1)
    np.testing.assert_array_equal(second.mask, fresh.mask)
    np.testing.assert_array_equal(second.mask, second.geometry.extract(bright))


def test_stack_is_the_slice_tool_layout(ball):
    info = ball.logic.volume_info(ball.volume)
    s = ball.layout.stack(info.array)
    for index in (0, 7, s.shape[0] - 1):
        g = type(ball.layout)(ball.layout.axis, index, ball.layout.dims_ijk, ball.layout.x_axis,
                              ball.layout.y_axis, ball.layout.x_flip, ball.layout.y_flip)
        np.testing.assert_array_equal(s[index], g.extract(info.array))
    np.testing.assert_array_equal(ball.layout.unstack(s), info.array)


def test_propagate_from_one_accepted_slice(ball):
    inside = stack(ball, ball.inside)
    areas = inside.reshape(len(inside), -1).sum(1)
    c = int(np.argmax(areas))
    seed = inside[c].copy()
    ys, xs = np.nonzero(seed)
    seed[ys[0], xs[0]] = False  # the user's accepted mask differs from what the model would give
    write_slice(ball, c, seed)
    seen = []
    summary = ball.logic.propagate(ball.volume, ball.segmentation, ball.target, "axial",
                                   progress=lambda done, total, info: seen.append(info.index))
    result = ball.logic.last_propagation
    got = stack(ball, read(ball, ball.target))
    np.testing.assert_array_equal(got[c], seed)                           # seed slice untouched
    assert result.slices[c].status == "accepted" and "1 accepted" in summary
    propagated = [s for s, info in result.slices.items() if info.status == "propagated"]
    assert len(propagated) >= 6 and seen and c in seen
    for s in range(len(got)):
        if s in propagated:  # the ball, through the rotated grid (a high-contrast structure may take the
            assert (got[s] ^ inside[s]).sum() <= 2  # Otsu intensity candidate: a boundary pixel off the model's)
        elif s != c:
            assert not got[s].any()                                        # stopped / never reached: empty
    first, last = result.extent()
    big = np.nonzero(areas >= 0.2 * areas.max())[0]
    assert first <= big.min() and last >= big.max()                       # it reached both ends of the ball
    np.testing.assert_array_equal(read(ball, ball.other), ball.other_mask)  # the other segment untouched


def test_rerun_after_correction_changes_only_non_seed_slices(ball):
    inside, c, first = seeded_and_propagated(ball)
    corrected = left_half(first[c + 2])   # correct slice c+2
    write_slice(ball, c + 2, corrected)
    decodes = ball.model.decodes
    summary = ball.logic.propagate(ball.volume, ball.segmentation, ball.target, "axial")
    second = stack(ball, read(ball, ball.target))
    np.testing.assert_array_equal(second[c], first[c])                    # the original seed
    np.testing.assert_array_equal(second[c + 2], corrected)               # the correction is a seed now
    np.testing.assert_array_equal(second[:c + 1], first[:c + 1])          # the other side: not recomputed
    assert any(not np.array_equal(second[s], first[s]) for s in range(c + 3, len(first)))
    assert all((second[s] & ~inside[s]).sum() <= 2 for s in range(len(first)))  # at most a boundary pixel
    assert "2 accepted" in summary
    # the slices the re-run changed beyond the correction are named for review
    moved = [s for s in range(len(first)) if s != c + 2 and first[s].any()
             and (second[s] & first[s]).sum() < 0.9 * (second[s] | first[s]).sum()]
    assert moved and ball.logic.last_propagation.replaced == moved and "review them" in summary
    assert ball.model.decodes - decodes <= len(first) - c                 # only slices above c were decoded
    np.testing.assert_array_equal(read(ball, ball.other), ball.other_mask)
    # same again without a change: nothing to recompute, nothing changes
    ball.logic.propagate(ball.volume, ball.segmentation, ball.target, "axial")
    np.testing.assert_array_equal(stack(ball, read(ball, ball.target)), second)


def test_a_propagated_slice_the_user_erases_stays_empty_and_ends_the_front(ball):
    inside, c, first = seeded_and_propagated(ball)
    top = max(s for s in range(len(first)) if first[s].any())
    end = top - 2   # the user decides the structure ends below this slice and clears it
    assert end > c + 1 and first[end + 1:top + 1].any()
    write_slice(ball, end, np.zeros_like(first[end]))
    summary = ball.logic.propagate(ball.volume, ball.segmentation, ball.target, "axial")
    second = stack(ball, read(ball, ball.target))
    assert not second[end].any() and not second[end + 1:].any()           # erased, and nothing past it
    np.testing.assert_array_equal(second[:end], first[:end])               # the rest as it was
    assert "1 accepted" in summary and "1 end you set" in summary and ball.logic.last_propagation.anchors[end].empty
    # a third run keeps the erased slice as an end, also as a fresh run (other options)
    corrected = left_half(first[c - 2])   # a correction on the other side
    write_slice(ball, c - 2, corrected)
    ball.logic.propagate(ball.volume, ball.segmentation, ball.target, "axial", carry=False)
    third = stack(ball, read(ball, ball.target))
    assert not third[end:].any() and ball.logic.last_propagation.anchors.keys() == {c, end, c - 2}
    np.testing.assert_array_equal(third[c:end], first[c:end])
    # erasing the seed itself: it stays empty, and what was carried from it alone goes with it
    write_slice(ball, c, np.zeros_like(first[c]))
    ball.logic.propagate(ball.volume, ball.segmentation, ball.target, "axial", carry=False)
    fourth = stack(ball, read(ball, ball.target))
    assert not fourth[c].any() and not fourth[c + 1:].any()
    np.testing.assert_array_equal(fourth[c - 2], corrected)


def test_after_undo_propagate_starts_afresh_rather_than_taking_the_undone_slices_for_ends(ball):
    inside, c, first = seeded_and_propagated(ball)
    before = np.zeros_like(first)
    before[c] = inside[c]
    write_segment_block(ball.segmentation, ball.target, ball.layout.unstack(before), ball.m, ball.full)  # Ctrl+Z
    summary = ball.logic.propagate(ball.volume, ball.segmentation, ball.target, "axial")
    np.testing.assert_array_equal(stack(ball, read(ball, ball.target)), first)
    assert "end you set" not in summary


def test_after_undoing_a_rerun_propagate_continues_the_run_before(ball):
    """Ctrl+Z of a re-run brings back run 1 and the correction: Propagate gives the same local re-run again (it
    forgot both runs, took every slice for an accepted seed and recomputed nothing)."""
    inside, c, first = seeded_and_propagated(ball)
    write_slice(ball, c + 2, left_half(first[c + 2]))
    corrected = stack(ball, read(ball, ball.target)).copy()
    ball.logic.propagate(ball.volume, ball.segmentation, ball.target, "axial")
    second = stack(ball, read(ball, ball.target)).copy()
    assert not np.array_equal(second, corrected)
    write_segment_block(ball.segmentation, ball.target, ball.layout.unstack(corrected), ball.m, ball.full)  # Ctrl+Z
    summary = ball.logic.propagate(ball.volume, ball.segmentation, ball.target, "axial")
    np.testing.assert_array_equal(stack(ball, read(ball, ball.target)), second)
    assert "2 accepted" in summary


def test_after_undo_a_slice_drawn_where_the_undone_run_wrote_is_a_new_seed(ball):
    """Undo, then draw another slice inside the stretch the undone run had filled: Propagate runs from both
    drawn slices as a fresh run would (the undone run went unrecognised, its emptied slices became ends)."""
    inside, c, first = seeded_and_propagated(ball)
    drawn = np.zeros_like(first)
    drawn[c], drawn[c + 3] = inside[c], left_half(inside[c + 3])
    write_segment_block(ball.segmentation, ball.target, ball.layout.unstack(drawn), ball.m, ball.full)  # Ctrl+Z, draw
    summary = ball.logic.propagate(ball.volume, ball.segmentation, ball.target, "axial")
    remembered = stack(ball, read(ball, ball.target)).copy()
    write_segment_block(ball.segmentation, ball.target, ball.layout.unstack(drawn), ball.m, ball.full)
    SegmentLogic(predictor=Predictor(ThresholdModel())).propagate(ball.volume, ball.segmentation, ball.target, "axial")
    np.testing.assert_array_equal(remembered, stack(ball, read(ball, ball.target)))
    assert "end you set" not in summary and remembered[c + 4].any() and remembered[c - 2].any()


def test_after_a_short_run_an_erased_slice_beside_a_corrected_one_is_an_end_not_an_undo(ball):
    """A run of one slice each way; the user erases one of its slices and corrects the other: not an Undo (none of
    its slices holds what it wrote, but only one is back as before), so the erased slice stays empty."""
    inside = stack(ball, ball.inside)
    c = int(np.argmax(inside.reshape(len(inside), -1).sum(1)))
    write_slice(ball, c, inside[c])
    ball.logic.propagate(ball.volume, ball.segmentation, ball.target, "axial", maxSlices=1)
    first = stack(ball, read(ball, ball.target)).copy()
    assert first[c - 1].any() and first[c + 1].any()
    write_slice(ball, c - 1, np.zeros_like(first[c - 1]))
    write_slice(ball, c + 1, left_half(first[c + 1]))
    summary = ball.logic.propagate(ball.volume, ball.segmentation, ball.target, "axial", maxSlices=1)
    assert not stack(ball, read(ball, ball.target))[c - 1].any() and "1 end you set" in summary


def test_a_rerun_under_the_editors_masking_keeps_the_slices_the_user_did_not_touch(ball):
    """With the editable area "outside all segments", a band segment blocks two slices beyond the seed: the
    masked-out slices are not the user's edits. A correction on the other side re-runs only there; the slices
    beyond the band stay (they were taken for an erased slice, an end, and deleted)."""
    import slicer

    from SonoSAMSegmentLib.logic import editor_writer

    ball.segmentation.GetSegmentation().RemoveSegment(ball.other)
    inside = stack(ball, ball.inside)
    c = int(np.argmax(inside.reshape(len(inside), -1).sum(1)))
    band = np.zeros_like(inside)
    band[c + 2:c + 4] = True
    band_id = add_segment(ball.segmentation, "band")
    write_segment_block(ball.segmentation, band_id, ball.layout.unstack(band), ball.m, ball.full)
    editor = ball.volume.GetScene().AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    editor.SetAndObserveSegmentationNode(ball.segmentation)
    editor.SetAndObserveSourceVolumeNode(ball.volume)
    editor.SetSelectedSegmentID(ball.target)
    editor.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedOutsideAllSegments)
    editor.SetOverwriteMode(editor.OverwriteNone)
    write_slice(ball, c, inside[c])
    summary = ball.logic.propagate(ball.volume, ball.segmentation, ball.target, "axial", modify=editor_writer(editor))
    first = stack(ball, read(ball, ball.target)).copy()
    assert not first[c + 2:c + 4].any() and first[c + 4].any()       # the band kept out; the front went on
    band_voxels = int(ball.logic.last_propagation.mask[c + 2:c + 4].sum())   # what the core found there
    assert band_voxels and f"{band_voxels} of its voxels did not reach the segment" in summary   # said, not hidden
    write_slice(ball, c - 2, left_half(first[c - 2]))
    summary = ball.logic.propagate(ball.volume, ball.segmentation, ball.target, "axial",
                                   modify=editor_writer(editor))
    second = stack(ball, read(ball, ball.target))
    np.testing.assert_array_equal(second[c:], first[c:])
    assert "end you set" not in summary and "2 accepted" in summary
    np.testing.assert_array_equal(stack(ball, read(ball, band_id)), band)


def test_a_segmentation_grid_tilted_against_the_volume_is_named_in_the_summary(ball):
    """On its own grid tilted against the volume, a drawn slice reads back in pieces on its neighbours, each a seed:
    the summary says why and how to fix it; a finer grid parallel to the volume's is not tilted."""
    import slicer

    def summary_on_grid(direction, spacing):
        matrix = np.eye(4)
        matrix[:3, :3] = direction @ np.diag(spacing)
        matrix[:3, 3] = (ball.m @ np.r_[CENTER_IJK, 1])[:3]   # the ball in the middle of its extent
        reference = slicer.vtkOrientedImageData()
        reference.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(matrix))
        reference.SetExtent(-60, 60, -60, 60, -60, 60)
        segmentation = ball.volume.GetScene().AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentation.GetSegmentation().SetConversionParameter(
            slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(),
            slicer.vtkSegmentationConverter.SerializeImageGeometry(reference))
        target = add_segment(segmentation, "target")
        inside = stack(ball, ball.inside)
        c = int(np.argmax(inside.reshape(len(inside), -1).sum(1)))
        seed = np.zeros_like(inside)
        seed[c] = inside[c]
        write_segment_block(segmentation, target, ball.layout.unstack(seed), ball.m, ball.full)
        return ball.logic.propagate(ball.volume, segmentation, target, "axial")

    assert "tilted against this volume" in summary_on_grid(np.eye(3), (0.5, 0.5, 0.5))   # the volume is rotated
    assert "tilted" not in summary_on_grid(ball.m[:3, :3] / np.linalg.norm(ball.m[:3, :3], axis=0), (0.5, 0.5, 0.5))


def test_the_slices_the_user_says_the_structure_spans_bound_the_propagation(ball):
    inside = stack(ball, ball.inside)
    c = int(np.argmax(inside.reshape(len(inside), -1).sum(1)))
    write_slice(ball, c, inside[c])
    n = len(inside)
    with pytest.raises(PromptError, match=f"within 0..{n - 1}"):
        ball.logic.propagate(ball.volume, ball.segmentation, ball.target, "axial", span=(c, n))
    with pytest.raises(PromptError, match=f"Slice {c} of the segment lies outside the slices"):
        ball.logic.propagate(ball.volume, ball.segmentation, ball.target, "axial", span=(c + 1, c + 3))
    # "current slice": the index along the axis of the slice through a view's centre (here, voxel centres)
    assert [ball.logic.slice_index(ball.volume, "axial", (ball.m @ np.r_[CENTER_IJK[:2], k, 1])[:3])
            for k in (c - 1, c + 2)] == [c - 1, c + 2]
    summary = ball.logic.propagate(ball.volume, ball.segmentation, ball.target, "axial", span=(c - 1, c + 2))
    got = stack(ball, read(ball, ball.target))
    assert [s for s in range(n) if got[s].any()] == [c - 1, c, c + 1, c + 2] and "1 accepted" in summary
    for s in (c - 1, c + 1, c + 2):
        assert (got[s] ^ inside[s]).sum() <= 2
    # the same run without the span reaches further: a new run (other options) replaces what it wrote
    ball.logic.propagate(ball.volume, ball.segmentation, ball.target, "axial")
    assert stack(ball, read(ball, ball.target))[c + 3].any()
    ball.logic.propagate(ball.volume, ball.segmentation, ball.target, "axial", span=(c - 1, c + 2))
    np.testing.assert_array_equal(stack(ball, read(ball, ball.target)), got)


def test_direction_max_slices_seed_slices_and_cancel(ball):
    inside = stack(ball, ball.inside)
    c = int(np.argmax(inside.reshape(len(inside), -1).sum(1)))
    write_slice(ball, c, inside[c])
    write_slice(ball, c - 3, inside[c - 3])  # a second drawn slice, not given as a seed below
    ball.logic.propagate(ball.volume, ball.segmentation, ball.target, "axial", seedSlices=[c],
                         direction="forward", maxSlices=2)
    got = stack(ball, read(ball, ball.target))
    filled = [s for s in range(len(got)) if got[s].any()]
    assert filled == [c - 3, c, c + 1, c + 2]
    np.testing.assert_array_equal(got[c + 1], inside[c + 1])
    with pytest.raises(PromptError, match="empty"):
        ball.logic.propagate(ball.volume, ball.segmentation, ball.target, "axial", seedSlices=[0])
    # cancelled after two slices: nothing is written, not even those two
    before = read(ball, ball.target).copy()
    done = []
    with pytest.raises(JobCancelledError, match="nothing was written"):
        ball.logic.propagate(ball.volume, ball.segmentation, ball.target, "axial", seedSlices=[c],
                             progress=lambda *info: done.append(info), cancel=lambda: len(done) >= 2)
    assert len(done) >= 2
    np.testing.assert_array_equal(read(ball, ball.target), before)
    empty = add_segment(ball.segmentation, "empty")
    with pytest.raises(PromptError, match="empty"):
        ball.logic.propagate(ball.volume, ball.segmentation, empty, "axial")


def test_stop_after_the_run_ended_writes_nothing(ball):
    """Stop pressed after the propagation had already ended (in-process: at once; a server job that finished
    before the cancel reached it): the task reports "cancelled" and ``finish`` writes nothing."""
    inside = stack(ball, ball.inside)
    c = int(np.argmax(inside.reshape(len(inside), -1).sum(1)))
    write_slice(ball, c, inside[c])
    before = read(ball, ball.target).copy()
    task = ball.logic.start_propagation(ball.logic.plan_propagation(ball.volume, ball.segmentation, ball.target,
                                                                    "axial"))
    assert task.poll()[0] == "done"
    task.cancel()
    assert task.poll()[0] == "cancelled"
    with pytest.raises(JobCancelledError, match="nothing was written"):
        task.finish()
    np.testing.assert_array_equal(read(ball, ball.target), before)


def test_evaluate_with_stand_in_returns_dice_table_and_report(ball, tmp_path):
    write_segment_block(ball.segmentation, ball.target, ball.inside, ball.m, ball.full)
    # the stand-in model takes boxes only: the user is told the clicks are not measured
    with pytest.warns(UserWarning, match="takes no clicks.*not measured"):
        rows = ball.logic.evaluate(ball.volume, ball.segmentation, ball.target, "axial", nClicks=2, start="box",
                                   outputDir=tmp_path, maxSlices=3)
    assert len(rows) == 1 and rows[0]["Images"] == 3 and rows[0]["Errors"] == 0
    assert rows[0]["Dice@1"] == 100.0
    assert (tmp_path / "summary.md").exists() and (tmp_path / "per_image.csv").exists()
    run = json.loads((tmp_path / "run.json").read_text())   # how it was made, as `sonosam evaluate` records it
    assert run["arguments"]["n_clicks"] == 2 and len(run["arguments"]["slices"]) == 3 and run["results"][0]["images"] == 3
    assert run["models"] and "## Run" in (tmp_path / "summary.md").read_text()
    np.testing.assert_array_equal(read(ball, ball.target), ball.inside)  # the reference is not written
    with pytest.warns(UserWarning, match="takes no clicks"):
        rows = ball.logic.evaluate(ball.volume, ball.segmentation, ball.target, "axial", nClicks=2, start="box",
                                   maxSlices=3, localCorrections=True)
    assert rows[0]["Start"] == "box, local corrections" and ball.logic.last_evaluation.local_corrections
    # the earlier report is kept: refused before the evaluation runs, replaced only when asked
    decodes = ball.model.decodes
    with pytest.raises(SonoSAMError, match="already holds a report"):
        ball.logic.evaluate(ball.volume, ball.segmentation, ball.target, "axial", outputDir=tmp_path, maxSlices=3)
    assert ball.model.decodes == decodes
    with pytest.warns(UserWarning, match="takes no clicks"):
        ball.logic.evaluate(ball.volume, ball.segmentation, ball.target, "axial", nClicks=2, outputDir=tmp_path,
                            maxSlices=3, overwrite=True)


@pytest.mark.slow  # the real model on real MRI
def test_evaluate_real_default_model_on_real_mri(colin, real_logic, tmp_path):  # noqa: F811
    """litemedsam, box start, on 3 axial slices of Colin27 with the AAL Thalamus_R as the reference segment
    (slices where it covers >= 300 voxels, as `colin27_samples`; its thin end slices score ~0.3 box-only)."""
    import SimpleITK as sitk

    labels = sitk.GetArrayFromImage(colin.itk_aal)
    assert labels.shape == sitk.GetArrayFromImage(colin.itk).shape
    sid = add_segment(colin.segmentation, "Thalamus_R")
    m = real_logic.volume_info(colin.volume).ijk_to_world
    dims = colin.volume.GetImageData().GetDimensions()
    write_segment_block(colin.segmentation, sid, labels == 78, m,
                        [0, dims[0] - 1, 0, dims[1] - 1, 0, dims[2] - 1])
    with pytest.warns(UserWarning, match="takes no clicks"):
        rows = real_logic.evaluate(colin.volume, colin.segmentation, sid, "axial", nClicks=3, start="box",
                                   outputDir=tmp_path, maxSlices=3, minArea=300)
    row = rows[0]
    print(row, [round(r.dice[0], 3) for r in real_logic.last_evaluation.images])
    assert row["Images"] == 3 and row["Errors"] == 0 and row["Clicks"] == "box only"
    assert row["Dice@1"] > 70
    assert (tmp_path / "dice_vs_clicks.png").exists()


@pytest.mark.slow  # the real click model and its slice decoder on real MRI
def test_real_clicks_model_carries_its_fronts_unless_told_not_to(colin):  # noqa: F811
    """litemedsam_clicks from one accepted Thalamus_L slice: by default its shipped slice decoder answers the
    propagated slices (the summary names it); with carry=False the model answers them itself - a fresh run from
    the same seed (other options), whose slices differ. The seed slice is never rewritten."""
    import SimpleITK as sitk

    from sonosam.models import load_model

    logic = SegmentLogic(predictor=Predictor(load_model("litemedsam_clicks", device="cpu")))
    labels = sitk.GetArrayFromImage(colin.itk_aal) == 77
    k = int(np.argmax(labels.sum((1, 2))))
    seed = np.zeros_like(labels)
    seed[k] = labels[k]
    sid = add_segment(colin.segmentation, "Thalamus_L")
    m = logic.volume_info(colin.volume).ijk_to_world
    dims = colin.volume.GetImageData().GetDimensions()
    write_segment_block(colin.segmentation, sid, seed, m, [0, dims[0] - 1, 0, dims[1] - 1, 0, dims[2] - 1])

    carried_summary = logic.propagate(colin.volume, colin.segmentation, sid, "axial", maxSlices=2)
    carried = segment_array(colin.segmentation, sid, m, dims)
    alone_summary = logic.propagate(colin.volume, colin.segmentation, sid, "axial", maxSlices=2, carry=False)
    alone = segment_array(colin.segmentation, sid, m, dims)
    assert "carried by litemedsam_slices" in carried_summary and "carried by" not in alone_summary
    np.testing.assert_array_equal(carried[k], labels[k])
    np.testing.assert_array_equal(alone[k], labels[k])
    assert [s for s in range(len(carried)) if carried[s].any()] == list(range(k - 2, k + 3))
    assert any(not np.array_equal(carried[s], alone[s]) for s in (k - 2, k - 1, k + 1, k + 2))
    logic.predictor.close()
