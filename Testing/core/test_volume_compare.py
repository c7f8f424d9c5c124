"""scripts.volume_compare: two bench.volume runs row by row, and the gate on their means and rows."""

import json

import numpy as np
import pytest

from scripts.volume_compare import main


def _run(path, rows):
    path.write_text(json.dumps({"rows": [{"subject": "s", "name": n, "axis": 0, "dice": one, "dice_boxes": boxes,
                                          "dice_after": [0.0, 0.0, after]} for n, one, boxes, after in rows]}))
    return str(path)


def test_gate_reads_every_figure_both_runs_have(tmp_path, capsys):
    before = _run(tmp_path / "a.json", [("A", 0.5, [0.5, 0.1], 0.7), ("B", 0.6, [0.6, 0.6], 0.8)])
    better = _run(tmp_path / "b.json", [("A", 0.52, [0.52, 0.3], 0.7), ("B", 0.6, [0.6, 0.6], 0.8)])
    assert main([before, better, "--max-mean-drop", "0.01", "--max-row-drop", "0.1"]) == 0
    assert "0.300 -> 0.410" in capsys.readouterr().out          # A's 7-box figure is the mean of its boxes
    one_row = _run(tmp_path / "c.json", [("A", 0.5, [0.5, 0.1], 0.55), ("B", 0.6, [0.6, 0.6], 0.8)])
    assert main([before, one_row, "--max-mean-drop", "0.1", "--max-row-drop", "0.1"]) == 1
    out = capsys.readouterr().out
    assert "s A (axis 0) after 3: 0.700 -> 0.550" in out and "mean" not in out.split("FAILED")[1]


def test_different_rows_are_refused(tmp_path):
    before = _run(tmp_path / "a.json", [("A", 0.5, [0.5], 0.7)])
    other = _run(tmp_path / "b.json", [("B", 0.5, [0.5], 0.7)])
    with pytest.raises(SystemExit, match="different rows"):
        main([before, other])


def test_bench_options_parse_and_a_bad_one_names_itself():
    from bench.volume import parse_options

    assert parse_options(["min_similarity=0.8", "max_slices=None", "follow_motion=False"]) == \
        {"min_similarity": 0.8, "max_slices": None, "follow_motion": False}
    for bad in ("min_similarity", "min_similarity=high"):
        with pytest.raises(SystemExit, match=f"--option '{bad}': expected NAME=VALUE"):
            parse_options([bad])


