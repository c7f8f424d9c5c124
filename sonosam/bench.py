"""Benchmarks that print figures, each against the plain baseline measured in the same run.

    python -m sonosam.bench predictor [--threads 2] [--clicks 50]

Timings on a shared machine are noisy: medians, and ratios taken within one process, are what to compare.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from .demo import LV_BOX


def _median_ms(function, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append(1000 * (time.perf_counter() - start))
    return statistics.median(samples)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_predictor(clicks: int = 50, encodes: int = 5, model_name: str = "litemedsam") -> dict:
    """Interactive clicking on the real echo frame: cached embedding vs encode-per-click (naive)."""
    from .data import echo_a4c_path
    from .io import read_cine
    from .models import load_model
    from .predictor import Predictor

    frame = read_cine(echo_a4c_path()).frames[0]
    model = load_model(model_name)
    predictor = Predictor(model)
    x0, y0, x1, y1 = LV_BOX
    # Clicks vary the prompt slightly, as a user adjusting a box would.
    boxes = [(x0 + i % 7, y0 + i % 5, x1 - i % 3, y1 - i % 4) for i in range(clicks)]
    model.encode(frame)  # warm-up: first-call allocations are not what a user waits for later

    encoder_ms = _median_ms(lambda: model.encode(frame), encodes)
    embedding = model.encode(frame)
    iterator = iter(boxes)
    decoder_ms = _median_ms(lambda: model.decode(embedding, box=next(iterator), multimask=False), clicks)
    predictor.embedding(frame, key=("a4c", 0))
    iterator = iter(boxes)
    cached_ms = _median_ms(lambda: predictor.predict(frame, box=next(iterator), key=("a4c", 0)), clicks)
    iterator = iter(boxes)
    naive_ms = _median_ms(lambda: model.decode(model.encode(frame), box=next(iterator), multimask=False), encodes)
    return {"model": model_name, "device": str(model.device), "threads": torch.get_num_threads(),
            "encoder_ms": encoder_ms, "decoder_ms": decoder_ms, "cached_click_ms": cached_ms,
            "naive_click_ms": naive_ms, "speedup_cached_vs_naive": naive_ms / cached_ms,
            "peak_rss_mib": peak_rss_mib()}


def _print_table(title: str, figures: dict) -> None:
    print(f"\n{title}")
    for key, value in figures.items():
        text = f"{value:.1f}" if isinstance(value, float) else str(value)
        print(f"  {key:28s} {text}")


BENCHMARKS = {"predictor": bench_predictor}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="SonoSAM benchmarks on real data")
    parser.add_argument("which", choices=sorted(BENCHMARKS), nargs="+")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (CI machines have 2 cores)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for name in args.which:
        _print_table(f"benchmark: {name}", BENCHMARKS[name]())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
