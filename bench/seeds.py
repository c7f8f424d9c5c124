"""Figures for docs/seeds.md: the refiner, SAM^assist and the prompt predictor on the real data here.

    python -m bench.seeds refine [--steps 100]
    python -m bench.seeds assist [--assist-steps 10,15,30] [--structures 37,72,78] [--bases litemedsam]
    python -m bench.seeds ppn [--domain mri|echo] [--steps 600 --minutes 30] [--part val|test] [--ppn-out F]
    python -m bench.seeds ppn-track --ppn-in ECHO.ppn.pt [--start 45]
    python -m bench.seeds figures

Every table says what it is held out on. Run nice'd with one thread on a shared machine."""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from sonosam.seeds_data import (ASSIST_LABELS, ECHO_CLASS, PPN_CLASSES, SUBCORTICAL, assist_slices, colin27, degrade,
                                echo_cases, echo_ppn_data, largest_slice, ppn_labels, ppn_split)

# compact structures a point prompt can outline, unlike the folded cortical regions.
def bench_refine(model_name: str = "litemedsam_clicks", steps: int = 100, verbose: bool = True) -> dict:
    from sonosam.evaluate.metrics import dice
    from sonosam.models import load_model
    from sonosam.refine import refine

    model = load_model(model_name, device="cpu")
    volume, labels, window, names = colin27()
    rows = []

    def run(domain, name, image, gt, embedding, context, seed):
        coarse = degrade(gt, seed)
        began = time.perf_counter()
        result = refine(model, image, coarse, context=context, seed=seed, steps=steps, embedding=embedding)
        row = dict(domain=domain, structure=name, area=int(gt.sum()), coarse=dice(coarse > 0.5, gt),
                   refined=dice(result.mask, gt), k=result.k, steps=len(result.losses),
                   seconds=time.perf_counter() - began,
                   positives_inside=bool(all(result.region[int(y), int(x)] for x, y in result.positives)))
        rows.append(row)
        if verbose:
            print(json.dumps(row), flush=True)

    for i, label in enumerate(SUBCORTICAL):
        index = largest_slice(labels, label)
        image = volume[index]
        run("MRI", names.get(label, str(label)), image, labels[index] == label, model.encode(image, window), None, i)
    frame, references = echo_cases(model)
    embedding = model.encode(frame)
    for i, (name, gt) in enumerate(references.items()):
        run("echo", name, frame, gt, embedding, None, 100 + i)
    summary = {}
    for domain in ("MRI", "echo"):
        part = [r for r in rows if r["domain"] == domain]
        summary[domain] = {"n": len(part), "coarse": float(np.mean([r["coarse"] for r in part])),
                           "refined": float(np.mean([r["refined"] for r in part]))}
    return {"model": model_name, "rows": rows, "summary": summary}


