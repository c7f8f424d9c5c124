"""The held-out tables and Dice-vs-clicks plot of a click-decoder run, from its ``heldout.json`` (written by
``python -m sonosam.train.click_decoder``; nothing is recomputed).

    python -m scripts.click_report runs/clicks_v3/heldout.json --plot docs/images/click_dice_vs_clicks.png

Prints, per held-out set and for the mean of the sets, the table of docs/training.md (Dice@1..5, NoC@80/90,
FR@80/90, MaxDSC, box Dice) for every row (base LiteMedSAM with a box, the previous and the new click
model), the ship rule's verdict, the new row minus the previous one paired over the same structure-images
(mean Dice points and bootstrap 95 % interval, clicks 1..5), and plots the mean Dice after 1..5 clicks per set
(box Dice as a mark at 0).

    python -m scripts.click_report --compare "SAM's protocol=runs/clicks_global" "local=runs/clicks_local2" \
        --plot docs/images/click_local_corrections.png

compares the ``litemedsam_clicks`` rows that ``--baselines-only`` runs left in each OUT/rows (e.g. with and without
``--local-corrections``) the same way: tables, the last minus the first paired, the plot.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.click_report", description=__doc__.splitlines()[0])
    parser.add_argument("heldout", nargs="?", help="OUT/heldout.json of a click_decoder run")
    parser.add_argument("--compare", nargs="+", metavar="LABEL=OUT",
                        help="instead: the litemedsam_clicks rows of these --baselines-only runs' OUT/rows")
    parser.add_argument("--plot", default=None, help="write the Dice-vs-clicks PNG here")
    args = parser.parse_args(argv)
    if bool(args.heldout) == bool(args.compare):
        parser.error("give a heldout.json or --compare, not both")

    from sonosam.train.click_decoder import table

    report = json.loads(Path(args.heldout).read_text()) if args.heldout else compared(args.compare)
    sets = report["sets"]
    for name, rows in sets.items():
        n = next(iter(rows.values())).get("samples")
        print(f"\n### {name} ({n} held-out structure-images)\n\n{table(rows)}")
    print(f"\n### mean of the {len(sets)} sets\n\n{table(report['pooled'])}")
    if args.heldout:
        print("\nship rule:", "passed" if report.get("passed") else "failed")
        for reason in report.get("reasons", []):
            print("-", reason)
        print(f"\n{paired_table(report)}")
    else:
        labels = list(report["pooled"])
        print(f"\n{paired_table(report, new=labels[-1], old=labels[0])}")
    if args.plot:
        plot(sets, Path(args.plot))
    return 0


def compared(items) -> dict:
    """A heldout.json-like report from ``LABEL=OUT`` items: per set, each run's ``litemedsam_clicks`` row (as
    ``--baselines-only`` keeps it in OUT/rows), and their mean over the sets."""
    sets: dict[str, dict] = {}
    for item in items:
        label, _, out = item.partition("=")
        files = sorted(Path(out, "rows").glob("*__litemedsam_clicks_*.json"))
        if not files:
            raise SystemExit(f"{out}/rows holds no litemedsam_clicks rows: run click_decoder --baselines-only there")
        for path in files:
            sets.setdefault(path.name.split("__")[0], {})[label] = json.loads(path.read_text())
    from sonosam.train.click_decoder import KEYS

    labels = [item.partition("=")[0] for item in items]
    pooled = {label: {k: sum(rows[label][k] for rows in sets.values()) / len(sets) for k in KEYS} for label in labels}
    curves = {name: {label: row["curves"] for label, row in rows.items()} for name, rows in sets.items()}
    return {"sets": sets, "pooled": pooled, "curves": curves}


def paired_table(report: dict, new: str = "new", old: str = "litemedsam_clicks (previous)") -> str:
    """Markdown: ``new`` minus ``old`` per set, Dice points [paired bootstrap 95 % interval] at clicks 1..5,
    from the per-structure-image curves in ``heldout.json``."""
    from sonosam.train.validate import paired_difference

    lines = [f"| set ({new} - {old}) | 1 click | 2 clicks | 3 clicks | 4 clicks | 5 clicks |", "|" + "---|" * 6]
    for name, rows in report["curves"].items():
        if not (rows.get(new) and rows.get(old)):
            continue
        a, b = rows[new], rows[old]
        if len(a) != len(b):
            raise ValueError(f"{name}: {len(a)} curves for {new!r} but {len(b)} for {old!r}; not the same cases")
        cells = []
        for k in range(5):
            mean, lo, hi = (100 * v for v in paired_difference([c[k] for c in a], [c[k] for c in b]))
            cells.append(f"{mean:+.1f} [{lo:+.1f}, {hi:+.1f}]")
        lines.append(f"| {name} ({len(a)}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(sets: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sets), figsize=(2.6 * len(sets), 2.6), sharey=True, squeeze=False)
    for ax, (name, rows) in zip(axes[0], sets.items()):
        for i, (row, m) in enumerate(rows.items()):
            color = f"C{i}"
            curve = [m.get(f"dice@{k}") for k in range(1, 6)]
            if all(v is not None for v in curve):
                ax.plot(range(1, 6), [100 * v for v in curve], "o-", color=color, ms=3, label=row)
            if m.get("box") is not None:
                ax.plot([0], [100 * m["box"]], "s", color=color, ms=5, label=None if curve[0] is not None else row)
        ax.set_title(name, fontsize=9)
        ax.set_xticks(range(0, 6), ["box", "1", "2", "3", "4", "5"], fontsize=7)
        ax.set_xlabel("clicks", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("held-out Dice %", fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    print("wrote", path, f"{path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    raise SystemExit(main())
