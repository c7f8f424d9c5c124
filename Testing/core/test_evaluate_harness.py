"""The evaluation loop and report with tiny stand-in models (the real model runs in test_evaluate_e2e.py).

The stand-ins are models, not mocks of the harness: each answers prompts from the image it is given."""

import csv
import math
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from sonosam.errors import PromptError, SonoSAMError, UnsupportedPromptError
from sonosam.evaluate import Sample, evaluate, evaluate_models, summary_table, write_report


@dataclass
class Pred:
    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray


def pred_of(mask, n=1):
    masks = np.repeat(mask[None], n, axis=0)
    logits = np.full((n, 256, 256), -10.0, np.float32)   # low-res logits: always 256 x 256, image at top left
    logits[:, :masks.shape[1], :masks.shape[2]] = np.where(masks, 10.0, -10.0)[:, :256, :256]
    return Pred(masks, np.ones(n), logits)


class Recorder:
    def __init__(self, kinds=("point", "box", "mask")):
        self.kinds = frozenset(kinds)
        self.spec = SimpleNamespace(name=type(self).__name__.lower(), prompt_kinds=self.kinds)
        self.calls = []

    def predict(self, image, prompts, multimask=False, key=None):
        # the stand-ins read plain lists of whole pixels (the simulator's clicks and boxes are whole pixels)
        points = [(int(x), int(y)) for x, y in prompts.points] or None
        labels = [int(v) for v in prompts.labels] or None
        box = None if prompts.box is None else tuple(int(v) for v in prompts.box)
        mask_logits = prompts.mask_logits
        self.calls.append(dict(points=points, labels=labels, box=box, mask_logits=mask_logits,
                               multimask=multimask, key=key))
        if box is not None and "box" not in self.kinds:
            raise UnsupportedPromptError("no boxes")
        if points and "point" not in self.kinds:
            raise UnsupportedPromptError("this model takes no point prompts")
        mask = self.answer(np.asarray(image), points, labels, box)
        return pred_of(mask, 3 if multimask else 1)


class Oracle(Recorder):
    """Segments the bright pixels: a perfect model on images that draw their mask."""

    def answer(self, image, points, labels, box):
        return image > 127


class Empty(Recorder):
    def answer(self, image, points, labels, box):
        return np.zeros(image.shape, bool)


class Components(Recorder):
    """Bright connected components holding a positive click (or inside the box), minus those holding a
    negative click: needs one click per structure."""

    def answer(self, image, points, labels, box):
        comps, _ = ndimage.label(image > 127)
        keep = np.zeros(image.shape, bool)
        if box is not None:
            x0, y0, x1, y1 = box
            inside = np.unique(comps[y0:y1 + 1, x0:x1 + 1])
            keep |= np.isin(comps, inside[inside > 0])
        for (x, y), l in zip(points or [], labels or []):
            if comps[y, x]:
                keep = keep | (comps == comps[y, x]) if l else keep & (comps != comps[y, x])
        return keep


class AllBright(Recorder):
    """Every bright pixel, minus the components holding a negative click."""

    def answer(self, image, points, labels, box):
        comps, _ = ndimage.label(image > 127)
        keep = image > 127
        for (x, y), l in zip(points or [], labels or []):
            if not l and comps[y, x]:
                keep &= comps != comps[y, x]
        return keep


class Forgetful(Recorder):
    """Only the bright component under the last positive click: each click redraws the whole mask."""

    def answer(self, image, points, labels, box):
        comps, _ = ndimage.label(image > 127)
        positives = [p for p, l in zip(points or [], labels or []) if l]
        x, y = positives[-1]
        return (comps == comps[y, x]) if comps[y, x] else np.zeros(image.shape, bool)


class Stubborn(Recorder):
    """Only the bright component under the first positive click: later clicks are ignored."""

    def answer(self, image, points, labels, box):
        comps, _ = ndimage.label(image > 127)
        x, y = [p for p, l in zip(points or [], labels or []) if l][0]
        return (comps == comps[y, x]) if comps[y, x] else np.zeros(image.shape, bool)


