"""Pure-numpy geometry between RAS, volume IJK and the 2D (x = column, y = row) image the model sees.

No VTK, no Qt, no MRML here: every function takes plain 4x4 matrices and numpy arrays, so the maths is
tested on its own and reused by the MRML logic (``logic.py``) and the Segment Editor effect.

Conventions
-----------
* A volume array is indexed ``array[k, j, i]`` (Slicer's ``arrayFromVolume`` order); voxel centre
  ``(i, j, k)`` sits at ``IJKToRAS @ (i, j, k, 1)`` -- the full matrix, so non-identity directions
  (rotations, flips) and anisotropic spacing are honoured.
* A slice is the set of voxels with one IJK index fixed (``axis`` 0 = I, 1 = J, 2 = K). Its 2D image
  is oriented as Slicer's slice view shows it: ``x`` grows to the screen's right, ``y`` grows down.
* An oblique plane (a slice view not aligned with the voxel grid) is resampled on a regular 2D grid;
  its mask is mapped back to the voxels the plane cuts through.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AXIS_NAMES = ("I", "J", "K")

# Slicer's standard slice-view orientations (vtkMRMLSliceNode::Get*SliceToRASMatrix):
# screen-right and screen-up directions in RAS for each anatomical view.
VIEW_PRESETS = {
    "axial": (np.array([-1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])),
    "coronal": (np.array([-1.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0])),
    "sagittal": (np.array([0.0, -1.0, 0.0]), np.array([0.0, 0.0, 1.0])),
}
VIEW_ALIASES = {"red": "axial", "green": "coronal", "yellow": "sagittal",
                "ax": "axial", "cor": "coronal", "sag": "sagittal"}

# How close (|cos|) a view's normal must be to a slice normal to count as "the same plane".
ALIGNED_COS = 1.0 - 1e-4


class GeometryError(ValueError):
    """Raised for impossible geometry (singular matrix, unknown axis); the logic wraps it."""


def as_matrix4(matrix) -> np.ndarray:
    m = np.asarray(matrix, dtype=float)
    if m.shape != (4, 4):
        raise GeometryError(f"expected a 4x4 matrix, got shape {m.shape}")
    if abs(np.linalg.det(m[:3, :3])) < 1e-12:
        raise GeometryError("the IJK-to-RAS matrix is singular (zero spacing?)")
    return m


def ras_to_ijk(points_ras, ijk_to_ras) -> np.ndarray:
    """(N, 3) RAS points -> (N, 3) continuous IJK (voxel centres are integers)."""
    pts = np.atleast_2d(np.asarray(points_ras, dtype=float))
    if pts.shape[-1] != 3:
        raise GeometryError(f"RAS points must have 3 coordinates, got shape {pts.shape}")
    inv = np.linalg.inv(as_matrix4(ijk_to_ras))
    homo = np.c_[pts, np.ones(len(pts))]
    return (homo @ inv.T)[:, :3]


def ijk_to_ras(points_ijk, ijk_to_ras) -> np.ndarray:
    pts = np.atleast_2d(np.asarray(points_ijk, dtype=float))
    m = as_matrix4(ijk_to_ras)
    return (np.c_[pts, np.ones(len(pts))] @ m.T)[:, :3]


def axis_directions(ijk_to_ras) -> np.ndarray:
    """(3, 3): row a = unit RAS direction of IJK axis a."""
    m = as_matrix4(ijk_to_ras)
    cols = m[:3, :3].T.copy()
    return cols / np.linalg.norm(cols, axis=1, keepdims=True)


def slice_normal(ijk_to_ras, axis: int) -> np.ndarray:
    """Unit RAS normal of the planes of constant index along ``axis`` (works for sheared grids too)."""
    d = axis_directions(ijk_to_ras)
    u, v = [a for a in range(3) if a != axis]
    n = np.cross(d[u], d[v])
    return n / np.linalg.norm(n)


def view_preset(name: str) -> tuple[np.ndarray, np.ndarray]:
    key = VIEW_ALIASES.get(name.lower(), name.lower())
    if key not in VIEW_PRESETS:
        raise GeometryError(f"unknown view {name!r}; use axial/coronal/sagittal (or red/green/yellow)")
    return VIEW_PRESETS[key]


def axis_for_normal(ijk_to_ras, normal) -> tuple[int, float]:
    """The IJK axis whose slices are most parallel to a plane of the given RAS normal, and |cos|."""
    normal = np.asarray(normal, dtype=float)
    normal = normal / np.linalg.norm(normal)
    cos = [abs(float(slice_normal(ijk_to_ras, a) @ normal)) for a in range(3)]
    best = int(np.argmax(cos))
    return best, cos[best]


def resolve_axis(ijk_to_ras, slice_axis) -> tuple[int, np.ndarray, np.ndarray]:
    """``slice_axis`` (0/1/2, "I"/"J"/"K", "axial"/"coronal"/"sagittal", "red"/...) ->
    (IJK axis, screen-right RAS, screen-up RAS) giving the orientation the slice is shown in."""
    if isinstance(slice_axis, (int, np.integer)) or (isinstance(slice_axis, str) and slice_axis.upper() in AXIS_NAMES):
        axis = int(slice_axis) if not isinstance(slice_axis, str) else AXIS_NAMES.index(slice_axis.upper())
        if axis not in (0, 1, 2):
            raise GeometryError(f"slice axis {slice_axis!r} is not 0, 1 or 2 (I, J, K)")
        normal = slice_normal(ijk_to_ras, axis)
        # show it like the anatomical view it is closest to
        name = max(VIEW_PRESETS, key=lambda v: abs(np.cross(*VIEW_PRESETS[v]) @ normal))
        right, up = VIEW_PRESETS[name]
        return axis, right, up
    if not isinstance(slice_axis, str):
        raise GeometryError(f"slice axis {slice_axis!r} is not understood")
    right, up = view_preset(slice_axis)
    axis, _ = axis_for_normal(ijk_to_ras, np.cross(right, up))
    return axis, right, up


@dataclass(frozen=True)
class SliceGeometry:
    """One voxel slice of a volume and how its 2D image is laid out.

    ``x_axis``/``y_axis`` are the IJK axes shown along the image columns/rows; ``x_flip``/``y_flip``
    say whether the index runs backwards so the image looks as in the slice view.
    """

    axis: int
    index: int
    dims_ijk: tuple  # (nI, nJ, nK)
    x_axis: int
    y_axis: int
    x_flip: bool = False
    y_flip: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        return (self.dims_ijk[self.y_axis], self.dims_ijk[self.x_axis])

    @property
    def extent(self) -> list[int]:
        """VTK extent [i0, i1, j0, j1, k0, k1] of this slice."""
        ext = []
        for a in range(3):
            ext += [self.index, self.index] if a == self.axis else [0, self.dims_ijk[a] - 1]
        return ext

    def key(self, volume_key) -> tuple:
        """Names the slice's image: the same slice shown rotated or flipped in another view is another image (its
        embedding, its last logits)."""
        return (volume_key, AXIS_NAMES[self.axis], int(self.index), self.x_axis, self.y_axis, bool(self.x_flip),
                bool(self.y_flip))

    # -- arrays -------------------------------------------------------------------------------
    def extract(self, array_kji: np.ndarray) -> np.ndarray:
        """2D image (rows = y, columns = x) of this slice from a (K, J, I[, C]) volume array."""
        return self._plane(array_kji, self.index)

    def from_block(self, block_kji: np.ndarray) -> np.ndarray:
        """2D image from a one-voxel-thick (K, J, I) block covering ``extent`` (inverse of ``to_block``)."""
        return self._plane(block_kji, 0)

    def _plane(self, array_kji, index):
        vol_ijk = np.moveaxis(array_kji, (0, 1, 2), (2, 1, 0))  # view, no copy
        plane = np.take(vol_ijk, index, axis=self.axis)  # remaining IJK axes in increasing order
        u, _ = [a for a in range(3) if a != self.axis]
        if self.x_axis == u:  # plane is [x, y] -> make it [y, x]
            plane = np.swapaxes(plane, 0, 1)
        if self.y_flip:
            plane = plane[::-1]
        if self.x_flip:
            plane = plane[:, ::-1]
        return np.ascontiguousarray(plane)

    def to_block(self, image2d: np.ndarray) -> np.ndarray:
        """Inverse of ``extract``: a 2D image -> the (K, J, I) block covering ``extent``."""
        plane = np.asarray(image2d)
        if plane.shape[:2] != self.shape:
            raise GeometryError(f"mask has shape {plane.shape[:2]}, the slice is {self.shape}")
        if self.x_flip:
            plane = plane[:, ::-1]
        if self.y_flip:
            plane = plane[::-1]
        u, _ = [a for a in range(3) if a != self.axis]
        if self.x_axis == u:
            plane = np.swapaxes(plane, 0, 1)
        block_ijk = np.expand_dims(plane, self.axis)
        return np.ascontiguousarray(np.moveaxis(block_ijk, (0, 1, 2), (2, 1, 0)))

    def stack(self, array_kji: np.ndarray) -> np.ndarray:
        """The whole volume as a stack of this layout's slices: (S, H, W[, C]) with ``stack[s]`` equal to
        ``extract`` of slice ``s`` (a view, no copy) -- what volume propagation runs on (axis 0)."""
        vol_ijk = np.moveaxis(np.asarray(array_kji), (0, 1, 2), (2, 1, 0))
        view = np.moveaxis(vol_ijk, (self.axis, self.y_axis, self.x_axis), (0, 1, 2))
        return view[:, ::-1 if self.y_flip else 1, ::-1 if self.x_flip else 1]

    def unstack(self, stack: np.ndarray) -> np.ndarray:
        """Inverse of ``stack``: (S, H, W) -> the (K, J, I) volume array."""
        view = np.asarray(stack)[:, ::-1 if self.y_flip else 1, ::-1 if self.x_flip else 1]
        vol_ijk = np.moveaxis(view, (0, 1, 2), (self.axis, self.y_axis, self.x_axis))
        return np.ascontiguousarray(np.moveaxis(vol_ijk, (0, 1, 2), (2, 1, 0)))

    # -- points -------------------------------------------------------------------------------
    def ijk_to_xy(self, points_ijk) -> np.ndarray:
        p = np.atleast_2d(np.asarray(points_ijk, dtype=float))
        x = p[:, self.x_axis]
        y = p[:, self.y_axis]
        if self.x_flip:
            x = (self.dims_ijk[self.x_axis] - 1) - x
        if self.y_flip:
            y = (self.dims_ijk[self.y_axis] - 1) - y
        return np.c_[x, y]

    def xy_to_ijk(self, points_xy) -> np.ndarray:
        p = np.atleast_2d(np.asarray(points_xy, dtype=float))
        out = np.zeros((len(p), 3))
        x, y = p[:, 0], p[:, 1]
        if self.x_flip:
            x = (self.dims_ijk[self.x_axis] - 1) - x
        if self.y_flip:
            y = (self.dims_ijk[self.y_axis] - 1) - y
        out[:, self.x_axis] = x
        out[:, self.y_axis] = y
        out[:, self.axis] = self.index
        return out


def make_slice_geometry(ijk_to_ras, dims_ijk, axis: int, index: int, right=None, up=None) -> SliceGeometry:
    """Lay out slice ``index`` along IJK ``axis`` so that it looks as in a view with the given
    screen-right/screen-up RAS directions (default: the closest standard anatomical view)."""
    dims_ijk = tuple(int(d) for d in dims_ijk)
    if not 0 <= index < dims_ijk[axis]:
        raise GeometryError(f"slice index {index} is outside 0..{dims_ijk[axis] - 1} along {AXIS_NAMES[axis]}")
    if right is None or up is None:
        _, right, up = resolve_axis(ijk_to_ras, axis)
    right = np.asarray(right, float) / np.linalg.norm(right)
    up = np.asarray(up, float) / np.linalg.norm(up)
    d = axis_directions(ijk_to_ras)
    u, v = [a for a in range(3) if a != axis]
    if abs(d[u] @ right) >= abs(d[v] @ right):
        x_axis, y_axis = u, v
    else:
        x_axis, y_axis = v, u
    x_flip = bool(d[x_axis] @ right < 0)
    y_flip = bool(d[y_axis] @ up > 0)  # rows grow downwards on screen
    return SliceGeometry(axis, int(index), dims_ijk, x_axis, y_axis, x_flip, y_flip)


def slice_index_for_points(points_ijk, axis: int, dims_ijk) -> int:
    """The slice along ``axis`` that the prompt points lie on (rounded voxel index)."""
    p = np.atleast_2d(points_ijk)
    idx = np.round(p[:, axis]).astype(int)
    if np.ptp(idx) > 0:
        raise GeometryError(f"the prompts lie on different slices along {AXIS_NAMES[axis]} "
                            f"(indices {sorted(set(idx.tolist()))}); give prompts on one slice")
    return int(idx[0])


@dataclass(frozen=True)
class ObliquePlane:
    """A slice plane not aligned with the voxel grid, sampled on a regular grid.

    Pixel (x, y) sits at ``origin + x * spacing * right - y * spacing * up`` (RAS).
    """

    origin: tuple
    right: tuple
    up: tuple
    spacing: float
    width: int
    height: int

    @property
    def normal(self) -> np.ndarray:
        n = np.cross(self.right, self.up)
        return n / np.linalg.norm(n)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    def key(self, volume_key) -> tuple:
        rounded = tuple(np.round(np.r_[self.origin, self.right, self.up, self.spacing], 4).tolist())
        return (volume_key, "oblique", rounded)

    def xy_to_ras(self, points_xy) -> np.ndarray:
        p = np.atleast_2d(np.asarray(points_xy, dtype=float))
        o, r, u = (np.asarray(a, float) for a in (self.origin, self.right, self.up))
        return o + np.outer(p[:, 0] * self.spacing, r) - np.outer(p[:, 1] * self.spacing, u)

    def ras_to_xyw(self, points_ras) -> np.ndarray:
        """RAS -> (x, y, w): pixel coordinates and signed distance (mm) from the plane."""
        p = np.atleast_2d(np.asarray(points_ras, dtype=float)) - np.asarray(self.origin, float)
        return np.c_[p @ np.asarray(self.right) / self.spacing, -(p @ np.asarray(self.up)) / self.spacing,
                     p @ self.normal]

    def sample(self, array_kji: np.ndarray, ijk_to_ras, order: int = 1) -> np.ndarray:
        """Resample the volume on the plane's grid (linear by default; outside -> volume minimum)."""
        from scipy.ndimage import map_coordinates

        ys, xs = np.mgrid[0:self.height, 0:self.width]
        ras = self.xy_to_ras(np.c_[xs.ravel(), ys.ravel()])
        ijk = ras_to_ijk(ras, ijk_to_ras)
        coords = ijk[:, ::-1].T  # (k, j, i) for a [k, j, i] array
        out = map_coordinates(array_kji, coords, order=order, mode="constant", cval=float(array_kji.min()))
        return out.reshape(self.height, self.width)

    def voxel_footprint(self, ijk_to_ras, dims_ijk):
        """The voxels the plane cuts through: (extent, (k, j, i) index arrays into the extent's (K, J, I) block,
        each voxel's x and y pixel indices).

        A voxel belongs to the plane when its centre is within half a voxel step (along the normal) of it, so an
        axis-aligned plane picks exactly one voxel layer, and any plane one voxel in each column along the IJK
        axis closest to its normal: found column by column (the plane's bounding box of a thin-slice CT holds
        tens of millions of voxels).
        """
        m = as_matrix4(ijk_to_ras)
        n = self.normal
        w_step = m[:3, :3].T @ n            # mm along the normal per unit step of I, J, K
        half = 0.5 * float(np.abs(w_step).max())
        d = int(np.argmax(np.abs(w_step)))   # the columns run along this axis
        a, b = (axis for axis in range(3) if axis != d)
        # bounding IJK box of the plane's rectangle, padded by a voxel
        corners = self.xy_to_ras([(0, 0), (self.width - 1, 0), (0, self.height - 1), (self.width - 1, self.height - 1)])
        cijk = ras_to_ijk(corners, m)
        lo = np.clip(np.floor(cijk.min(0)) - 1, 0, np.array(dims_ijk) - 1).astype(int)
        hi = np.clip(np.ceil(cijk.max(0)) + 1, 0, np.array(dims_ijk) - 1).astype(int)
        ga, gb = np.meshgrid(np.arange(lo[a], hi[a] + 1), np.arange(lo[b], hi[b] + 1), indexing="ij")
        w_at_0 = float((m[:3, 3] - np.asarray(self.origin, float)) @ n)
        crossing = -(w_at_0 + w_step[a] * ga + w_step[b] * gb) / w_step[d]
        ijk = np.zeros((2 * ga.size, 3), np.int64)   # the two voxels of each column around the crossing
        ijk[:, a], ijk[:, b] = np.tile(ga.ravel(), 2), np.tile(gb.ravel(), 2)
        below = np.floor(crossing.ravel()).astype(np.int64)
        ijk[:, d] = np.r_[below, below + 1]
        w = w_at_0 + ijk @ w_step
        ijk = ijk[(w >= -half) & (w < half) & (ijk[:, d] >= lo[d]) & (ijk[:, d] <= hi[d])]
        xyw = self.ras_to_xyw(m[:3, 3] + ijk @ m[:3, :3].T)
        px, py = np.round(xyw[:, 0]).astype(int), np.round(xyw[:, 1]).astype(int)
        inside = (px >= 0) & (px < self.width) & (py >= 0) & (py < self.height)
        ijk, px, py = ijk[inside] - lo, px[inside], py[inside]
        extent = [int(lo[0]), int(hi[0]), int(lo[1]), int(hi[1]), int(lo[2]), int(hi[2])]
        return extent, (ijk[:, 2], ijk[:, 1], ijk[:, 0]), px, py


