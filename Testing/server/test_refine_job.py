"""The zero-shot refiner as a `sonosam serve` job over real sockets: the same points and mask as the core
call in-process (the route the Slicer module will take), and bad maps refused before the job starts."""

from pathlib import Path

import numpy as np
import pytest

from sonosam.client import start_local_server
from sonosam.errors import SonoSAMError

ROOT = Path(__file__).resolve().parents[2]
MODEL = "litemedsam_clicks"
CAUDATE_R = 72


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("refine-server")
    local = start_local_server(model=MODEL, backend="eager", env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                               args=["--threads", "1", "--cache-dir", str(tmp / "cache")])
    yield local
    local.stop()


@pytest.mark.slow
def test_refine_job_matches_the_core_call(served):
    from sonosam.models import load_model
    from sonosam.refine import refine
    from sonosam.seeds_data import colin27, degrade, largest_slice

    volume, labels, _, _ = colin27()
    index = largest_slice(labels, CAUDATE_R)
    image, coarse = volume[index], degrade(labels[index] == CAUDATE_R, seed=3)
    client = served.client()
    meta, arrays = client.start_job("refine", image=image, coarse=coarse, steps=3, seed=5).result(timeout=900)
    local = refine(load_model(MODEL, device="cpu"), image, coarse, steps=3, seed=5)
    np.testing.assert_allclose(meta["positives"], local.positives)
    np.testing.assert_allclose(meta["negatives"], local.negatives)
    np.testing.assert_array_equal(arrays["mask"], local.mask)
    assert meta["k"] == local.k and arrays["mask"].any()

    with pytest.raises(SonoSAMError, match="coarse map"):
        client.start_job("refine", image=image, coarse=coarse[:-1], steps=3)
    with pytest.raises(SonoSAMError, match="coarse map"):
        client.start_job("refine", image=image, coarse=coarse * 255, steps=3)
