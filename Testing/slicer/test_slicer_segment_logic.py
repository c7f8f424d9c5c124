"""SonoSAMSegment logic against the real MRML scene (slicer-core, headless).

Geometry is tested with small deterministic predictors defined here (the network plays no part in
where a click lands); one test runs the real default model (litemedsam) end to end on the real MRI.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed")
ndimage = pytest.importorskip("scipy.ndimage")

from mrml_scene import (add_volume_from_array, make_scene, read_segmentation, read_volume_file,  # noqa: E402
                        write_segmentation)
from SonoSAMSegmentLib import geometry as geo  # noqa: E402
from SonoSAMSegmentLib.logic import (NoVolumeError, SegmentationError, SegmentLogic,  # noqa: E402
                                     read_segment_block)

from sonosam.errors import InputImageError, PromptError, SonoSAMError  # noqa: E402


# ---------------------------------------------------------------------------------------------------
# Deterministic stand-ins for the model (dependency injection)
# ---------------------------------------------------------------------------------------------------

def unpack(prompts):
    """A Prompts -> (points, labels, box, mask_logits), None for the absent ones (what the stand-ins read)."""
    points = prompts.points if prompts.has_points else None
    return points, (prompts.labels if points is not None else None), prompts.box, prompts.mask_logits


class ThresholdPredictor:
    """Mask = the connected part of (image > threshold) holding the positive clicks (and inside the box);
    components holding a negative click are dropped. Records every call."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.calls = []

    def predict(self, image, prompts, multimask=False, key=None, window=None):
        points, labels, box, mask_logits = unpack(prompts)
        self.calls.append(SimpleNamespace(image=np.array(image), points=points, labels=labels, box=box,
                                          mask_logits=mask_logits, key=key, window=window))
        fg = np.asarray(image) > self.threshold
        if box is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            inside = np.zeros_like(fg)
            inside[y0:y1 + 1, x0:x1 + 1] = True
            fg &= inside
        if points is not None:
            comp, _ = ndimage.label(fg)
            keep = np.zeros_like(fg)
            for (x, y), lab in zip(np.asarray(points), np.asarray(labels)):
                c = comp[int(round(y)), int(round(x))]
                if c and lab == 1:
                    keep |= comp == c
            for (x, y), lab in zip(np.asarray(points), np.asarray(labels)):
                c = comp[int(round(y)), int(round(x))]
                if c and lab == 0:
                    keep &= comp != c
            fg = keep
        return SimpleNamespace(mask=fg, score=1.0, logits=np.zeros((256, 256), np.float32), notes=[])


class PixelPredictor:
    """Mask = only the pixel under the (first) click: shows exactly where a click landed."""

    def __init__(self):
        self.calls = []

    def predict(self, image, prompts, **kw):
        points = unpack(prompts)[0]
        self.calls.append(SimpleNamespace(image=np.array(image), points=points))
        mask = np.zeros(np.shape(image)[:2], bool)
        x, y = np.asarray(points)[0]
        mask[int(round(y)), int(round(x))] = True
        return SimpleNamespace(mask=mask, score=1.0, logits=None, notes=[])


# ---------------------------------------------------------------------------------------------------
# A synthetic volume: rotated, flipped direction matrix and anisotropic spacing, with a sphere in RAS
# ---------------------------------------------------------------------------------------------------

DIMS = (40, 34, 28)  # I, J, K
SPACING = np.array([0.8, 1.3, 2.1])
CENTER_IJK = np.array([19.3, 16.6, 13.2])
RADIUS = 9.0


def rotation(axis, degrees):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = np.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def synthetic_matrix():
    direction = rotation([1, 2, 3], 25) @ np.diag([-1, -1, 1])  # LPS-like flips, then an oblique rotation
    m = np.eye(4)
    m[:3, :3] = direction @ np.diag(SPACING)
    m[:3, 3] = [12.0, -30.0, 7.0]
    return m


def voxel_ras(m, dims=DIMS):
    kk, jj, ii = np.meshgrid(*(np.arange(d) for d in dims[::-1]), indexing="ij")
    ijk = np.stack([ii, jj, kk, np.ones_like(ii)], -1).astype(float)
    return (ijk @ m.T)[..., :3]


@pytest.fixture
def sphere(mrml):
    m = synthetic_matrix()
    center_ras = (m @ np.r_[CENTER_IJK, 1])[:3]
    inside = np.linalg.norm(voxel_ras(m) - center_ras, axis=-1) <= RADIUS  # (K, J, I)
    code = np.arange(inside.size, dtype=np.float32).reshape(inside.shape)  # unique per voxel
    volume = add_volume_from_array(mrml.scene, (inside * 100000.0 + code).astype(np.float32), m, "sphere")
    segmentation = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    return SimpleNamespace(m=m, center_ras=center_ras, inside=inside, code=code, volume=volume,
                           segmentation=segmentation, scene=mrml.scene)


def add_segment(segmentation, name):
    return segmentation.GetSegmentation().AddEmptySegment(name, name)


def segment_array(segmentation, segment_id, m, dims=DIMS):
    """The segment as a (K, J, I) bool array on the volume grid (read through vtkSegmentationCore)."""
    return read_segment_block(segmentation, segment_id, m, [0, dims[0] - 1, 0, dims[1] - 1, 0, dims[2] - 1])


def slice_of(array_kji, axis, index):
    return np.take(np.moveaxis(array_kji, (0, 1, 2), (2, 1, 0)), index, axis=axis)


# ---------------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("axis", [0, 1, 2])
def test_click_lands_on_the_voxel_and_segment_equals_analytic_sphere(sphere, axis):
    """A RAS click near the sphere centre on each voxel axis: the model sees the right voxel under the
    click, and the segment written back is exactly the sphere's cross-section on that slice."""
    predictor = ThresholdPredictor(50000)
    logic = SegmentLogic(predictor=predictor)
    sid = add_segment(sphere.segmentation, "sphere")
    target_ijk = np.round(CENTER_IJK).astype(int) + np.array([1, -1, 1])
    click_ijk = target_ijk + np.array([0.3, -0.2, 0.1])  # sub-voxel offset: rounds to target
    click_ras = (sphere.m @ np.r_[click_ijk, 1])[:3]

    prediction = logic.segment(sphere.volume, sphere.segmentation, sid, points_ras=[click_ras], labels=[1],
                               sliceAxis="IJK"[axis])

    call = predictor.calls[-1]
    x, y = np.round(call.points[0]).astype(int)
    i, j, k = target_ijk
    assert call.image[y, x] == sphere.code[k, j, i] + 100000.0  # the pixel under the click is that voxel
    assert prediction.geometry.axis == axis and prediction.geometry.index == target_ijk[axis]
    seg = segment_array(sphere.segmentation, sid, sphere.m)
    expected = np.zeros_like(sphere.inside)
    idx = [slice(None)] * 3
    idx[2 - axis] = target_ijk[axis]
    expected[tuple(idx)] = sphere.inside[tuple(idx)]
    assert expected.sum() > 20
    np.testing.assert_array_equal(seg, expected)


