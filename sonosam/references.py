"""Reference labels made without any model, for testing volumetric propagation on every shape of structure.

    from sonosam.references import colin27_references, ct_head_references
    subject = colin27_references()            # Subject: .volume (sonosam.io.Volume), .references {name: Reference}
    ref = subject.references["Lateral_Ventricle_L"]
    ref.mask, ref.shape, ref.how               # bool [k, j, i]; "thin/curved" ...; how it was labelled

Every reference is a rule on intensities (thresholds, connected components, a brain mask) or an expert atlas
that ships with the data, fixed once by looking at overlays (docs/volume.md) and never tuned on a model's
output, so it can serve as held-out ground truth for any SonoSAM model.

- Colin27 T1 MRI (Debian `mricron-data`, 1 mm): AAL structures (expert atlas, as shipped); lateral ventricles
  (CSF by threshold inside the brain mask `ch2bet`, connected components near the centre, split at the
  midline); cerebral white matter per hemisphere (bright voxels in the brain mask, not in any AAL grey-matter
  label, cut above the brainstem); the whole brain (`ch2bet` itself).
- INIA19 rhesus macaque T1 template (Debian `mricron-data`, 0.5 mm, brain-extracted): a second subject, held out
  from everything: the whole brain (the template's non-zero voxels) and NeuroMaps structures (expert atlas, as
  shipped; the package names no label, so rows are named by value), chosen by a rule on the atlas alone.
- MNI ICBM152 2009a symmetric template (nilearn's wheel, 1 mm, brain-extracted; the average of 152 adults): a third
  subject, held out from everything: the lateral ventricles (the Colin27 rule on its own threshold), cerebral white
  matter per hemisphere (the template's white-matter probability >= 0.5, brainstem cut off), the whole brain.
- Five patients' lesions (pyradiomics' test cases, `sonosam.data.lesions_dir`): each scan's expert lesion label as
  shipped, one row `Lesion` per subject: two brain tumours on contrast T1 MRI (`brain_mr1`, `brain_mr2`), a breast
  lesion on MRI (`breast_mr1`), two lung lesions on CT (`lung_ct1`, `lung_ct2`); thick slices (2.1-6.5 mm), so a
  lesion spans 3 to 11 slices. Other patients, other organs, pathology: held out from everything.
- Head CT (Debian `invesalius-examples`, "ProMED CT 0051", 0.96 x 0.96 x 1.5 mm, Hounsfield units): skull,
  the mandible's rami, the airway (nasopharynx), a maxillary sinus, the frontal sinus,
  the brain, the lateral ventricles (smoothed CSF threshold inside the brain, split at its midline).
"""

from __future__ import annotations

import gzip
import plistlib
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from .errors import DataFileError
from .io import Geometry, Volume, read_volume

__all__ = ["Reference", "Subject", "SUBJECTS", "LESION_SUBJECTS", "load_subject", "colin27_references",
           "ct_head_references", "icbm152_references", "inia19_references", "lesion_references", "read_inv3", "SHAPES"]

# the shape classes the issue asks every rule to hold across
SHAPES = ("thin/curved", "small", "compact", "long", "large")


@dataclass
class Reference:
    name: str
    mask: np.ndarray      # bool [k, j, i]
    shape: str            # one of SHAPES
    how: str              # how it was labelled (one line)


@dataclass
class Subject:
    name: str
    modality: str         # "MRI" or "CT"
    volume: Volume
    references: dict[str, Reference] = field(default_factory=dict)

    def add(self, name: str, mask: np.ndarray, shape: str, how: str) -> None:
        assert shape in SHAPES, shape
        self.references[name] = Reference(name, np.asarray(mask, bool), shape, how)


def _largest(mask: np.ndarray, n: int = 1, structure=None) -> list[np.ndarray]:
    """The n largest connected components of `mask`, largest first."""
    labels, count = ndimage.label(mask, structure=structure)
    if count == 0:
        return []
    sizes = ndimage.sum(mask, labels, range(1, count + 1))
    return [labels == i + 1 for i in np.argsort(sizes)[::-1][:n]]


