"""The click simulator places clicks where the protocol says, on hand-made masks."""

import numpy as np
import pytest
from scipy import ndimage

from sonosam.errors import PromptError
from sonosam.evaluate.clicks import (Click, ClickSimulator, box_from_mask, centroid_click, error_regions,
                                     first_click, max_distance_point, next_click)
from sonosam.prompts import Prompts


def rect(shape, y0, y1, x0, x1):
    mask = np.zeros(shape, bool)
    mask[y0:y1 + 1, x0:x1 + 1] = True
    return mask


def test_first_click_is_the_centroid_in_xy_order():
    gt = rect((64, 80), 10, 20, 30, 50)  # rows 10..20, cols 30..50
    click = centroid_click(gt)
    assert click == Click(40, 15, 1)
    assert gt[click.y, click.x]
    assert first_click(gt) == click


def test_centroid_outside_a_ring_moves_to_the_deepest_point():
    yy, xx = np.mgrid[:101, :101]
    r = np.hypot(yy - 50, xx - 50)
    gt = (r >= 20) & (r <= 40)  # annulus: centroid (50, 50) is in the hole
    assert not gt[50, 50]
    click = centroid_click(gt)
    assert gt[click.y, click.x] and click.label == 1
    dist = ndimage.distance_transform_edt(gt)
    assert dist[click.y, click.x] == pytest.approx(dist.max())
    assert 29 <= np.hypot(click.y - 50, click.x - 50) <= 31  # the middle of the ring


def test_concave_l_shape_click_inside():
    gt = rect((60, 60), 0, 59, 0, 9) | rect((60, 60), 50, 59, 0, 59)  # an L
    click = centroid_click(gt)
    assert gt[click.y, click.x]


def test_next_click_positive_at_the_centre_of_a_missed_structure():
    gt = rect((50, 50), 10, 30, 5, 25)       # centre (15, 20) in x, y
    click = next_click(np.zeros_like(gt), gt)
    assert click == Click(15, 20, 1)


def test_next_click_negative_on_a_false_positive_blob():
    gt = rect((50, 50), 5, 15, 5, 15)
    pred = gt | rect((50, 50), 30, 44, 30, 44)  # extra 15x15 blob centred at (37, 37)
    click = next_click(pred, gt)
    assert click == Click(37, 37, 0)


def test_next_click_picks_the_largest_error_region():
    gt = rect((80, 80), 5, 25, 5, 25) | rect((80, 80), 50, 54, 50, 54)   # big miss, small miss
    pred = rect((80, 80), 60, 75, 5, 30)                                 # false positive 16x26 (416 px)
    regions = error_regions(pred, gt)
    assert [(label, area) for _, label, area in regions] == [(1, 441), (0, 416), (1, 25)]
    click = next_click(pred, gt)
    assert click == Click(15, 15, 1)
    # shrink the miss below the FP area: now the FP region wins and the click is negative
    gt2 = rect((80, 80), 5, 15, 5, 15)
    click2 = next_click(pred & ~gt2, gt2)
    assert click2.label == 0 and pred[click2.y, click2.x] and not gt2[click2.y, click2.x]


def test_error_region_at_the_image_border_is_clicked_away_from_the_border():
    gt = rect((40, 40), 0, 39, 0, 9)   # strip along the left border, 10 px wide
    click = next_click(np.zeros_like(gt), gt)
    assert click.x in (4, 5)           # the border counts as boundary: centre of the strip, not x=0


def test_perfect_prediction_needs_no_click():
    gt = rect((20, 20), 2, 8, 2, 8)
    assert next_click(gt.copy(), gt) is None


def test_ties_go_to_the_false_negative():
    gt = rect((40, 40), 0, 9, 0, 9)
    pred = rect((40, 40), 20, 29, 20, 29)
    assert next_click(pred, gt).label == 1


def test_box_tight_jittered_and_clipped():
    gt = rect((100, 120), 20, 59, 30, 79)     # box (30, 20, 79, 59): 50 wide, 40 high
    assert box_from_mask(gt) == (30, 20, 79, 59)
    assert box_from_mask(gt, margin=5) == (25, 15, 84, 64)
    boxes = {box_from_mask(gt, jitter=0.2, rng=np.random.default_rng(s)) for s in range(50)}
    assert len(boxes) > 40
    for x0, y0, x1, y1 in boxes:
        assert abs(x0 - 30) <= 10 and abs(x1 - 79) <= 10 and abs(y0 - 20) <= 8 and abs(y1 - 59) <= 8
        assert x0 < x1 and y0 < y1
    # same seed, same box
    assert box_from_mask(gt, 0.2, np.random.default_rng(3)) == box_from_mask(gt, 0.2, np.random.default_rng(3))
    edge = rect((50, 50), 0, 49, 0, 49)
    for s in range(20):
        x0, y0, x1, y1 = box_from_mask(edge, jitter=0.3, rng=np.random.default_rng(s))
        assert 0 <= x0 < x1 <= 49 and 0 <= y0 < y1 <= 49
    assert box_from_mask(rect((10, 10), 3, 3, 9, 9)) == (8, 3, 9, 4)   # one pixel in a corner: 2x2 box


def test_jittered_first_click_stays_inside_and_moves():
    gt = rect((100, 100), 20, 79, 20, 79)
    rng = np.random.default_rng(0)
    clicks = [first_click(gt, jitter=0.2, rng=rng) for _ in range(100)]
    assert all(gt[c.y, c.x] and c.label == 1 for c in clicks)
    assert len({c.xy for c in clicks}) > 50
    assert all(abs(c.x - 50) <= 12 and abs(c.y - 50) <= 12 for c in clicks)


def test_random_mode_samples_inside_the_largest_error_region():
    gt = rect((60, 60), 10, 40, 10, 40)
    pred = rect((60, 60), 10, 40, 10, 25)  # misses cols 26..40
    rng = np.random.default_rng(1)
    clicks = [next_click(pred, gt, mode="random", rng=rng) for _ in range(50)]
    assert all(c.label == 1 and gt[c.y, c.x] and not pred[c.y, c.x] for c in clicks)
    assert len({c.xy for c in clicks}) > 30


def test_simulator_accumulates_prompts_for_the_predictor():
    gt = rect((60, 60), 10, 40, 10, 40)
    sim = ClickSimulator(rng=0)
    prompts = sim.start(gt, "point")
    assert prompts == Prompts(points=[(25, 25)], labels=[1])
    click, more = sim.correct(np.zeros_like(gt), gt, prompts)
    assert click.label == 1 and more.n_clicks == 2 and more.labels.tolist() == [1, 1]
    assert prompts.n_clicks == 1                         # a value: the first prompt is unchanged
    box_prompts = sim.start(gt, "box")
    assert box_prompts == Prompts(box=(10, 10, 40, 40)) and box_prompts.kinds == {"box"}
    kinds = [ClickSimulator(rng=s).choose_start() for s in range(40)]
    assert set(kinds) == {"point", "box"}


def test_empty_ground_truth_is_a_clear_error():
    with pytest.raises(PromptError, match="empty"):
        centroid_click(np.zeros((10, 10), bool))
    with pytest.raises(PromptError):
        box_from_mask(np.zeros((10, 10), bool))
    with pytest.raises(PromptError, match="2D"):
        centroid_click(np.zeros((2, 10, 10), bool))


def test_max_distance_point_of_a_square():
    assert max_distance_point(rect((30, 30), 10, 20, 4, 14)) == (9, 15)
    assert Prompts().is_empty