@pytest.mark.parametrize("view", ["axial", "coronal", "sagittal"])
def test_anatomical_view_names_pick_the_closest_voxel_axis_and_box_prompts(sphere, view):
    predictor = ThresholdPredictor(50000)
    logic = SegmentLogic(predictor=predictor)
    sid = add_segment(sphere.segmentation, "s")
    right, up = geo.view_preset(view)
    normal = np.cross(right, up)
    expected_axis = int(np.argmax([abs(geo.slice_normal(sphere.m, a) @ normal) for a in range(3)]))
    # a box of two RAS corners on the slice through the centre voxel, covering the sphere
    axis_index = int(np.round(CENTER_IJK[expected_axis]))
    lo, hi = np.zeros(3), np.array(DIMS, float) - 1
    lo[expected_axis] = hi[expected_axis] = axis_index
    corners = [(sphere.m @ np.r_[c, 1])[:3] for c in (lo, hi)]
    prediction = logic.segment(sphere.volume, sphere.segmentation, sid, box_ras=corners, sliceAxis=view)
    assert prediction.geometry.axis == expected_axis
    x0, y0, x1, y1 = predictor.calls[-1].box
    h, w = predictor.calls[-1].image.shape
    assert (x0, y0) == pytest.approx((0, 0)) and (x1, y1) == pytest.approx((w - 1, h - 1))
    seg = segment_array(sphere.segmentation, sid, sphere.m)
    np.testing.assert_array_equal(slice_of(seg, expected_axis, axis_index),
                                  slice_of(sphere.inside, expected_axis, axis_index))
    assert seg.sum() == slice_of(sphere.inside, expected_axis, axis_index).sum()


def test_the_model_sees_the_window_the_user_set(sphere):
    """While Slicer's window/level is automatic the model gets the volume's 0.5-99.5 % window; once the user sets
    one (a preset such as CT-Brain, or dragging in a view) it gets exactly that window; and changing the window to
    look at a preview does not void the preview."""
    predictor = ThresholdPredictor(50000)
    logic = SegmentLogic(predictor=predictor)
    sid = add_segment(sphere.segmentation, "sphere")
    display = sphere.volume.GetDisplayNode()
    display.AutoWindowLevelOn()
    logic.predict(sphere.volume, [sphere.center_ras], [1])
    voxels = (sphere.inside * 100000.0 + sphere.code).astype(np.float32)
    np.testing.assert_allclose(predictor.calls[-1].window, np.percentile(voxels, (0.5, 99.5)), rtol=1e-6)

    display.AutoWindowLevelOff()
    display.SetWindowLevel(2000.0, 101000.0)              # the user's window: 100000..102000
    preview = logic.predict(sphere.volume, [sphere.center_ras], [1])
    assert predictor.calls[-1].window == (100000.0, 102000.0)
    display.SetWindowLevel(400.0, 100500.0)               # looking closer at the preview before applying it
    logic.apply(preview, sphere.volume, sphere.segmentation, sid)
    assert segment_array(sphere.segmentation, sid, sphere.m).sum() == preview.mask.sum() > 20
    logic.predict(sphere.volume, [sphere.center_ras], [1])
    assert predictor.calls[-1].window == (100300.0, 100700.0)
    display.AutoWindowLevelOn()
    logic.predict(sphere.volume, [sphere.center_ras], [1])
    np.testing.assert_allclose(predictor.calls[-1].window, np.percentile(voxels, (0.5, 99.5)), rtol=1e-6)


def test_slice_image_is_oriented_like_the_slice_view():
    """Identity-direction (RAS) volume, axial view: screen right = patient left, screen up = anterior."""
    m = np.diag([1.0, 1.0, 1.0, 1.0])
    g = geo.make_slice_geometry(m, (5, 4, 3), 2, 1, *geo.view_preset("axial"))
    assert (g.x_axis, g.y_axis, g.x_flip, g.y_flip) == (0, 1, True, True)
    vol = np.arange(60).reshape(3, 4, 5)
    image = g.extract(vol)
    assert image.shape == (4, 5)
    assert image[0, 0] == vol[1, 3, 4]  # top-left = most anterior, most left voxel
    np.testing.assert_array_equal(g.to_block(image)[0], vol[1])
    np.testing.assert_allclose(g.xy_to_ijk(g.ijk_to_xy([[2, 1, 1]])), [[2, 1, 1]])


def test_oblique_view_is_resampled_and_mapped_back(sphere):
    """A view tilted 30 degrees off every voxel axis: the plane is resampled, and the voxels written are
    the ones the plane cuts through inside the sphere (analytic disc)."""
    predictor = ThresholdPredictor(50000)
    logic = SegmentLogic(predictor=predictor)
    sid = add_segment(sphere.segmentation, "oblique")
    view = np.eye(4)
    view[:3, :3] = rotation([0.3, 1, 0.2], 30) @ np.array([[-1, 0, 0], [0, 1, 0], [0, 0, 1.0]])
    view[:3, 3] = sphere.center_ras
    _, cos = geo.axis_for_normal(sphere.m, view[:3, 2])
    assert cos < geo.ALIGNED_COS
    prediction = logic.segment(sphere.volume, sphere.segmentation, sid, points_ras=[sphere.center_ras], labels=[1],
                               sliceToRAS=view)
    assert isinstance(prediction.geometry, geo.ObliquePlane)
    seg = segment_array(sphere.segmentation, sid, sphere.m)
    ras = voxel_ras(sphere.m)
    normal = view[:3, 2] / np.linalg.norm(view[:3, 2])
    half = 0.5 * np.abs(sphere.m[:3, :3].T @ normal).max()
    dist = (ras - sphere.center_ras) @ normal
    analytic = (dist >= -half) & (dist < half) & sphere.inside
    dice = 2 * (seg & analytic).sum() / (seg.sum() + analytic.sum())
    assert dice > 0.93, dice
    assert not (seg & ~((dist >= -half) & (dist < half))).any()  # nothing off the plane


