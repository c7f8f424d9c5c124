"""One home for the small shared rules: mask boxes, overlap measures, content keys, the volume window."""

import numpy as np
import pytest

from sonosam.errors import InputImageError
from sonosam.image import to_uint8_rgb, volume_window
from sonosam.masks import bounding_box, box_with_margin, content_hash, dice, iou, local_correction
from sonosam.predictor import image_key


def test_boxes_of_a_mask():
    mask = np.zeros((20, 30), bool)
    mask[5:10, 8:15] = True                                   # rows 5..9, columns 8..14
    assert bounding_box(mask) == (8, 5, 14, 9)
    assert bounding_box(np.zeros((4, 4), bool)) is None and box_with_margin(np.zeros((4, 4)), 0.1) is None
    assert box_with_margin(mask, 0.1) == (6.0, 3.0, 16.0, 11.0)      # at least 2 px each way
    assert box_with_margin(mask, 1.0) == (1.0, 0.0, 21.0, 14.0)      # 7 px / 5 px, clipped at the top
    edge = np.zeros((20, 30), bool)
    edge[15:, 25:] = True
    assert box_with_margin(edge, 0.5) == (22.5, 12.5, 29.0, 19.0)    # clipped to the image


def test_overlap_measures():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[:5], b[2:7] = True, True                                # 50 and 50 pixels, 30 shared
    assert dice(a, b) == pytest.approx(0.6) and iou(a, b) == pytest.approx(30 / 70)
    assert dice(a & False, b & False) == 1.0 and iou(a & False, b & False) == 1.0   # nothing to find, nothing found
    with pytest.raises(ValueError, match="differ in shape"):
        dice(a, b[:5])


def test_content_keys_follow_pixels_shape_dtype_and_window():
    image = np.arange(64, dtype=np.uint8).reshape(8, 8)
    assert content_hash(image) == content_hash(image.copy()) != content_hash(image.astype(np.int16))
    assert content_hash(image) != content_hash(image.reshape(4, 16))
    assert image_key(image) == content_hash(image, "None") != image_key(image, (0, 10))


def test_one_window_rule_for_volumes():
    rng = np.random.default_rng(0)
    volume = rng.integers(0, 200, (40, 40, 40)).astype(np.uint8)
    low, high = volume_window(volume)                        # uint8 volumes are windowed like any other
    assert 0 <= low < 5 and 195 <= high <= 199
    floats = volume.astype(np.float32)
    floats[0, 0, :4] = np.nan                                # a few missing voxels do not poison the window
    assert volume_window(floats) == (low, high)
    with pytest.raises(InputImageError, match="constant"):
        volume_window(np.full((8, 8, 8), 7, np.int16))
    # every slice of the volume becomes the same pixels whichever path windows it
    assert (to_uint8_rgb(volume[3], (low, high)) == to_uint8_rgb(volume[3].astype(np.float64), (low, high))).all()


def test_a_correction_changes_only_the_part_it_flipped():
    previous = np.zeros((40, 40), bool)
    previous[5:15, 5:15] = True                               # right so far
    previous[25:30, 25:35] = True                             # a leak the user clicks away at (30, 27)
    new = np.zeros((40, 40), bool)
    new[5:15, 5:12] = True                                    # the redrawn answer also lost a strip far away ...
    new[30:35, 5:10] = True                                   # ... and grew a blob elsewhere
    corrected = local_correction(previous, new, (30, 27))
    expected = previous.copy()
    expected[25:30, 25:35] = False                            # only the leak under the click goes
    assert np.array_equal(corrected, expected)
    assert np.array_equal(local_correction(previous, new, (7, 7)), previous)       # the model did not follow
    assert np.array_equal(local_correction(previous, new, (99, 7)), previous)      # outside the image
    assert local_correction(previous, new, (30.4, 26.6)).sum() == expected.sum()   # sub-pixel clicks round
    with pytest.raises(ValueError, match=r"previous mask \(40, 40\), new answer \(20, 40\)"):
        local_correction(previous, new[:20], (7, 7))