def bench_assist(bases=("litemedsam", "litemedsam_clicks"), slice_counts=(2, 5), clicks: int = 3,
                 steps=(30,), structures=ASSIST_LABELS, cache: str = "runs/cache", encode_backend: str = "eager",
                 verbose: bool = True) -> dict:
    """Per structure (AAL label) and base model: the base and SAM^assist trained on 2 and 5 slices of that
    structure, Dice on the structure's other axial slices at 1..3 clicks and with the tight box. ``steps``: the
    step counts to report, from one run of the largest (a run of n steps is the first n of a longer one)."""
    from sonosam.assist import train_assist
    from sonosam.evaluate.datasets import Sample
    from sonosam.models import load_model
    from sonosam.train.cache import EmbeddingStore
    from sonosam.train.finetune import clickable
    from sonosam.train.validate import evaluate_cached

    steps = sorted(set(int(s) for s in steps))
    volume, labels, window, names = colin27()
    rows, timings = [], []
    for base_name in bases:
        base = load_model(base_name, device="cpu")
        store = EmbeddingStore(cache, base)
        for label in structures:
            name = names.get(label, str(label))
            for n_train in slice_counts:
                train, test = assist_slices(labels, label, n_train)
                _precompute(store, [volume[i] for i in train + test], encode_backend)
                samples = [Sample(volume[i], labels[i] == label, f"{name}@{i}", ("colin27", 0, i), label,
                                  {"slice": i}) for i in test]
                if n_train == slice_counts[0]:  # the base once per structure, on the same test slices as 2 slices
                    rows.append(dict(base=base_name, structure=name, slices=0, n_test=len(test),
                                     **_scores(evaluate_cached(clickable(base, mask=False), store, samples, clicks))))
                    if verbose:
                        print(json.dumps(rows[-1]), flush=True)
                embeddings = [store.get(volume[i]).features[None] for i in train]
                result = train_assist(base, [volume[i] for i in train], [labels[i] == label for i in train],
                                      steps=steps[-1], embeddings=embeddings, seed=label, snapshots=steps)
                timings.append(result.seconds)
                for n_steps in steps:
                    rows.append(dict(base=base_name, structure=name, slices=n_train, steps=n_steps, n_test=len(test),
                                     train_slices=train, seconds=round(result.seconds, 1),
                                     cpu_seconds=round(result.cpu_seconds, 1),
                                     **_scores(evaluate_cached(result.snapshots[n_steps], store, samples, clicks))))
                    if verbose:
                        print(json.dumps(rows[-1]), flush=True)
    summary = {}
    for base_name in bases:
        for n in (0, *slice_counts):
            for n_steps in ([None] if n == 0 else steps):
                part = [r for r in rows if r["base"] == base_name and r["slices"] == n and r.get("steps") == n_steps]
                key = f"{base_name} {'base' if n == 0 else f'+assist {n} slices, {n_steps} steps'}"
                summary[key] = {k: round(float(np.mean([r[k] for r in part])), 3) for k in ("dice@1", "dice@3", "box")}
    summary[f"train_seconds_median ({steps[-1]} steps)"] = float(np.median(timings))
    summary[f"train_cpu_seconds_median ({steps[-1]} steps)"] = float(np.median([r["cpu_seconds"] for r in rows
                                                                                if r.get("steps") == steps[-1]]))
    return {"rows": rows, "summary": summary, "steps": steps}


def ppn_cases(domain: str) -> tuple[dict, dict[str, int]]:
    """{"train"|"val"|"test": [(name, image, label map or None)]} and the classes {name: label value}."""
    if domain == "mri":
        t1, labels = ppn_labels()
        return ({part: [(f"axial{i}", t1[i], labels[i]) for i in slices] for part, slices in ppn_split().items()},
                dict(PPN_CLASSES))
    if domain == "echo":
        return echo_ppn_data(), {ECHO_CLASS: 1}
    raise ValueError(f"domain must be mri or echo, not {domain!r}")


def evaluate_ppn(ppn, model, store, cases, classes: dict[str, int], threshold: float = 0.5, verbose: bool = True) -> dict:
    """Held-out figures per class at full resolution (``auto_segment``): Dice with no prompts on slices where
    the class is present (missed = 0), the same with objectness ignored, the semi-autonomous Dice (learned
    prompts + one user click in the largest error region of the forced autonomous mask), the share of absent
    slices rejected, mean objectness present / absent."""
    from sonosam.evaluate.clicks import next_click
    from sonosam.evaluate.metrics import dice
    from sonosam.models import Embedding
    from sonosam.ppn import auto_segment

    rows = {}
    for name, value in classes.items():
        auto, forced, semi, obj_present, obj_absent, rejected = [], [], [], [], [], 0
        for case, image, labels in cases:
            if labels is None:   # unlabelled (echo frames where the reference finds no pool): not scored
                continue
            cached = store.get(image)
            embedding = Embedding(cached.features[None], cached.original_size, cached.input_size, model.model_id)
            gt = labels == value
            result = auto_segment(ppn, model, embedding, name, force=True)   # forced: the mask even when judged absent
            judged_present = result.objectness >= threshold
            if not gt.any():
                obj_absent.append(result.objectness)
                rejected += not judged_present
                continue
            obj_present.append(result.objectness)
            forced.append(dice(result.mask, gt))
            auto.append(forced[-1] if judged_present else 0.0)
            click = next_click(result.mask, gt)
            if click is None:
                semi.append(forced[-1])
            else:
                more = auto_segment(ppn, model, embedding, name, points=[(click.x, click.y)], labels=[click.label],
                                    force=True)
                semi.append(dice(more.mask, gt))
        mean = lambda v: round(float(np.mean(v)), 3) if v else None   # noqa: E731
        rows[name] = dict(present=len(auto), dice_auto=mean(auto), dice_forced=mean(forced), dice_semi_1click=mean(semi),
                          absent=len(obj_absent), absent_rejected=round(rejected / len(obj_absent), 3) if obj_absent else None,
                          objectness_present=mean(obj_present), objectness_absent=mean(obj_absent))
        if verbose:
            print(name, json.dumps(rows[name]), flush=True)
    return rows