def test_a_box_reaching_past_the_image_is_cut_to_it(sphere):
    """A box dragged from inside the image to past its edge (a structure at the edge of the field of view): the part
    on the image is the prompt. A box wholly off the image, or off the volume's slices, is refused; so is a click
    outside the volume."""
    logic = SegmentLogic(predictor=ThresholdPredictor(50000))
    dims = np.array(DIMS)
    k = int(CENTER_IJK[2])
    to_ras = lambda i, j, kk=k: (sphere.m @ np.r_[i, j, kk, 1.0])[:3]
    prediction = logic.predict(sphere.volume, box_ras=[to_ras(CENTER_IJK[0], CENTER_IJK[1]),
                                                       to_ras(dims[0] + 5, dims[1] + 7)], sliceAxis="K")
    inside = logic.predict(sphere.volume, box_ras=[to_ras(CENTER_IJK[0], CENTER_IJK[1]),
                                                   to_ras(dims[0] - 1, dims[1] - 1)], sliceAxis="K")
    np.testing.assert_allclose(prediction.box_xy, inside.box_xy)       # cut at the image's last pixel
    np.testing.assert_array_equal(prediction.mask, inside.mask)
    with pytest.raises(PromptError, match="off the image"):
        logic.predict(sphere.volume, box_ras=[to_ras(dims[0] + 2, 3), to_ras(dims[0] + 9, 8)], sliceAxis="K")
    with pytest.raises(PromptError, match="The box at RAS .* is outside the volume"):
        logic.predict(sphere.volume, box_ras=[to_ras(3, 3, dims[2] + 3), to_ras(8, 8, dims[2] + 3)], sliceAxis="K")
    with pytest.raises(PromptError, match="The prompt at RAS .* is outside the volume"):
        logic.predict(sphere.volume, points_ras=[to_ras(dims[0] + 5, 3)], labels=[1], sliceAxis="K")


def test_a_box_reaching_past_an_oblique_view_is_cut_to_it(sphere):
    """The same on a view tilted off the voxel axes: a box from the sphere's centre to past the resampled image's
    corner is the box to that corner; a box wholly on the image's padding outside the volume is refused."""
    logic = SegmentLogic(predictor=ThresholdPredictor(50000))
    view = np.eye(4)
    view[:3, :3] = rotation([0.3, 1, 0.2], 30)
    view[:3, 3] = sphere.center_ras
    plane = geo.make_oblique_plane(sphere.m, DIMS, view)
    centre = plane.ras_to_xyw([sphere.center_ras])[0, :2]
    corner = np.array([plane.width - 1.0, plane.height - 1.0])
    past = plane.xy_to_ras([centre, corner + 6])
    prediction = logic.predict(sphere.volume, box_ras=past, sliceToRAS=view)
    cut = logic.predict(sphere.volume, box_ras=plane.xy_to_ras([centre, corner]), sliceToRAS=view)
    np.testing.assert_allclose(prediction.box_xy, cut.box_xy, atol=1e-6)
    np.testing.assert_array_equal(prediction.mask, cut.mask)
    assert prediction.mask.any()
    off = plane.xy_to_ras([(0, 0), (3, 3)])     # the top-left corner of the rectangle: outside the tilted volume
    assert not np.all(np.abs(geo.ras_to_ijk(off, sphere.m) - (np.array(DIMS) - 1) / 2) <= np.array(DIMS) / 2, axis=1).any()
    with pytest.raises(PromptError, match="off the volume on this view"):
        logic.predict(sphere.volume, box_ras=off, sliceToRAS=view)


@pytest.mark.parametrize("seed", range(4))
def test_the_oblique_footprint_is_every_voxel_within_half_a_step_of_the_plane(sphere, seed):
    """The column-by-column footprint equals its definition computed over every voxel of the volume: the centres
    within half a voxel step of the plane (along its normal) that fall on the plane's pixels, each with its pixel."""
    rng = np.random.default_rng(seed)
    view = np.eye(4)
    view[:3, :3] = rotation(rng.normal(size=3), rng.uniform(5, 80))
    view[:3, 3] = sphere.center_ras + rng.normal(0, 3, 3)
    dims = tuple(sphere.volume.GetImageData().GetDimensions())
    plane = geo.make_oblique_plane(sphere.m, dims, view)
    extent, (k, j, i), px, py = plane.voxel_footprint(sphere.m, dims)
    got = {(kk + extent[4], jj + extent[2], ii + extent[0]): (x, y) for kk, jj, ii, x, y in zip(k, j, i, px, py)}
    assert len(got) == len(k) > 0                                   # each voxel once
    kk, jj, ii = np.meshgrid(*(np.arange(n) for n in dims[::-1]), indexing="ij")
    ijk = np.c_[ii.ravel(), jj.ravel(), kk.ravel()]
    xyw = plane.ras_to_xyw(sphere.m[:3, 3] + ijk @ sphere.m[:3, :3].T)
    half = 0.5 * np.abs(sphere.m[:3, :3].T @ plane.normal).max()
    x, y = np.round(xyw[:, 0]).astype(int), np.round(xyw[:, 1]).astype(int)
    on = (xyw[:, 2] >= -half) & (xyw[:, 2] < half) & (x >= 0) & (x < plane.width) & (y >= 0) & (y < plane.height)
    expected = {(c, b, a): (xx, yy) for (a, b, c), xx, yy in zip(ijk[on], x[on], y[on])}
    assert got == expected


# ---------------------------------------------------------------------------------------------------
# Writing: round trip, other segments, modes
# ---------------------------------------------------------------------------------------------------

def test_segment_saved_as_seg_nrrd_reads_back_equal_and_other_segments_untouched(sphere, tmp_path):
    logic = SegmentLogic(predictor=ThresholdPredictor(50000))
    other = add_segment(sphere.segmentation, "other")
    target = add_segment(sphere.segmentation, "target")
    other_block = np.zeros_like(sphere.inside)
    other_block[10:16, 12:20, 15:25] = True  # overlaps the sphere on the slice we segment
    from SonoSAMSegmentLib.logic import write_segment_block

    full = [0, DIMS[0] - 1, 0, DIMS[1] - 1, 0, DIMS[2] - 1]
    write_segment_block(sphere.segmentation, other, other_block, sphere.m, full)
    k = int(np.round(CENTER_IJK[2]))
    click = (sphere.m @ np.r_[CENTER_IJK[0], CENTER_IJK[1], k, 1])[:3]
    prediction = logic.segment(sphere.volume, sphere.segmentation, target, points_ras=[click], labels=[1],
                               sliceAxis="K")
    expected = prediction.geometry.to_block(prediction.mask)
    assert expected.sum() > 50
    np.testing.assert_array_equal(segment_array(sphere.segmentation, other, sphere.m), other_block)

    path = tmp_path / "result.seg.nrrd"
    write_segmentation(sphere.segmentation, path)
    fresh = make_scene()
    try:
        loaded = read_segmentation(fresh.scene, path)
        segs = loaded.GetSegmentation()
        assert segs.GetNumberOfSegments() == 2
        t_id = segs.GetSegmentIdBySegmentName("target")
        o_id = segs.GetSegmentIdBySegmentName("other")
        target_back = segment_array(loaded, t_id, sphere.m)
        np.testing.assert_array_equal(target_back[k], expected[0])
        assert target_back.sum() == expected.sum()
        np.testing.assert_array_equal(segment_array(loaded, o_id, sphere.m), other_block)
    finally:
        fresh.close()


def _fill_slices(logic, sphere, sid, ks):
    for k in ks:
        click = (sphere.m @ np.r_[CENTER_IJK[0], CENTER_IJK[1], k, 1])[:3]
        logic.segment(sphere.volume, sphere.segmentation, sid, points_ras=[click], labels=[1], sliceAxis="K")


