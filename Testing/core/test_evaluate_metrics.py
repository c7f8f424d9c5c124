"""Metric functions against independent computations and the documented conventions."""

import math

import numpy as np
import pytest
import SimpleITK as sitk

from sonosam.evaluate.metrics import (FrameRecord, clicks_per_loop, dice, dice_drop_before_intervention, failed,
                                      interventions_per_loop, iou, max_dice, mean_curve, noc, summarize_curves,
                                      summarize_tracking)


@pytest.mark.parametrize("seed", range(5))
def test_dice_matches_simpleitk_label_overlap(seed):
    rng = np.random.default_rng(seed)
    gt = np.zeros((64, 80), np.uint8)
    gt[10 + seed:40, 5:50 + seed] = 1
    pred = gt.copy()
    pred[rng.random(gt.shape) < 0.15] ^= 1  # flip 15 % of pixels
    f = sitk.LabelOverlapMeasuresImageFilter()
    f.Execute(sitk.GetImageFromArray(pred), sitk.GetImageFromArray(gt))
    assert dice(pred, gt) == pytest.approx(f.GetDiceCoefficient(), abs=1e-12)
    assert iou(pred, gt) == pytest.approx(f.GetJaccardCoefficient(), abs=1e-12)


def test_dice_edge_cases():
    empty = np.zeros((5, 5), bool)
    full = np.ones((5, 5), bool)
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 1.0
    assert dice(empty, full) == 0.0
    assert dice(full, full) == 1.0
    with pytest.raises(ValueError, match="shape"):
        dice(empty, np.zeros((4, 5)))


def test_noc_and_failure_conventions():
    curve = [0.5, 0.85, 0.91, 0.95]
    assert noc(curve, 0.8) == 2 and noc(curve, 0.9) == 3
    assert noc([0.9], 0.9) == 1                             # reaching exactly the threshold counts
    assert noc([0.1, 0.2, 0.3], 0.9) == 4                   # never reached: N + 1
    assert noc([0.1, 0.2, 0.3], 0.9, max_clicks=10) == 11   # N is the protocol's N, not the curve length
    assert noc([0.95, float("nan")], 0.9) == 1
    assert noc([0.5, float("nan")], 0.9, max_clicks=10) == 11  # NaN never counts as reached
    assert failed([0.5, 0.89], 0.9) and not failed([0.5, 0.9], 0.9)
    assert max_dice([0.2, float("nan"), 0.7, 0.6]) == 0.7
    assert math.isnan(max_dice([float("nan")]))


def test_summary_over_images():
    curves = [[0.95] * 3, [0.5, 0.85, 0.92], [0.1, 0.2, 0.3]]
    s = summarize_curves(curves, max_clicks=3)
    assert s["n"] == 3
    assert s["noc@90"] == pytest.approx((1 + 3 + 4) / 3)
    assert s["noc@80"] == pytest.approx((1 + 2 + 4) / 3)
    assert s["fr@90"] == pytest.approx(100 / 3)
    assert s["fr@80"] == pytest.approx(100 / 3)
    assert s["max_dsc"] == pytest.approx((0.95 + 0.92 + 0.3) / 3)
    np.testing.assert_allclose(s["mean_dice"], [(0.95 + 0.5 + 0.1) / 3, (0.95 + 0.85 + 0.2) / 3, (0.95 + 0.92 + 0.3) / 3])
    np.testing.assert_allclose(mean_curve([[1.0, float("nan")], [0.5, 0.5]]), [0.75, 0.5])


def loop_records():
    # loop a: initial segmentation 2 clicks (Dice 0.95); drifts 0.93, 0.88 -> intervention (1 click, 0.96)
    #         then 0.94, 0.89 -> intervention (2 clicks, 0.95)
    # loop b: initial 1 click at 0.92, tracks without help
    a = [FrameRecord("a", 0, 0.95, True, 2), FrameRecord("a", 1, 0.93), FrameRecord("a", 2, 0.88, True, 1, 0.96),
         FrameRecord("a", 3, 0.94), FrameRecord("a", 4, 0.89, True, 2, 0.95)]
    b = [FrameRecord("b", t, d, t == 0, int(t == 0)) for t, d in enumerate([0.92, 0.91, 0.90])]
    return list(reversed(a)) + b  # order must not matter


def test_tracking_metrics_on_hand_made_loops():
    records = loop_records()
    assert interventions_per_loop(records) == pytest.approx((2 + 0) / 2)
    assert interventions_per_loop(records, count_first_frame=True) == pytest.approx((3 + 1) / 2)
    assert clicks_per_loop(records) == pytest.approx((2 + 1 + 2 + 1) / 2)
    # from the last corrected frame: (0.95 - 0.88), (0.96 - 0.89), in Dice points
    assert dice_drop_before_intervention(records) == pytest.approx(100 * (0.07 + 0.07) / 2)
    # from the previous frame: (0.93 - 0.88), (0.94 - 0.89)
    assert dice_drop_before_intervention(records, "previous_frame") == pytest.approx(5.0)
    s = summarize_tracking(records)
    assert s["loops"] == 2 and s["frames"] == 8
    assert s["mean_final_dice"] > s["mean_dice"]


def test_tracking_without_interventions():
    records = [FrameRecord("x", t, 0.95) for t in range(5)]
    assert interventions_per_loop(records) == 0
    assert math.isnan(dice_drop_before_intervention(records))
    assert math.isnan(interventions_per_loop([]))
