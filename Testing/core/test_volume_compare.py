"""scripts.volume_compare: two bench.volume runs row by row, and the gate on their means and rows."""

import json

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