class Broken(Recorder):
    def answer(self, image, points, labels, box):
        raise RuntimeError("out of memory (simulated)")


def square_samples(n=4, size=64):
    samples = []
    for i in range(n):
        mask = np.zeros((size, size), bool)
        mask[8 + i:30 + 2 * i, 10:40 + i] = True
        samples.append(Sample((mask * 200).astype(np.uint8), mask, f"sq{i}", ("sq", i), 1))
    return samples


def two_blob_sample(gt_both: bool):
    a = np.zeros((64, 64), bool)
    a[5:35, 5:35] = True                   # big square
    b = np.zeros((64, 64), bool)
    b[45:60, 45:60] = True                 # small square
    image = ((a | b) * 200).astype(np.uint8)
    return Sample(image, (a | b) if gt_both else a, "blobs", ("blobs",), 1)


def test_oracle_reaches_90_with_one_click_and_never_fails():
    model = Oracle()
    result = evaluate(model, square_samples(), n_clicks=5, progress=False)
    s = result.summary()
    assert s["noc@90"] == 1 and s["noc@80"] == 1
    assert s["fr@90"] == 0 and s["fr@80"] == 0 and s["max_dsc"] == 1
    assert all(r.dice == [1.0] * 5 for r in result.images)
    # perfect after click 1: no corrective clicks were asked; first click asks for 3 masks
    assert len(model.calls) == 4 and all(c["multimask"] for c in model.calls)
    assert model.calls[0]["points"] == [(25, 19)] and model.calls[0]["labels"] == [1]
    assert model.calls[0]["key"] == ("sq", 0)


def test_always_empty_model_fails_everything():
    result = evaluate(Empty(), square_samples(), n_clicks=10, progress=False)
    s = result.summary()
    assert s["fr@80"] == 100 and s["fr@90"] == 100
    assert s["noc@90"] == 11  # N + 1
    assert s["max_dsc"] == 0 and s["errors"] == 0


def test_missed_structure_gets_a_positive_click_and_logits_are_fed_back():
    model = Components()
    result = evaluate(model, [two_blob_sample(gt_both=True)], n_clicks=3, progress=False)
    image = result.images[0]
    assert image.dice[0] < 0.9 and image.dice[1] == 1.0 and image.dice[2] == 1.0
    assert result.summary()["noc@90"] == 2
    (x1, y1, l1), (x2, y2, l2) = image.clicks
    assert l1 == 1 and 5 <= x1 < 35 and 5 <= y1 < 35      # centroid lies between: moved into the big square
    assert (x2, y2, l2) == (52, 52, 1)                    # centre of the missed small square
    second = model.calls[1]
    assert second["points"] == [(x1, y1), (52, 52)] and second["labels"] == [1, 1]
    assert second["multimask"] is False
    assert second["mask_logits"] is not None and second["mask_logits"].shape == (256, 256)


def test_false_positive_gets_a_negative_click():
    result = evaluate(AllBright(), [two_blob_sample(gt_both=False)], n_clicks=2, progress=False)
    image = result.images[0]
    assert image.dice[0] < 0.9 and image.dice[1] == 1.0
    assert image.clicks[1] == (52, 52, 0)


def test_local_corrections_keep_what_earlier_clicks_got_right():
    sample = two_blob_sample(gt_both=True)
    whole = evaluate(Forgetful(), [sample], n_clicks=2, progress=False).images[0]
    local = evaluate(Forgetful(), [sample], n_clicks=2, progress=False, local_corrections=True)
    assert whole.clicks == local.images[0].clicks and whole.clicks[1] == (52, 52, 1)
    assert whole.dice[1] < whole.dice[0] < 0.95          # the second click's answer forgot the big square
    assert local.images[0].dice[1] == 1.0                # kept: the small square added, the big one stays
    assert local.local_corrections and "local corrections" in summary_table([local])[0]["Start"]