def test_refine_changes_only_the_target_slice_and_passes_the_segment_as_mask_prompt(sphere):
    predictor = ThresholdPredictor(50000)
    logic = SegmentLogic(predictor=predictor)
    sid = add_segment(sphere.segmentation, "s")
    k = int(np.round(CENTER_IJK[2]))
    _fill_slices(logic, sphere, sid, [k - 1, k, k + 1])
    before = segment_array(sphere.segmentation, sid, sphere.m)
    assert all(before[kk].any() for kk in (k - 1, k, k + 1))

    # refine slice k with a smaller box: only the part of the sphere inside it remains
    c = np.round(CENTER_IJK).astype(int)
    corners = [(sphere.m @ np.r_[c[0] - 3, c[1] - 2, k, 1])[:3], (sphere.m @ np.r_[c[0] + 4, c[1] + 5, k, 1])[:3]]
    logic.segment(sphere.volume, sphere.segmentation, sid, box_ras=corners, sliceAxis="K", mode="replace")
    call = predictor.calls[-1]
    assert call.mask_logits is not None and call.mask_logits.shape == (256, 256)
    # the model's own logits were reused: the segment still held its last answer on this slice
    assert np.array_equal(call.mask_logits, np.zeros((256, 256), np.float32))
    after = segment_array(sphere.segmentation, sid, sphere.m)
    for kk in range(DIMS[2]):
        if kk != k:
            np.testing.assert_array_equal(after[kk], before[kk])
    box = np.zeros_like(after[k])
    box[c[1] - 2:c[1] + 6, c[0] - 3:c[0] + 5] = True
    np.testing.assert_array_equal(after[k], sphere.inside[k] & box)

    # an edited segment (not the model's last answer) goes in as a binary mask prompt
    from SonoSAMSegmentLib.logic import write_segment_block

    edited = after.copy()
    edited[k, c[1], c[0] + 6] = True
    write_segment_block(sphere.segmentation, sid, edited[k:k + 1], sphere.m, [0, DIMS[0] - 1, 0, DIMS[1] - 1, k, k])
    logic.segment(sphere.volume, sphere.segmentation, sid, box_ras=corners, sliceAxis="K")
    logits = predictor.calls[-1].mask_logits
    assert logits is not None and logits.max() > 0 and logits.min() < 0


@pytest.mark.parametrize("mode", ["remove", "add"])
def test_remove_and_add_never_touch_other_slices(sphere, mode):
    logic = SegmentLogic(predictor=ThresholdPredictor(50000))
    sid = add_segment(sphere.segmentation, "s")
    k = int(np.round(CENTER_IJK[2]))
    _fill_slices(logic, sphere, sid, [k - 2, k - 1, k, k + 1])
    before = segment_array(sphere.segmentation, sid, sphere.m)
    c = np.round(CENTER_IJK).astype(int)
    corners = [(sphere.m @ np.r_[c[0] - 2, c[1] - 2, k, 1])[:3], (sphere.m @ np.r_[c[0] + 2, c[1] + 9, k, 1])[:3]]
    if mode == "add":  # first remove a part so there is something to add back
        logic.segment(sphere.volume, sphere.segmentation, sid, box_ras=corners, sliceAxis="K", mode="remove")
        before = segment_array(sphere.segmentation, sid, sphere.m)
    prediction = logic.segment(sphere.volume, sphere.segmentation, sid, box_ras=corners, sliceAxis="K", mode=mode)
    after = segment_array(sphere.segmentation, sid, sphere.m)
    for kk in range(DIMS[2]):
        if kk != k:
            np.testing.assert_array_equal(after[kk], before[kk])
    mask = prediction.geometry.to_block(prediction.mask)[0]
    assert mask.any()
    expected = before[k] & ~mask if mode == "remove" else before[k] | mask
    np.testing.assert_array_equal(after[k], expected)
    assert after[k].sum() != before[k].sum()


# ---------------------------------------------------------------------------------------------------
# The real MRI (Colin27): geometry checked against SimpleITK's independent reading of the file
# ---------------------------------------------------------------------------------------------------

@pytest.fixture
def colin(mrml):
    data = pytest.importorskip("sonosam.data")
    try:
        t1, aal = data.mri_colin27_paths()
    except SonoSAMError as error:
        pytest.skip(str(error))
    import SimpleITK as sitk

    volume = read_volume_file(mrml.scene, t1, "ch2")
    segmentation = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    return SimpleNamespace(scene=mrml.scene, volume=volume, segmentation=segmentation, t1=t1, aal=aal,
                           itk=sitk.ReadImage(str(t1)), itk_aal=sitk.ReadImage(str(aal)))


def itk_ras(image, ijk):
    lps = image.TransformContinuousIndexToPhysicalPoint([float(v) for v in ijk])
    return np.array([-lps[0], -lps[1], lps[2]])


@pytest.mark.parametrize("view", ["axial", "coronal", "sagittal"])
def test_real_mri_click_lands_on_the_voxel_itk_says(colin, view):
    import SimpleITK as sitk

    predictor = PixelPredictor()
    logic = SegmentLogic(predictor=predictor)
    sid = add_segment(colin.segmentation, "p")
    ijk = np.array([97, 121, 64])  # an off-centre voxel inside the head
    prediction = logic.segment(colin.volume, colin.segmentation, sid, points_ras=[itk_ras(colin.itk, ijk)],
                               labels=[1], sliceAxis=view)
    itk_array = sitk.GetArrayFromImage(colin.itk)
    x, y = np.round(predictor.calls[-1].points[0]).astype(int)
    assert predictor.calls[-1].image[y, x] == itk_array[ijk[2], ijk[1], ijk[0]]
    m = logic.volume_info(colin.volume).ijk_to_world
    seg = segment_array(colin.segmentation, sid, m, colin.volume.GetImageData().GetDimensions())
    assert seg.sum() == 1 and seg[ijk[2], ijk[1], ijk[0]]
    assert prediction.geometry.index == ijk[prediction.geometry.axis]


