"""The server's wire format on its own: arrays round-trip bit-exactly, nothing else gets through."""

import json

import numpy as np
import pytest

from sonosam import wire


def test_round_trip_of_every_dtype_and_bit_packed_booleans():
    rng = np.random.default_rng(0)
    arrays = {name: (rng.random((3, 5, 7)) * 100).astype(name) for name in wire.DTYPES if name != "bool"}
    arrays["bool"] = rng.random((2, 13, 11)) > 0.5      # 286 bits: not a multiple of 8
    arrays["big_endian"] = np.arange(6, dtype=">i4").reshape(2, 3)
    arrays["empty"] = np.zeros((0, 4), np.float32)
    arrays["scalar"] = np.float64(3.5)
    body = wire.encode({"note": "x", "nan": float("nan")}, arrays)
    meta, out = wire.decode(body)
    assert meta["note"] == "x" and np.isnan(meta["nan"])
    for name, array in arrays.items():
        assert out[name].shape == np.shape(array) and np.array_equal(out[name], array), name
    assert out["bool"].dtype == bool and out["big_endian"].dtype == np.dtype("<i4")
    header = json.loads(body[8:8 + int.from_bytes(body[4:8], "little")])
    assert header["arrays"]["bool"]["nbytes"] == (2 * 13 * 11 + 7) // 8  # 8 pixels a byte


def test_content_id_names_dtype_shape_and_bytes():
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert wire.content_id(a) == wire.content_id(a.copy()) == wire.content_id(np.asfortranarray(a))
    assert wire.content_id(a) != wire.content_id(a.reshape(4, 3))
    assert wire.content_id(a) != wire.content_id(a.astype(np.int8))
    assert wire.content_id(a.astype(">u2")) == wire.content_id(a.astype("<u2"))


def test_refusals_name_the_problem():
    with pytest.raises(wire.WireError, match="dtype object"):
        wire.encode({}, {"a": np.array([{}, 1], dtype=object)})
    with pytest.raises(wire.WireError, match="more than 4 dimensions"):
        wire.encode({}, {"a": np.zeros((1,) * 5)})
    good = wire.encode({}, {"a": np.zeros((2, 2), np.float32)})
    end = 8 + int.from_bytes(good[4:8], "little")
    header = json.loads(good[8:end])

    def with_spec(**change):
        spec = {"meta": {}, "arrays": {"a": {**header["arrays"]["a"], **change}}}
        text = json.dumps(spec).encode()
        return good[:4] + len(text).to_bytes(4, "little") + text + good[end:]

    cases = [(b"GET / HTTP", "not a SonoSAM message"), (good[:4] + (10**6).to_bytes(4, "little"), "claims"),
             (with_spec(dtype="V8"), "not allowed"), (with_spec(shape=[2, -2]), "non-negative"),
             (with_spec(shape=[3, 2]), "needs 24 bytes"), (with_spec(offset=8), "beyond"),
             (with_spec(encoding="bits"), "does not fit"), (with_spec(shape="2,2"), "list")]
    for body, needle in cases:
        with pytest.raises(wire.WireError, match=needle):
            wire.decode(body)