def test_a_positive_click_the_model_ignores_adds_what_it_segments_alone():
    sample = two_blob_sample(gt_both=True)
    whole = evaluate(Stubborn(), [sample], n_clicks=2, progress=False).images[0]
    model = Stubborn()
    local = evaluate(model, [sample], n_clicks=2, progress=False, local_corrections=True).images[0]
    assert whole.dice[1] == whole.dice[0] < 0.95          # the second click changed nothing
    assert local.dice[1] == 1.0                           # the small square, from the click by itself
    assert model.calls[-1]["points"] == [(52, 52)] and model.calls[-1]["labels"] == [1]


class Windowed(Stubborn):
    """A predictor that takes windows: shows the image through the window it is given (bright above its middle)."""

    def predict(self, image, prompts, multimask=False, key=None, window=None):
        self.windows = getattr(self, "windows", []) + [window]
        low, high = window if window is not None else (0, 255)
        return super().predict(np.where(np.asarray(image) > (low + high) / 2, 200, 0), prompts, multimask, key)


def test_every_decode_sees_the_sample_s_window():
    blobs = two_blob_sample(gt_both=True)
    hu = np.where(blobs.image > 0, 40, -1000).astype(np.int16)    # the squares at 40 "HU" in -1000 "air"
    sample = Sample(hu, blobs.mask, "ct", ("ct",), 1, window=(0.0, 60.0))
    model = Windowed()
    local = evaluate(model, [sample], n_clicks=2, progress=False, local_corrections=True).images[0]
    assert model.windows == [(0.0, 60.0)] * 3            # the first answer, the correction, the click alone
    assert local.dice[1] == 1.0
    unwindowed = Windowed()
    evaluate(unwindowed, [two_blob_sample(gt_both=True)], n_clicks=2, progress=False)
    assert unwindowed.windows == [None, None]            # no window of its own: none is passed


def test_box_only_model_starts_from_a_box_and_reports_clicks_as_not_measured():
    model = Oracle(kinds=("box", "mask"))
    with pytest.warns(UserWarning, match="takes no clicks"):
        result = evaluate(model, square_samples(2), n_clicks=10, progress=False)
    assert result.start == "box" and not result.clicks_supported
    assert all(c["points"] is None and c["box"] is not None for c in model.calls)
    assert len(model.calls) == 2
    image = result.images[0]
    assert image.dice[0] == 1.0 and all(math.isnan(d) for d in image.dice[1:])
    assert result.summary()["noc@90"] == 1
    row = summary_table([result])[0]
    assert row["Clicks"] == "box only" and row["Dice@1"] == 100 and math.isnan(row["Dice@5"])
    with pytest.raises(UnsupportedPromptError, match="takes no clicks"):
        evaluate(model, square_samples(1), start="point", progress=False)


def test_box_start_then_clicks():
    model = Components()
    result = evaluate(model, [two_blob_sample(gt_both=False)], n_clicks=3, start="box", box_jitter=0.1,
                      progress=False)
    assert result.start == "box" and model.calls[0]["box"] is not None and model.calls[0]["multimask"] is False
    assert result.images[0].dice[0] == 1.0


def test_undeclared_model_that_refuses_clicks_is_reported_not_zeroed():
    class Undeclared(Oracle):
        def answer(self, image, points, labels, box):
            if points:
                raise UnsupportedPromptError("this decoder takes no point prompts")
            return (image > 127) & (np.arange(image.shape[1]) < 30)  # half right: needs a click

    model = Undeclared()
    model.spec = SimpleNamespace(name="undeclared")  # no prompt_kinds
    with pytest.warns(UserWarning, match="refused a click"):
        result = evaluate(model, square_samples(2), n_clicks=4, start="box", progress=False)
    assert not result.clicks_supported
    first = result.images[0]
    assert first.refused and math.isfinite(first.dice[0]) and all(math.isnan(d) for d in first.dice[1:])