def bench_ppn(domain: str = "mri", base: str = "litemedsam_clicks", steps: int = 600, lr: float = 1e-3, batch: int = 4,
              max_minutes: float | None = None, part: str = "val", out: str | None = None, validate_every: int = 50,
              pool: int = 2, seed: int = 0, cache: str = "runs/cache", trained: str | None = None,
              encode_backend: str = "eager", verbose: bool = True) -> dict:
    """Train on the training slabs/blocks, keep the weights that score best on the validation ones, report
    ``part`` ("val" while choosing settings; "test" once, at the end). ``trained``: a saved predictor to
    evaluate instead of training one. ``encode_backend``: what fills the embedding cache (the cache is keyed by
    the encoder's weights; "onnx" is ~2-3x faster on CPU, features within 1e-5 of eager's)."""
    import torch

    from sonosam.models import load_model
    from sonosam.ppn import PromptPredictor, load_ppn, ppn_validator, save_ppn, train_ppn
    from sonosam.train.cache import EmbeddingStore

    parts, classes = ppn_cases(domain)
    if trained:
        ppn = load_ppn(trained)
        model = load_model(ppn.base_model, device="cpu")
        store = EmbeddingStore(cache, model)
        _precompute(store, [image for _, image, _ in parts[part]], encode_backend)
        summary = evaluate_ppn(ppn, model, store, parts[part], classes, verbose=verbose)
        return {"summary": summary, "part": part, "ppn": trained}
    model = load_model(base, device="cpu")
    store = EmbeddingStore(cache, model)
    train = [c for c in parts["train"] if c[2] is not None]
    began = time.perf_counter()
    _precompute(store, [image for p in parts.values() for _, image, _ in p], encode_backend)
    encode_seconds = time.perf_counter() - began

    def progress(step, total, loss):
        if verbose and step % 25 == 0:
            print(f"step {step}/{total} loss {loss:.3f} ({time.perf_counter() - began:.0f} s)", flush=True)

    val = [c for c in parts["val"] if c[2] is not None]   # unlabelled echo frames are not scored
    validate = ppn_validator(model, [c[1] for c in val], [c[2] for c in val], classes, store=store)
    torch.manual_seed(seed)
    ppn = PromptPredictor(list(classes), pool=pool, base_model=model.spec.name)
    ppn, log = train_ppn(model, [c[1] for c in train], [c[2] for c in train], classes, steps=steps, batch=batch, lr=lr,
                         store=store, progress=progress, seed=seed, ppn=ppn, validate=validate,
                         validate_every=validate_every, max_seconds=None if max_minutes is None else 60 * max_minutes)
    if verbose:
        print("validation (step, score):", log.validation, "kept step", log.best_step, flush=True)
    settings = dict(domain=domain, base=base, steps=log.steps, lr=lr, batch=batch, pool=pool, seed=seed,
                    best_step=log.best_step, validation=log.validation, train_images=len(train),
                    train_seconds=round(log.seconds), encode_seconds=round(encode_seconds))
    if out:
        save_ppn(ppn, out, {**settings, "held_out": f"{domain}: slabs/blocks by click_data.slab_part"},
                 overwrite=True)   # the bench refreshes its own artefact
    summary = evaluate_ppn(ppn, model, store, parts[part], classes, verbose=verbose)
    return {"summary": summary, "part": part, **settings}


