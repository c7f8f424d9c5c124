"""Evaluation harness: the SonoSAM papers' simulated-click protocol, metrics, datasets and reports.

    from sonosam.evaluate import colin27_samples, evaluate, write_report
    from sonosam.models import load_model
    from sonosam.predictor import Predictor
    from sonosam.zoom import interactive_predictor

    samples = colin27_samples(max_samples=10)               # real MRI slices with AAL labels (or load_samples(DIR))
    predictor = interactive_predictor(Predictor(load_model("litemedsam")))   # the route `sonosam evaluate` scores
    result = evaluate(predictor, samples, n_clicks=10, start="box")
    write_report([result], "report/")                       # per_image.csv, summary.md/.csv, dice_vs_clicks.png
    per_source_table([result])                              # each volume's Dice and the mean over volumes

The click simulator (``sonosam.evaluate.clicks``) is shared with training's prompt sampler.
See docs/evaluate.md for the protocol and its conventions.
"""

from .clicks import Click, ClickSimulator, box_from_mask, centroid_click, first_click, next_click
from .datasets import Sample, colin27_samples, find_pairs, load_pair, load_samples, samples_from_arrays
from .harness import ImageResult, ModelResult, evaluate, evaluate_models, run_sample
from .metrics import (FrameRecord, clicks_per_loop, dice, dice_drop_before_intervention, interventions_per_loop,
                      iou, max_dice, noc, summarize_curves, summarize_tracking)
from .report import model_record, per_source_table, run_record, summary_table, write_report

__all__ = [
    "Click", "ClickSimulator", "box_from_mask", "centroid_click", "first_click", "next_click",
    "Sample", "colin27_samples", "find_pairs", "load_pair", "load_samples", "samples_from_arrays",
    "ImageResult", "ModelResult", "evaluate", "evaluate_models", "run_sample",
    "FrameRecord", "clicks_per_loop", "dice", "dice_drop_before_intervention", "interventions_per_loop", "iou",
    "max_dice", "noc", "summarize_curves", "summarize_tracking", "per_source_table", "summary_table", "write_report",
    "model_record", "run_record",
]