def test_errors_are_recorded_with_their_message_never_as_zero(tmp_path):
    class Flaky(Oracle):
        def answer(self, image, points, labels, box):
            if image.sum() % 2:  # fails on some images only
                raise RuntimeError("decoder blew up")
            return image > 127

    samples = square_samples(4)
    samples[1].image[0, 0] = 1  # odd sum -> fails
    with pytest.warns(UserWarning, match="decoder blew up"):
        result = evaluate(Flaky(), samples, n_clicks=3, progress=False)
    assert len(result.errors) == 1 and "RuntimeError: decoder blew up" in result.errors[0].error
    assert all(math.isnan(d) for d in result.errors[0].dice)
    s = result.summary()
    assert s["n"] == 3 and s["errors"] == 1 and s["fr@90"] == 0  # the error is not a failure at Dice 0
    paths = write_report([result], tmp_path)
    assert "decoder blew up" in paths["summary_md"].read_text()
    with pytest.raises(SonoSAMError, match="already exists"):   # an earlier report is kept unless asked
        write_report([result], tmp_path)
    assert write_report([result], tmp_path, overwrite=True)["summary_md"] == paths["summary_md"]
    with pytest.raises(RuntimeError):
        evaluate(Flaky(), samples, n_clicks=3, progress=False, on_error="raise")
    with pytest.raises(SonoSAMError, match="every sample"), pytest.warns(UserWarning):
        evaluate(Broken(), samples, n_clicks=3, progress=False)


def test_report_files_for_two_models(tmp_path):
    samples = square_samples(3)
    results = evaluate_models({"oracle": Oracle(), "empty": Empty()}, samples, n_clicks=4, progress=False)
    paths = write_report(results, tmp_path / "report")
    rows = list(csv.DictReader(open(paths["per_image"])))
    assert len(rows) == 6 and {r["model"] for r in rows} == {"oracle", "empty"}
    oracle_rows = [r for r in rows if r["model"] == "oracle"]
    assert oracle_rows[0]["dice_1"] == "1.0000" and oracle_rows[0]["noc90"] == "1"
    assert [r["noc90"] for r in rows if r["model"] == "empty"] == ["5"] * 3
    summary = list(csv.DictReader(open(paths["summary_csv"])))
    assert [r["Model"] for r in summary] == ["oracle", "empty"]
    assert summary[0]["NoC@90"] == "1" and summary[0]["FR@90 (%)"] == "0"
    assert summary[1]["FR@90 (%)"] == "100" and summary[1]["NoC@90"] == "5"
    md = paths["summary_md"].read_text()
    assert "| Model | Start | Images |" in md and "N+1 = 5" in md
    png = Image.open(paths["plot"])
    assert png.size[0] > 300 and png.size[1] > 200
    assert np.asarray(png.convert("L")).std() > 5  # something was drawn


def test_report_gives_each_source_volume_and_the_mean_over_sources(tmp_path):
    """Slices of one volume are not independent: with samples cut from several volumes, summary.md adds a table per
    source and the mean over sources beside the pooled mean (3 perfect slices of one volume and 1 slice of another
    at Dice 2/3: pooled 91.7, over sources 83.3); samples of one source get no such table."""
    from sonosam.evaluate import per_source_table

    samples = [Sample(s.image, s.mask, s.name, ("/data/a_image.nrrd", 0, i), 1)
               for i, s in enumerate(square_samples(3))]
    mask = np.zeros((64, 64), bool)
    mask[10:40, 10:40] = True
    image = np.zeros((64, 64), np.uint8)
    image[10:40, 10:25] = 200              # the image draws half the structure: the oracle finds that half
    samples.append(Sample(image, mask, "b", ("/data/b_image.nrrd", 0, 5), 1))
    results = evaluate_models({"oracle": Oracle()}, samples, n_clicks=3, progress=False)
    rows = per_source_table(results)
    assert [(r["Source"], r["Images"], r["Dice@1"]) for r in rows] == [
        ("a_image.nrrd", 3, 100.0), ("b_image.nrrd", 1, 66.7), ("mean of 2 sources", 4, 83.3)]
    assert summary_table(results)[0]["Dice@1"] == 91.7
    md = write_report(results, tmp_path / "two")["summary_md"].read_text()
    assert "## Per source" in md and "| oracle | point | mean of 2 sources | 4 | 83.3 |" in md
    alone = write_report(evaluate_models({"oracle": Oracle()}, square_samples(3), n_clicks=3, progress=False),
                         tmp_path / "alone")["summary_md"].read_text()
    assert "Per source" not in alone


