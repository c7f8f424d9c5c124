"""Image/label pairs from files: 2D PNG, 3D volumes sliced with a minimum area, cine loops, list files."""

import os

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from sonosam.errors import DataFileError, InputImageError
from sonosam.evaluate.datasets import Sample, colin27_samples, find_pairs, load_pair, load_samples, samples_from_arrays
from sonosam.image import volume_window


def write(array, path, spacing=None, vector=False):
    image = sitk.GetImageFromArray(array, isVector=vector)
    if spacing:
        image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def volume_and_labels():
    rng = np.random.default_rng(0)
    volume = rng.integers(0, 1000, (6, 40, 50)).astype(np.int16)
    labels = np.zeros((6, 40, 50), np.uint8)
    labels[1:5, 5:25, 5:25] = 1          # 400 px per slice on slices 1..4
    labels[2, 30:35, 30:35] = 2          # 25 px, slice 2 only
    labels[3, 30:38, 30:45] = 2          # 120 px on slice 3
    return volume, labels


def test_volume_sliced_with_minimum_area(tmp_path):
    volume, labels = volume_and_labels()
    img = write(volume, tmp_path / "ct.nrrd")
    lab = write(labels, tmp_path / "ct_label.nrrd")
    samples = load_pair(img, lab, min_area=100)
    assert [(s.meta["slice"], s.label) for s in samples] == [(1, 1), (2, 1), (3, 1), (3, 2), (4, 1)]
    s = samples[3]
    np.testing.assert_array_equal(s.image, volume[3])
    np.testing.assert_array_equal(s.mask, labels[3] == 2)
    assert s.area == 120 and s.key == (str(img), 0, 3)
    assert all(sample.window == volume_window(volume) for sample in samples)   # one window for the volume
    assert samples[2].key == s.key  # two structures of one slice share the image key (one embedding)
    assert len(load_pair(img, lab, min_area=10)) == 6
    assert [s.label for s in load_pair(img, lab, labels=[2], min_area=10)] == [2, 2]
    # along another axis: axis 2 slices are (k, j) planes
    side = load_pair(img, lab, axis=2, min_area=20, labels=[1])
    assert {s.meta["slice"] for s in side} == set(range(5, 25))
    assert side[0].image.shape == (6, 40) and side[0].area == 4 * 20


def test_label_map_on_a_coarser_grid_is_resampled(tmp_path):
    volume, labels = volume_and_labels()
    img = write(volume, tmp_path / "vol.nii.gz", spacing=(1.0, 1.0, 1.0))
    coarse = labels[:, ::2, ::2]
    lab = write(np.ascontiguousarray(coarse), tmp_path / "vol_seg.nii.gz", spacing=(2.0, 2.0, 1.0))
    samples = load_pair(img, lab, labels=[1], min_area=100)
    assert [s.meta["slice"] for s in samples] == [1, 2, 3, 4]
    assert samples[0].mask.shape == (40, 50)
    assert abs(samples[0].area - 400) <= 60