def make_oblique_plane(volume_ijk_to_ras, dims_ijk, slice_to_ras, spacing: float | None = None) -> ObliquePlane:
    """The plane of a slice view (its 4x4 SliceToRAS: columns right, up, normal, origin) clipped to
    the volume's bounds, sampled at the volume's finest spacing."""
    m = as_matrix4(volume_ijk_to_ras)
    s = np.asarray(slice_to_ras, float)
    right = s[:3, 0] / np.linalg.norm(s[:3, 0])
    up = s[:3, 1] / np.linalg.norm(s[:3, 1])
    center = s[:3, 3]
    if spacing is None:
        spacing = float(np.linalg.norm(m[:3, :3], axis=0).min())
    dims = np.asarray(dims_ijk)
    corners = np.array([[i, j, k] for i in (-0.5, dims[0] - 0.5) for j in (-0.5, dims[1] - 0.5)
                        for k in (-0.5, dims[2] - 0.5)])
    cras = ijk_to_ras(corners, m) - center
    xs, ys = cras @ right, cras @ up
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    width = int(np.ceil((x1 - x0) / spacing)) + 1
    height = int(np.ceil((y1 - y0) / spacing)) + 1
    origin = center + x0 * right + y1 * up  # top-left
    return ObliquePlane(tuple(origin), tuple(right), tuple(up), float(spacing), width, height)