@pytest.mark.parametrize("axis", ["I", "J", "K"])
def test_real_label_map_region_segmented_on_each_axis_equals_itk_slice(colin, axis):
    """The AAL atlas loaded as the volume; the threshold predictor on (label == clicked label) must give
    back exactly SimpleITK's voxels of that region on that slice."""
    import SimpleITK as sitk

    aal_volume = read_volume_file(colin.scene, colin.aal, "aal")
    labels = sitk.GetArrayFromImage(colin.itk_aal)
    region = 71  # a deep grey-matter region (caudate, left in AAL's numbering)
    k, j, i = np.argwhere(labels == region)[len(np.argwhere(labels == region)) // 2]
    a = "IJK".index(axis)
    index = (i, j, k)[a]
    region_slice = slice_of(labels == region, a, index)  # indexed by the two remaining IJK axes, in order

    class LabelPredictor(ThresholdPredictor):
        def predict(self, image, prompts, **kw):
            x, y = np.round(prompts.points[0]).astype(int)
            value = image[y, x]
            return super().predict((image == value).astype(np.float32), prompts, **kw)

    logic = SegmentLogic(predictor=LabelPredictor(0.5))
    sid = add_segment(colin.segmentation, "region")
    logic.segment(aal_volume, colin.segmentation, sid, points_ras=[itk_ras(colin.itk_aal, (i, j, k))], labels=[1],
                  sliceAxis=axis)
    m = logic.volume_info(aal_volume).ijk_to_world
    seg = segment_array(colin.segmentation, sid, m, aal_volume.GetImageData().GetDimensions())
    got = slice_of(seg, a, index)
    # every voxel written is the region on this slice, connected to the clicked voxel
    lab2d, _ = ndimage.label(region_slice)
    pos = [(i, j, k)[b] for b in range(3) if b != a]
    clicked = lab2d[pos[0], pos[1]]
    np.testing.assert_array_equal(got, lab2d == clicked)
    assert seg.sum() == got.sum() > 5


# ---------------------------------------------------------------------------------------------------
# Errors reach the caller as SonoSAMError subclasses with clear text
# ---------------------------------------------------------------------------------------------------

def test_errors_are_sonosam_errors_with_clear_messages(sphere, mrml):
    logic = SegmentLogic(predictor=ThresholdPredictor(50000))
    sid = add_segment(sphere.segmentation, "s")
    inside = [sphere.center_ras]

    with pytest.raises(NoVolumeError, match="No volume selected"):
        logic.segment(None, sphere.segmentation, sid, points_ras=inside, labels=[1])
    assert issubclass(NoVolumeError, InputImageError) and issubclass(NoVolumeError, SonoSAMError)

    far = sphere.center_ras + np.array([500.0, 0, 0])
    with pytest.raises(PromptError, match="outside the volume"):
        logic.segment(sphere.volume, sphere.segmentation, sid, points_ras=[far], labels=[1])

    with pytest.raises(SegmentationError, match="not in 'seg'"):
        logic.segment(sphere.volume, sphere.segmentation, "nope", points_ras=inside, labels=[1])
    with pytest.raises(SegmentationError, match="Unknown mode"):
        logic.segment(sphere.volume, sphere.segmentation, sid, points_ras=inside, labels=[1], mode="paint")
    with pytest.raises(PromptError, match="one label per"):
        logic.segment(sphere.volume, sphere.segmentation, sid, points_ras=inside, labels=[1, 0])
    # a lone negative click (SAM answers it with a blob around the excluded spot): refused, nothing written
    with pytest.raises(PromptError, match="negative click alone does not say what to segment"):
        logic.segment(sphere.volume, sphere.segmentation, sid, points_ras=inside, labels=[0])
    assert not segment_array(sphere.segmentation, sid, sphere.m).any()

    # what a console user or a panel can pass by mistake: one-line errors, never a raw traceback
    logic.segment(sphere.volume, sphere.segmentation, sid, points_ras=inside, labels=[1])
    for options, words in (({"nClicks": 0}, "whole number >= 1"), ({"start": "lasso"}, "start must be"),
                           ({"maxSlices": -1}, "maxSlices must be 1 or more"), ({"slices": [999]}, "Slice 999 is outside")):
        with pytest.raises(PromptError, match=words):
            logic.evaluate(sphere.volume, sphere.segmentation, sid, "axial", minArea=1, **options)
    k = int(np.round(geo.ras_to_ijk(sphere.center_ras, sphere.m)[0, 2]))
    with pytest.raises(PromptError, match=f"lie on slice {k} along .*, not on slice {k + 2}"):
        logic.predict(sphere.volume, points_ras=inside, labels=[1], sliceAxis="K", sliceIndex=k + 2)
    assert logic.predict(sphere.volume, points_ras=inside, labels=[1], sliceAxis="K", sliceIndex=k).mask.any()
    with pytest.raises(PromptError, match="not a point in space"):
        logic.slice_index(sphere.volume, "axial", [float("nan"), 0.0, 0.0])
    for points, box in (([[float("nan"), 0.0, 0.0]], None), (None, [[0.0, 0.0, 0.0], [float("inf"), 1.0, 0.0]])):
        with pytest.raises(PromptError, match="not a point in space"):
            logic.predict(sphere.volume, points_ras=points, labels=None if points is None else [1], box_ras=box)
    with pytest.raises(PromptError, match=r"sliceRange is \(first, last\)"):
        logic.start_auto_segment(sphere.volume, sphere.segmentation, "ball", "ball.ppn.pt", sliceRange=(4,))
    with pytest.raises(PromptError, match="Choose the prompt predictor"):
        logic.start_auto_segment(sphere.volume, sphere.segmentation, "ball", None)
    flat = mrml.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "flat")
    flat.Copy(sphere.volume)
    flat.SetAndObserveImageData(sphere.volume.GetImageData())
    flat.SetSpacing(1.0, 1.0, 0.0)
    with pytest.raises(InputImageError, match="flat geometry"):
        logic.segment(flat, sphere.segmentation, sid, points_ras=inside, labels=[1])

    # a 4D (multi-component) volume
    import vtk

    multi = mrml.scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "multi")
    image = vtk.vtkImageData()
    image.SetDimensions(8, 8, 8)
    image.AllocateScalars(vtk.VTK_FLOAT, 5)
    multi.SetAndObserveImageData(image)
    with pytest.raises(InputImageError, match="4D"):
        logic.segment(multi, sphere.segmentation, sid, points_ras=[[0, 0, 0]], labels=[1])

    # model weights missing: the core's error, unchanged
    from sonosam.errors import CheckpointError

    missing = SegmentLogic(model="medsam_vit_b")
    with pytest.raises(CheckpointError, match="No weights"):
        missing.segment(sphere.volume, sphere.segmentation, sid, points_ras=inside, labels=[1])
    with pytest.raises(SonoSAMError, match="Unknown model"):
        SegmentLogic(model="no_such_model").predictor  # noqa: B018


# ---------------------------------------------------------------------------------------------------
# The real default model, end to end
# ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_logic():
    pytest.importorskip("torch")
    logic = SegmentLogic("litemedsam", device="cpu")
    logic.predictor  # noqa: B018  (load once for the module)
    return logic


