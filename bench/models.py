"""Benchmarks that print figures, each against the plain baseline measured in the same run.

    python -m bench.models predictor [--threads 2] [--clicks 50]   (from the repository root)
    python -m bench.models backends       # eager vs ONNX Runtime etc.: ms, ratios, mask IoU vs eager
    python -m bench.models pipelines      # tracking the echo loop and propagating through the MRI: eager vs auto
    python -m bench.models boxes          # a user's box at each model's scales vs the whole image alone (litemedsam, _clicks)

Timings on a shared machine are noisy: medians, and ratios taken within one process, are what to compare.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import numpy as np
import torch

from sonosam.demo import LV_BOX
from sonosam.evaluate.metrics import iou as mask_iou
from sonosam.prompts import Prompts


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
    from sonosam.data import echo_a4c_path
    from sonosam.io import read_cine
    from sonosam.models import load_model
    from sonosam.predictor import Predictor

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
    decoder_ms = _median_ms(lambda: model.decode(embedding, Prompts(box=next(iterator)), multimask=False), clicks)
    predictor.embedding(frame, key=("a4c", 0))
    iterator = iter(boxes)
    cached_ms = _median_ms(lambda: predictor.predict(frame, box=next(iterator), key=("a4c", 0)), clicks)
    iterator = iter(boxes)
    naive_ms = _median_ms(lambda: model.decode(model.encode(frame), Prompts(box=next(iterator)), multimask=False), encodes)
    return {"model": model_name, "device": str(model.device), "threads": torch.get_num_threads(),
            "encoder_ms": encoder_ms, "decoder_ms": decoder_ms, "cached_click_ms": cached_ms,
            "naive_click_ms": naive_ms, "speedup_cached_vs_naive": naive_ms / cached_ms,
            "peak_rss_mib": peak_rss_mib()}


def real_test_images() -> list[tuple[str, np.ndarray, tuple]]:
    """(name, image, box) on real data: echo frame 0 with the LV box, and an axial Colin27 T1 slice with the box
    of its largest AAL region (margin 4 px). Used by the backends benchmark and by Testing/core/test_backends.py."""
    from sonosam.data import echo_a4c_path, mri_colin27_paths
    from sonosam.io import read_cine, read_volume

    images = [("echo frame 0", read_cine(echo_a4c_path()).frames[0], LV_BOX)]
    t1, aal = mri_colin27_paths()
    index = 90
    image, labels = read_volume(t1).array[index], read_volume(aal).array[index].astype(np.int64)
    values, counts = np.unique(labels[labels > 0], return_counts=True)
    ys, xs = np.nonzero(labels == values[np.argmax(counts)])
    box = (max(xs.min() - 4, 0), max(ys.min() - 4, 0), min(xs.max() + 4, image.shape[1] - 1),
           min(ys.max() + 4, image.shape[0] - 1))
    images.append((f"MRI axial slice {index}", image, tuple(int(v) for v in box)))
    return images


def bench_backends(clicks: int = 30, encodes: int = 3, model_name: str = "litemedsam",
                   backends: tuple[str, ...] | None = None) -> dict:
    """Each inference backend against eager PyTorch in the same process: encoder ms/frame, decoder ms/prompt,
    click -> mask ms with a cached embedding (Predictor), mask IoU vs eager on a real echo frame and a real
    MRI slice, and the ratios eager/backend. Backends are interleaved per repeat so machine load hits all alike."""
    import os

    from sonosam.models import load_model
    from sonosam.predictor import Predictor

    if backends is None:  # $SONOSAM_BENCH_BACKENDS="eager,eager-fp16" picks others; eager always comes first
        chosen = os.environ.get("SONOSAM_BENCH_BACKENDS") or "onnx-decoder,onnx,auto" + (
            ",eager-fp16,eager-bf16" if torch.cuda.is_available() else "")
        backends = ("eager", *[name for name in chosen.split(",") if name and name != "eager"])
    images = real_test_images()
    frame, box = images[0][1], images[0][2]
    x0, y0, x1, y1 = box
    boxes = [(x0 + i % 7, y0 + i % 5, x1 - i % 3, y1 - i % 4) for i in range(clicks)]
    models, setup_s = {}, {}
    for name in backends:
        start = time.perf_counter()
        models[name] = load_model(model_name, backend=name)
        setup_s[name] = time.perf_counter() - start
    reference = {label: models["eager"].decode(models["eager"].encode(image), Prompts(box=b)).mask for label, image, b in images}
    samples = {name: {"enc": [], "dec": [], "click": []} for name in backends}
    embeddings, predictors = {}, {}
    for name, model in models.items():
        model.encode(frame)  # warm-up
        embeddings[name] = model.encode(frame)
        predictors[name] = Predictor(model)
        predictors[name].embedding(frame, key=("a4c", 0))
    for _ in range(encodes):
        for name, model in models.items():
            start = time.perf_counter()
            model.encode(frame)
            samples[name]["enc"].append(1000 * (time.perf_counter() - start))
    for index in range(clicks):
        for name, model in models.items():
            start = time.perf_counter()
            model.decode(embeddings[name], Prompts(box=boxes[index]), multimask=False)
            samples[name]["dec"].append(1000 * (time.perf_counter() - start))
            start = time.perf_counter()
            predictors[name].predict(frame, box=boxes[index], key=("a4c", 0))
            samples[name]["click"].append(1000 * (time.perf_counter() - start))
    figures = {"model": model_name, "threads": torch.get_num_threads(),
               "columns": "backend(used): setup s | encoder ms (x eager) | decoder ms (x eager) | "
                          "cached click ms (x eager) | IoU vs eager echo / MRI"}
    med = {name: {k: statistics.median(v) for k, v in s.items()} for name, s in samples.items()}
    for name, model in models.items():
        ious = [mask_iou(model.decode(model.encode(image), Prompts(box=b)).mask, reference[label]) for label, image, b in images]
        m, e = med[name], med["eager"]
        figures[f"{name}({model.backend})"] = (
            f"{setup_s[name]:5.1f} | {m['enc']:7.0f} ({e['enc'] / m['enc']:.2f}x) | {m['dec']:6.1f} "
            f"({e['dec'] / m['dec']:.2f}x) | {m['click']:6.1f} ({e['click'] / m['click']:.2f}x) | "
            + " / ".join(f"{iou:.4f}" for iou in ious))
    figures["peak_rss_mib"] = peak_rss_mib()
    return figures


def bench_boxes(boxes: int = 8, model_names=("litemedsam", "litemedsam_clicks"), backend: str = "auto") -> dict:
    """A user's box as the Slicer effect answers it (sonosam.zoom.interactive_predictor: the model's box scales)
    against the whole image alone, on the real echo frame and MRI slice, the image already encoded (prefetched, as
    the effect does): ms for a new box (each box a few px apart, so its crops are new), and, for click-capable models,
    for a click added inside the box and one 20 px outside it, as the effect answers them (on the whole image, since
    stop 48) and on the box's crops as before (a click outside moves the crops: two encodings)."""
    from sonosam.models import PromptKind, load_model
    from sonosam.predictor import Predictor
    from sonosam.zoom import ZoomedPredictor, interactive_predictor

    figures = {"threads": torch.get_num_threads(),
               "columns": "model, image: encode ms | new box ms whole | new box ms at the scales (x whole) | click "
                          "inside / outside the box ms, whole image | the same on the crops"}
    for model_name in model_names:
        model = load_model(model_name, backend=backend)
        figures[f"{model_name}: backend, scales"] = f"{model.backend}, {model.spec.box_scales}"
        for label, image, (x0, y0, x1, y1) in real_test_images():
            predictor = Predictor(model)
            interactive = interactive_predictor(predictor)
            predictor.embedding(image, key=label)
            shifted = [(x0 + i % 7, y0 + i % 5, x1 - i % 3, y1 - i % 4) for i in range(boxes + 1)]
            interactive.predict(image, box=shifted[-1], key=label)   # warm-up
            whole = iter(shifted)
            whole_ms = _median_ms(lambda: predictor.predict(image, box=next(whole), key=label), boxes)
            scaled = iter(shifted)
            scaled_ms = _median_ms(lambda: interactive.predict(image, box=next(scaled), key=label), boxes)
            clicks_ms = "- | -"
            if PromptKind.POINT in model.spec.prompt_kinds:
                zoomed = ZoomedPredictor(predictor, model.spec.box_scales, zoom_clicks=True)   # before stop 48
                times = []
                for answering in (interactive, zoomed):
                    for x, y in (((x0 + x1) / 2, (y0 + y1) / 2), (x1 + 20, y1 + 20)):   # inside, outside the box
                        answering.predict(image, box=shifted[0], key=label)   # the box's crops, cached
                        clicks = iter(Prompts([(x + i, y)], [1], shifted[0]) for i in range(boxes))
                        times.append(_median_ms(lambda: answering.predict(image, next(clicks), key=label), boxes))
                clicks_ms = "{:6.1f} / {:6.1f} | {:6.1f} / {:6.1f}".format(*times)
            encode_ms = _median_ms(lambda: model.encode(image), 3)
            figures[f"{model_name}: {label}"] = (f"{encode_ms:6.0f} | {whole_ms:6.1f} | {scaled_ms:6.1f} "
                                                 f"({scaled_ms / whole_ms:.1f}x) | {clicks_ms}")
            predictor.close()
    figures["peak_rss_mib"] = peak_rss_mib()
    return figures


