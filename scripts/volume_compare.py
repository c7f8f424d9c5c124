"""Two `bench.volume --json` runs side by side, row by row, with an optional gate (docs/training.md, v7's gate).

    python -m scripts.volume_compare runs/held_k.json,runs/held_i.json runs/new_k.json,runs/new_i.json \
        [--max-mean-drop 0.01] [--max-row-drop 0.10]

Each side is one or more JSON files (comma-separated: e.g. the axial and the sagittal runs). Rows are matched by
subject, structure and axis; both sides must hold the same rows. Reported per row and as means: 3D Dice from one
prompt (the bench box), over the 7 boxes when both runs had `--box-shifts`, and after the last correction. With the
drop limits, the exit status says whether the second run passes: no mean lower by more than --max-mean-drop and no
row lower by more than --max-row-drop, on every figure both runs have.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def load_rows(paths: str) -> dict[tuple, dict]:
    rows = {}
    for path in paths.split(","):
        with open(path) as f:
            for row in json.load(f)["rows"]:
                rows[(row["subject"], row["name"], row["axis"])] = row
    return rows


def figures(row: dict) -> dict[str, float]:
    out = {"one prompt": row["dice"]}
    if "dice_boxes" in row:
        out["7 boxes"] = float(np.mean(row["dice_boxes"]))
    if row.get("dice_after"):
        out[f"after {len(row['dice_after'])}"] = row["dice_after"][-1]
    return out


def compare(before: dict[tuple, dict], after: dict[tuple, dict], max_mean_drop: float | None = None,
            max_row_drop: float | None = None) -> tuple[str, list[str]]:
    """(a markdown table, the gate's failures: [] when it passes or no limit is given)."""
    if before.keys() != after.keys():
        missing = sorted(map(str, before.keys() ^ after.keys()))
        raise SystemExit(f"The two runs hold different rows ({', '.join(missing)}): run both on the same structures.")
    per_row = {k: (figures(before[k]), figures(after[k])) for k in before}
    keys = [name for name in next(iter(per_row.values()))[0] if all(name in a and name in b for a, b in per_row.values())]
    lines = ["| subject | structure | axis | " + " | ".join(keys) + " |", "|---|---|---|" + "---|" * len(keys)]
    failures = []
    for (subject, name, axis), (a, b) in per_row.items():
        lines.append(f"| {subject} | {name} | {axis} | " + " | ".join(f"{a[k]:.3f} -> {b[k]:.3f}" for k in keys) + " |")
        for k in keys:
            if max_row_drop is not None and b[k] < a[k] - max_row_drop:
                failures.append(f"{subject} {name} (axis {axis}) {k}: {a[k]:.3f} -> {b[k]:.3f}")
    means = {k: (float(np.mean([a[k] for a, _ in per_row.values()])), float(np.mean([b[k] for _, b in per_row.values()])))
             for k in keys}
    lines.append(f"| **mean ({len(per_row)})** | | | " + " | ".join(f"**{a:.3f} -> {b:.3f}**" for a, b in means.values())
                 + " |")
    for k, (a, b) in means.items():
        if max_mean_drop is not None and b < a - max_mean_drop:
            failures.insert(0, f"mean {k}: {a:.3f} -> {b:.3f}")
    return "\n".join(lines), failures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", help="bench.volume JSON file(s), comma-separated")
    parser.add_argument("after", help="bench.volume JSON file(s), comma-separated")
    parser.add_argument("--max-mean-drop", type=float, default=None)
    parser.add_argument("--max-row-drop", type=float, default=None)
    args = parser.parse_args(argv)
    table, failures = compare(load_rows(args.before), load_rows(args.after), args.max_mean_drop, args.max_row_drop)
    print(table)
    if args.max_mean_drop is None and args.max_row_drop is None:
        return 0
    print("gate:", "FAILED" if failures else "PASSED", *failures, sep="\n  ")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
