"""The bytes the SonoSAM server and client exchange: JSON for everything but arrays, arrays as raw
little-endian bytes with their dtype and shape (never pickle). numpy + standard library only: the
client side (Slicer's Python) imports this without torch.

A message ("frame") is:

    b"SSAM" | uint32 LE length of the JSON header | JSON header (UTF-8) | array payloads

    header = {"meta": {...}, "arrays": {name: {"dtype", "shape", "offset", "nbytes", "encoding"}}}

`offset` counts from the first payload byte. Boolean arrays travel bit-packed (encoding "bits",
8 pixels per byte); everything else as raw bytes ("raw"). `decode` checks every field before it
touches the payload and raises `WireError` naming what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct

import numpy as np

from .errors import SonoSAMError

MAGIC = b"SSAM"
CONTENT_TYPE = "application/x-sonosam-frame"
MAX_NDIM = 4
# The only dtypes that travel: plain numbers and booleans, little-endian. Anything else is refused.
DTYPES = ("bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "int64", "uint64",
          "float16", "float32", "float64")


class WireError(SonoSAMError, ValueError):
    """A message is malformed: bad framing, an unknown dtype, a shape that does not match its bytes."""


def _canonical(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype.name not in DTYPES:
        raise WireError(f"Array of dtype {array.dtype} cannot be sent; use one of {', '.join(DTYPES)}.")
    if array.ndim > MAX_NDIM:
        raise WireError(f"Array of shape {array.shape} has more than {MAX_NDIM} dimensions.")
    return np.asarray(array, dtype=array.dtype.newbyteorder("<"), order="C")  # (ascontiguousarray makes 0-d 1-d)


def _bytes(array: np.ndarray):
    """The canonical array's bytes without a copy."""
    return b"" if array.size == 0 else memoryview(array.reshape(-1)).cast("B")


def content_hasher(dtype: str, shape):
    """The hash behind content_id, before any byte: feed it the canonical bytes in order (chunked uploads
    hash piece by piece on both sides)."""
    return hashlib.blake2b(f"{dtype}|{tuple(shape)}|".encode(), digest_size=16)


def content_id(array: np.ndarray) -> str:
    """The array's content address: same dtype, shape and bytes -> same id (the server checks it)."""
    array = _canonical(array)
    digest = content_hasher(array.dtype.name, array.shape)
    digest.update(_bytes(array))
    return digest.hexdigest()


def canonical_pieces(array: np.ndarray, piece_bytes: int):
    """The canonical bytes of `array` (as content_id and encode see them) in pieces of about `piece_bytes`,
    cut between rows of the first axis so that a non-contiguous or big-endian array is converted one piece
    at a time (a GUI thread never copies a whole volume at once). Yields (offset, memoryview)."""
    array = np.asarray(array)
    if array.ndim == 0 or array.nbytes == 0:
        yield 0, _bytes(_canonical(array))
        return
    rows = max(1, int(piece_bytes // max(1, array[0].nbytes if array.ndim > 1 else array.itemsize)))
    offset = 0
    for start in range(0, array.shape[0], rows):
        data = _bytes(_canonical(array[start:start + rows]))
        yield offset, data
        offset += len(data)


def encode(meta: dict | None = None, arrays: dict[str, np.ndarray] | None = None) -> bytes:
    """meta (JSON-able) + named arrays -> one message."""
    specs, payloads, offset = {}, [], 0
    for name, array in (arrays or {}).items():
        if array is None:
            continue
        array = _canonical(array)
        if array.dtype == bool:
            data, encoding = np.packbits(array.reshape(-1)).tobytes(), "bits"
        else:
            data, encoding = _bytes(array), "raw"
        specs[name] = {"dtype": array.dtype.name, "shape": list(array.shape), "offset": offset,
                       "nbytes": len(data), "encoding": encoding}
        payloads.append(data)
        offset += len(data)
    header = json.dumps({"meta": meta or {}, "arrays": specs}).encode()  # NaN as in Python's json (unmeasured Dice)
    return b"".join([MAGIC, struct.pack("<I", len(header)), header, *payloads])


def _expected_nbytes(dtype: str, shape: list[int], encoding: str) -> int:
    count = math.prod(shape)
    if encoding == "bits":
        return (count + 7) // 8
    return count * np.dtype(dtype).itemsize


def decode(body: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """One message -> (meta, {name: array}); arrays are read-only views of `body` (bits are unpacked)."""
    body = memoryview(body)
    if len(body) < 8 or bytes(body[:4]) != MAGIC:
        raise WireError("The request body is not a SonoSAM message (it must start with b'SSAM'); "
                        "send it with sonosam.client or sonosam.wire.encode.")
    (length,) = struct.unpack("<I", body[4:8])
    if 8 + length > len(body):
        raise WireError(f"The message header claims {length} bytes but only {len(body) - 8} follow.")
    try:
        header = json.loads(bytes(body[8:8 + length]))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise WireError(f"The message header is not valid JSON ({error}).") from None
    if not isinstance(header, dict) or not isinstance(header.get("meta", {}), dict) \
            or not isinstance(header.get("arrays", {}), dict):
        raise WireError("The message header must be a JSON object with 'meta' and 'arrays' objects.")
    payload = body[8 + length:]
    arrays = {}
    for name, spec in header.get("arrays", {}).items():
        arrays[name] = _decode_array(name, spec, payload)
    return header.get("meta", {}), arrays


def _decode_array(name: str, spec, payload: memoryview) -> np.ndarray:
    if not isinstance(spec, dict):
        raise WireError(f"Array '{name}': its description must be an object with dtype, shape, offset, nbytes.")
    dtype, shape, encoding = spec.get("dtype"), spec.get("shape"), spec.get("encoding", "raw")
    offset, nbytes = spec.get("offset"), spec.get("nbytes")
    if dtype not in DTYPES:
        raise WireError(f"Array '{name}': dtype {dtype!r} is not allowed; use one of {', '.join(DTYPES)}.")
    if not isinstance(shape, list) or len(shape) > MAX_NDIM or \
            not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise WireError(f"Array '{name}': shape {shape!r} must be a list of at most {MAX_NDIM} non-negative integers.")
    if encoding not in ("raw", "bits") or (encoding == "bits") != (dtype == "bool"):
        raise WireError(f"Array '{name}': encoding {encoding!r} does not fit dtype {dtype} "
                        "(bool travels as 'bits', everything else as 'raw').")
    for field, value in (("offset", offset), ("nbytes", nbytes)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise WireError(f"Array '{name}': {field} {value!r} must be a non-negative integer.")
    expected = _expected_nbytes(dtype, shape, encoding)
    if nbytes != expected:
        raise WireError(f"Array '{name}': shape {shape} of {dtype} needs {expected} bytes, the message says {nbytes}.")
    if offset + nbytes > len(payload):
        raise WireError(f"Array '{name}': bytes {offset}..{offset + nbytes} lie beyond the "
                        f"{len(payload)} bytes sent (truncated message?).")
    data = payload[offset:offset + nbytes]
    if encoding == "bits":
        count = math.prod(shape)
        return np.unpackbits(np.frombuffer(data, np.uint8), count=count).astype(bool).reshape(shape)
    return np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)