def test_prediction_of_the_wrong_size_is_an_error_not_a_score():
    class Wrong(Oracle):
        def answer(self, image, points, labels, box):
            return np.ones((10, 10), bool)

    with pytest.raises(SonoSAMError, match="mask for a"):
        evaluate(Wrong(), square_samples(1), progress=False, on_error="raise")


def test_empty_ground_truth_sample_is_reported():
    sample = Sample(np.zeros((20, 20), np.uint8), np.zeros((20, 20), bool), "empty", ("e",))
    with pytest.raises(PromptError):
        evaluate(Oracle(), [sample], progress=False, on_error="raise")


def test_bench_timer_counts_calls_and_formats_a_table():
    from bench.evaluate import TimedModel, format_rows

    class Model:
        spec = SimpleNamespace(name="toy", prompt_kinds=frozenset({"point"}))

        def encode(self, image):
            return image

        def decode(self, emb, prompts=None, multimask=False):
            return emb

    timed = TimedModel(Model())
    timed.encode(1), timed.decode(1), timed.decode(2)
    assert (timed.encode_calls, timed.decode_calls) == (1, 2) and timed.spec.name == "toy"
    table = format_rows([{"run": "x", "images/s": 0.12345, "Dice": None}])
    assert table.splitlines()[2] == "| x | 0.123 | n/a |"


class AroundTheClick(Recorder):
    """A small disc around the first positive click (a click model that finds a piece of a large structure)."""

    def answer(self, image, points, labels, box):
        x, y = [p for p, l in zip(points or [], labels or []) if l][0]
        rows, cols = np.indices(image.shape)
        return np.hypot(rows - y, cols - x) <= 4


def test_pick_first_takes_the_listed_region_the_click_is_in_where_it_beats_the_answer(tmp_path):
    """`pick_first`: after the first prompt the simulated user takes the seed check's listed mask closest to the
    reference (the Slicer effect's Mask list), and corrections start from it; the report says how many."""
    rng = np.random.default_rng(0)
    rows, cols = np.indices((80, 80))
    head = (np.abs(rows - 40) <= 28) & (np.abs(cols - 40) <= 28)
    hole = np.hypot(rows - 40, cols - 55) <= 8     # off-centre: the centroid click lands on the tissue
    image = np.where(head & ~hole, 200, 20) + rng.normal(0, 3, (80, 80))
    sample = Sample(image.astype(np.float32), head, "head", ("head",), 1)   # the whole head, its dark hole too
    plain = evaluate(AroundTheClick(), [sample], n_clicks=2, start="point", progress=False, local_corrections=True)
    picked = evaluate(AroundTheClick(), [sample], n_clicks=2, start="point", progress=False, local_corrections=True,
                      pick_first=True)
    assert plain.images[0].dice[0] < 0.2 and plain.images[0].picked == ""
    assert picked.images[0].picked == "the bright region the click is in" and picked.images[0].dice[0] > 0.95
    assert picked.images[0].dice[1] >= picked.images[0].dice[0] - 0.01       # the correction starts from the pick
    assert picked.summary()["picked"] == 1 and picked.summary()["pick_first"]
    md = write_report([plain, picked], tmp_path / "report")["summary_md"].read_text()
    assert "picked from the list (1)" in md
    oracle = evaluate(Oracle(), [sample], n_clicks=1, start="point", progress=False, pick_first=True)
    assert oracle.images[0].picked == ""                                        # nothing beats a right answer