def test_a_positive_click_the_model_ignored_adds_what_the_click_alone_segments():
    previous = np.zeros((40, 40), bool)
    previous[5:15, 5:15] = True
    ignored = previous.copy()                                 # the model's new answer left (30, 30) outside
    ignored[5:15, 5:10] = False                               # (and lost a strip far away)
    alone = np.zeros((40, 40), bool)
    alone[28:33, 28:33] = alone[0:3, 0:3] = True              # the click alone: a blob there, another elsewhere
    corrected = local_correction(previous, ignored, (30, 30), positive=True, alone=lambda: alone)
    expected = previous.copy()
    expected[28:33, 28:33] = True                             # only the part under the click, added
    assert np.array_equal(corrected, expected)

    def never():
        raise AssertionError("asked although the model followed the click or the click is negative")

    followed = previous.copy()
    followed[29:32, 29:32] = True
    assert np.array_equal(local_correction(previous, followed, (30, 30), positive=True, alone=never), followed)
    assert np.array_equal(local_correction(previous, ignored, (12, 12), positive=None, alone=never), previous)
    with pytest.raises(ValueError, match=r"answer to the click alone \(40, 20\)"):
        local_correction(previous, ignored, (30, 30), positive=True, alone=lambda: alone[:, :20])


def test_a_click_nothing_reached_changes_the_disk_of_its_depth():
    previous = np.zeros((40, 40), bool)
    previous[5:25, 5:25] = True
    rows, cols = np.indices(previous.shape)
    # a negative click the model ignored, 4 pixels deep: the largest bite around it that stays inside the mask
    bitten = local_correction(previous, previous, (12, 21), positive=False)
    np.testing.assert_array_equal(bitten, previous & ((cols - 12) ** 2 + (rows - 21) ** 2 > 16))
    # a positive click 6 pixels right of the mask, the click alone gives nothing: the disk that just reaches it
    nothing = np.zeros((40, 40), bool)
    added = local_correction(previous, previous, (30, 15), positive=True, alone=lambda: nothing)
    np.testing.assert_array_equal(added, previous | ((cols - 30) ** 2 + (rows - 15) ** 2 <= 36))
    # kept local like any correction: an earlier positive click keeps its side of the bite
    kept = local_correction(previous, previous, (12, 21), positive=False, earlier=[((12, 15), True)])
    np.testing.assert_array_equal(kept, previous & ~((bitten != previous) & (rows >= 18)))   # a tie goes to this click
    # no depth when the mask holds no pixel of the other kind: nothing changes
    empty = np.zeros((40, 40), bool)
    np.testing.assert_array_equal(local_correction(empty, empty, (20, 20), positive=True), empty)


def test_a_correction_keeps_what_lies_within_three_depths_of_its_click():
    previous = np.zeros((60, 60), bool)
    previous[10:50, 10:50] = True
    gone = np.zeros((60, 60), bool)                           # a negative click 2 pixels deep takes everything
    corrected = local_correction(previous, gone, (11, 30), positive=False)
    rows, cols = np.indices(previous.shape)
    np.testing.assert_array_equal(corrected, previous & ((cols - 11) ** 2 + (rows - 30) ** 2 > 36))
    assert np.array_equal(local_correction(previous, gone, (11, 30)), gone)   # no sign: the whole part


