"""Report writing: per-image CSV, summary table (markdown + CSV, the paper's columns), Dice-vs-clicks plot."""

from __future__ import annotations

import csv
import json
import math
import subprocess
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DataFileError
from ..io.atomic import atomic_output, output_set, write_text
from . import metrics
from .harness import ModelResult

__all__ = ["SUMMARY_COLUMNS", "SOURCE_COLUMNS", "summary_table", "per_source_table", "write_per_image_csv",
           "write_summary", "plot_dice_curves", "write_report", "format_markdown", "code_version", "model_record",
           "run_record"]

# The SonoSAM paper's table (Dice after 1/3/5/N clicks, MaxDSC, NoC@80/90, FR@80/90), with the run's facts.
SUMMARY_COLUMNS = ["Model", "Start", "Images", "Errors", "Dice@1", "Dice@3", "Dice@5", "Dice@N", "MaxDSC",
                   "NoC@80", "NoC@90", "FR@80 (%)", "FR@90 (%)", "Clicks", "s/image"]


def _pct(value: float) -> float:
    return float("nan") if value is None or not np.isfinite(value) else round(100.0 * float(value), 1)


def _at(curve: np.ndarray, k: int) -> float:
    return float(curve[k - 1]) if 0 < k <= len(curve) else float("nan")


def _start(result: ModelResult) -> str:
    """The first prompt with the box's settings: ``box (margin 3 px, jitter 0.1)``."""
    box = [f"margin {result.box_margin} px"] * bool(result.box_margin) + [f"jitter {result.box_jitter:g}"] * bool(
        result.box_jitter)
    return result.start + (f" ({', '.join(box)})" if result.start == "box" and box else "")


def summary_table(results: Sequence[ModelResult]) -> list[dict]:
    """One row per model. Dice and MaxDSC in %, NoC in clicks (N+1 when never reached), FR in % of images;
    ``Clicks`` is N, or ``box only`` for models that take no clicks (their Dice@k>1 are not measured)."""
    rows = []
    for result in results:
        s = result.summary()
        curve = s["mean_dice"]
        rows.append({
            "Model": result.model,
            "Start": _start(result)
                     + (", local corrections" if result.local_corrections else "")
                     + (f", the suggestion taken ({s['picked']})" if result.pick_first == "suggested" else
                        f", picked from the list ({s['picked']})" if result.pick_first else ""),
            "Images": s["n"],
            "Errors": s["errors"],
            "Dice@1": _pct(_at(curve, 1)),
            "Dice@3": _pct(_at(curve, 3)),
            "Dice@5": _pct(_at(curve, 5)),
            "Dice@N": _pct(_at(curve, result.n_clicks)),
            "MaxDSC": _pct(s["max_dsc"]),
            "NoC@80": round(s["noc@80"], 2) if np.isfinite(s["noc@80"]) else float("nan"),
            "NoC@90": round(s["noc@90"], 2) if np.isfinite(s["noc@90"]) else float("nan"),
            "FR@80 (%)": round(s["fr@80"], 1) if np.isfinite(s["fr@80"]) else float("nan"),
            "FR@90 (%)": round(s["fr@90"], 1) if np.isfinite(s["fr@90"]) else float("nan"),
            "Clicks": result.n_clicks if result.clicks_supported else "box only",
            "s/image": round(s["seconds_per_image"], 2) if np.isfinite(s["seconds_per_image"]) else float("nan"),
        })
    return rows


SOURCE_COLUMNS = ["Model", "Start", "Source", "Images", "Dice@1", "Dice@3", "Dice@5", "Dice@N"]