def bench_ppn_track(ppn_path: str, start: int = 45, cache: str = "runs/cache", encode_backend: str = "eager",
                    verbose: bool = True) -> dict:
    """Tracking the echo loop from the prompt predictor's mask (``add_auto_object`` on frame ``start``, a
    held-out test frame) next to the tracker from the documented LV box (docs/tracking.md: LV_BOX on frame 0,
    and the same box on ``start``) and the PPN alone on every frame; Dice per frame against the blood-pool
    reference the echo PPN figures use (``echo_lv_pool``, model-free; unlabelled frames are not scored) and
    against docs/tracking.md's box-prompted reference (LiteMedSAM with LV_BOX on every frame: model-made).
    Every frame is encoded once into ``cache``; the trackers read those embeddings (no encoding of their own)."""
    from sonosam.data import echo_a4c_path
    from sonosam.io import read_cine
    from sonosam.masks import dice
    from sonosam.models import Embedding, load_model
    from sonosam.ppn import add_auto_object, auto_segment, load_ppn
    from sonosam.predictor import Predictor
    from sonosam.prompts import Prompts
    from sonosam.seeds_data import echo_lv_pool
    from sonosam.track import Tracker
    from sonosam.track.synthetic import LV_BOX
    from sonosam.train.cache import EmbeddingStore
    from sonosam.train.click_data import slab_part

    ppn = load_ppn(ppn_path)
    frames = read_cine(echo_a4c_path()).frames
    n = len(frames)
    test = [t for t in range(n) if slab_part(t, 15) == "test"]
    if slab_part(start, 15) != "test":
        raise ValueError(f"start frame {start} is not a held-out test frame ({test[0]}-...)")
    pools = [echo_lv_pool(f) for f in frames]
    models = {name: load_model(name, device="cpu") for name in (ppn.base_model, "litemedsam")}
    store = EmbeddingStore(cache, models[ppn.base_model])
    began = time.perf_counter()
    _precompute(store, list(frames), encode_backend)
    encode_seconds = time.perf_counter() - began

    def predictor_for(model):   # the stored embeddings under the tracker's frame keys: nothing is encoded again
        predictor = Predictor(model, cache_mib=4096)
        for t, frame in enumerate(frames):
            c = store.get(frame)
            predictor.cache.put((model.model_id, ("a4c", t), None),
                                Embedding(c.features[None], c.original_size, c.input_size, model.model_id))
        return predictor

    predictors = {name: predictor_for(model) for name, model in models.items()}
    base = predictors["litemedsam"]
    boxed = [base.predict(frames[t], Prompts(box=LV_BOX), key=("a4c", t)).mask for t in range(n)]

    def scores(masks) -> dict:
        pool_d = {t: dice(masks[t], pools[t]) for t in range(n) if pools[t] is not None}
        box_d = [dice(masks[t], boxed[t]) for t in range(n)]
        held = [pool_d[t] for t in test if t in pool_d]
        r = lambda v: round(float(v), 3)   # noqa: E731
        return dict(pool_test_mean=r(np.mean(held)), pool_test_min=r(np.min(held)), pool_test_n=len(held),
                    pool_test_at_least_0_8=int(sum(d >= 0.8 for d in held)),
                    pool_all_mean=r(np.mean(list(pool_d.values()))), pool_all_min=r(np.min(list(pool_d.values()))),
                    pool_all_n=len(pool_d),
                    box_ref_test_mean=r(np.mean([box_d[t] for t in test])),
                    box_ref_all_mean=r(np.mean(box_d)), box_ref_all_min=r(np.min(box_d)),
                    per_frame_pool={t: r(d) for t, d in pool_d.items()})

    rows = {}
    alone = [auto_segment(ppn, models[ppn.base_model], predictors[ppn.base_model].embedding(frames[t], key=("a4c", t)),
                          ppn.classes[0]) for t in range(n)]
    rows["ppn_alone"] = dict(start="every frame", model=ppn.base_model, present_frames=sum(a.present for a in alone),
                             **scores([a.mask if a.present else np.zeros(frames.shape[1:], bool) for a in alone]))
    # the PPN needs its own base model; the tracker can run another one from the PPN's mask (same image encoder)
    runs = [("tracker_ppn_start", ppn.base_model, start, "ppn"), ("tracker_ppn_mask_litemedsam", "litemedsam", start, "mask"),
            ("tracker_box_start_same_frame", ppn.base_model, start, "box"),
            ("tracker_box_start_frame0", ppn.base_model, 0, "box"), ("tracker_box_start_frame0_documented", "litemedsam", 0, "box")]
    for name, model_name, frame, how in runs:
        predictor = predictors[model_name]
        calls = predictor.encoder_calls
        tracker = Tracker(predictor, frames, pause=False, key="a4c")
        t0 = time.perf_counter()
        if how == "ppn":
            add_auto_object(tracker, ppn, ppn.classes[0], frame)
        elif how == "mask":
            tracker.add_object(ppn.classes[0], frame, mask=alone[frame].mask)
        else:
            tracker.add_object(ppn.classes[0], frame, box=LV_BOX)
        tracker.run()
        seconds = time.perf_counter() - t0
        masks = tracker.masks(ppn.classes[0])
        conf = tracker.confidences()[:, 0]
        tracker.close()
        assert predictor.encoder_calls == calls, "the tracker encoded a frame: the shared embeddings were not used"
        start_pool = pools[frame]
        rows[name] = dict(start=f"{'ppn' if how == 'mask' else how} on frame {frame}", model=model_name,
                          start_dice_pool=None if start_pool is None else round(dice(masks[frame], start_pool), 3),
                          start_dice_box_ref=round(dice(masks[frame], boxed[frame]), 3),
                          flagged_at_0_85=len(tracker.events), model_frames=len(tracker.model_frames),
                          confidence_min=round(float(np.nanmin(np.delete(conf, frame))), 3),
                          seconds_without_encoding=round(seconds, 1), **scores(masks))
        if verbose:
            print(name, json.dumps({k: v for k, v in rows[name].items() if k != "per_frame_pool"}), flush=True)
    summary = {k: {m: v for m, v in row.items() if m != "per_frame_pool"} for k, row in rows.items()}
    return {"summary": summary, "rows": rows, "ppn": ppn_path, "start": start, "test_frames": test,
            "labelled_test_frames": [t for t in test if pools[t] is not None], "encode_seconds": round(encode_seconds)}