def _pipeline_run(pipeline: str, backend: str, threads: int) -> dict:
    """One pipeline with one backend, from a fresh process (so that its peak RSS is its own)."""
    torch.set_num_threads(threads)
    if pipeline == "track":   # the LV through the real 120-frame A4C loop, one object, cold cache
        from bench.track import bench_track

        run = bench_track(objects=(1,), backend=backend)
        return {"backend": run["backend"], "seconds": run["1_object"]["seconds"],
                "per_s": run["frames"] / run["1_object"]["seconds"], "peak_rss_mib": peak_rss_mib()}
    # Colin27 T1, Thalamus_R from one seed box, both ways, cold cache (the encoder in the loop)
    from sonosam.data import mri_colin27_paths
    from sonosam.io import read_volume
    from sonosam.models import load_model
    from sonosam.predictor import Predictor
    from sonosam.volume import Seed, propagate
    from bench.volume import label_seed

    t1, aal = mri_colin27_paths()
    volume, labels = read_volume(t1).array, read_volume(aal).array
    model = load_model("litemedsam", backend=backend)
    index, box = label_seed(labels, 78)
    start = time.perf_counter()
    result = propagate(Predictor(model), volume, [Seed(index, box=box)])
    seconds = time.perf_counter() - start
    return {"backend": model.backend, "seconds": seconds, "per_s": len(result.slices) / seconds,
            "peak_rss_mib": peak_rss_mib()}


