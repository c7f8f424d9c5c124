"""The model-free reference labels (sonosam.references) on the real Colin27 MRI and the real head CT: each is
where anatomy puts it, of a plausible size, and made of what its rule says (checked by eye on overlays too,
docs/volume.md)."""

import numpy as np
import pytest
from scipy import ndimage

from sonosam.references import (SHAPES, colin27_references, ct_head_references, icbm152_references, inia19_references,
                                read_inv3)

pytestmark = pytest.mark.slow  # reference labels computed on the real MRI and CT volumes


@pytest.fixture(scope="module")
def colin():
    return colin27_references()


@pytest.fixture(scope="module")
def ct():
    return ct_head_references()


def test_every_shape_is_covered(colin, ct):
    shapes = {r.shape for s in (colin, ct) for r in s.references.values()}
    assert shapes == set(SHAPES)
    assert {"Lateral_Ventricle_L", "Lateral_Ventricle_R", "White_Matter_L", "White_Matter_R", "Thalamus_L"} \
        <= set(colin.references)
    assert {"Skull", "Mandible_ramus_a", "Mandible_ramus_b", "Airway", "Sinus_maxillary", "Sinus_frontal",
            "Brain"} <= set(ct.references)
    for subject in (colin, ct):
        for ref in subject.references.values():
            assert ref.mask.shape == subject.volume.shape and ref.mask.any() and ref.how


def test_colin27_ventricles_and_white_matter(colin):
    t1 = colin.volume.array
    refs = colin.references
    for side, (lo, hi) in (("L", (0, 90)), ("R", (90, 181))):
        ventricle, wm = refs[f"Lateral_Ventricle_{side}"].mask, refs[f"White_Matter_{side}"].mask
        # one connected dark structure of a lateral ventricle's size (5-15 ml), on its own side of the midline
        assert 5000 < ventricle.sum() < 15000 and ndimage.label(ventricle)[1] == 1
        columns = np.nonzero(ventricle.any(axis=(0, 1)))[0]
        assert lo - 2 <= columns.min() and columns.max() < hi + 2  # the septum lies within a voxel of x = 0
        assert np.median(t1[ventricle]) < 45 < 100 < np.median(t1[wm])
        # a hemisphere's white matter: 200-350 ml, and the ventricle lies inside its hull (surrounded by it)
        assert 200_000 < wm.sum() < 350_000
        assert not (wm & ventricle).any()
        k = int(np.argmax(ventricle.sum(axis=(1, 2))))
        assert ndimage.binary_fill_holes(wm[k] | ventricle[k]).sum() > (wm[k] | ventricle[k]).sum()
    # no AAL deep grey nucleus inside the white matter
    assert not (refs["White_Matter_L"].mask & refs["Thalamus_L"].mask).any()
    # the whole brain holds both hemispheres' ventricles and white matter, and is a brain's size (this ch2 grid: 1.7 l)
    brain = refs["Brain_MRI"].mask
    assert 1_200_000 < brain.sum() < 2_000_000
    for name in ("Lateral_Ventricle_L", "Lateral_Ventricle_R", "White_Matter_L", "White_Matter_R"):
        assert (refs[name].mask & brain).sum() > 0.95 * refs[name].mask.sum(), name


def test_inia19_rows_are_single_atlas_structures_and_a_macaque_sized_brain():
    subject = inia19_references()
    refs = subject.references
    assert subject.volume.geometry.spacing == pytest.approx((0.5, 0.5, 0.5))
    atlas_rows = [name for name in refs if name.startswith("NeuroMaps_")]
    assert len(atlas_rows) == 8 and "NeuroMaps_1" in atlas_rows
    brain = refs["Brain_inia19"].mask
    assert 90 < brain.sum() * 0.5 ** 3 / 1000 < 130      # ml: a rhesus macaque's brain is about 100 ml
    sizes = [refs[name].mask.sum() for name in atlas_rows]
    assert sizes == sorted(sizes, reverse=True) and min(sizes) >= 1000
    for name in atlas_rows:
        mask = refs[name].mask
        assert ndimage.label(mask)[1] == 1 and (mask & brain).sum() > 0.95 * mask.sum(), name
        assert refs[name].shape in SHAPES
    assert {refs[name].shape for name in atlas_rows} >= {"large", "compact"}