@pytest.mark.slow  # the real model on real MRI
def test_real_default_model_box_on_real_mri_end_to_end(colin, real_logic):
    """litemedsam, a box around the head on an axial slice of the real MRI, through MRML: the segment equals what the
    core's interactive predictor gives for the same slice read independently by SimpleITK (shown as Slicer's axial
    view shows it: patient left on the right, anterior up), voxel for voxel, and it lies in the head."""
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(colin.itk)
    # RAS-aligned (ITK's LPS direction diag(-1, -1, 1)): Slicer's axial view shows both in-plane axes reversed
    assert np.allclose(colin.itk.GetDirection(), np.diag([-1.0, -1.0, 1.0]).ravel())
    k = 90
    head = ndimage.binary_fill_holes(array[k] > 20)
    rows, cols = np.nonzero(head)
    lo_ijk = (cols.min() - 2, rows.min() - 2, k)
    hi_ijk = (cols.max() + 2, rows.max() + 2, k)
    corners = [itk_ras(colin.itk, lo_ijk), itk_ras(colin.itk, hi_ijk)]
    sid = add_segment(colin.segmentation, "head")
    prediction = real_logic.segment(colin.volume, colin.segmentation, sid, box_ras=corners, sliceAxis="axial")
    m = real_logic.volume_info(colin.volume).ijk_to_world
    dims = colin.volume.GetImageData().GetDimensions()
    seg = segment_array(colin.segmentation, sid, m, dims)
    assert seg[k].sum() == seg.sum() == prediction.mask.sum() > 1000

    view = np.ascontiguousarray(array[k][::-1, ::-1])
    h, w = view.shape
    box = (w - 1 - hi_ijk[0], h - 1 - hi_ijk[1], w - 1 - lo_ijk[0], h - 1 - lo_ijk[1])
    # answered at the model's box scales (docs/training.md), as the server and the CLI answer it
    window = real_logic.volume_info(colin.volume).window
    direct = real_logic.interactive_predictor.predict(view, box=box, window=window)
    np.testing.assert_array_equal(seg[k], direct.mask[::-1, ::-1])
    assert (seg[k] & head).sum() > 0.95 * seg[k].sum()

    # clicks alone on this box-only model: the core's clear error, nothing written
    before = segment_array(colin.segmentation, sid, m, colin.volume.GetImageData().GetDimensions())
    from sonosam.errors import UnsupportedPromptError

    with pytest.raises(UnsupportedPromptError, match="boxes only"):
        real_logic.segment(colin.volume, colin.segmentation, sid, points_ras=[corners[0] * 0.5 + corners[1] * 0.5],
                           labels=[1], sliceAxis="axial")
    np.testing.assert_array_equal(segment_array(colin.segmentation, sid, m, colin.volume.GetImageData().GetDimensions()),
                                  before)


def test_the_click_model_answers_a_users_box_at_its_scales_in_process(colin):
    """litemedsam_clicks in the logic's own process: a box around the right caudate, drawn through MRML, is answered
    at the model's box scales (the whole slice and two crops, their logits averaged; docs/training.md), as the
    server and the CLI answer it: the segment equals the core's zoomed answer on the slice SimpleITK reads, and the
    slice's whole image and two crops were encoded."""
    import SimpleITK as sitk

    from sonosam.zoom import ZoomedPredictor

    logic = SegmentLogic("litemedsam_clicks", device="cpu")
    interactive = logic.interactive_predictor
    assert isinstance(interactive, ZoomedPredictor) and interactive.scales == (None, 1.5, 3)
    array, labels = sitk.GetArrayFromImage(colin.itk), sitk.GetArrayFromImage(colin.itk_aal)
    k = int(np.argmax((labels == 72).sum(axis=(1, 2))))
    rows, cols = np.nonzero(labels[k] == 72)
    lo_ijk, hi_ijk = (cols.min() - 2, rows.min() - 2, k), (cols.max() + 2, rows.max() + 2, k)
    sid = add_segment(colin.segmentation, "caudate")
    calls = logic.predictor.encoder_calls
    corners = [itk_ras(colin.itk, lo_ijk), itk_ras(colin.itk, hi_ijk)]
    logic.segment(colin.volume, colin.segmentation, sid, box_ras=corners, sliceAxis="axial")
    assert logic.predictor.encoder_calls - calls == 3
    seg = segment_array(colin.segmentation, sid, logic.volume_info(colin.volume).ijk_to_world,
                        colin.volume.GetImageData().GetDimensions())
    view = np.ascontiguousarray(array[k][::-1, ::-1])   # as Slicer's axial view shows it (see the test above)
    h, w = view.shape
    box = (w - 1 - hi_ijk[0], h - 1 - hi_ijk[1], w - 1 - lo_ijk[0], h - 1 - lo_ijk[1])
    direct = interactive.predict(view, box=box, window=logic.volume_info(colin.volume).window)
    assert direct.mask.sum() > 50
    np.testing.assert_array_equal(seg[k], direct.mask[::-1, ::-1])


def test_the_seed_check_judges_the_answer_the_user_sees(colin, monkeypatch):
    """The seed check of a boxed preview (its problems, its suggestion) judges the preview itself, the box answered at
    the model's scales, in-process as through a server (whose predict answers at those scales), not the whole slice's
    answer to the same box."""
    import SimpleITK as sitk

    import sonosam.seed_check

    logic = SegmentLogic("litemedsam_clicks", device="cpu")
    labels = sitk.GetArrayFromImage(colin.itk_aal)
    k = int(np.argmax((labels == 72).sum(axis=(1, 2))))
    rows, cols = np.nonzero(labels[k] == 72)
    corners = [itk_ras(colin.itk, (cols.min() - 2, rows.min() - 2, k)),
               itk_ras(colin.itk, (cols.max() + 2, rows.max() + 2, k))]
    preview = logic.predict(colin.volume, box_ras=corners, sliceAxis="axial")
    judged, check_seed = [], sonosam.seed_check.check_seed

    def recording(predictor, image, **options):
        check = check_seed(predictor, image, **options)
        judged.append(check.candidates[0].mask)
        return check

    monkeypatch.setattr(sonosam.seed_check, "check_seed", recording)
    choices = logic.seed_choices(colin.volume, preview)
    np.testing.assert_array_equal(judged[0], preview.mask)
    np.testing.assert_array_equal(choices.choices[0].mask, preview.mask)
    whole = logic.predictor.predict(logic.slice_image(logic.volume_info(colin.volume), preview.geometry),
                                    box=preview.box_xy, window=logic.volume_info(colin.volume).window)
    assert not np.array_equal(whole.mask, preview.mask)   # the two answers differ here: the check saw the right one


# ---------------------------------------------------------------------------------------------------
# The effect's Qt-free parts: prompt session with markups markers, preview node
# ---------------------------------------------------------------------------------------------------

