"""sonosam.io on real files: geometry round trips, the real echo loops and MRI, Slicer segmentation files,
no-overwrite and atomic writes, clear errors for 4D/vector input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from sonosam import data, io
from sonosam.errors import DataFileError, InputImageError


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


GEOMETRY = io.Geometry(spacing=(0.7, 1.3, 2.5), origin=(-12.5, 30.25, 7.0), direction=rotation(0.3, -0.2, 0.5))


def labelmap() -> np.ndarray:
    lab = np.zeros((6, 9, 11), np.uint8)  # k, j, i: deliberately all different
    lab[1:4, 2:6, 3:9] = 1
    lab[4:6, 5:8, 1:3] = 2
    return lab


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------------------------------- volumes

@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha"])
def test_volume_round_trip_keeps_geometry_and_voxels(tmp_path, suffix):
    array = np.random.default_rng(0).normal(100, 30, (6, 9, 11)).astype(np.float32)
    path = io.write_volume(io.Volume(array, GEOMETRY), tmp_path / f"vol{suffix}")
    back = io.read_volume(path)
    assert back.array.shape == (6, 9, 11)
    np.testing.assert_array_equal(back.array, array)
    assert np.allclose(back.geometry.spacing, GEOMETRY.spacing, atol=1e-5)
    assert np.allclose(back.geometry.origin, GEOMETRY.origin, atol=1e-4)
    assert np.allclose(back.geometry.direction, GEOMETRY.direction, atol=1e-5)
    assert not np.allclose(back.geometry.direction, np.eye(3))  # really rotated
    assert listing(tmp_path) == [f"vol{suffix}"]  # no temp file left beside it


def test_sheared_axes_are_never_written_where_the_format_cannot_hold_them(tmp_path):
    """NIfTI holds no sheared (non-orthogonal) axes: ITK's writer made them a rotation, moving voxels by
    millimetres, silently. Refused, nothing written; NRRD keeps them exactly."""
    shear = np.array([[1.0, 0.3, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    sheared = io.Volume(np.zeros((4, 30, 30), np.uint8), io.Geometry((1.0, 1.0, 2.0), (5.0, 6.0, 7.0),
                                                                     shear / np.linalg.norm(shear, axis=0)))
    for suffix in (".nii.gz", ".nii"):
        with pytest.raises(DataFileError, match="NIfTI cannot hold this volume's sheared"):
            io.write_volume(sheared, tmp_path / f"s{suffix}")
    assert listing(tmp_path) == []
    back = io.read_volume(io.write_volume(sheared, tmp_path / "s.nrrd"))
    np.testing.assert_allclose(back.geometry.ijk_to_lps(), sheared.geometry.ijk_to_lps(), atol=1e-6)


def test_ijk_to_ras_matches_simpleitk_and_round_trips():
    image = sitk.Image(11, 9, 6, sitk.sitkUInt8)
    GEOMETRY.apply_to(image)
    ijk = (4, 7, 2)
    lps = np.array(image.TransformIndexToPhysicalPoint(ijk))
    ras = GEOMETRY.ijk_to_ras() @ np.array([*ijk, 1.0])
    assert np.allclose(ras[:3], lps * [-1, -1, 1])
    assert GEOMETRY.allclose(io.Geometry.from_ijk_to_ras(GEOMETRY.ijk_to_ras()))
    assert GEOMETRY.allclose(io.Geometry.from_image(image))


def _dicom_series(folder, array, geometry, decimals=10):
    """One DICOM file per slice, positions written with `decimals` decimals."""
    folder.mkdir(exist_ok=True)
    image = sitk.GetImageFromArray(array)
    geometry.apply_to(image)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = geometry.direction
    iop = "\\".join(f"{v:.10f}" for v in (*direction[:, 0], *direction[:, 1]))
    for k in range(array.shape[0]):
        slice_ = image[:, :, k]
        for tag, value in [("0008|0060", "MR"), ("0020|000d", "1.2.826.0.1.3680043.2.1125.1"),
                           ("0020|000e", "1.2.826.0.1.3680043.2.1125.2"), ("0008|0018", f"1.2.826.0.1.3680043.2.1125.3.{k}"),
                           ("0020|0037", iop), ("0020|0013", str(k + 1)), ("0028|0030", "0.6\\0.8"),
                           ("0020|0032", "\\".join(f"{v:.{decimals}f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))))]:
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(slice_)
    return folder


def test_dicom_series_folder_reads_with_geometry(tmp_path):
    array = (np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) * 3 - 40)
    geometry = io.Geometry((0.8, 0.6, 1.5), (10.0, -5.0, 20.0), rotation(0.0, 0.0, 0.4))
    _dicom_series(tmp_path, array, geometry)
    volume = io.read_volume(tmp_path)
    np.testing.assert_array_equal(volume.array, array)
    assert volume.geometry.allclose(geometry, atol=1e-4), volume.geometry
    # a file missing from the middle: ITK would read the rest at one spacing, every slice after the gap misplaced
    (tmp_path / "slice002.dcm").unlink()
    with pytest.raises(DataFileError, match="not evenly spaced: slices 1 and 2 are 3.00 mm apart where the others "
                                            "are 1.50 mm"):
        io.read_volume(tmp_path)
    # positions written with one decimal (0.625 mm steps read as 0.6 / 0.7): a real series, read
    thin = io.Geometry((0.8, 0.6, 0.625), (10.0, -5.0, 20.0))
    assert io.read_volume(_dicom_series(tmp_path / "thin", np.zeros((8, 5, 6), np.int16) + 7, thin, 1)).shape == (8, 5, 6)


def colin27_path() -> Path:
    try:
        return data.mri_colin27_paths()[0]
    except DataFileError:
        fallback = Path("/tmp/mricron/x/usr/share/mricron/templates/ch2.nii.gz")
        if fallback.exists():
            return fallback
        pytest.skip("Colin27 MRI (Debian mricron-data) not available: run `make data`")


def test_real_colin27_mri_reads_with_shape_and_spacing():
    volume = io.read_volume(colin27_path())
    assert volume.array.shape == (181, 217, 181)
    assert np.allclose(volume.geometry.spacing, (1.0, 1.0, 1.0))
    assert volume.array.max() > volume.array.min()


def test_4d_and_vector_inputs_give_clear_errors(tmp_path):
    four_d = sitk.GetImageFromArray(np.zeros((2, 3, 4, 5), np.uint8), isVector=False)
    assert four_d.GetDimension() == 4
    sitk.WriteImage(four_d, str(tmp_path / "t.nii.gz"))
    with pytest.raises(InputImageError, match=r"4D \(shape \(2, 3, 4, 5\).*Extract one time point"):
        io.read_volume(tmp_path / "t.nii.gz")
    rgb = sitk.GetImageFromArray(np.zeros((4, 5, 3), np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(tmp_path / "rgb.png"))
    with pytest.raises(InputImageError, match=r"3 components per voxel \(shape \(4, 5, 3\)"):
        io.read_volume(tmp_path / "rgb.png")
    with pytest.raises(InputImageError, match=r"4D"):
        io.Volume(np.zeros((2, 3, 4, 5)))
    with pytest.raises(InputImageError, match=r"4D"):
        io.write_segmentation(tmp_path / "x.seg.nrrd", np.zeros((2, 3, 4, 5), np.uint8))
    with pytest.raises(DataFileError, match="does not exist"):
        io.read_volume(tmp_path / "missing.nrrd")
    assert listing(tmp_path) == ["rgb.png", "t.nii.gz"]


# ---------------------------------------------------------------------------------------------- cine

@pytest.fixture(scope="module")
def a4c() -> io.Cine:
    return io.read_cine(data.echo_a4c_path())


def raw_luma(path: Path, index: int) -> np.ndarray:
    """The Y channel exactly as stored (pydicom with raw=True does no colour conversion)."""
    from pydicom.pixels import pixel_array
    frame = pixel_array(str(path), index=index, raw=True)
    return frame[..., 0]


def test_real_a4c_cine_shapes_spacing_and_frame_time(a4c):
    print(f"A4C: {a4c.frames.shape}, spacing {a4c.spacing_mm} mm from {a4c.spacing_source}, "
          f"frame time {a4c.frame_time_ms} ms ({a4c.fps:.2f} fps), notes {a4c.notes}")
    assert a4c.frames.shape == (120, 480, 640) and a4c.frames.dtype == np.uint8
    assert a4c.spacing_known and a4c.spacing_source == "SequenceOfUltrasoundRegions"
    assert np.allclose(a4c.spacing_mm, (0.5104970559, 0.5104970559), atol=1e-6)  # 0.05105 cm per pixel
    assert a4c.frame_time_ms == pytest.approx(33.333) and a4c.fps == pytest.approx(30.0, abs=0.01)
    assert a4c.photometric == "YBR_FULL_422" and a4c.is_color
    assert 5 < a4c.frames.mean() < 200 and a4c.frames.max() > 200  # a real B-mode image, not blank
    assert a4c._rgb is None  # colour frames not kept unless asked for
    geometry = a4c.frame_geometry()
    assert geometry.spacing[:2] == a4c.spacing_mm


def test_ybr_is_converted_once(a4c):
    from pydicom import dcmread

    path = data.echo_a4c_path()
    # Grayscale equals the stored luma Y up to rounding, except where YBR->RGB clipped a saturated colour
    # (a few pixels of the coloured overlays). Converting YBR twice would shift grey levels by tens.
    from pydicom.pixels import pixel_array

    for index in (0, 60):
        diff = np.abs(a4c.frames[index].astype(int) - raw_luma(path, index))
        rgb_frame = pixel_array(str(path), index=index)
        unclipped = ~((rgb_frame == 0) | (rgb_frame == 255)).any(axis=-1)
        assert diff[unclipped].max() <= 2, diff[unclipped].max()
        assert diff.mean() < 0.05 and (diff > 2).mean() < 1e-3
    rgb = dcmread(data.echo_a4c_small_path()).pixel_array  # pydicom 3 returns RGB here
    small = io.read_cine(data.echo_a4c_small_path(), keep_rgb=True)
    np.testing.assert_array_equal(small.rgb, rgb)  # kept once, identical to pydicom's RGB
    grey = (rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])
    assert grey.mean() > 0.5  # mostly B-mode grey: R=G=B, so luminance must equal R
    np.testing.assert_array_equal(small.frames[grey], rgb[..., 0][grey])
    manual = np.rint(rgb @ np.array([0.299, 0.587, 0.114])).astype(int)
    assert np.abs(small.frames.astype(int) - manual).max() <= 1


def test_small_echo_region_inconsistent_with_image_is_flagged_and_rgb_is_lazy():
    cine = io.read_cine(data.echo_a4c_small_path())
    assert cine.frames.shape == (30, 240, 320)
    # Its ultrasound region (84..595 x 31..414) was calibrated on the 640x480 original.
    assert not cine.spacing_known and cine.spacing_mm == (1.0, 1.0)
    assert any("outside the 320x240 image" in note for note in cine.notes)
    assert cine.frame_time_ms == pytest.approx(33.333)
    assert cine._rgb is None
    assert cine.rgb.shape == (30, 240, 320, 3) and cine._rgb is not None


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", **attributes) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"  # US multi-frame
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "US"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated = ds.BitsStored = 8 * pixels.dtype.itemsize
    ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, 0
    for key, value in attributes.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_single_frame_monochrome_dicom_with_pixel_spacing(tmp_path):
    image = np.arange(20 * 30, dtype=np.uint8).reshape(20, 30)
    path = write_dicom(tmp_path / "one.dcm", image, PixelSpacing=[0.3, 0.2])
    cine = io.read_cine(path)
    assert cine.frames.shape == (1, 20, 30)
    np.testing.assert_array_equal(cine.frames[0], image)
    assert cine.spacing_known and cine.spacing_mm == (0.2, 0.3)  # (x, y); PixelSpacing is (row, column)
    assert cine.spacing_source == "PixelSpacing" and cine.frame_time_ms is None and not cine.is_color
    assert cine.rgb.shape == (1, 20, 30, 3)


def test_multiframe_monochrome_with_region_cinerate_and_monochrome1(tmp_path):
    from pydicom.dataset import Dataset

    region = Dataset()
    region.RegionSpatialFormat, region.RegionDataType = 1, 1
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3
    region.PhysicalDeltaX, region.PhysicalDeltaY = 0.04, 0.05
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 2, 1
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = 29, 19
    frames = np.random.default_rng(1).integers(0, 256, (4, 20, 30), dtype=np.uint8)
    path = write_dicom(tmp_path / "loop.dcm", frames, SequenceOfUltrasoundRegions=[region], CineRate=25)
    cine = io.read_cine(path)
    np.testing.assert_array_equal(cine.frames, frames)
    assert cine.spacing_mm == pytest.approx((0.4, 0.5)) and cine.spacing_known
    assert cine.frame_time_ms == pytest.approx(40.0)
    inverted = io.read_cine(write_dicom(tmp_path / "m1.dcm", frames, "MONOCHROME1", FrameTimeVector=[0, 20, 20, 20]))
    np.testing.assert_array_equal(inverted.frames, 255 - frames)
    assert inverted.frame_time_ms == pytest.approx(20.0) and not inverted.spacing_known


def test_read_cine_skips_timing_fields_that_are_no_positive_time(tmp_path):
    """A negative FrameTime used to reach the time stamps and fail the GIF writer after the whole tracking run."""
    frames = np.random.default_rng(2).integers(0, 256, (3, 20, 30), dtype=np.uint8)
    cine = io.read_cine(write_dicom(tmp_path / "neg.dcm", frames, FrameTime="-33.3", CineRate=25))
    assert cine.frame_time_ms == pytest.approx(40.0)
    assert any("FrameTime in the file (-33.3) is no positive time" in note for note in cine.notes)
    single = io.read_cine(write_dicom(tmp_path / "single.dcm", frames, FrameTimeVector=[0], CineRate=25))
    assert single.frame_time_ms == pytest.approx(40.0)   # a one-value vector holds no increment
    none = io.read_cine(write_dicom(tmp_path / "none.dcm", frames, FrameTime="0", CineRate=-5))
    assert none.frame_time_ms is None
    assert any("No frame time in the file" in note for note in none.notes)


@pytest.mark.parametrize("value", ["-33.3", "0", "nan", "inf"])
def test_the_real_loop_with_a_frame_time_that_is_no_time_still_writes_the_tracking_outputs(tmp_path, value):
    """pydicom's real A4C loop with its FrameTime (33.333) edited: a negative value used to reach the time stamps and
    fail the GIF writer after the whole tracking run ("can't convert negative int to unsigned"); 'nan' and 'inf' gave
    NaN time stamps and a GIF the writer refused."""
    import pydicom

    from sonosam.track.outputs import read_sequence_nrrd, write_overlay_gif, write_sequence_nrrd

    ds = pydicom.dcmread(data.echo_a4c_small_path())
    ds.FrameTime = value
    ds.save_as(tmp_path / "loop.dcm")
    cine = io.read_cine(tmp_path / "loop.dcm")
    assert cine.frame_time_ms is None and cine.fps is None
    assert f"FrameTime in the file ({value}) is no positive time; it was ignored." in cine.notes
    assert any("No frame time in the file" in note for note in cine.notes)
    masks = np.zeros((3,) + cine.frames.shape[1:], bool)
    masks[:, 60:120, 150:210] = True
    write_overlay_gif(tmp_path / "overlay.gif", cine.frames[:3], [masks], [(255, 0, 0)],
                      frame_time_ms=cine.frame_time_ms)
    write_sequence_nrrd(tmp_path / "seg.seq.nrrd", masks.astype(np.uint8), ["LV"], frame_time_ms=cine.frame_time_ms)
    _, _, header = read_sequence_nrrd(tmp_path / "seg.seq.nrrd")
    assert header["axis 3 index values"].split() == ["0", "1", "2"]


def test_read_cine_of_a_non_dicom_file_is_a_data_file_error(tmp_path):
    (tmp_path / "x.dcm").write_bytes(b"not dicom at all")
    with pytest.raises(DataFileError, match="x.dcm"):
        io.read_cine(tmp_path / "x.dcm")


# -------------------------------------------------------------------------------------- segmentations

SEGMENTS = [{"name": "left ventricle", "color": (255, 0, 0), "label": 1},
            {"name": "left atrium", "color": (0.2, 0.4, 1.0), "label": 2}]


def test_seg_nrrd_read_back_identical_by_slicerio_and_simpleitk(tmp_path):
    import slicerio

    lab = labelmap()
    path = io.write_segmentation(tmp_path / "heart.seg.nrrd", lab, GEOMETRY, SEGMENTS)
    seg = slicerio.read_segmentation(str(path))
    np.testing.assert_array_equal(seg["voxels"].transpose(2, 1, 0), lab)  # slicerio gives i, j, k
    assert np.allclose(seg["ijkToLPS"], GEOMETRY.ijk_to_lps())
    assert [s["name"] for s in seg["segments"]] == ["left ventricle", "left atrium"]
    assert np.allclose(seg["segments"][0]["color"], (1, 0, 0)) and np.allclose(seg["segments"][1]["color"], (0.2, 0.4, 1))
    assert [s["labelValue"] for s in seg["segments"]] == [1, 2]
    assert seg["segments"][0]["extent"] == [3, 8, 2, 5, 1, 3]  # i, j, k min/max
    for segment, label in zip(seg["segments"], (1, 2)):
        np.testing.assert_array_equal(slicerio.segment_mask(seg, segment["name"]).transpose(2, 1, 0), lab == label)

    image = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), lab)
    assert GEOMETRY.allclose(io.Geometry.from_image(image))
    assert image.GetMetaData("Segment1_Name") == "left atrium"

    ours = io.read_segmentation(path)
    np.testing.assert_array_equal(ours.labelmap, lab)
    assert ours.geometry.allclose(GEOMETRY)
    assert [(s.name, s.label) for s in ours.segments] == [("left ventricle", 1), ("left atrium", 2)]
    assert np.allclose(ours.segments[1].color, (0.2, 0.4, 1.0))


def test_overlapping_masks_go_to_layers_as_in_slicer(tmp_path):
    import slicerio

    a = np.zeros((3, 8, 8), bool)
    a[:, 1:6, 1:6] = True
    b = np.zeros_like(a)
    b[:, 4:8, 4:8] = True  # overlaps a
    path = io.write_segmentation(tmp_path / "two.seg.nrrd", [a, b], GEOMETRY, [{"name": "a"}, {"name": "b"}])
    seg = slicerio.read_segmentation(str(path))
    assert seg["voxels"].ndim == 4 and [s["layer"] for s in seg["segments"]] == [0, 1]
    np.testing.assert_array_equal(slicerio.segment_mask(seg, "a").transpose(2, 1, 0), a)
    np.testing.assert_array_equal(slicerio.segment_mask(seg, "b").transpose(2, 1, 0), b)
    ours = io.read_segmentation(path)
    np.testing.assert_array_equal(ours.mask("b"), b)
    with pytest.raises(InputImageError, match="segments overlap.*read_segmentation"):   # it said "RGB"
        io.read_volume(path)
    with pytest.raises(InputImageError, match="overlap"):
        io.write_segmentation(tmp_path / "two.nii.gz", [a, b], GEOMETRY)
    assert listing(tmp_path) == ["two.seg.nrrd"]
    # segments described by their names, or one segment by a dict alone (they raised raw TypeErrors)
    named = io.read_segmentation(io.write_segmentation(tmp_path / "named.seg.nrrd", [a, b], GEOMETRY, ["LV", "RV"]))
    assert [s.name for s in named.segments] == ["LV", "RV"]
    one = io.read_segmentation(io.write_segmentation(tmp_path / "one.seg.nrrd", a, GEOMETRY, {"name": "LV"}))
    assert [s.name for s in one.segments] == ["LV"]
    with pytest.raises(InputImageError, match="name or a dict with a 'name'"):
        io.write_segmentation(tmp_path / "bad.seg.nrrd", a, GEOMETRY, [3])


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_plain_labelmap_round_trip(tmp_path, suffix):
    lab = labelmap()
    path = io.write_segmentation(tmp_path / f"lab{suffix}", lab, GEOMETRY, SEGMENTS)
    back = io.read_segmentation(path)
    np.testing.assert_array_equal(back.labelmap, lab)
    assert back.geometry.allclose(GEOMETRY, atol=1e-4)
    assert [s.label for s in back.segments] == [1, 2]


def test_png_mask_2d(tmp_path):
    from PIL import Image

    mask = np.zeros((40, 60), bool)
    mask[10:30, 20:50] = True
    path = io.write_segmentation(tmp_path / "mask.png", mask)
    stored = np.asarray(Image.open(path))
    assert stored.dtype == np.uint8 and set(np.unique(stored)) == {0, 255}
    np.testing.assert_array_equal(stored == 255, mask)
    with pytest.raises(InputImageError, match="one 2D mask"):
        io.write_segmentation(tmp_path / "vol.png", labelmap())


def test_existing_output_is_not_overwritten_without_overwrite(tmp_path):
    path = io.write_segmentation(tmp_path / "seg.seg.nrrd", labelmap(), GEOMETRY, SEGMENTS)
    original = path.read_bytes()
    with pytest.raises(DataFileError, match=r"already exists.*overwrite=True.*--overwrite"):
        io.write_segmentation(path, np.zeros((6, 9, 11), np.uint8), GEOMETRY)
    with pytest.raises(DataFileError, match="overwrite=True"):
        io.write_volume(io.Volume(np.zeros((2, 2, 2))), path)
    with pytest.raises(DataFileError, match="overwrite=True"):
        io.save_overlay_png(path, np.zeros((4, 4)))
    assert path.read_bytes() == original
    io.write_segmentation(path, labelmap() * 0 + 1, GEOMETRY, overwrite=True)
    assert path.read_bytes() != original
    np.testing.assert_array_equal(io.read_segmentation(path).labelmap, 1)
    assert listing(tmp_path) == ["seg.seg.nrrd"]


def test_failed_writes_leave_no_file(tmp_path):
    with pytest.raises(InputImageError, match="integer"):
        io.write_segmentation(tmp_path / "f.seg.nrrd", np.full((2, 3, 4), 0.5), GEOMETRY)
    with pytest.raises(InputImageError, match="no segment description"):
        io.write_segmentation(tmp_path / "g.nii.gz", labelmap(), GEOMETRY, SEGMENTS[:1])
    with pytest.raises(InputImageError, match="dtype"):
        io.write_volume(io.Volume(np.empty((2, 2, 2), dtype=object)), tmp_path / "o.nrrd")
    with pytest.raises(DataFileError, match="use one of"):
        io.write_segmentation(tmp_path / "x.jpg", labelmap())
    assert listing(tmp_path) == []

    # A writer that dies half way: neither the target nor its temp file remains ...
    def half_write(tmp: Path):
        tmp.write_bytes(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(DataFileError, match=r"out.nrrd failed \(RuntimeError: disk full\)"):
        with io._atomic_output(tmp_path / "out.nrrd", overwrite=False) as tmp:
            half_write(tmp)
    assert listing(tmp_path) == []
    # ... and with overwrite=True the previous file survives intact.
    (tmp_path / "out.nrrd").write_bytes(b"previous")
    with pytest.raises(DataFileError):
        with io._atomic_output(tmp_path / "out.nrrd", overwrite=True) as tmp:
            half_write(tmp)
    assert listing(tmp_path) == ["out.nrrd"] and (tmp_path / "out.nrrd").read_bytes() == b"previous"


# --------------------------------------------------------------------------------------------- overlay

def test_overlay_png_blends_outlines_and_draws_prompts(tmp_path):
    from PIL import Image

    image = np.full((120, 160), 100, np.uint8)
    mask = np.zeros((120, 160), bool)
    mask[30:90, 40:100] = True
    path = io.save_overlay_png(tmp_path / "ov.png", image, mask, colors=[(255, 0, 0)],
                               points=[(20, 20), (130, 100)], labels=[1, 0], box=(35, 25, 105, 95))
    out = np.asarray(Image.open(path))
    assert out.shape == (120, 160, 3) and out.dtype == np.uint8
    assert tuple(out[60, 70]) == (162, 60, 60)  # inside: 0.6 * grey + 0.4 * red
    assert tuple(out[30, 70]) == (255, 0, 0)  # outline on the mask border
    assert tuple(out[5, 150]) == (100, 100, 100)  # untouched background
    assert tuple(out[20, 20]) == (0, 255, 0)  # positive point: green +
    assert tuple(out[100, 130]) == (255, 0, 0)  # negative point: red x centre
    assert tuple(out[100, 134]) == (100, 100, 100)  # an x has no horizontal arm
    assert tuple(out[60, 35]) == (255, 255, 0)  # box edge
    with pytest.raises(InputImageError, match="does not match the image"):
        io.save_overlay_png(tmp_path / "bad.png", image, mask[:10])
    assert listing(tmp_path) == ["ov.png"]


def test_overlay_on_real_echo_frame(tmp_path, a4c):
    frame = a4c.frames[0]
    mask = np.zeros(frame.shape, bool)
    mask[70:270, 300:440] = True
    io.save_overlay_png(tmp_path / "echo.png", frame, [mask], box=(300, 70, 440, 270))
    assert (tmp_path / "echo.png").stat().st_size > 10_000


def test_legitimate_nifti_files_are_not_refused(tmp_path):
    """The truncation check sizes voxels by the datatype, as ITK does (not by a disagreeing bitpix); the read-back
    check of a write allows the float32 rounding NIfTI stores placements with (0.01 mm voxels 1 m from the origin)."""
    import struct

    array = np.random.default_rng(0).integers(0, 100, (6, 20, 20)).astype(np.int16)
    path = io.write_volume(io.Volume(array, GEOMETRY), tmp_path / "v.nii")
    data = bytearray(path.read_bytes())
    struct.pack_into("<h", data, 72, 32)           # bitpix says 32 bits; the datatype (int16) says 16
    (tmp_path / "bitpix.nii").write_bytes(bytes(data))
    np.testing.assert_array_equal(io.read_volume(tmp_path / "bitpix.nii").array, array)
    fine = io.Geometry((0.01, 0.01, 0.01), (1000.123, -1500.77, 800.5), np.eye(3))
    back = io.read_volume(io.write_volume(io.Volume(array, fine), tmp_path / "fine.nii.gz"))
    assert np.allclose(back.geometry.origin, fine.origin, atol=1e-3)