def test_png_folder_with_images_and_labels(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for i in range(3):
        image = np.zeros((32, 48, 3), np.uint8)
        image[..., 0] = 50 + i
        image[8:20, 10:30] = 200
        Image.fromarray(image).save(tmp_path / "images" / f"case{i}.png")
        mask = np.zeros((32, 48), np.uint8)
        mask[8:20, 10:30] = 255            # 0/255 masks are one structure
        Image.fromarray(mask).save(tmp_path / "labels" / f"case{i}_mask.png")
    pairs = find_pairs(tmp_path)
    assert [p[0].name for p in pairs] == ["case0.png", "case1.png", "case2.png"]
    samples = load_samples(tmp_path, min_area=10)
    assert len(samples) == 3
    assert samples[0].image.shape == (32, 48, 3) and samples[0].mask.shape == (32, 48)
    assert samples[0].label == 255 and samples[0].area == 240
    assert samples[1].image[0, 0, 0] == 51


def test_flat_folder_and_list_file(tmp_path):
    volume, labels = volume_and_labels()
    write(volume[2], tmp_path / "a.nrrd")
    write(labels[2], tmp_path / "a-label.nrrd")
    write(volume[3], tmp_path / "b.mha")
    write(labels[3], tmp_path / "b_seg.mha")
    pairs = find_pairs(tmp_path)
    assert [(i.name, l.name) for i, l in pairs] == [("a.nrrd", "a-label.nrrd"), ("b.mha", "b_seg.mha")]
    listing = tmp_path / "list.csv"
    listing.write_text("image,label\n# a comment\nb.mha,b_seg.mha\n")
    samples = load_samples(listing, min_area=50)
    assert [(s.label, s.area) for s in samples] == [(1, 400), (2, 120)]
    assert samples[0].key == (str(tmp_path / "b.mha"),)


def test_a_list_file_saved_with_a_bom_and_other_scripts_names_its_files(tmp_path):
    """Excel's and Notepad's "UTF-8" list files begin with a BOM, and file names may hold any script: the list is
    read as UTF-8 whatever the system's code page (Windows' is not UTF-8), the BOM not taken for part of a name."""
    volume, labels = volume_and_labels()
    write(volume[3], tmp_path / "größe_脳.mha")
    write(labels[3], tmp_path / "größe_脳_seg.mha")
    listing = tmp_path / "list.csv"
    listing.write_bytes("größe_脳.mha,größe_脳_seg.mha\n".encode("utf-8-sig"))
    assert [(i.name, l.name) for i, l in find_pairs(listing)] == [("größe_脳.mha", "größe_脳_seg.mha")]


def test_name_image_beside_name_label_pairs_as_pyradiomics_names_them(tmp_path):
    """NAME_image.ext + NAME_label.ext (pyradiomics' test cases, many collections): one pair, the label never taken
    for an image; a plain NAME.ext beside them still pairs with its own label."""
    volume, labels = volume_and_labels()
    write(volume, tmp_path / "lung1_image.nrrd")
    write(labels, tmp_path / "lung1_label.nrrd")
    write(volume[2], tmp_path / "c_img.nrrd")
    write(labels[2], tmp_path / "c_mask.nrrd")
    write(volume[3], tmp_path / "d.nrrd")
    write(labels[3], tmp_path / "d_label.nrrd")
    pairs = find_pairs(tmp_path)
    assert [(i.name, l.name) for i, l in pairs] == [("c_img.nrrd", "c_mask.nrrd"), ("d.nrrd", "d_label.nrrd"),
                                                    ("lung1_image.nrrd", "lung1_label.nrrd")]
    samples = load_samples(tmp_path, labels=[1], min_area=100)
    assert len(samples) == 4 + 1 + 1


def test_nnunet_naming(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    volume, labels = volume_and_labels()
    write(volume, tmp_path / "imagesTr" / "brain_001_0000.nii.gz")
    write(labels, tmp_path / "labelsTr" / "brain_001.nii.gz")
    assert len(load_samples(tmp_path, min_area=100)) == 5


def test_cine_loop_with_per_frame_masks(tmp_path):
    frames = np.zeros((5, 30, 40, 3), np.uint8)
    masks = np.zeros((5, 30, 40), np.uint8)
    for t in range(5):
        frames[t, 5 + t:20 + t, 10:25] = 180
        masks[t, 5 + t:20 + t, 10:25] = 1
    masks[4] = 0  # no structure on the last frame
    img = write(frames, tmp_path / "loop.nrrd", vector=True)
    mask_dir = tmp_path / "loop_masks"
    mask_dir.mkdir()
    for t in range(5):
        Image.fromarray(masks[t] * 255).save(mask_dir / f"frame{t:03d}.png")
    samples = load_pair(img, mask_dir, min_area=10)
    assert [s.meta["frame"] for s in samples] == [0, 1, 2, 3]
    assert samples[2].image.shape == (30, 40, 3) and samples[2].meta["kind"] == "cine"
    np.testing.assert_array_equal(samples[2].mask, masks[2] > 0)


def test_samples_from_arrays_and_max_samples():
    volume, labels = volume_and_labels()
    samples = samples_from_arrays(volume, labels, min_area=1, name="v")
    assert len(samples) == 6
    thin = load_samples_from(samples)
    assert len(thin) == 3


def load_samples_from(samples):
    from sonosam.evaluate.datasets import _thin

    return _thin(samples, 3)


def test_clear_errors(tmp_path):
    volume, labels = volume_and_labels()
    with pytest.raises(InputImageError, match="differ"):
        samples_from_arrays(volume, labels[:, :10], name="v")
    with pytest.raises(DataFileError, match="no such"):
        load_samples(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    write(volume[0], tmp_path / "empty" / "x.nrrd")
    with pytest.raises(DataFileError, match="no image/label pairs"):
        find_pairs(tmp_path / "empty")
    write(labels[0], tmp_path / "empty" / "x_label.nrrd")   # slice 0 has no structure
    with pytest.raises(DataFileError, match="No structure"):
        load_samples(tmp_path / "empty")


def test_colin27_slices_are_real_labelled_mri(monkeypatch):
    try:
        samples = colin27_samples(labels=[7], max_samples=3)
    except DataFileError:
        alternate = "/tmp/mricron/x/usr/share/mricron/templates"  # unpacked outside the repo
        if not os.path.exists(os.path.join(alternate, "ch2.nii.gz")):
            pytest.skip("Colin27 MRI not installed (make data)")
        monkeypatch.setenv("SONOSAM_DATA", alternate)
        samples = colin27_samples(labels=[7], max_samples=3)
    assert len(samples) == 3
    for s in samples:
        assert s.image.shape == (217, 181) and s.mask.shape == (217, 181)
        assert s.area >= 300 and s.label == 7
        assert s.image[s.mask].mean() > 30  # grey matter is not background


def test_a_label_map_stored_flipped_is_read_where_it_lies(tmp_path):
    """The same label voxels in space, one file stored with its i axis flipped (its origin and direction say so, as
    fslswapdim and other tools write): both give the same samples; the flipped one was used voxel by voxel (a
    mirrored reference, silently)."""
    from sonosam.io import Geometry, Volume, labels_on_grid

    rng = np.random.default_rng(0)
    volume = rng.integers(0, 200, (6, 40, 48)).astype(np.int16)
    labels = np.zeros(volume.shape, np.uint8)
    labels[:, 10:30, 4:20] = 1                                   # on the low-i side only
    geometry = Geometry((0.8, 0.9, 2.0), (10.0, -20.0, 5.0), np.eye(3))
    for array, name, g in ((volume, "v.nrrd", geometry), (labels, "aligned.nrrd", geometry),
                           (labels[:, :, ::-1], "flipped.nrrd",
                            Geometry(geometry.spacing, (10.0 + 0.8 * 47, -20.0, 5.0), np.diag([-1.0, 1.0, 1.0])))):
        image = sitk.GetImageFromArray(np.ascontiguousarray(array))
        g.apply_to(image)
        sitk.WriteImage(image, str(tmp_path / name))
    aligned = load_pair(tmp_path / "v.nrrd", tmp_path / "aligned.nrrd", min_area=10)
    flipped = load_pair(tmp_path / "v.nrrd", tmp_path / "flipped.nrrd", min_area=10)
    assert len(aligned) == len(flipped) == 6
    for a, b in zip(aligned, flipped):
        np.testing.assert_array_equal(a.mask, b.mask)
    stored = Volume(labels[:, :, ::-1].copy(), Geometry(geometry.spacing, (10.0 + 0.8 * 47, -20.0, 5.0),
                                                        np.diag([-1.0, 1.0, 1.0])))
    np.testing.assert_array_equal(labels_on_grid(stored, volume.shape, geometry), labels)   # train assist/ppn/adapters
    same = Volume(labels, geometry)
    assert labels_on_grid(same, volume.shape, geometry) is labels                          # nothing to do
    # saved by a script without any placement (origin 0, spacing 1), same size: its voxels are the image's
    assert labels_on_grid(Volume(labels, Geometry()), volume.shape, geometry) is labels
    # placed elsewhere in space: refused, naming both placements, instead of an empty or shifted reference
    away = Volume(labels, Geometry(geometry.spacing, (300.0, -20.0, 5.0), np.eye(3)))
    with pytest.raises(DataFileError, match="lies elsewhere in space than the image: on the image's grid it keeps 0%"):
        labels_on_grid(away, volume.shape, geometry)


def disk_image(cy, cx, r, size=128):
    yy, xx = np.mgrid[:size, :size]
    image = np.full((size, size), 30, np.uint8)
    image[(yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2] = 220
    return image, (image > 100).astype(np.uint8)


def test_unnamed_arrays_never_share_an_embedding_and_stay_apart_in_the_report(default_model, tmp_path):
    """Two different in-memory images without a name get keys (and sources) from their pixels: the second is scored
    on its own embedding, as when it is evaluated alone; equal pixels still share one key. Samples that share a key
    but not their pixels are refused before any model runs."""
    from sonosam.evaluate import evaluate, write_report
    from sonosam.evaluate.report import per_source_table
    from sonosam.predictor import Predictor

    (img1, lab1), (img2, lab2) = disk_image(40, 40, 20), disk_image(85, 85, 25)
    s1, s2 = samples_from_arrays(img1, lab1), samples_from_arrays(img2, lab2)
    assert s1[0].key != s2[0].key and s1[0].meta["source"] != s2[0].meta["source"]
    assert samples_from_arrays(img1.copy(), lab1)[0].key == s1[0].key
    both = evaluate(Predictor(default_model), s1 + s2, n_clicks=1, start="box", progress=False)
    alone = evaluate(Predictor(default_model), s2, n_clicks=1, start="box", progress=False)
    assert both.images[1].dice[0] == pytest.approx(alone.images[0].dice[0], abs=1e-6)
    assert both.images[1].dice[0] > 0.9
    assert len({row["Source"] for row in per_source_table([both])}) == 3   # two arrays and their mean
    clash = [Sample(img1, lab1 > 0, "a", ("image",)), Sample(img2, lab2 > 0, "b", ("image",))]
    with pytest.raises(InputImageError, match="share the key .* images differ.*name="):
        evaluate(Predictor(default_model), clash, n_clicks=1, start="box", progress=False)


def test_name_seg_nrrd_beside_its_image_pairs_and_a_second_label_map_is_refused(tmp_path):
    """Slicer's NAME.seg.nrrd beside NAME.nrrd / .nii.gz / .mha is NAME's label map (not a second NAME); with a
    NAME_label file too, the folder holds two label maps for one image: refused by name, never one of them taken for
    the image. In labels/ it still matches images/NAME."""
    volume, labels = volume_and_labels()
    for i, ext in enumerate((".nrrd", ".nii.gz", ".mha")):
        folder = tmp_path / f"flat{i}"
        folder.mkdir()
        write(volume, folder / f"case{ext}")
        write(labels, folder / "case.seg.nrrd")
        assert [(a.name, b.name) for a, b in find_pairs(folder)] == [(f"case{ext}", "case.seg.nrrd")]
    assert [s.key[0] for s in load_samples(tmp_path / "flat0", labels=[1])] == [str(tmp_path / "flat0" / "case.nrrd")] * 4
    write(labels, tmp_path / "flat0" / "case_label.nrrd")
    with pytest.raises(DataFileError, match=r"case.nrrd: more than one label map .*case_label.nrrd, case.seg.nrrd"):
        find_pairs(tmp_path / "flat0")
    (tmp_path / "split" / "images").mkdir(parents=True)
    (tmp_path / "split" / "labels").mkdir()
    write(volume, tmp_path / "split" / "images" / "case.nrrd")
    write(labels, tmp_path / "split" / "labels" / "case.seg.nrrd")
    assert [(a.name, b.name) for a, b in find_pairs(tmp_path / "split")] == [("case.nrrd", "case.seg.nrrd")]


def test_a_requested_label_missing_from_a_source_is_refused_by_name(tmp_path):
    """--label 1 --label 9 where 9 is in no label map: refused, naming label 9 and the source, never left out while
    label 1 is evaluated (the five patients' lesions are label 1)."""
    from sonosam.data import lesions_dir

    pair = (lesions_dir() / "lung1_image.nrrd", lesions_dir() / "lung1_label.nrrd")
    assert {s.label for s in load_samples([pair], labels=[1], min_area=20)} == {1}
    with pytest.raises(DataFileError, match=r"lung1_image.nrrd: no structure of label 9 of at least 20 pixels; drop"):
        load_samples([pair], labels=[1, 9], min_area=20, every_label=True)
    # training takes what each source has (sources with different structures are common there)
    assert {s.label for s in load_samples([pair], labels=[1, 9], min_area=20)} == {1}
    volume, labels = volume_and_labels()   # a second source without any structure is refused too, not skipped
    write(volume[0], tmp_path / "x.nrrd")
    write(labels[0], tmp_path / "x_label.nrrd")
    with pytest.raises(DataFileError, match=r"No structure .* found in .*x.nrrd"):
        load_samples([pair, (tmp_path / "x.nrrd", tmp_path / "x_label.nrrd")], min_area=20)


def test_label_map_errors_name_the_label_map(tmp_path):
    volume, labels = volume_and_labels()
    write(volume, tmp_path / "img.nrrd")
    write(labels.astype(np.float32) + 0.5, tmp_path / "lab.nrrd")
    with pytest.raises(InputImageError, match=r"Label map .*lab.nrrd has non-integer values"):
        load_pair(tmp_path / "img.nrrd", tmp_path / "lab.nrrd")
    write(labels.astype(np.int16) - 1, tmp_path / "neg.nrrd")
    with pytest.raises(InputImageError, match=r"Label map .*neg.nrrd has negative values"):
        load_pair(tmp_path / "img.nrrd", tmp_path / "neg.nrrd")
    with pytest.raises(InputImageError, match=r"has negative values"):   # a 2D one too
        samples_from_arrays(volume[2], labels[2].astype(np.int16) - 1)


def cli(*argv):
    from sonosam.cli import build_parser

    return build_parser().parse_args(["evaluate", *argv])


def test_cli_reads_colin27_with_its_four_labels_beside_other_data():
    """--data colin27 --data lesions: colin27 keeps its documented four AAL labels, the lesions their own."""
    from sonosam.cli.evaluate import _samples

    samples = _samples(cli("--data", "colin27", "--data", "lesions", "--min-area", "20", "-o", "x"))
    by_source = {}
    for sample in samples:
        by_source.setdefault("lesions" if "lesions" in sample.key[0] else "colin27", set()).add(sample.label)
    assert by_source["colin27"] == {7, 8, 85, 86} and by_source["lesions"] == {1}


def test_cli_refuses_a_wrong_model_start_or_slice_range_before_reading_data(tmp_path, capsys, monkeypatch):
    from sonosam.cli import main
    from sonosam.evaluate import datasets

    monkeypatch.setattr(datasets, "find_pairs", lambda *a: pytest.fail("the data were read first"))
    monkeypatch.setattr(datasets, "load_pair", lambda *a, **k: pytest.fail("the data were read first"))
    out = str(tmp_path / "r")
    assert main(["evaluate", "--data", "colin27", "--data", "lesions", "--model", "nosuch", "-o", out]) == 2
    assert "Unknown model 'nosuch'" in capsys.readouterr().err
    assert main(["evaluate", "--data", "lesions", "--start", "point", "-o", out]) == 2
    assert "takes no clicks" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "--data", "lesions", "--slices", "5:3", "-o", out])
    assert "'5:3' hold no slice; give START:STOP with START below STOP" in capsys.readouterr().err