def test_icbm152_ventricles_white_matter_and_brain_are_where_anatomy_puts_them():
    """The third subject (the MNI ICBM152 template out of nilearn's wheel): each ventricle one dark piece on its own
    side, inside its hemisphere's white matter; the white matter a hemisphere's (the brainstem and cerebellum cut
    off); a human brain's volume. The template is symmetric, so the sides are mirror twins."""
    subject = icbm152_references()
    refs, t1 = subject.references, subject.volume.array
    assert set(refs) == {"Lateral_Ventricle_L", "Lateral_Ventricle_R", "White_Matter_L", "White_Matter_R",
                         "Brain_icbm152"}
    assert subject.volume.geometry.spacing == pytest.approx((1.0, 1.0, 1.0)) and t1.shape == (189, 233, 197)
    brain = refs["Brain_icbm152"].mask
    assert 1_500_000 < brain.sum() < 2_000_000     # ml at 1 mm: an adult brain
    for side, (lo, hi) in (("L", (0, 98)), ("R", (98, 197))):
        ventricle, wm = refs[f"Lateral_Ventricle_{side}"].mask, refs[f"White_Matter_{side}"].mask
        assert 4000 < ventricle.sum() < 15000 and ndimage.label(ventricle)[1] == 1
        columns = np.nonzero(ventricle.any(axis=(0, 1)))[0]
        assert lo - 2 <= columns.min() and columns.max() < hi + 2
        assert np.median(t1[ventricle]) < 100 < np.median(t1[wm])
        assert 200_000 < wm.sum() < 350_000 and not (wm & ventricle).any()
        k = int(np.argmax(ventricle.sum(axis=(1, 2))))
        assert ndimage.binary_fill_holes(wm[k] | ventricle[k]).sum() > (wm[k] | ventricle[k]).sum()
        assert not (wm & ~brain).any() and not (ventricle & ~brain).any()
        # the cerebrum only: nothing within 20 mm of the midline below z = -10 mm (slice 62)
        assert not wm[:62, :, 78:119].any()
    # a symmetric template: the left ventricle mirrored about the midline column is the right one
    np.testing.assert_array_equal(refs["Lateral_Ventricle_L"].mask[:, :, ::-1], refs["Lateral_Ventricle_R"].mask)


def test_ct_references_follow_hounsfield(ct):
    hu = ct.volume.array
    refs = ct.references
    assert ct.volume.geometry.spacing == pytest.approx((0.957, 0.957, 1.5), abs=1e-3)
    assert hu.min() == -1024 and hu.dtype == np.int16
    assert hu[refs["Skull"].mask].min() >= 300 and hu[refs["Mandible_ramus_a"].mask].min() >= 300
    for name in ("Airway", "Sinus_maxillary", "Sinus_frontal"):
        assert hu[refs[name].mask].max() < -500
    brain = refs["Brain"].mask
    assert 15 < np.median(hu[brain]) < 30
    ml = brain.sum() * np.prod(ct.volume.geometry.spacing) / 1000
    assert 1000 < ml < 1500  # an adult brain (with some orbit contents: docs/volume.md)
    # the rami: on opposite sides, tall (the lowest 26 slices), apart from the skull
    a, b = refs["Mandible_ramus_a"].mask, refs["Mandible_ramus_b"].mask
    assert np.nonzero(a.any(axis=(0, 1)))[0].max() < 128 <= np.nonzero(b.any(axis=(0, 1)))[0].min()
    assert np.ptp(np.nonzero(a.any(axis=(1, 2)))[0]) >= 20
    assert not (a & refs["Skull"].mask).any()
    # the lateral ventricles: CSF on either side of the brain's midline, inside the brain's outline, 5-25 ml each
    ventricles = [refs[f"Lateral_Ventricle_{side}"].mask for side in "ab"]
    for ventricle in ventricles:
        assert ndimage.label(ventricle)[1] == 1 and np.median(hu[ventricle]) < 10
        assert 5 < ventricle.sum() * np.prod(ct.volume.geometry.spacing) / 1000 < 25
        assert not (ventricle & brain).any() or (ventricle & brain).sum() < 0.2 * ventricle.sum()
    columns = [np.nonzero(v.any(axis=(0, 1)))[0] for v in ventricles]
    assert columns[0].max() < columns[1].min()