def test_bench_table_of_earlier_runs_puts_them_together(tmp_path, capsys):
    from bench.volume import main as bench_main

    def row(name, subject_set, one, boxes=None):
        out = {"subject": "colin27", "axis": 2, "name": name, "shape": "compact", "set": subject_set, "dice": one,
               "dice_after": [0.6, 0.7, 0.8], "true_extent": [10, 20], "extent": [11, 19], "dice_naive": 0.3,
               "seed_dice": 0.9, "seed_choice": "model", "seconds_per_slice": 0.1}
        return out if boxes is None else {**out, "dice_boxes": boxes}

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"rows": [row("Thalamus_L", "dev", 0.7, [0.7, 0.5])]}))
    b.write_text(json.dumps({"rows": [row("Thalamus_R", "held-out", 0.4)]}))
    assert bench_main(["--table", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "| colin27 | i | Thalamus_L | compact | dev | 10..20 | 11..19 | **0.700** | 0.600 | 0.600 | 0.700 |" in out
    assert "| Thalamus_R | compact | held-out | 10..20 | 11..19 | **0.400** | - |" in out   # that run had no box shifts
    assert "held-out (1): mean Dice from one prompt 0.400" in out and "all (2)" in out
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(SystemExit, match="c.json: not a bench.volume --json file"):
        bench_main(["--table", str(tmp_path / "c.json")])


def test_bench_seed_at_out_of_range_is_refused_in_one_line(capsys):
    from bench.volume import main as bench_main

    with pytest.raises(SystemExit) as exited:
        bench_main(["--seed-at", "2", "--subjects", "colin27"])
    assert exited.value.code == 2
    assert "--seed-at 2.0: give a fraction of the structure's extent, 0 to 1" in capsys.readouterr().err


def test_thick_slices_average_groups_by_spacing_and_keep_references_that_fill_half():
    """`bench.volume --thick MM`: slices averaged in groups of round(MM / spacing) along the axis, the spacing grown to
    match, a reference kept where it fills at least half a group, the last partial group dropped."""
    from bench.volume import thick_slices
    from sonosam.io import Geometry, Volume
    from sonosam.references import Subject

    array = np.arange(7 * 4 * 5, dtype=np.int16).reshape(7, 4, 5)
    subject = Subject("s", "CT", Volume(array, Geometry(spacing=(0.8, 0.9, 1.5))))
    mask = np.zeros(array.shape, bool)
    mask[0:2, 1, 1] = True       # 2 of the first 3 slices: kept
    mask[3, 2, 2] = True         # 1 of 3: dropped
    mask[6, 3, 3] = True         # only in the dropped partial group
    subject.add("Lesion", mask, "small", "test")
    thick, group = thick_slices(subject, 5, axis=0)                   # 5 mm / 1.5 mm -> 3 slices a group
    assert group == 3 and thick.volume.shape == (2, 4, 5)
    assert thick.volume.geometry.spacing == (0.8, 0.9, 4.5)
    np.testing.assert_allclose(thick.volume.array[1], array[3:6].mean(axis=0))
    assert np.argwhere(thick.references["Lesion"].mask).tolist() == [[0, 1, 1]]
    side, group = thick_slices(subject, 2, axis=2)                     # along i: 2 mm / 0.8 mm -> 2 columns
    assert group == 2 and side.volume.shape == (7, 4, 2) and side.volume.geometry.spacing == (1.6, 0.9, 1.5)
    np.testing.assert_allclose(side.volume.array[..., 1], array[..., 2:4].mean(axis=-1))


def test_bench_click_seed_refuses_box_shifts_in_one_line(capsys):
    from bench.volume import main as bench_main

    with pytest.raises(SystemExit) as exited:
        bench_main(["--seed-prompt", "click", "--box-shifts", "3", "--subjects", "colin27"])
    assert exited.value.code == 2
    assert "--box-shifts moves the seed box: use it with --seed-prompt box" in capsys.readouterr().err


@pytest.mark.slow   # the real click model through 8 real slices
def test_a_structure_seeded_by_one_click_propagates_from_it(colin_stack, default_model):
    """`--seed-prompt click`: the seed slice gets one positive click at the structure's centre, no box; a box-only
    model is refused by name. The propagation checks a seed of clicks alone and keeps the model's answer."""
    from bench.volume import evaluate_structure
    from sonosam.models import load_model
    from sonosam.predictor import Predictor

    stack, labels, window = colin_stack
    gt = labels == 77                                     # Thalamus_L, on every slice of the stack
    with pytest.raises(ValueError, match="litemedsam takes no clicks"):
        evaluate_structure(Predictor(default_model), stack, gt, window=window, seed_prompt="click")
    predictor = Predictor(load_model("litemedsam_clicks", device="cpu"))
    row = evaluate_structure(predictor, stack, gt, window=window, volume_id="colin-stack", corrections=1,
                             naive=False, seed_prompt="click")
    x, y = row["click"]
    assert row["seed_prompt"] == "click" and gt[row["seed_slice"], y, x]
    assert row["seed_dice"] > 0.6 and row["dice"] > 0.5 and len(row["dice_after"]) == 1
    # a seed of clicks alone is checked too (its alternatives listed) and keeps the model's answer
    from sonosam.volume import Seed, propagate

    index = row["seed_slice"]
    result = propagate(predictor, stack, [Seed(index, points=[(x, y)], labels=[1])], window=window, max_slices=1)
    check = result.seed_checks[index]
    assert check.best == 0 and np.array_equal(result.slice_mask(index), check.candidates[0].mask)
    assert any("the click is in" in c.source for c in check.candidates[1:])
