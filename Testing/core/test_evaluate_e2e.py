"""End to end on real labelled MRI (Colin27 T1 + AAL labels; five patients' lesions) with the real models.

A few slices only: the encoder costs seconds per image on a 2-core CPU."""

import argparse
import csv
import math
from pathlib import Path

import pytest
from PIL import Image

from sonosam.errors import DataFileError, UnsupportedPromptError

pytestmark = pytest.mark.slow  # the real model over real MRI slices

ALTERNATE_MRICRON = "/tmp/mricron/x/usr/share/mricron/templates"


@pytest.fixture(scope="module")
def mri_samples():
    from sonosam.evaluate import colin27_samples

    patch = pytest.MonkeyPatch()
    try:
        colin27_samples(labels=[7], max_samples=1)
    except DataFileError:
        if not Path(ALTERNATE_MRICRON, "ch2.nii.gz").exists():
            pytest.skip("Colin27 MRI not installed: run `make data`")
        patch.setenv("SONOSAM_DATA", ALTERNATE_MRICRON)  # the CLI test reads it too
    yield colin27_samples(max_samples=3, slices=range(70, 110))
    patch.undo()


@pytest.fixture(scope="module")
def predictor(default_model):
    from sonosam.predictor import Predictor

    predictor = Predictor(default_model)
    yield predictor
    predictor.close()


def test_default_model_on_real_mri_writes_report_and_plot(mri_samples, predictor, tmp_path):
    from sonosam.evaluate import evaluate, write_report

    assert len(mri_samples) == 3 and len({s.label for s in mri_samples}) > 1
    before = predictor.encoder_calls
    with pytest.warns(UserWarning, match="takes no clicks"):
        result = evaluate(predictor, mri_samples, n_clicks=10, start="auto", progress=False)
    # LiteMedSAM takes boxes only: the protocol starts from the box and says so
    assert result.start == "box" and not result.clicks_supported
    assert predictor.encoder_calls - before == 3  # one encoder run per slice
    assert not result.errors
    dices = [r.dice[0] for r in result.images]
    assert all(0.3 < d <= 1 for d in dices), dices  # a box on a gyrus gives a real, imperfect mask
    paths = write_report([result], tmp_path)
    rows = list(csv.DictReader(open(paths["per_image"])))
    assert len(rows) == 3 and all(r["box"] and r["dice_2"] == "" for r in rows)
    assert math.isclose(float(rows[0]["dice_1"]), dices[0], abs_tol=1e-4)
    assert "box only" in paths["summary_md"].read_text()
    assert Image.open(paths["plot"]).size[0] > 300
    with pytest.raises(UnsupportedPromptError, match="takes no clicks"):
        evaluate(predictor, mri_samples, start="point", progress=False)


def test_cli_on_real_mri(mri_samples, tmp_path, capsys):
    from sonosam.cli import evaluate as evaluate_cli

    parser = argparse.ArgumentParser(prog="sonosam")
    parser.add_argument("--device", default="cpu")
    evaluate_cli.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "report"
    args = parser.parse_args(["evaluate", "--data", "colin27", "--label", "85", "--slices", "80:90",
                              "--max-images", "1", "--clicks", "3", "--box-jitter", "0.1", "-o", str(out),
                              "--no-progress"])
    assert args.func(args) == 0
    table = capsys.readouterr().out
    assert "| litemedsam | box (jitter 0.1) | 1 | 0 |" in table
    assert {p.name for p in out.iterdir()} == {"per_image.csv", "summary.csv", "summary.md", "dice_vs_clicks.png",
                                          "run.json"}
    with pytest.raises(DataFileError, match="already holds a report"):
        args.func(args)


def test_cli_local_corrections_with_the_real_click_model(mri_samples, tmp_path, capsys):
    """The same clicks, the whole new answer (SAM's protocol) or each click's change kept local to it: the first
    prompt is the same, the report says which protocol ran."""
    from sonosam.cli import evaluate as evaluate_cli

    parser = argparse.ArgumentParser(prog="sonosam")
    parser.add_argument("--device", default="cpu")
    evaluate_cli.register(parser.add_subparsers(dest="command"))
    summaries = {}
    for flag in ([], ["--local-corrections"]):
        out = tmp_path / f"report{len(flag)}"
        args = parser.parse_args(["evaluate", "--data", "colin27", "--label", "71", "--label", "72", "--slices", "85:95",
                                  "--max-images", "2", "--clicks", "4", "--model", "litemedsam_clicks", "-o", str(out),
                                  "--no-progress", *flag])
        assert args.func(args) == 0
        summaries[bool(flag)] = list(csv.DictReader(open(out / "per_image.csv")))
    table = capsys.readouterr().out
    assert "| litemedsam_clicks | point, local corrections |" in table
    whole, local = summaries[False], summaries[True]
    assert [r["dice_1"] for r in whole] == [r["dice_1"] for r in local]
    assert [r["dice_4"] for r in whole] != [r["dice_4"] for r in local]   # the corrections were kept differently


def test_cli_on_five_patients_lesions_reports_each_patient(tmp_path, capsys):
    """`--data lesions` (pyradiomics' patients, NAME_image + NAME_label files): the real click model's box on real
    tumours and nodules of other patients, organs and scanners than anything it saw, and a per-patient table; a
    second `--start` adds the click start to the same report (the same slices, encoded once)."""
    from sonosam.cli import evaluate as evaluate_cli

    parser = argparse.ArgumentParser(prog="sonosam")
    parser.add_argument("--device", default="cpu")
    evaluate_cli.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "lesions"
    args = parser.parse_args(["evaluate", "--data", "lesions", "--min-area", "20", "--max-images", "5", "--clicks", "2",
                              "--start", "box", "--start", "point", "--model", "litemedsam_clicks", "-o", str(out),
                              "--no-progress"])
    assert args.func(args) == 0
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    assert [r["start"] for r in rows] == ["box"] * 5 + ["point"] * 5
    box = rows[:5]
    assert [Path(r["image"].split("[")[0]).name for r in box] == ["brain1_image.nrrd"] * 2 + ["lung1_image.nrrd"] + \
        ["lung2_image.nrrd"] * 2
    assert all(float(r["dice_1"]) > 0.8 for r in box), [r["dice_1"] for r in box]   # 0.84-0.96 when written
    summary = (out / "summary.md").read_text()
    assert "| litemedsam_clicks | box | lung1_image.nrrd | 1 |" in summary
    assert "| litemedsam_clicks | box | mean of 3 sources | 5 |" in summary
    assert "| litemedsam_clicks | point | mean of 3 sources | 5 |" in summary
    table = capsys.readouterr().out
    assert "| litemedsam_clicks | box | 5 | 0 |" in table and "| litemedsam_clicks | point | 5 | 0 |" in table
    # --pick-first: the user takes the Mask list's closest mask after the first click (the nodule's bright region)
    picked = tmp_path / "picked"
    args = parser.parse_args(["evaluate", "--data", "lesions", "--min-area", "20", "--max-images", "5", "--clicks", "2",
                              "--start", "point", "--pick-first", "--model", "litemedsam_clicks", "-o", str(picked),
                              "--no-progress"])
    assert args.func(args) == 0
    after = list(csv.DictReader(open(picked / "per_image.csv")))
    before = [float(r["dice_1"]) for r in rows[5:]]
    assert all(float(a["dice_1"]) >= b for a, b in zip(after, before))
    assert sum(float(a["dice_1"]) > b + 0.1 for a, b in zip(after, before)) >= 1, (before, after)
    assert "| litemedsam_clicks | point, picked from the list (" in capsys.readouterr().out