def _fill_slices(mask: np.ndarray) -> np.ndarray:
    """Holes filled slice by slice along k (axial)."""
    return np.stack([ndimage.binary_fill_holes(s) for s in mask])


# ------------------------------------------------------------------------------------------------ Colin27

# AAL structures of every size, by shape (label values of aal.nii.gz)
COLIN27_AAL = {
    "Thalamus_L": (77, "compact"), "Thalamus_R": (78, "compact"),
    "Putamen_L": (73, "compact"), "Putamen_R": (74, "compact"),
    "Caudate_L": (71, "thin/curved"), "Caudate_R": (72, "thin/curved"),
    "Pallidum_L": (75, "small"), "Pallidum_R": (76, "small"),
    "Amygdala_L": (41, "small"), "Amygdala_R": (42, "small"),
    "Hippocampus_L": (37, "long"), "Hippocampus_R": (38, "long"),
    "Insula_L": (29, "thin/curved"),
}
CSF_MAX = 45        # T1 intensity: the ventricles' CSF is darker (grey matter ~85, white matter ~110 in ch2)
WM_MIN = 100        # T1 intensity: white matter above (its histogram peak is at ~110, grey matter's at ~85)
MIDLINE_I = 90      # column i of x = 0 mm (ch2's ijk-to-RAS puts x = i - 90); i < 90 is the left hemisphere


def _add_lateral_ventricles(subject: Subject, csf: np.ndarray, brain: np.ndarray, midline_i: int, how: str) -> None:
    """Each lateral ventricle (1 mm grids, left where i < ``midline_i``): the largest dark component of ``csf`` on its
    side whose centre lies within 30 mm of the brain's centre of mass and above it (the basal cisterns, below it,
    are as large and as close; the CSF of the sulci is spread around the surface)."""
    centre = np.array(ndimage.center_of_mass(brain))
    labels, count = ndimage.label(csf)
    sizes = ndimage.sum(csf, labels, range(1, count + 1))
    centres = np.array(ndimage.center_of_mass(csf, labels, range(1, count + 1)))
    near = (np.linalg.norm(centres - centre, axis=1) < 30) & (centres[:, 0] > centre[0])
    for side, on_side in (("L", centres[:, 2] < midline_i), ("R", centres[:, 2] >= midline_i)):
        best = int(np.argmax(np.where(near & on_side, sizes, 0))) + 1
        subject.add(f"Lateral_Ventricle_{side}", labels == best, "thin/curved",
                    f"{how}, the largest component {'left' if side == 'L' else 'right'} of the midline centred "
                    "within 30 mm above the brain's centre")


def _add_white_matter(subject: Subject, wm: np.ndarray, midline_i: int, how: str) -> None:
    """Each hemisphere's white matter (left where i < ``midline_i``): the largest connected piece of ``wm`` there."""
    left = np.zeros(wm.shape, bool)
    left[:, :, :midline_i] = True
    for side, hemisphere in (("L", left), ("R", ~left)):
        subject.add(f"White_Matter_{side}", _largest(wm & hemisphere, 1)[0], "large",
                    f"{how}, largest component of the hemisphere")


def colin27_brain_mask() -> np.ndarray:
    """Colin27's brain mask (``ch2bet``, shipped beside the T1 in mricron-data), on the T1 grid."""
    from .data import mri_colin27_paths

    bet_path = Path(mri_colin27_paths()[0]).parent / "ch2bet.nii.gz"
    if not bet_path.exists():
        raise DataFileError(f"The Colin27 brain mask {bet_path} is missing: run `make data`.")
    return read_volume(bet_path).array > 0