def per_source_table(results: Sequence[ModelResult]) -> list[dict]:
    """Per model and start, one row per source (the volume, loop or image file the samples were cut from) and a last row, the
    mean over sources: slices of one volume are not independent, so with several subjects the mean over subjects is
    the figure that is held out by subject. Sources named by file name where that is unique."""
    sources = sorted({i.source for r in results for i in r.images})
    names = [Path(s).name for s in sources]
    label = {s: (n if names.count(n) == 1 else s) for s, n in zip(sources, names)}
    rows = []
    for result in results:
        means = []
        for source in sources:
            curves = np.array([i.dice for i in result.images if i.ok and i.source == source], dtype=float)
            if not len(curves):
                continue
            curve = curves.mean(axis=0)   # NaN where not measured (a box-only model's clicks)
            means.append(curve)
            rows.append(_source_row(result, label[source], len(curves), curve))
        if len(means) > 1:
            rows.append(_source_row(result, f"mean of {len(means)} sources", sum(
                1 for i in result.images if i.ok), np.mean(means, axis=0)))
    return rows


def _source_row(result: ModelResult, source: str, n: int, curve: np.ndarray) -> dict:
    return {"Model": result.model, "Start": _start(result), "Source": source, "Images": n,
            "Dice@1": _pct(_at(curve, 1)), "Dice@3": _pct(_at(curve, 3)), "Dice@5": _pct(_at(curve, 5)),
            "Dice@N": _pct(_at(curve, result.n_clicks))}


def _cell(value) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:g}"
    return str(value)


def format_markdown(rows: list[dict], columns: Sequence[str] = SUMMARY_COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def _ensure_dir(out_dir) -> Path:
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataFileError(f"Cannot create the report folder {out_dir}: {error.strerror or error}.") from error
    return out_dir


def write_per_image_csv(results: Sequence[ModelResult], path, overwrite: bool = True) -> Path:
    """One row per (model, sample): Dice after each interaction (fraction, blank = not measured), NoC@80/90,
    MaxDSC, the prompts used (``x:y:+`` clicks, box) and any error message."""
    path = Path(path)
    n_max = max((r.n_clicks for r in results), default=0)
    header = (["model", "image", "label", "area_px", "start", "box"] + [f"dice_{k}" for k in range(1, n_max + 1)]
              + ["noc80", "noc90", "max_dice", "clicks", "seconds", "error", "note"])
    with atomic_output(path, overwrite) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for result in results:
            for image in result.images:
                dices = [("" if not np.isfinite(d) else f"{d:.4f}") for d in image.dice]
                dices += [""] * (n_max - len(dices))
                if image.ok:
                    extra = [metrics.noc(image.dice, 0.8, result.n_clicks), metrics.noc(image.dice, 0.9, result.n_clicks),
                             f"{metrics.max_dice(image.dice):.4f}"]
                else:
                    extra = ["", "", ""]
                clicks = " ".join(f"{x}:{y}:{'+' if l else '-'}" for x, y, l in image.clicks)
                box = " ".join(map(str, image.box)) if image.box else ""
                note = ("box only (model takes no clicks)" if not result.clicks_supported else "")
                if image.refused:
                    note = f"clicks refused: {image.refused}"
                writer.writerow([result.model, image.name, image.label, image.area, image.start, box, *dices,
                                 *extra, clicks, f"{image.seconds:.3f}", image.error or "", note])
    return path


def code_version() -> dict:
    """The sonosam version and, in a git checkout, its commit (and whether files differ from it)."""
    from .. import __version__

    record = {"sonosam": __version__, "commit": None, "modified": None}
    root = Path(__file__).resolve().parents[2]
    try:
        # only sonosam's own checkout: an installed package may sit inside another project's repository
        top = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, timeout=10)
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != root:
            return record
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode == 0:
            status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10)
            record.update(commit=commit.stdout.strip(), modified=bool(status.stdout.strip()))
    except (OSError, subprocess.SubprocessError):   # no git, or not a checkout: the version alone
        pass
    return record


def model_record(model, predictor=None) -> dict:
    """What a report needs to name a model again: its name, checkpoint file and sha256, backend and device, the
    prompts it takes, and (given the predictor that was evaluated) the pipeline that answered its prompts."""
    from ..models.weights import file_digest

    spec = getattr(model, "spec", None)
    checkpoint = getattr(model, "checkpoint", None)
    record = {"name": getattr(spec, "name", type(model).__name__),
              "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None,
              "checkpoint_sha256": file_digest(checkpoint) if checkpoint and Path(checkpoint).is_file() else None,
              "backend": getattr(model, "backend", None), "device": str(getattr(model, "device", "")) or None,
              "prompt_kinds": sorted(str(getattr(k, "value", k)) for k in getattr(spec, "prompt_kinds", ()))}
    if predictor is not None:
        from ..zoom import describe_pipeline

        record["pipeline"] = describe_pipeline(predictor)
    return record