def test_prompt_session_markers_preview_and_new_slice(sphere):
    from SonoSAMSegmentLib.logic import PromptSession, show_preview

    predictor = ThresholdPredictor(50000)
    logic = SegmentLogic(predictor=predictor)
    markers = sphere.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "prompts")
    session = PromptSession(logic, markers)
    k = int(np.round(CENTER_IJK[2]))
    inside = (sphere.m @ np.r_[CENTER_IJK[0], CENTER_IJK[1], k, 1])[:3]
    outside = (sphere.m @ np.r_[2, 2, k, 1])[:3]
    session.add_point(sphere.volume, inside, True, "K")
    session.add_point(sphere.volume, outside, False, "K")
    assert markers.GetNumberOfControlPoints() == 2 and markers.GetNthControlPointLabel(1) == "-"
    first = session.predict(sphere.volume, slice_axis="K")
    assert first.mask.sum() == sphere.inside[k].sum()
    assert list(predictor.calls[-1].labels) == [1, 0]

    # the user deletes the positive marker in the view: the session follows the markups node
    markers.RemoveNthControlPoint(0)
    assert session.sync_from_markups() and session.labels == [0]
    assert session.predict(sphere.volume, slice_axis="K").mask.sum() == 0
    # with the mask prompt fed back on a later click
    session.add_point(sphere.volume, inside, True, "K")
    session.predict(sphere.volume, slice_axis="K")
    assert predictor.calls[-1].mask_logits is not None

    # preview node: shows only the current prediction, the real segment is untouched
    preview = sphere.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "preview")
    sid = add_segment(sphere.segmentation, "real")
    show_preview(logic, session.prediction, sphere.volume, preview)
    got = segment_array(preview, "preview", sphere.m)
    assert got[k].sum() == sphere.inside[k].sum() == got.sum()
    assert segment_array(sphere.segmentation, sid, sphere.m).sum() == 0
    show_preview(logic, None, sphere.volume, preview)
    assert segment_array(preview, "preview", sphere.m).sum() == 0

    # a click on another slice starts a new session (old markers dropped)
    session.add_point(sphere.volume, (sphere.m @ np.r_[CENTER_IJK[0], CENTER_IJK[1], k + 1, 1])[:3], True, "K")
    assert markers.GetNumberOfControlPoints() == 1 and session.labels == [1]


class RedrawingPredictor:
    """Redraws the whole mask on every click, as the click decoders do: the bright part shrunk by one pixel per
    click after the first, plus a 3x3 square at each positive click outside it."""

    def predict(self, image, prompts, **kw):
        points, labels, _, _ = unpack(prompts)
        points, labels = (points, labels) if points is not None else ([], [])   # a box alone
        fg = np.asarray(image) > 50000
        mask = ndimage.binary_erosion(fg, iterations=len(points) - 1) if len(points) > 1 else fg.copy()
        for (x, y), lab in zip(np.round(points).astype(int), labels):
            if lab == 1 and not fg[y, x]:
                mask[y - 1:y + 2, x - 1:x + 2] = True
        return SimpleNamespace(mask=mask, score=1.0, logits=None, notes=[])


@pytest.mark.parametrize("local", [True, False])
def test_prompt_session_keeps_a_click_s_change_local(sphere, local):
    from SonoSAMSegmentLib.logic import PromptSession

    session = PromptSession(SegmentLogic(predictor=RedrawingPredictor()), local_corrections=local)
    k = int(np.round(CENTER_IJK[2]))
    session.add_point(sphere.volume, (sphere.m @ np.r_[CENTER_IJK[0], CENTER_IJK[1], k, 1])[:3], True, "K")
    first = session.predict(sphere.volume, slice_axis="K").mask
    assert first.sum() == sphere.inside[k].sum()
    session.add_point(sphere.volume, (sphere.m @ np.r_[4, 4, k, 1])[:3], True, "K")   # far from the sphere
    second = session.predict(sphere.volume, slice_axis="K")
    x, y = np.round(second.points_xy[-1]).astype(int)
    added = np.zeros_like(first)
    added[y - 1:y + 2, x - 1:x + 2] = True
    if local:   # the square the click asked for, and the sphere as the first click left it
        np.testing.assert_array_equal(second.mask, first | added)
        assert "local" in second.notes[-1]
    else:       # the model's whole new answer: the sphere shrunk
        np.testing.assert_array_equal(second.mask, ndimage.binary_erosion(first) | added)
    # a marker moved or deleted asks the model afresh: the same two clicks in another order are not "one more"
    session.points_ras.reverse(), session.labels.reverse()
    again = session.predict(sphere.volume, slice_axis="K").mask
    np.testing.assert_array_equal(again, ndimage.binary_erosion(first) | added)


def test_prompt_session_keeps_a_correction_after_a_box_inside_the_box(sphere):
    from SonoSAMSegmentLib.logic import PromptSession

    session = PromptSession(SegmentLogic(predictor=RedrawingPredictor()))
    k, c = int(np.round(CENTER_IJK[2])), np.round(CENTER_IJK).astype(int)
    corner = lambda i, j: (sphere.m @ np.r_[i, j, k, 1])[:3]   # noqa: E731
    session.set_box(sphere.volume, corner(c[0] - 12, c[1] - 12), corner(c[0] + 12, c[1] + 12), "K")
    first = session.predict(sphere.volume, slice_axis="K").mask
    session.add_point(sphere.volume, corner(c[0] + 12, c[1]), True, "K")   # on the box's side, outside the sphere
    second = session.predict(sphere.volume, slice_axis="K")
    x, y = np.round(second.points_xy[-1]).astype(int)
    square = np.zeros_like(first)
    square[y - 1:y + 2, x - 1:x + 2] = True                   # what the model added around the click
    x0, y0, x1, y1 = np.round(second.box_xy).astype(int)
    box = np.zeros_like(first)
    box[y0:y1 + 1, x0:x1 + 1] = True
    assert (square & ~box).any() and not first[y, x]          # the square reaches past the box
    np.testing.assert_array_equal(second.mask, first | (square & box))


class ForgettingPredictor:
    """The bright part, or nothing at all when the last click is negative: a model whose answer to a negative click
    drops the whole structure."""

    def predict(self, image, prompts, **kw):
        points, labels, _, _ = unpack(prompts)
        mask = np.asarray(image) > 50000
        if labels is not None and len(labels) and labels[-1] == 0:
            mask = np.zeros_like(mask)
        return SimpleNamespace(mask=mask, score=1.0, logits=None, notes=[])


def test_prompt_session_does_not_let_a_click_overrule_an_earlier_one(sphere):
    from SonoSAMSegmentLib.logic import PromptSession

    session = PromptSession(SegmentLogic(predictor=ForgettingPredictor()))
    k, c = int(np.round(CENTER_IJK[2])), np.round(CENTER_IJK).astype(int)
    at = lambda i, j: (sphere.m @ np.r_[i, j, k, 1])[:3]   # noqa: E731
    session.add_point(sphere.volume, at(c[0], c[1]), True, "K")
    first = session.predict(sphere.volume, slice_axis="K").mask
    session.add_point(sphere.volume, at(c[0] + 7, c[1]), False, "K")   # inside the sphere, near its edge
    second = session.predict(sphere.volume, slice_axis="K")
    (px, py), (nx, ny) = second.points_xy
    rows, cols = np.indices(first.shape)
    nearer_positive = (cols - px) ** 2 + (rows - py) ** 2 < (cols - nx) ** 2 + (rows - ny) ** 2
    assert first.any() and (first & ~nearer_positive).any()
    i, j = int(round(nx)), int(round(ny))   # the click's pixel
    within_reach = (cols - i) ** 2 + (rows - j) ** 2 <= (3 * ndimage.distance_transform_edt(first)[j, i]) ** 2
    assert (first & ~within_reach).any()
    # the positive click's side stays, and so does what lies beyond 3 x the negative click's depth
    np.testing.assert_array_equal(second.mask, first & (nearer_positive | ~within_reach))