class UnsureBand(Recorder):
    """The bright pixels inside the box, with a low predicted IoU (LiteMedSAM on a box around a dark ventricle: the
    bright tissue beside it, unsure); clicks add or remove the discs around them."""

    def answer(self, image, points, labels, box):
        x0, y0, x1, y1 = box
        mask = np.zeros(image.shape, bool)
        mask[y0:y1 + 1, x0:x1 + 1] = image[y0:y1 + 1, x0:x1 + 1] > 127
        rows, cols = np.indices(image.shape)
        for (x, y), label in zip(points or [], labels or []):
            mask[np.hypot(rows - y, cols - x) <= 3] = bool(label)
        return mask

    def predict(self, image, prompts, multimask=False, key=None):
        from sonosam.prompts import Prediction

        pred = super().predict(image, prompts, multimask=multimask, key=key)
        return Prediction(pred.masks, np.full(len(pred.masks), 0.4), pred.low_res_logits)


def test_pick_first_suggested_takes_the_checks_suggestion_for_a_box_without_the_reference(tmp_path):
    """`pick_first="suggested"`: after the box the simulated user takes what the seed check suggests (the Slicer
    effect's preview under stop 56's rule), whether or not it is closer to the reference; corrections start from
    it."""
    rng = np.random.default_rng(0)
    rows, cols = np.indices((60, 60))
    dark = np.hypot(rows - 30, cols - 29) <= 12
    image = (np.where(dark, 20, 200) + rng.normal(0, 3, (60, 60))).astype(np.float32)
    sample = Sample(image, dark, "ventricle", ("v",), 1)
    plain = evaluate(UnsureBand(), [sample], n_clicks=3, start="box", box_margin=1, progress=False,
                     local_corrections=True)
    taken = evaluate(UnsureBand(), [sample], n_clicks=3, start="box", box_margin=1, progress=False,
                     local_corrections=True, pick_first="suggested")
    assert plain.images[0].dice[0] < 0.1 and plain.images[0].picked == ""
    assert taken.images[0].picked.startswith("the dark part of the box") and taken.images[0].dice[0] > 0.9
    assert min(taken.images[0].dice) > 0.85                            # the corrections start from the suggestion
    md = write_report([plain, taken], tmp_path / "report")["summary_md"].read_text()
    assert "the suggestion taken (1)" in md
    # the reference is what the model answered (the box's bright corners): the suggestion is taken all the same
    corners = Sample(image, ~dark & (np.abs(rows - 30) <= 13) & (np.abs(cols - 29) <= 13), "corners", ("c",), 1)
    model = evaluate(UnsureBand(), [corners], n_clicks=1, start="box", progress=False)
    kept = evaluate(UnsureBand(), [corners], n_clicks=1, start="box", progress=False, pick_first="suggested")
    assert model.images[0].dice[0] > 0.9
    assert kept.images[0].picked.startswith("the dark part") and kept.images[0].dice[0] < 0.1
    with pytest.raises(ValueError, match="pick_first"):
        evaluate(UnsureBand(), [sample], n_clicks=1, start="box", progress=False, pick_first="best")


def test_corrections_after_a_taken_suggestion_remove_what_looks_like_the_clicked_spot():
    """After the suggestion is taken, a negative click on what it wrongly took in (a grey crescent beside the dark
    disc) removes that, not the disc around it: the harness corrects it as the Slicer effect does. (The stand-in's
    answer to the click also brings back bright pixels beside the click, as the model's reading of the box does: the
    Dice falls a little all the same; corrected as the model's answer, the disc is bitten and it falls below 0.8.)"""
    rng = np.random.default_rng(1)
    rows, cols = np.indices((60, 60))
    radius = np.hypot(rows - 30, cols - 29)
    disc, crescent = radius <= 10, (radius > 10) & (radius <= 14) & (cols > 32)
    image = (np.where(disc, 20, np.where(crescent, 50, 200)) + rng.normal(0, 2, (60, 60))).astype(np.float32)
    sample = Sample(image, disc, "ventricle", ("v",), 1)
    taken = evaluate(UnsureBand(), [sample], n_clicks=2, start="box", box_margin=5, progress=False,
                     local_corrections=True, pick_first="suggested")
    first, second = taken.images[0].dice
    assert taken.images[0].picked.startswith("the dark part of the box") and first < 0.85
    assert taken.images[0].clicks[-1][2] == 0 and second > 0.8    # a negative click on the crescent; the disc kept