def _precompute(store, images, backend: str = "eager") -> None:
    """Fill ``store`` (keyed by the encoder's weights) with ``backend``'s encodings of the images not in it."""
    from sonosam.models import load_model
    from sonosam.train.cache import EmbeddingStore, encoder_id

    if backend != "eager" and any(not store.has(image) for image in images):
        encoder = load_model(store.model.spec.name, device="cpu", backend=backend)
        assert encoder_id(encoder) == encoder_id(store.model)
        store = EmbeddingStore(store.folder.parent, encoder, memory=False)
    store.precompute(images)


def figures(folder: str = "docs/images", ppn_path: str = "runs/ppn.pt", verbose: bool = True) -> dict:
    """docs/images/seeds_refine_mri.png (coarse map at 0.5 in blue, refined mask in red, AAL label in green,
    positives +, negatives x) and seeds_ppn_mri.png (no-click masks on a held-out slab's slice)."""
    from pathlib import Path

    from sonosam.io import save_overlay_png
    from sonosam.models import load_model
    from sonosam.ppn import auto_segment, load_ppn
    from sonosam.refine import refine

    Path(folder).mkdir(parents=True, exist_ok=True)
    volume, labels, window, _ = colin27()
    out = {}
    model = load_model("litemedsam_clicks", device="cpu")
    index = largest_slice(labels, 72)
    gt = labels[index] == 72
    coarse = degrade(gt, 3)   # seed 3: the bench's own case (Caudate_R is SUBCORTICAL[3])
    result = refine(model, volume[index], coarse, seed=3, embedding=model.encode(volume[index], window))
    crop = (slice(60, 160), slice(40, 150))
    points = np.concatenate([result.positives, result.negatives]) - [crop[1].start, crop[0].start]
    out["refine"] = str(save_overlay_png(Path(folder) / "seeds_refine_mri.png", _zoom(volume[index][crop]),
                                         [_zoom(m[crop]) for m in (gt, coarse > 0.5, result.mask)],
                                         colors=[(0.2, 0.9, 0.2), (0.2, 0.4, 1.0), (1.0, 0.2, 0.2)],
                                         points=points * 3, labels=[1] * result.k + [0] * len(result.negatives),
                                         overwrite=True))
    if Path(ppn_path).is_file():
        ppn = load_ppn(ppn_path)
        base = load_model(ppn.base_model or "litemedsam_clicks", device="cpu")
        test = ppn_split()["test"]
        index = test[len(test) // 2]
        embedding = base.encode(volume[index])
        masks = [auto_segment(ppn, base, embedding, name).mask for name in ppn.classes]
        masks = [m if m is not None else np.zeros_like(volume[index], bool) for m in masks]
        out["ppn"] = str(save_overlay_png(Path(folder) / "seeds_ppn_mri.png", volume[index], masks, overwrite=True))
        out["ppn_slice"] = index
    if verbose:
        print(json.dumps(out))
    return out


def _zoom(array: np.ndarray, factor: int = 3) -> np.ndarray:
    return np.kron(array, np.ones((factor, factor), dtype=array.dtype))


def _scores(metrics: dict) -> dict:
    return {k: metrics[k] for k in ("dice@1", "dice@3", "box")}


def main(argv=None) -> int:
    import torch

    parser = argparse.ArgumentParser(prog="python -m bench.seeds")
    parser.add_argument("what", choices=["refine", "assist", "ppn", "ppn-track", "figures"])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--minutes", type=float, help="ppn: stop training after this many minutes")
    parser.add_argument("--domain", default="mri", choices=["mri", "echo"], help="ppn: Colin27 slabs or echo blocks")
    parser.add_argument("--base", default="litemedsam_clicks", help="ppn: the frozen model")
    parser.add_argument("--lr", type=float, default=1e-3, help="ppn: learning rate")
    parser.add_argument("--batch", type=int, default=4, help="ppn: images per step")
    parser.add_argument("--pool", type=int, default=2, help="ppn: embedding pooling (1 or 2)")
    parser.add_argument("--validate-every", type=int, default=50, help="ppn: steps between validations")
    parser.add_argument("--part", default="val", choices=["val", "test"],
                        help="ppn: report on the validation slabs (choosing settings) or the test slabs (once)")
    parser.add_argument("--ppn-out", help="ppn: write the trained predictor here")
    parser.add_argument("--ppn-in", help="ppn: evaluate this trained predictor on --part (no training)")
    parser.add_argument("--encode-backend", default="eager", choices=["eager", "onnx"],
                        help="what encodes the images into the embedding cache (onnx: faster on CPU)")
    parser.add_argument("--assist-steps", default="30", help="assist: step counts to report, e.g. 10,20,30 (one run)")
    parser.add_argument("--structures", default=",".join(map(str, ASSIST_LABELS)),
                        help="assist: AAL labels of the structures (default: the documented ones)")
    parser.add_argument("--bases", default="litemedsam,litemedsam_clicks", help="assist: base models")
    parser.add_argument("--start", type=int, default=45, help="ppn-track: the held-out frame the tracker starts on")
    parser.add_argument("--out", help="write the result as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.what == "refine":
        result = bench_refine(steps=args.steps)
    elif args.what == "figures":
        result = figures()
    elif args.what == "ppn-track":
        if not args.ppn_in:
            parser.error("ppn-track needs --ppn-in (an echo PPN from `ppn --domain echo --ppn-out F`)")
        result = bench_ppn_track(args.ppn_in, args.start, encode_backend=args.encode_backend)
    elif args.what == "assist":
        result = bench_assist(bases=args.bases.split(","), steps=[int(v) for v in args.assist_steps.split(",")],
                              structures=[int(v) for v in args.structures.split(",")], encode_backend=args.encode_backend)
    else:
        result = bench_ppn(args.domain, args.base, steps=args.steps if args.steps != 100 else 600, lr=args.lr,
                           batch=args.batch, max_minutes=args.minutes, part=args.part, out=args.ppn_out,
                           validate_every=args.validate_every, pool=args.pool, trained=args.ppn_in, encode_backend=args.encode_backend)
    print(json.dumps(result.get("summary", result), indent=1))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