def test_read_inv3_rejects_other_files(tmp_path):
    from sonosam.errors import DataFileError

    bad = tmp_path / "x.inv3"
    bad.write_bytes(b"not a project")
    with pytest.raises(DataFileError, match="InVesalius"):
        read_inv3(bad)


def test_reference_labels_script_writes_a_label_map_that_reads_back_and_refuses_to_overwrite(tmp_path):
    """`python -m scripts.reference_labels`: the references as one label map on the subject's grid (value order as
    asked, legend beside it), read back voxel for voxel; a second run without --overwrite changes nothing."""
    from scripts.reference_labels import main
    from sonosam.io import read_volume

    out = tmp_path / "icbm152_labels.nii.gz"
    names = ["White_Matter_R", "Lateral_Ventricle_R"]
    assert main(["icbm152", "-o", str(out), "--structures", *names]) == 0
    subject = icbm152_references()
    written = read_volume(out)
    for part in ("spacing", "origin", "direction"):
        np.testing.assert_allclose(getattr(written.geometry, part), getattr(subject.volume.geometry, part))
    for value, name in enumerate(names, 1):
        np.testing.assert_array_equal(written.array == value, subject.references[name].mask)
    assert set(np.unique(written.array)) == {0, 1, 2}
    legend = (tmp_path / "icbm152_labels.nii.gz.txt").read_text().splitlines()
    assert legend == ["1 White_Matter_R large", "2 Lateral_Ventricle_R thin/curved"]
    before = out.read_bytes()
    with pytest.raises(SystemExit, match="already exists"):
        main(["icbm152", "-o", str(out)])
    assert out.read_bytes() == before


def test_a_missing_icbm152_folder_is_named_with_the_fix(tmp_path, monkeypatch):
    from sonosam.data import mri_icbm152_paths
    from sonosam.errors import DataFileError

    monkeypatch.setenv("SONOSAM_ICBM152", str(tmp_path))
    (tmp_path / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz").write_bytes(b"")   # one of the three only
    with pytest.raises(DataFileError, match=f"not in {tmp_path}: run `make data`"):
        mri_icbm152_paths()


def test_subjects_are_named_in_one_place_and_an_unknown_name_is_refused():
    from sonosam.errors import DataFileError
    from sonosam.references import SUBJECTS, load_subject

    assert SUBJECTS == ("colin27", "ct_head", "inia19", "icbm152", "brain_mr1", "brain_mr2", "breast_mr1", "lung_ct1",
                        "lung_ct2")
    with pytest.raises(DataFileError, match="Unknown subject 'colin28': choose from colin27, ct_head"):
        load_subject("colin28")


def test_the_five_patients_lesions_are_the_expert_labels_on_their_scans():
    """pyradiomics' test cases out of its source archive (`make data`): each subject one `Lesion` on its scan's grid,
    where the expert drew it (the slices it spans), and the lung lesions are soft tissue inside air-filled lung."""
    from sonosam.references import LESION_SUBJECTS, load_subject

    spans = {}
    for name, (_, modality) in LESION_SUBJECTS.items():
        subject = load_subject(name)
        assert subject.modality == modality and list(subject.references) == ["Lesion"]
        lesion = subject.references["Lesion"].mask
        assert lesion.shape == subject.volume.shape
        slices = np.flatnonzero(lesion.any(axis=(1, 2)))
        spans[name] = (int(slices[0]), int(slices[-1]), int(lesion.sum()))
        if modality == "CT":
            hu = subject.volume.array
            around = ndimage.binary_dilation(lesion, iterations=3) & ~lesion
            assert np.median(hu[lesion]) > -200 and np.median(hu[around]) < -400
    assert spans == {"brain_mr1": (11, 17, 4137), "brain_mr2": (8, 10, 453), "breast_mr1": (8, 10, 143),
                     "lung_ct1": (32, 34, 837), "lung_ct2": (15, 25, 24644)}


def test_missing_lesion_scans_are_named_with_the_fix(tmp_path, monkeypatch):
    from sonosam.data import lesions_dir
    from sonosam.errors import DataFileError

    monkeypatch.setenv("SONOSAM_LESIONS", str(tmp_path))
    (tmp_path / "lung2_image.nrrd").write_bytes(b"")
    with pytest.raises(DataFileError, match=f"not all in {tmp_path} \\(missing brain1_image.nrrd, .*run `make data`"):
        lesions_dir()