def colin27_references(aal: bool = True) -> Subject:
    """The Colin27 T1 MRI with its reference structures (see the module doc)."""
    from .data import mri_colin27_paths

    t1_path, aal_path = mri_colin27_paths()
    volume = read_volume(t1_path)
    t1 = volume.array.astype(np.float32)
    atlas = read_volume(aal_path).array
    brain = colin27_brain_mask()
    subject = Subject("colin27", "MRI", volume)
    if aal:
        for name, (value, shape) in COLIN27_AAL.items():
            subject.add(name, atlas == value, shape, f"AAL label {value} (expert atlas)")

    _add_lateral_ventricles(subject, (t1 < CSF_MAX) & brain, brain, MIDLINE_I, f"T1 < {CSF_MAX} in the brain mask")

    # white matter: bright, in the brain mask, not in the AAL deep grey nuclei; the cerebrum only: no voxel
    # below the thalamus's lowest slice within 20 mm of the midline (brainstem), none near the cerebellum
    deep_grey = np.isin(atlas, (71, 72, 73, 74, 75, 76, 77, 78))
    wm = (t1 >= WM_MIN) & brain & ~deep_grey
    thalamus = np.isin(atlas, (77, 78))
    low = int(np.nonzero(thalamus.any(axis=(1, 2)))[0][0])
    stem = np.zeros(t1.shape, bool)
    stem[:low, :, MIDLINE_I - 20:MIDLINE_I + 21] = True
    cerebellum = ndimage.binary_dilation(atlas >= 91, iterations=3)
    wm &= ~stem & ~cerebellum
    _add_white_matter(subject, wm, MIDLINE_I, f"T1 >= {WM_MIN} in the brain mask, not in the AAL deep grey nuclei, "
                      "no brainstem/cerebellum")
    # the whole brain: a large structure holding dark pockets (ventricles, sulci), like the head CT's brain
    subject.add("Brain_MRI", brain, "large", "the brain mask ch2bet shipped with the T1 (cerebrum, cerebellum and "
                "brainstem; checked on overlays)")
    return subject


# ------------------------------------------------------------------------------------------------ INIA19

INIA19_LABELS = 8       # NeuroMaps structures taken: the largest of one hemisphere that are a single connected piece
INIA19_MIN_VOXELS = 1000
TWIN_OFFSET = 1000      # NeuroMaps numbers a structure of one hemisphere as its twin in the other + 1000


def _shape_of(mask: np.ndarray) -> str:
    """A shape class from geometry alone (for atlas structures that come without names)."""
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    extent = [s.stop - s.start for s in box]
    voxels = int(mask.sum())
    if voxels >= 15000:
        return "large"
    if voxels / np.prod(extent) < 0.08:
        return "thin/curved"
    if extent[0] >= 1.5 * max(extent[1:]):
        return "long"
    return "small" if voxels < 3000 else "compact"


def inia19_references() -> Subject:
    """The INIA19 macaque T1 template with its reference structures (see the module doc). The NeuroMaps rows: the
    `INIA19_LABELS` largest labels numbered below 1000 that have a twin at +1000 (the other hemisphere), of at least
    `INIA19_MIN_VOXELS` voxels that form one connected piece (many NeuroMaps labels are scattered cortical bits),
    fixed by that rule before any model ran on them."""
    from .data import mri_inia19_paths

    t1_path, atlas_path = mri_inia19_paths()
    volume = read_volume(t1_path)
    atlas = read_volume(atlas_path).array
    subject = Subject("inia19", "MRI", volume)
    values, counts = np.unique(atlas, return_counts=True)
    present = set(values.tolist())
    taken = 0
    for value, count in sorted(zip(values.tolist(), counts.tolist()), key=lambda vc: (-vc[1], vc[0])):
        if taken == INIA19_LABELS:
            break
        if not 0 < value < TWIN_OFFSET or value + TWIN_OFFSET not in present or count < INIA19_MIN_VOXELS:
            continue
        mask = atlas == value
        if ndimage.label(mask)[1] != 1:
            continue
        subject.add(f"NeuroMaps_{value}", mask, _shape_of(mask), f"NeuroMaps label {value} (expert atlas)")
        taken += 1
    subject.add("Brain_inia19", volume.array > 0, "large", "the template's brain (it ships brain-extracted: its "
                "non-zero voxels; cerebrum, cerebellum and brainstem)")
    return subject


# ----------------------------------------------------------------------------------------------- ICBM152