class IgnoringPredictor:
    """The bright part, plus a 3x3 square at each positive click outside it except the last of several: a model
    that ignores a new click among others, and follows a click given alone."""

    def predict(self, image, prompts, **kw):
        points, labels, _, _ = unpack(prompts)
        fg = np.asarray(image) > 50000
        mask = fg.copy()
        for (x, y), lab in list(zip(np.round(points).astype(int), labels))[:max(len(points) - 1, 1)]:
            if lab == 1 and not fg[y, x]:
                mask[y - 1:y + 2, x - 1:x + 2] = True
        return SimpleNamespace(mask=mask, score=1.0, logits=None, notes=[])


def test_prompt_session_adds_what_an_ignored_click_segments_alone(sphere):
    from SonoSAMSegmentLib.logic import PromptSession

    session = PromptSession(SegmentLogic(predictor=IgnoringPredictor()))
    k = int(np.round(CENTER_IJK[2]))
    session.add_point(sphere.volume, (sphere.m @ np.r_[CENTER_IJK[0], CENTER_IJK[1], k, 1])[:3], True, "K")
    first = session.predict(sphere.volume, slice_axis="K").mask
    session.add_point(sphere.volume, (sphere.m @ np.r_[4, 4, k, 1])[:3], True, "K")
    second = session.predict(sphere.volume, slice_axis="K")
    x, y = np.round(second.points_xy[-1]).astype(int)
    added = np.zeros_like(first)
    added[y - 1:y + 2, x - 1:x + 2] = True
    np.testing.assert_array_equal(second.mask, first | added)
    # a negative click it ignores takes the disk up to the mask's edge around it, and the preview says so
    session.add_point(sphere.volume, (sphere.m @ np.r_[CENTER_IJK[0] + 3, CENTER_IJK[1], k, 1])[:3], False, "K")
    third = session.predict(sphere.volume, slice_axis="K")
    (px, py), (nx, ny) = third.points_xy[0], third.points_xy[-1]
    i, j = int(round(nx)), int(round(ny))   # the click's pixel
    rows, cols = np.indices(first.shape)
    depth = ndimage.distance_transform_edt(second.mask)[j, i]
    bite = (cols - i) ** 2 + (rows - j) ** 2 <= depth ** 2
    nearer_positive = (cols - px) ** 2 + (rows - py) ** 2 < (cols - nx) ** 2 + (rows - ny) ** 2
    assert (second.mask & bite & ~nearer_positive).sum() > 4
    np.testing.assert_array_equal(third.mask, second.mask & ~(bite & ~nearer_positive))
    assert "did not follow" in third.notes[-1] and "disk" in third.notes[-1]
    # removing the last points brings back the previews they had (the model alone would not give them back)
    session.remove_point(2)
    assert session.predict(sphere.volume, slice_axis="K") is second
    session.remove_point(1)
    np.testing.assert_array_equal(session.predict(sphere.volume, slice_axis="K").mask, first)
    session.add_point(sphere.volume, (sphere.m @ np.r_[4, 4, k, 1])[:3], True, "K")
    np.testing.assert_array_equal(session.predict(sphere.volume, slice_axis="K").mask, second.mask)
    # a positive click on a pixel already inside: nothing to correct, and the note says that, not "ignored"
    session.add_point(sphere.volume, (sphere.m @ np.r_[CENTER_IJK[0] + 1, CENTER_IJK[1], k, 1])[:3], True, "K")
    inside = session.predict(sphere.volume, slice_axis="K")
    np.testing.assert_array_equal(inside.mask, second.mask)
    assert "already inside" in inside.notes[-1]
    session.remove_point(2)
    session.local_corrections = False   # SAM's behaviour: the model's answer, which ignored the click
    session.remove_point(1)
    session.predict(sphere.volume, slice_axis="K")
    session.add_point(sphere.volume, (sphere.m @ np.r_[4, 4, k, 1])[:3], True, "K")
    np.testing.assert_array_equal(session.predict(sphere.volume, slice_axis="K").mask, first)


@pytest.mark.slow
def test_refine_segment_on_real_mri_with_the_real_click_model(colin):
    """The zero-shot refiner from a rough segment (an eroded AAL Caudate_R) on an axial slice, through MRML:
    a better mask than the rough one, its points on the slice, and nothing written until apply()."""
    import SimpleITK as sitk

    from sonosam.evaluate.metrics import dice

    labels = sitk.GetArrayFromImage(colin.itk_aal)   # (k, j, i), the volume's own grid
    k = int(np.argmax((labels == 72).sum(axis=(1, 2))))
    truth = labels[k] == 72
    rough = ndimage.binary_erosion(truth, iterations=2)
    logic = SegmentLogic("litemedsam_clicks", device="cpu")
    m = logic.volume_info(colin.volume).ijk_to_world
    sid = add_segment(colin.segmentation, "caudate")
    dims = colin.volume.GetImageData().GetDimensions()
    from SonoSAMSegmentLib.logic import write_segment_block

    write_segment_block(colin.segmentation, sid, rough[None], m, [0, dims[0] - 1, 0, dims[1] - 1, k, k])
    before = segment_array(colin.segmentation, sid, m, dims)
    # the user paints on the slice while the refiner runs: its answer (from the older mask) is refused
    task = logic.start_refine_segment(colin.volume, colin.segmentation, sid, sliceAxis="K", sliceIndex=k, steps=2)
    painted = rough.copy()
    painted[:4, :4] = True
    write_segment_block(colin.segmentation, sid, painted[None], m, [0, dims[0] - 1, 0, dims[1] - 1, k, k])
    with pytest.raises(SegmentationError, match="edited on this slice while the refiner ran"):
        task.finish()
    write_segment_block(colin.segmentation, sid, rough[None], m, [0, dims[0] - 1, 0, dims[1] - 1, k, k])
    prediction = logic.refine_segment(colin.volume, colin.segmentation, sid, sliceAxis="K", sliceIndex=k, steps=5)
    np.testing.assert_array_equal(segment_array(colin.segmentation, sid, m, dims), before)   # a preview only
    assert (prediction.labels == 1).sum() >= 4 and (prediction.labels == 0).sum() >= 4
    logic.apply(prediction, colin.volume, colin.segmentation, sid)
    after = segment_array(colin.segmentation, sid, m, dims)
    assert dice(after[k], truth) > dice(rough, truth)
    np.testing.assert_array_equal(np.delete(after, k, axis=0), np.delete(before, k, axis=0))
