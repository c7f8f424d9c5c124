"""The seed check in the Slicer logic, against the real MRML scene (slicer-core, headless) and the real core
(`sonosam.seed_check`, `sonosam.volume`): a boxed preview that segments the tissue around a dark tube is flagged,
its alternatives come back as previews, the user's pick is written into the segment and the propagation carries
it through the volume. The stand-in model (bright pixels inside the box, inside a real Predictor) answers as
LiteMedSAM did on the lateral ventricle: the bright band, not the dark structure the box is drawn around."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed")
pytest.importorskip("torch")

from mrml_scene import add_volume_from_array  # noqa: E402
from SonoSAMSegmentLib.logic import PromptSession, SegmentLogic, read_segment_block  # noqa: E402
from test_slicer_propagate_evaluate import ThresholdModel  # noqa: E402

from sonosam.errors import PromptError  # noqa: E402
from sonosam.predictor import Predictor  # noqa: E402

DIMS = (40, 34, 20)   # I, J, K
SLAB = (slice(3, 17), slice(8, 26), slice(8, 32))   # k, j, i: bright tissue (100)
TUBE = (slice(3, 17), slice(14, 20), slice(16, 24))  # k, j, i: a dark tube inside it (10)


@pytest.fixture
def tube(mrml):
    m = np.eye(4)
    m[:3, :3] = np.diag([-0.8, -0.8, 1.5])  # LPS-like flips, anisotropic
    m[:3, 3] = [10.0, 20.0, -5.0]
    rng = np.random.default_rng(0)
    voxels = 20.0 + rng.normal(0, 2, DIMS[::-1])
    voxels[SLAB] = 100.0 + rng.normal(0, 2, voxels[SLAB].shape)
    voxels[TUBE] = 10.0 + rng.normal(0, 2, voxels[TUBE].shape)
    inside = np.zeros(DIMS[::-1], bool)
    inside[TUBE] = True
    volume = add_volume_from_array(mrml.scene, voxels.astype(np.float32), m, "tube")
    segmentation = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    sid = segmentation.GetSegmentation().AddEmptySegment("ventricle", "ventricle")
    logic = SegmentLogic(predictor=Predictor(ThresholdModel()))
    return m, volume, segmentation, sid, logic, inside


def ras(m, i, j, k):
    return (m @ np.r_[i, j, k, 1.0])[:3]


PLANE = np.diag([0.9, 0.9, 2.0, 1.0])   # IJK -> RAS of the one-image scenes below


def plane_scene(mrml, plane, model, seed, noise=2.0, name="plane"):
    """One image over 5 axial slices (noise added), a segmentation with one segment named ``name`` and a session
    on ``model``: (volume, segmentation, segment id, session, voxels)."""
    rng = np.random.default_rng(seed)
    voxels = (plane[None] + rng.normal(0, noise, (5, *plane.shape))).astype(np.float32)
    volume = add_volume_from_array(mrml.scene, voxels, PLANE, name)
    segmentation = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    sid = segmentation.GetSegmentation().AddEmptySegment(name, name)
    return volume, segmentation, sid, PromptSession(SegmentLogic(predictor=Predictor(model))), voxels


def test_a_flagged_box_offers_the_dark_structure_and_propagation_carries_the_pick(tube):
    m, volume, segmentation, sid, logic, inside = tube
    k = 10
    session = PromptSession(logic)
    session.set_box(volume, ras(m, 15, 13, k), ras(m, 24, 20, k), slice_axis="axial")  # 1 px of tissue around
    preview = session.predict(volume, segmentation, sid, slice_axis="axial")
    assert preview.mask.any()
    choices = session.check(volume)
    assert not choices.ok and "fills the box" in choices.summary
    assert choices.choices[0] is preview and choices.labels[0] == "the model's answer"
    dark = [i for i, label in enumerate(choices.labels) if "dark part of the box" in label]
    assert len(dark) == 1, (choices.labels, choices.summary)
    assert len(choices.choices) == len(choices.labels) >= 2
    # each choice is a preview of the same slice; the dark one is the tube, the model's is the tissue around it
    geometry = preview.geometry
    truth = geometry.extract(inside)
    picked = session.choose(dark[0])
    assert picked.geometry is geometry and session.prediction is picked
    assert not (picked.mask & ~truth).any() and (truth & ~picked.mask).sum() <= 4  # opened 1 px: the corners
    assert not (preview.mask & truth).any()
    # the pick is what Apply writes, and the propagation starts from it
    logic.apply(session.prediction, volume, segmentation, sid, "replace")
    full = [0, DIMS[0] - 1, 0, DIMS[1] - 1, 0, DIMS[2] - 1]
    written = read_segment_block(segmentation, sid, m, full)
    assert written[k].sum() == picked.mask.sum() and not np.delete(written, k, axis=0).any()
    assert not (written[k] & ~inside[k]).any() and written[k].sum() >= inside[k].sum() - 4
    summary = logic.propagate(volume, segmentation, sid, "axial")
    result = read_segment_block(segmentation, sid, m, full)
    assert "1 accepted" in summary
    assert not (result & ~inside).any(), summary                     # the tube through its 14 slices, nothing else
    assert result.sum() >= 0.9 * inside.sum(), summary               # (less the corners the opening takes)
    assert result[3].any() and result[16].any() and not result[:3].any() and not result[17:].any()


def test_a_click_alone_offers_the_region_it_is_in_and_propagation_carries_the_pick(tube):
    # the stand-in answers a click with every bright pixel of the slice (the tissue around the tube); one click does
    # not say how much is meant, so the check offers the dark region the click is in, never suggesting it
    m, volume, segmentation, sid, logic, inside = tube
    k = 10
    session = PromptSession(logic)
    session.add_point(volume, ras(m, 20, 17, k), positive=True, slice_axis="axial")   # inside the tube
    preview = session.predict(volume, segmentation, sid, slice_axis="axial")
    truth = preview.geometry.extract(inside)
    assert preview.mask.any() and not (preview.mask & truth).any()
    choices = session.check(volume)
    assert choices.ok and choices.suggested == 0 and choices.choices[0] is preview
    dark = [i for i, label in enumerate(choices.labels) if label.startswith("the dark region the click is in")]
    assert len(dark) == 1, choices.labels
    picked = session.choose(dark[0])
    assert not (picked.mask & ~truth).any() and (truth & ~picked.mask).sum() <= 4   # opened 1 px: the corners
    logic.apply(session.prediction, volume, segmentation, sid, "replace")
    summary = logic.propagate(volume, segmentation, sid, "axial")
    result = read_segment_block(segmentation, sid, m, [0, DIMS[0] - 1, 0, DIMS[1] - 1, 0, DIMS[2] - 1])
    assert not (result & ~inside).any() and result.sum() >= 0.9 * inside.sum(), summary


def test_choose_needs_a_check(tube):
    m, volume, segmentation, sid, logic, inside = tube
    session = PromptSession(logic)
    with pytest.raises(PromptError, match="check the preview first"):
        session.choose(0)
    session.set_box(volume, ras(m, 6, 6, 10), ras(m, 34, 28, 10), slice_axis="axial")  # around the whole slab
    session.predict(volume, segmentation, sid, slice_axis="axial")
    choices = session.check(volume)
    assert len(choices.choices) >= 1 and choices.suggested == 0
    with pytest.raises(PromptError, match="No alternative 9"):
        session.choose(9)
    # the next prompt makes a new preview: the old choices go with it
    session.set_box(volume, ras(m, 13, 11, 10), ras(m, 26, 22, 10), slice_axis="axial")
    session.predict(volume, segmentation, sid, slice_axis="axial")
    assert session.choices is None


def test_a_box_around_three_intensity_classes_offers_the_brightest_even_when_the_answer_agrees(mrml):
    # a disc of tissue (70) around a bright core (130) on a dark background (10), like a hemisphere's grey and white
    # matter: the model (pixels above 60) answers the whole disc, which agrees with the box; the Mask list still
    # offers the core, the brightest of three classes, for the user to pick (a correction's slice, say)
    m = PLANE
    j, i = np.indices((48, 48))
    radius = np.hypot(j - 24, i - 24)
    plane = np.where(radius <= 10, 130.0, np.where(radius <= 18, 70.0, 10.0))
    volume, segmentation, sid, session, voxels = plane_scene(mrml, plane, ThresholdModel(), 1, name="core")
    session.set_box(volume, ras(m, 6, 6, 2), ras(m, 42, 42, 2), slice_axis="axial")   # the disc's bounds
    preview = session.predict(volume, segmentation, sid, slice_axis="axial")
    choices = session.check(volume)
    brightest = [n for n, label in enumerate(choices.labels) if label.startswith("the brightest of three")]
    assert choices.ok and len(brightest) == 1 and choices.suggested == 0, (choices.labels, choices.summary)
    core = preview.geometry.extract(np.broadcast_to(radius <= 10, voxels.shape))
    picked = session.choose(brightest[0])
    assert (picked.mask ^ core).sum() <= 0.05 * core.sum() and preview.mask.sum() > 2 * core.sum()


class UnsureThresholdModel(ThresholdModel):
    """ThresholdModel with a low predicted IoU: unsure of every answer."""

    def decode(self, embedding, prompts, multimask=False):
        answer = super().decode(embedding, prompts, multimask)
        answer.scores[:] = 0.4
        return answer


def test_a_boxs_first_preview_is_the_checks_suggestion_and_the_models_answer_stays_one_pick_away(mrml):
    # a dark disc (a vessel, a ventricle in cross-section) in bright tissue; the box is the disc's bounds and a pixel:
    # the unsure model answers the bright corners, the check suggests the disc, and the preview shows the disc
    m = PLANE
    j, i = np.indices((48, 48))
    disc = np.hypot(j - 24, i - 23) <= 12
    volume, segmentation, sid, session, voxels = plane_scene(mrml, np.where(disc, 20.0, 200.0),
                                                             UnsureThresholdModel(), 2, noise=3.0, name="disc")
    corners = ras(m, 10, 11, 2), ras(m, 36, 37, 2)
    session.set_box(volume, *corners, slice_axis="axial")
    answer = session.predict(volume, segmentation, sid, slice_axis="axial")
    choices = session.check(volume)
    truth = answer.geometry.extract(np.broadcast_to(disc, voxels.shape))
    assert choices.suggested, choices.labels
    assert choices.labels[choices.suggested].startswith("the dark part of the box"), choices.labels
    assert choices.choices[0] is answer and not (answer.mask & truth).any()           # the model: the bright corners
    assert session.prediction is choices.choices[choices.suggested] and session.shown_choice == choices.suggested
    assert (session.prediction.mask ^ truth).sum() <= 0.05 * truth.sum()              # the preview: the disc
    # the user goes back to the model's answer: the same prompts bring it back, not the suggestion again
    assert session.choose(0) is answer and session.shown_choice == 0
    session.set_box(volume, *corners, slice_axis="axial")
    assert session.predict(volume, segmentation, sid, slice_axis="axial") is answer
    assert session.check(volume) is choices and session.prediction is answer
    # Apply writes what is shown; a new box is checked afresh
    session.choose(choices.suggested)
    session.logic.apply(session.prediction, volume, segmentation, sid, "replace")
    written = read_segment_block(segmentation, sid, m, [0, 47, 0, 47, 0, 4])
    assert written[2].sum() == session.prediction.mask.sum() and not np.delete(written, 2, axis=0).any()
    session.set_box(volume, ras(m, 9, 10, 2), ras(m, 37, 38, 2), slice_axis="axial")
    session.predict(volume, segmentation, sid, slice_axis="axial")
    again = session.check(volume)
    assert again is not choices and session.shown_choice == again.suggested != 0


def test_a_negative_click_on_the_shown_suggestion_removes_what_looks_like_the_spot_not_the_structure(mrml):
    # the dark disc with a grey crescent beside it (partial volume) that the box's dark part takes in; the unsure
    # model answers the bright corners: a negative click on the crescent, 2 px from the mask's edge, takes the
    # crescent around it and leaves the disc whole (the model's answer holds none of the disc to say where it ends)
    m = PLANE
    j, i = np.indices((48, 48))
    radius = np.hypot(j - 24, i - 23)
    disc, crescent = radius <= 10, (radius > 10) & (radius <= 14) & (i > 26)
    volume, segmentation, sid, session, voxels = plane_scene(
        mrml, np.where(disc, 20.0, np.where(crescent, 50.0, 200.0)), UnsureThresholdModel(), 3, name="disc")
    session.set_box(volume, ras(m, 11, 12, 2), ras(m, 38, 36, 2), slice_axis="axial")
    answer = session.predict(volume, segmentation, sid, slice_axis="axial")
    choices = session.check(volume)
    assert choices.suggested and choices.labels[choices.suggested].startswith("the dark part of the box")
    shown = session.prediction
    truth, rim = (answer.geometry.extract(np.broadcast_to(region, voxels.shape)) for region in (disc, crescent))
    assert (shown.mask & truth).sum() == truth.sum() and (shown.mask & rim).sum() >= 0.9 * rim.sum()
    session.add_point(volume, ras(m, 35, 24, 2), positive=False, slice_axis="axial")   # on the crescent
    prediction = session.predict(volume, segmentation, sid, slice_axis="axial")
    corrected, (x, y) = prediction.mask, prediction.points_xy[-1]
    assert (corrected & truth).sum() == truth.sum()                     # the disc kept whole
    rows, cols = np.indices(rim.shape)
    near = rim & (np.hypot(rows - y, cols - x) <= 3)                    # the crescent around the click
    assert near.any() and not (corrected & near).any()