def test_box_sessions_bench_compares_two_runs_of_the_same_samples(tmp_path, capsys):
    import json

    from bench.box_sessions import main as box_sessions

    def run(curves, samples=("a", "b")):
        return {"sets": {"ct": {"samples": list(samples), "picked": ["", "darker part"], "curves": curves}}}

    before, after, other = tmp_path / "before.json", tmp_path / "after.json", tmp_path / "other.json"
    before.write_text(json.dumps(run([[0.5, 0.6], [0.4, 0.5]])))
    after.write_text(json.dumps(run([[0.5, 0.7], [0.4, 0.4]])))
    assert box_sessions(["--compare", str(before), str(after)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| ct"))
    assert row == "| ct (1 of 2) | 45.0 / 55.0 | 45.0 / 55.0 | 1 / 1 |"
    other.write_text(json.dumps(run([[0.5, 0.6], [0.4, 0.5]], samples=("a", "c"))))
    with pytest.raises(SystemExit, match="different samples"):
        box_sessions(["--compare", str(before), str(other)])
    # an earlier run's file is not replaced (refused before the run starts)
    with pytest.raises(SystemExit, match="error: .*before.json"):
        box_sessions(["-o", str(before), "--sets", "echo"])
    assert json.loads(before.read_text())["sets"]["ct"]["curves"] == [[0.5, 0.6], [0.4, 0.5]]


def lesion_png_pair(folder):
    """A real CT lesion slice (pyradiomics' lung case, `make data`) and its expert label, as 8-bit PNG files."""
    from sonosam.data import lesions_dir
    from sonosam.evaluate import load_pair

    sample = max(load_pair(lesions_dir() / "lung1_image.nrrd", lesions_dir() / "lung1_label.nrrd", min_area=20),
                 key=lambda s: s.area)
    lo, hi = np.percentile(sample.image, (1, 99))
    image = np.clip((sample.image - lo) / (hi - lo) * 255, 0, 255).astype(np.uint8)
    folder.mkdir()
    Image.fromarray(image).save(folder / "case.png")
    Image.fromarray(sample.mask.astype(np.uint8)).save(folder / "case_label.png")
    return folder


@pytest.mark.slow   # the real click model through the command, its box at three scales
def test_the_report_says_how_it_was_made(tmp_path, capsys):
    """run.json and summary.md's "Run" section: the arguments, the code's version and commit, the checkpoint and its
    sha256, the backend and the pipeline that answered the prompts; the box margin reaches the Start column, and the
    protocol sentence says no mask was fed back to a model that takes none (litemedsam_clicks)."""
    import json

    from sonosam.cli import main
    from sonosam.models.weights import file_digest

    data, out = lesion_png_pair(tmp_path / "data"), tmp_path / "report"
    assert main(["--device", "cpu", "--backend", "eager", "evaluate", "--data", str(data), "--min-area", "20",
                 "--clicks", "2", "--start", "box", "--box-margin", "3", "--model", "litemedsam_clicks",
                 "-o", str(out), "--no-progress"]) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["arguments"]["box_margin"] == 3 and record["arguments"]["data"] == [str(data)]
    assert record["code"]["sonosam"] and len(record["code"]["commit"] or "x" * 40) == 40
    model = record["models"][0]
    assert model["name"] == "litemedsam_clicks" and model["backend"] == "eager"
    assert model["checkpoint_sha256"] == file_digest(model["checkpoint"])
    assert "1.5 x the box" in model["pipeline"]
    assert record["results"][0]["box_margin"] == 3 and record["results"][0]["mask_logits_fed_back"] is False
    md = (out / "summary.md").read_text()
    assert "| litemedsam_clicks | box (margin 3 px) |" in md and "no mask fed back" in md
    assert "## Run" in md and model["checkpoint_sha256"] in md and "1.5 x the box" in md
    assert "mask logits fed back" not in md


def test_bench_volume_refuses_a_wrong_run_before_it_starts(tmp_path, capsys):
    """bench.volume: a structure name in no subject, an earlier --json file, a negative count and an --option that
    is no PropagationOptions field are refused in one line before any model runs; nothing is written."""
    from bench.volume import main as bench_volume

    out = tmp_path / "runs" / "out.json"
    with pytest.raises(SystemExit, match=r"error: --structures Thalamus_l: in none of the subjects colin27; .*"
                                         r"Thalamus_L"):
        bench_volume(["--subjects", "colin27", "--structures", "Thalamus_l", "--json", str(out)])
    assert not out.exists()
    out.parent.mkdir()
    out.write_text('{"precious": 1}')
    with pytest.raises(SystemExit, match=r"error: .*out.json"):
        bench_volume(["--subjects", "colin27", "--structures", "Thalamus_L", "--json", str(out)])
    assert out.read_text() == '{"precious": 1}'
    with pytest.raises(SystemExit, match="not a PropagationOptions field"):
        bench_volume(["--option", "min_contrst=None"])
    for bad in (["--corrections", "-2"], ["--box-shifts", "-3"]):
        with pytest.raises(SystemExit):
            bench_volume(bad)
        assert "must be at least 0" in capsys.readouterr().err


def test_box_sessions_compare_refuses_runs_that_are_no_before_and_after(tmp_path):
    import json

    from bench.box_sessions import main as box_sessions

    def run(path, model="litemedsam_clicks", clicks=5, sets=("ct",)):
        path.write_text(json.dumps({"model": model, "clicks": clicks, "sets": {
            name: {"samples": ["a"], "picked": [""], "curves": [[0.5] * clicks]} for name in sets}}))
        return str(path)

    base = run(tmp_path / "base.json")
    with pytest.raises(SystemExit, match=r"error: the runs differ in model \(litemedsam_clicks before, litemedsam"):
        box_sessions(["--compare", base, run(tmp_path / "m.json", model="litemedsam")])
    with pytest.raises(SystemExit, match=r"error: the runs differ in clicks \(5 before, 3 after\)"):
        box_sessions(["--compare", base, run(tmp_path / "c.json", clicks=3)])
    with pytest.raises(SystemExit, match="error: the runs share no set"):
        box_sessions(["--compare", base, run(tmp_path / "s.json", sets=("mri",))])
    with pytest.raises(SystemExit, match=r"error: .*missing.json: not a bench.box_sessions run"):
        box_sessions(["--compare", base, str(tmp_path / "missing.json")])
    assert box_sessions(["--compare", base, base]) == 0


def test_bench_evaluate_refuses_bad_counts_and_models_in_one_line(capsys):
    from bench.evaluate import main as bench_evaluate

    for bad, says in ((["--images", "0"], "must be at least 1"), (["--images", "-1"], "must be at least 1"),
                      (["--clicks", "0"], "must be at least 1")):
        with pytest.raises(SystemExit):
            bench_evaluate(bad)
        assert says in capsys.readouterr().err
    with pytest.raises(SystemExit, match="error: Unknown model 'nosuch'"):
        bench_evaluate(["--model", "nosuch"])
    with pytest.raises(SystemExit, match="error: Model 'litemedsam' takes no clicks"):
        bench_evaluate(["--start", "point"])


def test_samples_without_a_key_are_keyed_by_content_and_never_refused():
    """check_keys groups samples by key to catch two images under one key; key None is the Predictor's "by
    content", not a shared key."""
    from sonosam.errors import InputImageError
    from sonosam.evaluate.harness import check_keys

    rng = np.random.default_rng(0)
    mask = np.zeros((8, 8), bool)
    a, b = (rng.integers(0, 255, (8, 8), dtype=np.uint8) for _ in range(2))
    check_keys([Sample(a, mask, "a", None), Sample(b, mask, "b", None)])
    with pytest.raises(InputImageError, match="share the key"):
        check_keys([Sample(a, mask, "a", ("k",)), Sample(b, mask, "b", ("k",))])
