"""SAM^assist and the prompt predictor ('auto') as `sonosam serve` jobs over real sockets, on real Colin27 slices
with the real LiteMedSAM: the same results as the core calls in-process; the learned prompt encoder kept on the
server under an id that later predictions name (and None gives the base model back); PPN files read only from
the server's own folder or sent as bytes; bad input refused with a 4xx naming the problem; cancel keeps nothing."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from sonosam.client import start_local_server
from sonosam.errors import JobCancelledError, ServerError, SonoSAMError, UnsupportedPromptError

pytestmark = pytest.mark.slow   # a server process and an in-process model, real encoders

ROOT = Path(__file__).resolve().parents[2]
MODEL = "litemedsam"


@pytest.fixture(scope="module")
def served(tmp_path_factory, brief_ppn):
    cache = tmp_path_factory.mktemp("modes-server") / "cache"
    (cache / "ppn").mkdir(parents=True)
    shutil.copy(brief_ppn, cache / "ppn" / "thalamus.ppn.pt")
    (cache / "ppn" / "notes.ppn.pt").write_bytes(b"not a prompt predictor")   # listed nowhere, refused by name
    local = start_local_server(model=MODEL, backend="eager", env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                               args=["--threads", "1", "--cache-dir", str(cache)])
    yield local
    local.stop()


@pytest.fixture(scope="module")
def local_predictor(default_model):
    from sonosam.predictor import Predictor

    return Predictor(default_model)


def _centre_click(mask):
    rows, cols = np.nonzero(mask)
    i = int(np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2))
    return [(float(cols[i]), float(rows[i]))]


def test_assist_job_equals_the_core_and_is_named_by_later_predictions(served, local_predictor, colin_stack):
    from sonosam.assist import learn_assist

    stack, labels, window = colin_stack
    masks = [labels[i] == 77 for i in (1, 5)]
    client = served.client()
    meta = client.start_job("assist", volume=stack, slices=[1, 5], masks=np.stack(masks), steps=3, seed=2,
                            window=window).result(timeout=900)
    assert meta["slices"] == [1, 5] and len(meta["losses"]) == 3 and meta["seconds"] > 0
    assert meta["trained_parameters"] > 0 and client.info()["assists"] == 1
    local = learn_assist(local_predictor, stack, [1, 5], masks, window=window, steps=3, seed=2)
    np.testing.assert_allclose(meta["losses"], local.result.losses, rtol=1e-4)

    click = _centre_click(labels[3] == 77)
    assisted = client.with_assist(meta["assist"], meta["prompt_kinds"])
    remote = assisted.predict(stack[3], points=click, labels=[1], window=window)
    here = local.predict(stack[3], points=click, labels=[1], window=window)
    np.testing.assert_array_equal(remote.mask, here.mask)
    assert remote.mask.any()
    assert assisted.spec.prompt_kinds == {"box", "point"} == set(local.model.spec.prompt_kinds)
    # the base model is still there, unchanged (the view with None, and the original client): box-only, it
    # refuses a single click that the assisted one answers
    for base in (assisted.with_assist(None), client, local_predictor):
        with pytest.raises(UnsupportedPromptError):
            base.predict(stack[3], points=click, labels=[1], window=window)
    assert client.spec.prompt_kinds == {"box"} and assisted.with_assist(None).spec.prompt_kinds == {"box"}
    box = (60.0, 80.0, 120.0, 140.0)   # a user's box: answered at the model's box scales, here as on the server
    from sonosam.zoom import interactive_predictor

    here = interactive_predictor(local_predictor).predict(stack[3], box=box, window=window)
    np.testing.assert_array_equal(assisted.with_assist(None).predict(stack[3], box=box, window=window).mask, here.mask)

    # a propagation job that names it runs with it, as the core's propagate on the assisted predictor here
    from sonosam.volume import Seed, propagate

    seeds = [{"index": 3, "mask": labels[3] == 77}]
    remote = assisted.propagate(stack, seeds, axis=0, max_slices=1, window=window, seed_check=False)
    here = propagate(local, stack, [Seed(3, mask=labels[3] == 77)], axis=0, max_slices=1, window=window,
                     seed_check=False)
    np.testing.assert_array_equal(remote.mask, here.mask)
    assert remote.mask[[2, 4]].any()

    # refused before any job starts, each with a message naming the problem
    with pytest.raises(SonoSAMError, match="2-5"):
        client.start_job("assist", volume=stack, slices=[1], masks=np.stack(masks[:1]))
    with pytest.raises(SonoSAMError, match="masks"):
        client.start_job("assist", volume=stack, slices=[1, 5], masks=np.stack(masks)[:, :-1])
    with pytest.raises(SonoSAMError, match="slice 5 is empty"):
        client.start_job("assist", volume=stack, slices=[1, 5], masks=np.stack([masks[0], masks[1] & False]))
    with pytest.raises(SonoSAMError, match="outside"):
        client.start_job("assist", volume=stack, slices=[1, 50], masks=np.stack(masks))
    with pytest.raises(ServerError) as error:
        client.with_assist("f" * 32).predict(stack[3], points=click, labels=[1], window=window)
    assert error.value.status == 404 and "learn it again" in str(error.value)


def test_auto_job_equals_the_core_from_a_named_or_sent_ppn(served, local_predictor, colin_stack, brief_ppn):
    from sonosam.auto import auto_segment_stack
    from sonosam.ppn import load_ppn

    stack, labels, window = colin_stack
    client = served.client()
    assert client.info()["ppn"] == [{"name": "thalamus.ppn.pt", "classes": ["Thalamus_L", "Putamen_R"]}]
    # threshold 0: every slice counts as holding the class (a 3-step PPN's objectness is not meaningful)
    meta, arrays = client.start_job("auto", volume=stack, slices=[0, 3, 7], ppn="thalamus.ppn.pt",
                                    window=window, threshold=0.0, class_name="Thalamus_L").result(timeout=900)
    here = auto_segment_stack(load_ppn(brief_ppn), local_predictor, stack, "Thalamus_L", [0, 3, 7], threshold=0.0,
                              window=window)
    assert [s["index"] for s in meta["slices"]] == [0, 3, 7] and all(s["present"] for s in meta["slices"])
    np.testing.assert_allclose([s["objectness"] for s in meta["slices"]], [s.objectness for s in here.slices],
                               rtol=1e-4)
    np.testing.assert_array_equal(arrays["masks"], here.masks)
    # the same file sent as bytes (a PPN the server does not have); threshold 1: the class judged absent
    meta, arrays = client.start_job("auto", volume=stack, slices=[3], ppn_bytes=Path(brief_ppn).read_bytes(),
                                    window=window, threshold=1.0, class_name="Thalamus_L").result(timeout=900)
    assert meta["slices"][0]["present"] is False and not arrays["masks"].any()

    # refusals: a path, an unknown file, a file that is not a PPN, an unknown class, bad bytes
    for name, status in (("../thalamus.ppn.pt", 400), ("/etc/passwd", 400), ("other.ppn.pt", 404),
                         ("notes.ppn.pt", 422)):
        with pytest.raises(ServerError) as error:
            client.start_job("auto", volume=stack, ppn=name, class_name="Thalamus_L")
        assert error.value.status == status, name
    with pytest.raises(SonoSAMError, match="Caudate_L"):
        client.start_job("auto", volume=stack, ppn="thalamus.ppn.pt", class_name="Caudate_L")
    with pytest.raises(SonoSAMError, match="not readable"):
        client.start_job("auto", volume=stack, ppn_bytes=b"garbage", class_name="Thalamus_L")

    # cancelled: no result exists
    job = client.start_job("auto", volume=stack, ppn="thalamus.ppn.pt", window=window, class_name="Thalamus_L")
    job.cancel()
    with pytest.raises(JobCancelledError):
        job.result(timeout=600)


def test_a_refine_job_on_a_box_only_model_is_refused_at_start(served):
    """The refiner clicks: on this server's box-only model the job is refused when it starts, as the core's
    UnsupportedPromptError naming the model (it used to start, then fail inside)."""
    image = np.random.default_rng(0).integers(0, 255, (64, 64)).astype(np.uint8)
    coarse = np.zeros((64, 64), np.float32)
    coarse[20:40, 20:40] = 1
    with pytest.raises(UnsupportedPromptError, match="litemedsam takes no clicks"):
        served.client().start_job("refine", image=image, coarse=coarse, steps=3)