def test_after_a_box_a_correction_adds_nothing_outside_it_unless_the_click_is_outside():
    previous = np.zeros((40, 40), bool)
    previous[10:20, 10:20] = True
    grown = previous.copy()
    grown[10:20, 20:38] = True                                # the answer to a click at (22, 15) spills past x = 25
    box = (8.0, 8.0, 25.0, 22.0)                              # x0, y0, x1, y1, the box the user drew
    corrected = local_correction(previous, grown, (22, 15), positive=True, box=box)
    expected = previous.copy()
    expected[10:20, 20:26] = True                             # added up to the box's right side (x = 25), no further
    assert np.array_equal(corrected, expected)
    assert np.array_equal(local_correction(previous, grown, (22, 15)), grown)   # no box (nor sign): all of it
    # a click outside the box: the user says "here too", the whole part under it is added
    assert np.array_equal(local_correction(previous, grown, (30, 15), positive=True, box=box), grown)
    # removing is never limited: a negative click inside the box takes away its whole part
    shrunk = previous.copy()
    shrunk[10:20, 15:20] = False
    assert np.array_equal(local_correction(previous, shrunk, (17, 15), positive=False, box=box), shrunk)


def test_a_correction_does_not_overrule_an_earlier_click_of_the_other_kind():
    previous = np.zeros((40, 40), bool)
    previous[10:30, 5:35] = True
    gone = np.zeros((40, 40), bool)                           # the answer to a negative click at (30, 20): all of it
    corrected = local_correction(previous, gone, (30, 20), positive=False, earlier=[((10, 20), True)])
    rows, cols = np.indices(previous.shape)
    np.testing.assert_array_equal(corrected, previous & (cols < 20))   # only what is nearer (30, 20) than (10, 20)
    within_reach = (cols - 30) ** 2 + (rows - 20) ** 2 <= 15 ** 2     # 3 x the click's depth (5)
    unclaimed = previous & ~within_reach
    np.testing.assert_array_equal(local_correction(previous, gone, (30, 20), positive=False), unclaimed)
    # an earlier click of the same kind claims nothing; an earlier negative click bounds a positive click's addition
    np.testing.assert_array_equal(local_correction(previous, gone, (30, 20), positive=False,
                                                   earlier=[((10, 20), False)]), unclaimed)
    empty = np.zeros((40, 40), bool)
    grown = np.zeros((40, 40), bool)
    grown[10:30, 5:35] = True
    added = local_correction(empty, grown, (30, 20), positive=True, earlier=[((10, 20), False)])
    np.testing.assert_array_equal(added, grown & (cols >= 20))        # a tie goes to the correcting click


def test_a_deep_negative_click_on_a_spot_unlike_the_mask_removes_only_what_looks_like_it():
    rows, cols = np.indices((80, 80))
    brain = (cols - 40) ** 2 + (rows - 40) ** 2 <= 30 ** 2            # the mask: a disc, 30 px deep at its centre
    hole = (cols - 40) ** 2 + (rows - 40) ** 2 <= 6 ** 2             # a dark region at its centre the user clicks
    image = np.where(brain, 120.0, 0.0) + np.where(hole, -80.0, 0.0) + (rows % 3)   # a little texture: SD > 0
    cut = brain & (cols >= 50)                                       # the model's answer: the brain cut open
    corrected = local_correction(brain, cut, (40, 40), positive=False, image=image)
    np.testing.assert_array_equal(corrected, brain & ~hole)          # a hole, not a cut
    # without the image, or on an RGB image's grey, as before / the same hole
    np.testing.assert_array_equal(local_correction(brain, cut, (40, 40), positive=False), cut)   # 3 depths reach all
    rgb = np.repeat(image[..., None], 3, axis=-1)
    np.testing.assert_array_equal(local_correction(brain, cut, (40, 40), positive=False, image=rgb), brain & ~hole)
    # a window that clips the hole and the brain alike: the spot no longer looks unlike the mask
    np.testing.assert_array_equal(local_correction(brain, cut, (40, 40), positive=False, image=image,
                                                   window=(0.0, 30.0)), local_correction(brain, cut, (40, 40),
                                                                                         positive=False))
    # a spot that looks like the mask (the whole mask may be wrong), or a click near its edge: the model's correction
    plain = np.where(brain, 120.0, 0.0) + (rows % 3)
    np.testing.assert_array_equal(local_correction(brain, cut, (40, 40), positive=False, image=plain),
                                  local_correction(brain, cut, (40, 40), positive=False))
    np.testing.assert_array_equal(local_correction(brain, cut, (14, 40), positive=False, image=image),
                                  local_correction(brain, cut, (14, 40), positive=False))
    with pytest.raises(ValueError, match="Image and mask differ in shape"):
        local_correction(brain, cut, (40, 40), positive=False, image=image[:40])


