"""Locate the real images that registry packages ship, for the demo, tests and benchmarks.

Nothing here downloads: the echo loops come with the `pydicom-data` / `pydicom` wheels, the labelled MRI
with Debian's `mricron-data` and the head CT with `invesalius-examples` (unpacked into `.data/` by
`make data`, or installed system-wide); the ICBM152 template is taken out of nilearn's wheel, and five patients'
lesion scans out of pyradiomics' source archive, by `make data`."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import DataFileError

_REPO_DATA = Path(__file__).resolve().parent.parent / ".data"


def _site_file(package: str, *parts: str) -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    return path if path.exists() else None


def echo_a4c_path() -> Path:
    """Adult apical 4-chamber B-mode echo cine, 120 frames of 480x640 RGB, 30 fps (pydicom-data)."""
    path = _site_file("data_store", "data", "color3d_jpeg_baseline.dcm")
    if path is None:
        raise DataFileError("The real echo loop is missing: install it with `pip install pydicom-data==1.0.0`.")
    return path


def echo_plax_path() -> Path:
    """A parasternal long-axis echo cine with colour Doppler, 30 frames of 600x800 RGB (deid-data)."""
    path = _site_file("deid_data", "data", "ultrasounds", "ultrasound-multiframe.dcm")
    if path is None:
        raise DataFileError("The PLAX echo loop is missing: install it with `pip install deid-data==0.0.20`.")
    return path


def echo_a4c_small_path() -> Path:
    """The same kind of loop, 30 frames of 240x320, shipped inside pydicom itself."""
    path = _site_file("pydicom", "data", "test_files", "examples_ybr_color.dcm")
    if path is None:
        raise DataFileError("pydicom's example echo file is missing: reinstall pydicom (`pip install pydicom==3.0.2`).")
    return path


def _mricron_dir() -> Path | None:
    candidates = [os.environ.get("SONOSAM_DATA"), _REPO_DATA / "mricron/usr/share/mricron/templates",
                  "/usr/share/mricron/templates"]
    for folder in candidates:
        if folder and (Path(folder) / "ch2.nii.gz").exists():
            return Path(folder)
    return None


def mri_colin27_paths() -> tuple[Path, Path]:
    """(T1 volume, AAL label map) of the Colin27 brain, 181x217x181 at 1 mm (Debian mricron-data)."""
    folder = _mricron_dir()
    if folder is None:
        raise DataFileError("The labelled MRI (Debian package mricron-data) is not there: run `make data`, "
                            "or `apt-get install mricron-data`, or set SONOSAM_DATA to its templates folder.")
    return folder / "ch2.nii.gz", folder / "aal.nii.gz"


def mri_inia19_paths() -> tuple[Path, Path]:
    """(brain-extracted T1, NeuroMaps label map) of the INIA19 rhesus macaque template, 168 x 206 x 128 at 0.5 mm,
    shipped beside Colin27 in Debian mricron-data: a second subject (another brain, another species)."""
    folder = _mricron_dir()
    if folder is None or not (folder / "inia19-t1-brain.nii.gz").exists():
        raise DataFileError("The INIA19 macaque template (Debian package mricron-data) is not there: run `make data`, "
                            "or `apt-get install mricron-data`, or set SONOSAM_DATA to its templates folder.")
    return folder / "inia19-t1-brain.nii.gz", folder / "inia19-NeuroMaps.nii.gz"


def mri_icbm152_paths() -> tuple[Path, Path, Path]:
    """(brain-extracted T1, grey-matter and white-matter probability maps, 0-255) of the MNI ICBM152 2009a symmetric
    template, 197 x 233 x 189 at 1 mm, as nilearn's wheel ships them (unpacked by `make data`): a third subject, the
    average of 152 adult brains."""
    folder = Path(os.environ.get("SONOSAM_ICBM152") or _REPO_DATA / "icbm152")
    paths = tuple(folder / f"mni_icbm152_{part}_tal_nlin_sym_09a_converted.nii.gz" for part in ("t1", "gm", "wm"))
    if not all(path.exists() for path in paths):
        raise DataFileError(f"The ICBM152 template is not in {folder}: run `make data` (it takes the files out of "
                            "the nilearn==0.14.1 wheel), or set SONOSAM_ICBM152 to a folder holding them.")
    return paths


# pyradiomics' test cases (BSD-3, Harvard Medical School): each patient's scan with an expert's lesion label, by the
# names the archive gives them: MRI of two brain tumours and a breast lesion, CT of two lung lesions
LESION_CASES = ("brain1", "brain2", "breast1", "lung1", "lung2")


def lesions_dir() -> Path:
    """The folder of the lesion cases (`LESION_CASES`: NAME_image.nrrd + NAME_label.nrrd each), as `make data` takes
    them out of the pinned pyradiomics-3.1.0 source archive on PyPI; real patients, thick slices (2.1-6.5 mm)."""
    folder = Path(os.environ.get("SONOSAM_LESIONS") or _REPO_DATA / "lesions")
    missing = [f"{case}_{part}.nrrd" for case in LESION_CASES for part in ("image", "label")
               if not (folder / f"{case}_{part}.nrrd").exists()]
    if missing:
        raise DataFileError(f"The lesion scans are not all in {folder} (missing {', '.join(missing)}): run `make data` "
                            "(it takes them out of the pyradiomics-3.1.0 source archive on PyPI), or set "
                            "SONOSAM_LESIONS to a folder holding them.")
    return folder


def ct_head_path() -> Path:
    """A real head CT (InVesalius project "ProMED CT 0051", 108 x 256 x 256, 0.96 x 0.96 x 1.5 mm, Hounsfield
    units; Debian `invesalius-examples`), read with `sonosam.references.read_inv3`."""
    candidates = [os.environ.get("SONOSAM_CT"),
                  _REPO_DATA / "invesalius/usr/share/doc/invesalius-examples/examples/Cranium.inv3",
                  "/usr/share/doc/invesalius-examples/examples/Cranium.inv3"]
    for path in candidates:
        if path and Path(path).exists():
            return Path(path)
    raise DataFileError("The head CT (Debian package invesalius-examples) is not there: run `make data`, "
                        "or `apt-get install invesalius-examples`, or set SONOSAM_CT to its Cranium.inv3.")


def aal_label_names() -> dict[int, str]:
    """AAL label value -> region name, from the `aal.nii.lut`/`.txt` files shipped beside the map."""
    folder = _mricron_dir()
    names: dict[int, str] = {}
    text = folder / "aal.nii.txt" if folder else None
    if text and text.exists():
        for line in text.read_text(errors="replace").splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[0].isdigit():
                names[int(fields[0])] = fields[1]
    return names