def run_record(arguments: dict, models: Sequence[dict] = ()) -> dict:
    """``run.json``'s base: the arguments (as given), the code (``code_version``) and the models (``model_record``);
    ``write_report`` adds each result's protocol settings."""
    return {"arguments": {k: v for k, v in arguments.items() if not callable(v)}, "code": code_version(),
            "models": list(models)}


def _settings(result: ModelResult) -> dict:
    return {"model": result.model, "start": result.start, "n_clicks": result.n_clicks,
            "box_margin": result.box_margin, "box_jitter": result.box_jitter,
            "clicks_supported": result.clicks_supported, "mask_logits_fed_back": result.mask_prompts,
            "local_corrections": result.local_corrections, "pick_first": result.pick_first,
            "images": len(result.images), "errors": len(result.errors)}


def _fed_back(results: Sequence[ModelResult]) -> str:
    clicked = [r for r in results if r.clicks_supported]
    fed = list(dict.fromkeys(r.model for r in clicked if r.mask_prompts))
    not_fed = list(dict.fromkeys(r.model for r in clicked if not r.mask_prompts))
    if not clicked:
        return "box only: no corrections, nothing fed back"
    if not not_fed:
        return "the previous mask logits fed back as the mask prompt"
    if not fed:
        return "no mask fed back (the model takes no mask prompt)"
    return (f"the previous mask logits fed back as the mask prompt to {', '.join(fed)}; not to "
            f"{', '.join(not_fed)} (no mask prompt)")


def _run_section(run: dict) -> list[str]:
    code = run.get("code", {})
    commit = code.get("commit")
    lines = ["", "## Run", ""]
    arguments = run.get("arguments", {})
    if arguments:
        lines.append("- arguments: " + ", ".join(f"{k}={v}" for k, v in arguments.items()))
    lines.append(f"- sonosam {code.get('sonosam')}" + (f", commit {commit}" if commit else ", no git commit known")
                 + (" with uncommitted changes" if code.get("modified") else ""))
    for model in run.get("models", []):
        checkpoint = (f"checkpoint {model['checkpoint']} (sha256 {model['checkpoint_sha256']})"
                      if model.get("checkpoint") else "no checkpoint file")
        lines.append(f"- model {model.get('name')}: {checkpoint}, backend {model.get('backend')} on "
                     f"{model.get('device')}" + (f"; pipeline: {model['pipeline']}" if model.get("pipeline") else ""))
    lines.append("- full record: run.json")
    return lines


