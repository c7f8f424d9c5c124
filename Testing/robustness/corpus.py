"""Broken and hostile input files, generated at test time (no binary fixtures): each function writes one file
and returns its path."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np


def png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(array).save(path)
    return path


def textured(height: int = 64, width: int = 64, seed: int = 0) -> np.ndarray:
    """A grey image with a bright disc: something a model could segment."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    disc = (yy - height / 2) ** 2 + (xx - width / 2) ** 2 < (min(height, width) / 4) ** 2
    return np.clip(60 + 120 * disc + rng.normal(0, 10, (height, width)), 0, 255).astype(np.uint8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_declaring(path: Path, width: int, height: int) -> Path:
    """A valid PNG signature and header declaring width x height RGB, with a few bytes of pixel data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b"")
    path.write_bytes(data)
    return path


def truncated_png(path: Path) -> Path:
    full = path.with_name("full_" + path.name)
    png(full, textured(128, 128))
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[: len(data) // 2])
    return path


def png16(path: Path) -> Path:
    """A 16-bit grayscale PNG whose values all lie above 255 (read as 8 bits it would look constant)."""
    from PIL import Image

    array = (1000 + 40 * textured(64, 64).astype(np.uint16)).astype(np.uint16)
    Image.fromarray(array).save(path)  # mode I;16
    return path


def float_tiff(path: Path, array: np.ndarray | None = None) -> Path:
    from PIL import Image

    array = textured(64, 64).astype(np.float32) / 1000.0 if array is None else array.astype(np.float32)
    Image.fromarray(array, mode="F").save(path)
    return path


def jpeg(path: Path) -> Path:
    from PIL import Image

    Image.fromarray(textured()).save(path, format="JPEG")
    return path


def npy(path: Path, array) -> Path:
    np.save(path, array, allow_pickle=True)
    return path


def truncated_npy(path: Path) -> Path:
    np.save(path, np.zeros((10, 64, 64), np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


def truncated_nifti(path: Path, *, cut_stream: bool = False) -> Path:
    """A NIfTI volume whose voxel data stop at 60 %: .nii cut, .nii.gz holding the cut data (complete stream), or
    with ``cut_stream`` the compressed stream itself cut (a copy that stopped)."""
    import gzip

    full = volume(path.with_name("full_" + path.name), textured_volume())
    data = full.read_bytes()
    full.unlink()
    if path.name.endswith(".gz") and not cut_stream:
        raw = gzip.decompress(data)
        path.write_bytes(gzip.compress(raw[: int(len(raw) * 0.6)]))
    else:
        path.write_bytes(data[: int(len(data) * 0.6)])
    return path


def volume(path: Path, array: np.ndarray) -> Path:
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


def nifti(path: Path, array: np.ndarray) -> Path:
    """A float32 NIfTI-1 written byte by byte: ITK's writer would turn NaN/Inf into 0 (so would its reader)."""
    array = np.asarray(array, np.float32)
    header = bytearray(348)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, array.ndim, *array.shape[::-1], *([1] * (7 - array.ndim)))
    struct.pack_into("<hh", header, 70, 16, 32)  # float32, 32 bits
    struct.pack_into("<8f", header, 76, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into("<ff", header, 108, 352.0, 1.0)  # vox_offset, scl_slope
    header[344:348] = b"n+1\x00"
    data = bytes(header) + b"\0" * 4 + array.tobytes()
    if path.name.endswith(".gz"):
        import gzip

        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def textured_volume(depth: int = 12, size: int = 48) -> np.ndarray:
    return np.stack([textured(size, size, seed=k) for k in range(depth)]).astype(np.float32)


def dicom(path: Path, frames: np.ndarray | None = None, *, rows: int | None = None, columns: int | None = None,
          n_frames: int | None = None, pixel_data: bytes | None = None, with_pixels: bool = True,
          **attributes) -> Path:
    """An ultrasound DICOM; rows/columns/n_frames override what the header declares (pixel data unchanged)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    frames = np.stack([textured(48, 64, seed=t) for t in range(4)]) if frames is None else frames
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "US"
    ds.Rows = rows if rows is not None else frames.shape[1]
    ds.Columns = columns if columns is not None else frames.shape[2]
    ds.NumberOfFrames = n_frames if n_frames is not None else frames.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    for key, value in attributes.items():
        setattr(ds, key, value)
    if with_pixels:
        ds.PixelData = frames.tobytes() if pixel_data is None else pixel_data
    ds.save_as(path, enforce_file_format=True)
    return path


def checkpoint(path: Path, state: dict) -> Path:
    import torch

    torch.save(state, path)
    return path


class NotTensors:  # a pickled object: loading it would run code
    pass