ICBM152_CSF_MAX = 100   # T1 (0-255): the ventricles' CSF is darker; at 100 the two lateral ventricles are apart
ICBM152_WM_MIN = 128    # white-matter probability (0-255): at least 0.5
ICBM152_MIDLINE_I = 98  # column i of x = 0 mm; i < 98 is the left hemisphere
ICBM152_Z0_K = 72       # slice k of z = 0 mm


def icbm152_references() -> Subject:
    """The MNI ICBM152 2009a template (brain-extracted T1) with references from its own tissue maps and intensities
    (see the module doc); thresholds fixed from overlays before any model ran on it."""
    from .data import mri_icbm152_paths

    t1_path, _, wm_path = mri_icbm152_paths()   # the grey-matter map is not used
    volume = read_volume(t1_path)
    t1 = volume.array.astype(np.float32)
    brain = t1 > 0
    subject = Subject("icbm152", "MRI", volume)
    # the eroded brain: the dark rim where the extracted brain meets the background is no CSF
    inner = ndimage.binary_erosion(brain, iterations=3)
    _add_lateral_ventricles(subject, (t1 < ICBM152_CSF_MAX) & inner, brain, ICBM152_MIDLINE_I,
                            f"T1 < {ICBM152_CSF_MAX} in the brain eroded by 3 mm")
    # cerebral white matter: the brainstem cut off (within 20 mm of the midline below z = -10 mm), which also parts
    # the cerebellum's white matter from the hemispheres'
    wm = (read_volume(wm_path).array >= ICBM152_WM_MIN) & brain
    wm[:ICBM152_Z0_K - 10, :, ICBM152_MIDLINE_I - 20:ICBM152_MIDLINE_I + 21] = False
    _add_white_matter(subject, wm, ICBM152_MIDLINE_I, f"white-matter probability >= {ICBM152_WM_MIN}/255, "
                      "no brainstem")
    subject.add("Brain_icbm152", brain, "large", "the template's brain (it ships brain-extracted: its non-zero "
                "voxels; cerebrum, cerebellum and brainstem)")
    return subject


# ----------------------------------------------------------------------------------------------- head CT

def read_inv3(path) -> Volume:
    """The CT volume inside an InVesalius project file (.inv3: a gzipped tar with main.plist and a raw
    int16 matrix.dat), in Hounsfield units, indexed [k, j, i]."""
    try:
        with tarfile.open(fileobj=gzip.open(path)) as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            main = plistlib.load(tar.extractfile(members["main.plist"]))
            matrix = main["matrix"]
            raw = tar.extractfile(members[matrix["filename"]]).read()
    except (OSError, KeyError, tarfile.TarError, plistlib.InvalidFileException) as error:
        raise DataFileError(f"{path} is not a readable InVesalius project (.inv3): {error}") from error
    array = np.frombuffer(raw, dtype=np.dtype(matrix["dtype"]).newbyteorder("<")).reshape(matrix["shape"])
    return Volume(array.astype(np.int16), Geometry(spacing=tuple(main["spacing"])))


BONE_MIN = 300      # HU: bone (cortical bone > 1000; InVesalius's own bone preset starts at 226)
DENSE_BONE = 800    # HU: dense cortex only, where the mandible's rami come apart from the skull base
AIR_MAX = -500      # HU: air (soft tissue > -100, fat ~ -100)
HEAD_MIN = -300     # HU: the head's outline (skin and everything inside)
BRAIN_HU = (5, 45)  # HU: brain parenchyma of this scan (its histogram peaks at 20-25; CSF below 5, bone above)
CSF_HU_MAX = 8      # HU, after a 1-voxel Gaussian: ventricular CSF (-5..5 here) against brain (20-25)


