"""`sonosam track` end to end on a few real echo frames (pydicom's 30-frame 240x320 A4C loop)."""

import json

import numpy as np
import pytest

from sonosam.cli import main


@pytest.mark.slow  # tracks a real loop with the real model
def test_track_cli_writes_outputs(tmp_path, capsys):
    from sonosam.data import echo_a4c_small_path
    from sonosam.track.outputs import read_sequence_nrrd

    out = tmp_path / "out"
    # LV box on the half-size loop (the 480x640 box (300, 70, 440, 270) halved); the model runs on frames 0 and 5.
    code = main(["--device", "cpu", "track", str(echo_a4c_small_path()), "--frames", "6", "--frame", "0",
                 "--object", "LV", "--box", "150,35,220,135", "--model-every", "5", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    for name in ("segmentation.seq.nrrd", "overlay.gif", "strip.png", "confidence.csv", "interventions.json",
                 "interventions.csv", "summary.json"):
        assert (out / name).is_file(), name
    labels, segments, header = read_sequence_nrrd(out / "segmentation.seq.nrrd")
    assert labels.shape == (6, 240, 320) and segments[0]["name"] == "LV"
    assert header["DataNodeClassName"] == "vtkMRMLLabelMapVolumeNode"
    areas = (labels == 1).sum(axis=(1, 2))
    assert areas.min() > 0.5 * areas[0] and areas.max() < 1.5 * areas[0]
    rows = (out / "confidence.csv").read_text().splitlines()
    assert rows[0].startswith("frame,LV_confidence") and len(rows) == 7
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 6 and summary["model_frames"] >= 1
    assert isinstance(json.loads((out / "interventions.json").read_text()), list)


def test_track_cli_needs_a_prompt(tmp_path, capsys):
    np.save(tmp_path / "c.npy", np.zeros((3, 32, 32), np.uint8))
    assert main(["track", str(tmp_path / "c.npy"), "-o", str(tmp_path / "o")]) == 2
    assert "Nothing to track" in capsys.readouterr().err


def test_track_cli_object_groups():
    from sonosam.cli import build_parser

    args = build_parser().parse_args(["track", "x.dcm", "--object", "LV", "--box", "1,2,30,40", "--object", "LA",
                                      "--point", "5,6", "--point", "7,8,0", "-o", "out"])
    assert args.objects == [{"name": "LV", "box": (1.0, 2.0, 30.0, 40.0), "points": []},
                            {"name": "LA", "box": None, "points": [(5.0, 6.0, 1), (7.0, 8.0, 0)]}]
    assert build_parser().parse_args(["track", "x.dcm", "--box", "1,2,3,4", "-o", "o"]).objects[0]["name"] == "object"
