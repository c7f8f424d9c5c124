"""A subject's model-free references (`sonosam.references`) written as one label map beside its image, so that
`sonosam evaluate` (or Slicer) can use them like any labelled data.

    python -m scripts.reference_labels icbm152 -o runs/icbm152_labels.nii.gz [--structures NAME ...] [--overwrite]
    sonosam evaluate --data IMAGE,runs/icbm152_labels.nii.gz --label 1 --label 2 --label 3 --label 4 --axis 1 ...

Values 1, 2, ... follow the order printed (also written to the map's name + `.txt`: value, name, shape); a voxel in
two references keeps the first. The image is the subject's own file (`sonosam.data`); the map has its geometry.
"""

from __future__ import annotations

import argparse

import numpy as np

from sonosam.references import SUBJECTS, load_subject


def label_map(subject, structures=None) -> tuple[np.ndarray, list[str]]:
    """(uint8 label map on the subject's grid, the reference names in value order)."""
    names = list(structures) if structures else list(subject.references)
    unknown = [name for name in names if name not in subject.references]
    if unknown:
        raise SystemExit(f"No reference {', '.join(unknown)} in {subject.name}: choose from "
                         f"{', '.join(subject.references)}.")
    labels = np.zeros(subject.volume.shape, np.uint8)
    for value, name in reversed(list(enumerate(names, 1))):   # the first reference wins where two overlap
        labels[subject.references[name].mask] = value
    return labels, names


def main(argv=None) -> int:
    from sonosam.errors import SonoSAMError
    from sonosam.io import Volume, write_volume
    from sonosam.io.atomic import check_output_path, write_text

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("subject", choices=SUBJECTS)
    parser.add_argument("-o", "--out", required=True, help="the label map to write (.nii.gz, .nrrd, ...)")
    parser.add_argument("--structures", nargs="+", metavar="NAME", help="references to write (default: all)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        for path in (args.out, f"{args.out}.txt"):   # both checked before anything is written
            check_output_path(path, args.overwrite)
        subject = load_subject(args.subject)
        labels, names = label_map(subject, args.structures)
        write_volume(Volume(labels, subject.volume.geometry), args.out, overwrite=args.overwrite)
        legend = "".join(f"{value} {name} {subject.references[name].shape}\n" for value, name in enumerate(names, 1))
        write_text(f"{args.out}.txt", legend, overwrite=args.overwrite)
    except SonoSAMError as error:
        raise SystemExit(f"error: {error}") from None
    print(legend, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
