"""Benchmark: images per second for a full simulated-click evaluation.

    python -m bench.evaluate [--model litemedsam] [--images 10] [--clicks 10] [--start box] [--device cpu]

Runs the evaluation protocol (``sonosam.evaluate.evaluate``) on real Colin27 MRI slices (AAL labels)
and prints a markdown table: images/s, seconds per image, encoder seconds per image and decoder
milliseconds per call, Dice. For a model that takes no clicks (the embedded LiteMedSAM) the protocol stops
after the box; a second row then times the cost a 10-interaction run would have (the box plus nine
more decoder calls with the simulated clicks and previous logits, which such a model ignores or uses
only as a mask prompt): its Dice is not a click result and is not shown.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from sonosam.cli import int_at_least

__all__ = ["TimedModel", "benchmark", "main"]


class TimedModel:
    """Wraps a model and adds up the wall time of its ``encode`` and ``decode`` calls."""

    def __init__(self, model):
        self._model = model
        self.encode_s = self.decode_s = 0.0
        self.encode_calls = self.decode_calls = 0

    def __getattr__(self, name):
        return getattr(self._model, name)

    def encode(self, *args, **kwargs):
        began = time.perf_counter()
        try:
            return self._model.encode(*args, **kwargs)
        finally:
            self.encode_s += time.perf_counter() - began
            self.encode_calls += 1

    def decode(self, *args, **kwargs):
        began = time.perf_counter()
        try:
            return self._model.decode(*args, **kwargs)
        finally:
            self.decode_s += time.perf_counter() - began
            self.decode_calls += 1


def _decoder_load(predictor, samples, n_clicks: int, start: str) -> None:
    """The calls of an n-interaction run, for timing only: the model's answers are not scored."""
    from sonosam.evaluate.clicks import ClickSimulator

    for index, sample in enumerate(samples):
        sim = ClickSimulator(rng=np.random.default_rng([0, index]))
        prompts = sim.start(sample.mask, start)
        mask = logits = None
        for step in range(n_clicks):
            if step:
                click, prompts = sim.correct(mask, sample.mask, prompts)
                if click is None:
                    break
            pred = predictor.predict(sample.image, prompts.with_mask(logits), multimask=False, key=sample.key)
            mask, logits = np.asarray(pred.masks[0]), np.asarray(pred.low_res_logits[0])


def benchmark(model_name: str = "litemedsam", n_images: int = 10, n_clicks: int = 10, start: str = "box",
              device: str | None = None, checkpoint: str | None = None, progress: bool = False) -> list[dict]:
    """Rows of the benchmark table (see the module doc)."""
    import torch

    from sonosam.models import load_model
    from sonosam.predictor import Predictor
    from sonosam.evaluate.datasets import colin27_samples
    from sonosam.evaluate.harness import evaluate

    samples = colin27_samples(max_samples=n_images)
    model = TimedModel(load_model(model_name, checkpoint=checkpoint, device=device))
    threads = torch.get_num_threads()
    rows = []

    predictor = Predictor(model)
    began = time.perf_counter()
    result = evaluate(predictor, samples, n_clicks=n_clicks, start=start, name=model_name, progress=progress)
    seconds = time.perf_counter() - began
    summary = result.summary()
    rows.append(_row("protocol" if result.clicks_supported else "protocol (box only)", model, result.start,
                     len(samples), seconds, threads, summary["mean_dice"], n_clicks))
    predictor.close()

    if not result.clicks_supported and n_clicks > 1:
        model.encode_s = model.decode_s = 0.0
        model.encode_calls = model.decode_calls = 0
        predictor = Predictor(model)  # fresh cache: the encoder runs again, as in a real run
        began = time.perf_counter()
        _decoder_load(predictor, samples, n_clicks, result.start)
        seconds = time.perf_counter() - began
        rows.append(_row(f"{n_clicks} decoder calls/image (timing only)", model, result.start, len(samples),
                         seconds, threads, None, n_clicks))
        predictor.close()
    return rows


def _row(kind, model, start, n, seconds, threads, curve, n_clicks) -> dict:
    return {
        "run": kind,
        "model": model.spec.name,
        "device": f"{model.device}" + (f" ({threads} threads)" if str(model.device) == "cpu" else ""),
        "start": start,
        "images": n,
        "decoder calls": model.decode_calls,
        "images/s": n / seconds,
        "s/image": seconds / n,
        "encoder s/image": model.encode_s / max(model.encode_calls, 1),
        "decoder ms/call": 1000 * model.decode_s / max(model.decode_calls, 1),
        "Dice@1 (%)": None if curve is None else 100 * float(curve[0]),
        f"Dice@{n_clicks} (%)": None if curve is None or not np.isfinite(curve[-1]) else 100 * float(curve[-1]),
    }


def format_rows(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column)
            cells.append("n/a" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="litemedsam")
    parser.add_argument("--checkpoint")
    parser.add_argument("--images", type=int_at_least(1), default=10)
    parser.add_argument("--clicks", type=int_at_least(1, 100), default=10)
    parser.add_argument("--start", choices=("auto", "point", "box"), default="box")
    parser.add_argument("--device")
    parser.add_argument("--threads", type=int_at_least(1), help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    import warnings

    import torch

    from sonosam.errors import SonoSAMError
    from sonosam.evaluate.harness import check_starts

    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        # a misspelt model or a start it cannot take: before the data and weights
        check_starts(args.model, [args.start] if args.checkpoint is None else [])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            rows = benchmark(args.model, args.images, args.clicks, args.start, args.device, args.checkpoint,
                             progress=True)
    except SonoSAMError as error:
        raise SystemExit(f"error: {error}") from None
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