def test_a_negative_click_on_a_taken_alternative_removes_only_what_looks_like_it_at_any_depth():
    # the box's bright part took in a grey rim beside the tissue (partial volume); the model read the box as
    # something else and its answer holds none of the shown mask: a click on the rim, near the mask's edge
    rows, cols = np.indices((60, 60))
    tissue = (rows >= 10) & (rows < 50) & (cols >= 10) & (cols < 40)
    rim = (rows >= 10) & (rows < 50) & (cols >= 40) & (cols < 46)
    shown = tissue | rim
    image = np.where(tissue, 200.0, np.where(rim, 110.0, 20.0)) + (rows % 3)   # a little texture: SD > 0
    nothing = np.zeros_like(shown)
    click = (43, 30)                                                 # on the rim, 3 px from the mask's edge
    as_model_answer = local_correction(shown, nothing, click, positive=False, image=image)
    assert (tissue & ~as_model_answer).any()                         # the correction bites into the tissue
    corrected = local_correction(shown, nothing, click, positive=False, image=image, alternative=True)
    assert (corrected & tissue).sum() == tissue.sum()                # the tissue kept whole
    assert not (corrected & rim & (np.abs(rows - 30) <= 6)).any()    # the rim around the click removed
    assert (corrected & ~shown).sum() == 0
    # a spot that looks like the mask (what it wrongly took in looks like it) and an answer that only takes away:
    # only the disk of the click's depth goes
    plain = np.where(shown, 200.0, 20.0) + (rows % 3)
    as_model_answer = local_correction(shown, nothing, click, positive=False, image=plain)
    corrected = local_correction(shown, nothing, click, positive=False, image=plain, alternative=True)
    removed, near = shown & ~corrected, np.hypot(cols - 43, rows - 30) <= 3
    assert removed.any() and not (removed & ~near).any()
    assert (shown & ~as_model_answer & ~near).any()                  # the model's way reaches three depths


def test_a_negative_click_on_a_taken_alternative_adds_nothing_where_its_spot_looks_unlike_the_mask():
    # the shown mask took in a grey rim beside the tissue; the model's answer to the click drops the rim and reaches
    # out beside it (its own reading of the box), connected to what it removed
    rows, cols = np.indices((60, 60))
    tissue = (rows >= 10) & (rows < 50) & (cols >= 10) & (cols < 40)
    rim = (rows >= 10) & (rows < 50) & (cols >= 40) & (cols < 46)
    beside = (rows >= 10) & (rows < 50) & (cols >= 46) & (cols < 52)
    shown, answer = tissue | rim, tissue | beside
    image = np.where(tissue, 200.0, np.where(rim, 110.0, 20.0)) + (rows % 3)
    click = (43, 30)
    assert (local_correction(shown, answer, click, positive=False, image=image) & beside).any()  # the model's way
    corrected = local_correction(shown, answer, click, positive=False, image=image, alternative=True)
    assert not (corrected & ~shown).any()                            # nothing added
    assert (corrected & tissue).sum() == tissue.sum()
    assert not (corrected & rim & (np.abs(rows - 30) <= 6)).any()    # the rim around the click removed
    # where the clicked spot looks like the mask and the model's answer brings in a structure of its own (all of the
    # mask may be wrong) the model's answer stays, its additions and its reach
    plain = np.where(shown, 200.0, 20.0) + (rows % 3)
    np.testing.assert_array_equal(local_correction(shown, answer, click, positive=False, image=plain, alternative=True),
                                  local_correction(shown, answer, click, positive=False, image=plain))
    assert (local_correction(shown, answer, click, positive=False, image=plain, alternative=True) & beside).any()