def ct_head_references() -> Subject:
    """The head CT of `invesalius-examples` with Hounsfield-threshold references (see the module doc)."""
    from .data import ct_head_path

    volume = read_inv3(ct_head_path())
    hu = volume.array
    subject = Subject("ct_head", "CT", volume)
    nk, nj, ni = hu.shape
    centre_i = ni / 2

    head = _largest(hu > HEAD_MIN, 1)[0]  # the head; the ring of the head holder is another component
    bone = (hu >= BONE_MIN) & ndimage.binary_dilation(head, iterations=2)
    bone = _largest(bone, 1)[0]
    # the mandible's rami: separate dense components starting at the lowest slice, tall (>= 12 slices), away
    # from the midline; every bone voxel then goes to its nearest dense component (rami or skull)
    dense, count = ndimage.label((hu >= DENSE_BONE) & bone)
    objects = ndimage.find_objects(dense)
    sizes = ndimage.sum(dense > 0, dense, range(1, count + 1))
    skull_label = int(np.argmax(sizes)) + 1
    rami = []
    for index, where in enumerate(objects, start=1):
        ks, _, is_ = where
        middle = (is_.start + is_.stop) / 2
        if index != skull_label and ks.start == 0 and ks.stop - ks.start >= 12 and abs(middle - centre_i) > 40 \
                and sizes[index - 1] > 500:
            rami.append(index)
    markers = np.where(np.isin(dense, rami), 2, np.where(dense == skull_label, 1, 0))
    _, nearest = ndimage.distance_transform_edt(markers == 0, return_indices=True)
    owner = markers[tuple(nearest)]
    mandible = bone & (owner == 2)
    skull = bone & (owner == 1)
    subject.add("Skull", skull, "large", f"HU >= {BONE_MIN}, largest component, less the mandible")
    for side, pick in (("L", slice(None, int(centre_i))), ("R", slice(int(centre_i), None))):
        # radiological view: the image's left columns are the patient's right; named by image side here
        part = np.zeros_like(mandible)
        part[:, :, pick] = mandible[:, :, pick]
        subject.add(f"Mandible_ramus_{'a' if side == 'L' else 'b'}", _largest(part, 1)[0], "long",
                    f"HU >= {BONE_MIN} nearest to a tall lateral component at HU >= {DENSE_BONE} (the ramus)")

    # air inside the head: the outline filled slice by slice, less the air just outside the skin. The air
    # spaces join through narrow ducts and ostia: opened 2 voxels they come apart, and every air voxel then
    # goes to its nearest opened component. Named by where a component lies from the head's centre of mass
    # (k up, j towards the face, i across): the nasopharynx is the midline one lowest down, the frontal sinus the
    # midline one highest up, a maxillary sinus a lateral one towards the face in the lower half. (The other
    # maxillary sinus of this subject stays joined to the nasal cavity even when opened: it is left out, as
    # are the nasal cavity and the mastoid cells.)
    inside = _fill_slices(head) & (hu < AIR_MAX)
    inside &= ~ndimage.binary_dilation(~_fill_slices(head), iterations=2)
    seeds, count = ndimage.label(ndimage.binary_opening(inside, iterations=2))
    _, nearest = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    air = np.where(inside, seeds[tuple(nearest)], 0)
    sizes = ndimage.sum(inside, air, range(1, count + 1))
    centres = np.array(ndimage.center_of_mass(inside, air, range(1, count + 1)))
    head_k, head_j, head_i = ndimage.center_of_mass(head)
    midline = np.abs(centres[:, 2] - head_i) < 15
    facing = centres[:, 1] > head_j + 30
    big = sizes >= 1000
    picks = {
        "Airway": (midline & big & (centres[:, 0] < head_k - 20), "long",
                   "the midline component lowest down (nasopharynx)"),
        "Sinus_frontal": (midline & big & facing & (centres[:, 0] > head_k), "compact",
                          "the midline component towards the face above the centre"),
        "Sinus_maxillary": (~midline & big & facing & (centres[:, 0] < head_k), "compact",
                            "the lateral component towards the face below the centre"),
    }
    for name, (candidates, shape, where) in picks.items():
        if candidates.any():
            best = int(np.argmax(np.where(candidates, sizes, 0))) + 1
            subject.add(name, air == best, shape, f"HU < {AIR_MAX} inside the head, opened 2 voxels into parts, "
                        f"{where}")

    # brain: soft tissue in the brain's HU range at least 3 voxels from any bone, opened 3 voxels (to cut it
    # from the tissue of the orbits, scalp and neck through the foramina), the largest component, grown back
    # within the range and away from bone, its holes (the ventricles, CSF) filled
    in_range = (hu >= BRAIN_HU[0]) & (hu <= BRAIN_HU[1])
    near_bone = ndimage.binary_dilation(hu >= BONE_MIN, iterations=3)
    core = _largest(ndimage.binary_opening(in_range & ~near_bone, iterations=3), 1)[0]
    brain = ndimage.binary_dilation(core, iterations=4) & in_range & ~ndimage.binary_dilation(hu >= BONE_MIN)
    brain = ndimage.binary_fill_holes(_largest(brain, 1)[0])
    subject.add("Brain", brain, "large", f"{BRAIN_HU[0]} <= HU <= {BRAIN_HU[1]} >= 3 voxels from bone, opened 3, "
                "largest component grown back 4 voxels (not onto bone), holes filled")

    # lateral ventricles (not in the brain reference: they open into the cisterns, so they are no holes): CSF,
    # smoothed against the noise (brain and CSF are 20 HU apart), at least 6 voxels inside the slice-filled brain
    # (no sulci), above a flat cut 5 slices below the brain's centre of mass (the third ventricle, the cisterns and
    # the temporal horns below it are left out, as on Colin27), less 2 voxels either side of the brain's midline
    # column (the septum); the largest component per side, holes filled (calcified choroid plexus in the atria)
    smooth = ndimage.gaussian_filter(hu.astype(np.float32), sigma=(0.7, 1.0, 1.0))
    csf = (smooth < CSF_HU_MAX) & ndimage.binary_erosion(_fill_slices(brain), iterations=6)
    brain_k, _, brain_i = (int(c) for c in ndimage.center_of_mass(brain))
    csf[:brain_k - 5] = False
    csf[:, :, brain_i - 2:brain_i + 3] = False
    for side, pick in (("a", slice(None, brain_i)), ("b", slice(brain_i, None))):
        part = np.zeros_like(csf)
        part[:, :, pick] = csf[:, :, pick]
        subject.add(f"Lateral_Ventricle_{side}", ndimage.binary_fill_holes(_largest(part, 1)[0]), "thin/curved",
                    f"smoothed HU < {CSF_HU_MAX} >= 6 voxels inside the brain, above the brain's centre - 5 slices, "
                    "largest component on this side of the midline (image side, like the rami)")
    return subject


