"""Where voxels lie in patient space: `Geometry` (ITK's LPS convention, with `ijk_to_ras()` for Slicer)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InputImageError

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Geometry:
    """Where voxels lie in patient space, in ITK's LPS convention (what SimpleITK and DICOM use).

    `direction` columns are the unit vectors of the i, j, k axes; a point is
    `origin + direction @ (spacing * ijk)`."""

    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self):
        spacing = tuple(float(s) for s in self.spacing)
        if len(spacing) == 2:  # a 2D image: one slice, 1 mm thick
            spacing = spacing + (1.0,)
        origin = tuple(float(o) for o in self.origin) + (0.0,) * (3 - len(self.origin))
        direction = np.asarray(self.direction, dtype=float)
        if direction.shape == (2, 2):
            direction = np.block([[direction, np.zeros((2, 1))], [np.zeros((1, 2)), np.ones((1, 1))]])
        if direction.size == 9:
            direction = direction.reshape(3, 3)
        if len(spacing) != 3 or len(origin) != 3 or direction.shape != (3, 3):
            raise InputImageError(f"Geometry needs 3 spacings, 3 origin values and a 3x3 direction; got "
                                  f"spacing={self.spacing}, origin={self.origin}, direction shape {direction.shape}.")
        if not all(np.isfinite(s) and s > 0 for s in spacing) or not np.all(np.isfinite(direction)):
            raise InputImageError(f"Geometry spacing must be positive and finite; got {spacing}.")
        self.spacing, self.origin, self.direction = spacing, origin, direction

    def ijk_to_lps(self) -> np.ndarray:
        """4x4 matrix from voxel index (i, j, k, 1) to LPS millimetres."""
        matrix = np.eye(4)
        matrix[:3, :3] = self.direction * np.asarray(self.spacing)
        matrix[:3, 3] = self.origin
        return matrix

    def ijk_to_ras(self) -> np.ndarray:
        """4x4 matrix from voxel index to RAS millimetres, as Slicer's `GetIJKToRASMatrix` gives."""
        return _LPS_TO_RAS @ self.ijk_to_lps()

    @classmethod
    def from_ijk_to_lps(cls, matrix: np.ndarray) -> Geometry:
        matrix = np.asarray(matrix, dtype=float)
        spacing = np.linalg.norm(matrix[:3, :3], axis=0)
        return cls(tuple(spacing), tuple(matrix[:3, 3]), matrix[:3, :3] / spacing)

    @classmethod
    def from_ijk_to_ras(cls, matrix: np.ndarray) -> Geometry:
        """From Slicer's IJK-to-RAS matrix (e.g. `volumeNode.GetIJKToRASMatrix`) to LPS geometry."""
        return cls.from_ijk_to_lps(_LPS_TO_RAS @ np.asarray(matrix, dtype=float))

    @classmethod
    def from_image(cls, image) -> Geometry:
        """From a SimpleITK image (2D images get a 1 mm third axis)."""
        dim = image.GetDimension()
        return cls(image.GetSpacing(), image.GetOrigin(), np.asarray(image.GetDirection()).reshape(dim, dim))

    def apply_to(self, image) -> None:
        """Set this geometry on a 3D SimpleITK image."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(tuple(self.direction.ravel()))

    def allclose(self, other: Geometry, atol: float = 1e-5) -> bool:
        return (np.allclose(self.spacing, other.spacing, atol=atol) and np.allclose(self.origin, other.origin, atol=atol)
                and np.allclose(self.direction, other.direction, atol=atol))