def bench_pipelines(backends: tuple[str, ...] = ("eager", "auto")) -> dict:
    """End to end, each backend against eager: echo tracking frames/s and MRI propagation slices/s, with
    each run's peak RSS (every run in a fresh process, one after the other)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    figures = {"threads": torch.get_num_threads(),
               "columns": "pipeline/backend(used): seconds | per second (x eager) | peak RSS MiB"}
    for pipeline, unit in (("track", "frames/s"), ("propagate", "slices/s")):
        runs = {}
        for backend in backends:
            with context.Pool(1) as pool:
                runs[backend] = pool.apply(_pipeline_run, (pipeline, backend, torch.get_num_threads()))
        for backend, run in runs.items():
            figures[f"{pipeline}/{backend}({run['backend']})"] = (
                f"{run['seconds']:6.1f} s | {run['per_s']:6.2f} {unit} ({run['per_s'] / runs[backends[0]]['per_s']:.2f}x)"
                f" | {run['peak_rss_mib']:.0f}")
    return figures


def _print_table(title: str, figures: dict) -> None:
    print(f"\n{title}")
    for key, value in figures.items():
        text = f"{value:.1f}" if isinstance(value, float) else str(value)
        print(f"  {key:28s} {text}")


BENCHMARKS = {"predictor": bench_predictor, "backends": bench_backends, "pipelines": bench_pipelines,
              "boxes": bench_boxes}


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