# ----------------------------------------------------------------------------------------------- lesions

# subject name -> (pyradiomics' case name, modality)
LESION_SUBJECTS = {"brain_mr1": ("brain1", "MRI"), "brain_mr2": ("brain2", "MRI"), "breast_mr1": ("breast1", "MRI"),
                   "lung_ct1": ("lung1", "CT"), "lung_ct2": ("lung2", "CT")}


def lesion_references(name: str) -> Subject:
    """One patient's scan (`LESION_SUBJECTS`) with its expert lesion label as shipped, the row `Lesion`."""
    from .data import lesions_dir

    case, modality = LESION_SUBJECTS[name]
    folder = lesions_dir()
    volume = read_volume(folder / f"{case}_image.nrrd")
    label = read_volume(folder / f"{case}_label.nrrd").array > 0
    if label.shape != volume.shape:
        raise DataFileError(f"{folder / f'{case}_label.nrrd'}: its grid {label.shape} is not the scan's "
                            f"{volume.shape}.")
    subject = Subject(name, modality, volume)
    subject.add("Lesion", label, _shape_of(label), f"pyradiomics' {case}_label.nrrd (an expert's lesion label)")
    return subject


SUBJECTS = ("colin27", "ct_head", "inia19", "icbm152", *LESION_SUBJECTS)   # the subjects above, by name


def load_subject(name: str) -> Subject:
    """A subject by name (`SUBJECTS`) with its references."""
    if name not in SUBJECTS:
        raise DataFileError(f"Unknown subject {name!r}: choose from {', '.join(SUBJECTS)}.")
    if name in LESION_SUBJECTS:
        return lesion_references(name)
    return globals()[f"{name}_references"]()