def write_summary(results: Sequence[ModelResult], out_dir, overwrite: bool = True,
                  run: dict | None = None) -> tuple[Path, Path]:
    """``summary.csv`` and ``summary.md`` (the table, then the conventions, any errors and, given ``run``
    (``run_record``), how the run was made)."""
    out_dir = _ensure_dir(out_dir)
    rows = summary_table(results)
    csv_path, md_path = out_dir / "summary.csv", out_dir / "summary.md"
    with atomic_output(csv_path, overwrite) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in row.items()})
    n = max((r.n_clicks for r in results), default=0)
    notes = [
        "# Interactive segmentation: simulated clicks", "",
        format_markdown(rows), "",
        f"Interaction 1 is the first prompt (a click at the ground-truth centroid, or the box); interactions "
        f"2..{n} add one click each at the centre of the largest error region (positive on a miss, negative "
        f"on a false positive), {_fed_back(results)}. Dice and MaxDSC in %. NoC@t: clicks to reach "
        f"t % Dice, counted as N+1 = {n + 1} for an image that never reaches it (a lower bound: read it with "
        "FR@t, the % of images that never reach t). MaxDSC: mean over images of each image's best Dice.",
    ]
    sources = {i.source for r in results for i in r.images}
    if 1 < len(sources) <= 50 and len(sources) < max((len(r.images) for r in results), default=0):
        notes += ["", "## Per source", "", "Slices of one volume are not independent: with several subjects, read "
                  "the mean over sources (held out by subject) beside the mean over images above.", "",
                  format_markdown(per_source_table(results), SOURCE_COLUMNS)]
    box_only = [r.model for r in results if not r.clicks_supported]
    if box_only:
        notes += ["", f"Box only (the model takes no clicks; Dice after 1 interaction only, NoC/FR count the box "
                      f"alone): {', '.join(box_only)}."]
    failures = [(r.model, i) for r in results for i in r.errors]
    if failures:
        notes += ["", f"## Errors ({len(failures)} samples, left out of the means)", ""]
        notes += [f"- {model} / {image.name}: {image.error}" for model, image in failures[:50]]
        if len(failures) > 50:
            notes.append(f"- ... and {len(failures) - 50} more (see per_image.csv)")
    if run is not None:
        notes += _run_section(run)
    write_text(md_path, "\n".join(notes) + "\n", overwrite=overwrite)
    return csv_path, md_path


def plot_dice_curves(results: Sequence[ModelResult], path, title: str | None = None, overwrite: bool = True) -> Path:
    """Mean Dice (%) vs number of interactions, one curve per model, with the 80/90 % lines."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # no pyplot: no global state, safe in threads and Slicer

    fig = Figure(figsize=(6.4, 4.4), dpi=120)
    ax = fig.add_subplot(1, 1, 1)
    n_max = max((r.n_clicks for r in results), default=1)
    for result in results:
        curve = result.summary()["mean_dice"] * 100.0
        x = np.arange(1, len(curve) + 1)
        finite = np.isfinite(curve)
        label = f"{result.model} ({result.start} start, n={len(result.curves)})"
        if not result.clicks_supported:
            label += ", box only"
        ax.plot(x[finite], curve[finite], marker="o", markersize=4, label=label)
    for t in (80, 90):
        ax.axhline(t, color="grey", linestyle=":", linewidth=1)
    ax.set_xlim(0.5, n_max + 0.5)
    ax.set_xticks(np.arange(1, n_max + 1))
    ax.set_xlabel("interactions (1 = first click or box)")
    ax.set_ylabel("mean Dice (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(title or "Dice vs simulated clicks")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_output(path, overwrite) as tmp:
        fig.savefig(tmp, format="png")
    return path


REPORT_FILES = ("per_image.csv", "summary.csv", "summary.md", "dice_vs_clicks.png", "run.json")


def write_report(results: Sequence[ModelResult], out_dir, title: str | None = None,
                 overwrite: bool = False, run: dict | None = None) -> dict[str, Path]:
    """Everything into ``out_dir``: per_image.csv, summary.csv, summary.md, dice_vs_clicks.png and, given ``run``
    (``run_record``: arguments, code version, models), run.json with each result's protocol settings added; each
    file written atomically, and if one fails the files this call created are removed (all or none). An earlier
    report there is replaced only with ``overwrite``."""
    if not results:
        raise ValueError("No results to report.")
    out_dir = Path(out_dir)
    with output_set([out_dir / name for name in REPORT_FILES], folder=out_dir):
        csv_path, md_path = write_summary(results, out_dir, overwrite, run)
        paths = {
            "per_image": write_per_image_csv(results, out_dir / "per_image.csv", overwrite),
            "summary_csv": csv_path,
            "summary_md": md_path,
            "plot": plot_dice_curves(results, out_dir / "dice_vs_clicks.png", title, overwrite),
        }
        if run is not None:
            record = dict(run, results=[_settings(r) for r in results])
            paths["run"] = write_text(out_dir / "run.json", json.dumps(record, indent=1, default=str) + "\n",
                                      overwrite=overwrite)
        elif overwrite:   # an earlier run's record would describe another run
            (out_dir / "run.json").unlink(missing_ok=True)
        return paths
