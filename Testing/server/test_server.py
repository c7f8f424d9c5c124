"""`sonosam serve` in a real subprocess on 127.0.0.1 (port 0), driven through `sonosam.client` over real
sockets, against the same model in-process: concurrent clients, jobs (cancel, kill), refusals, imports."""

import http.client
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from sonosam import wire
from sonosam.client import SonoSAMClient, start_local_server
from sonosam.errors import InputImageError, JobCancelledError, PromptError, ServerError, ServerUnavailableError
from sonosam.zoom import ZoomedPredictor, interactive_predictor

ROOT = Path(__file__).resolve().parents[2]
MODEL = "litemedsam_clicks"   # click-trained decoder, shipped with the package
ENV = {"PYTHONPATH": str(ROOT)}  # the subprocess imports this worktree's code
LV_BOX = (300, 70, 440, 270)


def _start(tmp_path, *args, env=None, model=MODEL, **kwargs):
    cache = tmp_path / "cache"
    return start_local_server(model=model, backend="eager",
                              env={**ENV, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1", **(env or {})},
                              args=["--threads", "1", "--cache-dir", str(cache), "--log-level", "info", *args],
                              timeout=900, **kwargs)  # minutes on a machine shared by many test runs


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The shared server: its working directory and home are empty folders that must stay empty (it writes
    only into its cache folder)."""
    tmp = tmp_path_factory.mktemp("server")
    (tmp / "home").mkdir()
    cwd = Path.cwd()
    os.chdir(tmp)
    try:
        local = _start(tmp, "--max-request-mib", "4", env={"HOME": str(tmp / "home")})
    finally:
        os.chdir(cwd)
    yield local
    local.stop()
    assert {p.name for p in tmp.iterdir()} <= {"cache", "home"} and not any((tmp / "home").iterdir())


@pytest.fixture(scope="module")
def client(server):
    return server.client()


@pytest.fixture(scope="module")
def predictor():
    from sonosam.models import load_model
    from sonosam.predictor import Predictor

    return Predictor(load_model(MODEL, backend="eager", device="cpu"))


def _clicks(n, rng):
    """Click sets around the left ventricle: 1-3 points, the first positive."""
    out = []
    for _ in range(n):
        k = int(rng.integers(1, 4))
        points = np.column_stack([rng.uniform(320, 420, k), rng.uniform(100, 240, k)]).round(1)
        labels = [1] + [int(v) for v in rng.integers(0, 2, k - 1)]
        out.append((points.tolist(), labels))
    return out


def test_client_imports_without_torch_and_compiles_for_old_slicers():
    code = "import sys, sonosam.client, sonosam.wire; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, **ENV}, timeout=120)
    files = [str(ROOT / "sonosam" / name) for name in ("client.py", "wire.py", "errors.py", "prompts.py", "__init__.py")]
    for version in ("3.9", "3.12"):  # Slicer 5.6/5.8 (remote server only) and 5.10
        python = _interpreter(version)
        if python is None:
            continue
        subprocess.run([python, "-m", "py_compile", *files], check=True, timeout=60)
        # the annotations are never evaluated there (`X | None` is 3.10 syntax)
        check = subprocess.run([python, "-c", "import ast, sys; [compile(ast.parse(open(f).read()), f, 'exec') "
                                "for f in sys.argv[1:]]", *files], capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stderr


def _interpreter(version):
    """A working pythonX.Y (pyenv shims exist for versions that are not selected: try each)."""
    import glob
    import shutil

    for candidate in [shutil.which(f"python{version}"), *glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}*/bin/python{version}"))]:
        if candidate and subprocess.run([candidate, "-c", "pass"], capture_output=True).returncode == 0:
            return candidate
    return None


@pytest.mark.slow  # 200 clicks from four clients, each checked against in-process
def test_four_clients_fifty_clicks_each_match_in_process(server, predictor, echo_frames):
    frames = [echo_frames[0], echo_frames[2]]
    click_sets = _clicks(10, np.random.default_rng(0))
    expected = {(f, c): predictor.predict(frames[f], points=click_sets[c][0], labels=click_sets[c][1])
                for f in range(2) for c in range(len(click_sets))}
    failures, done = [], []

    def user(u):
        client = SonoSAMClient(server.url, server.token)
        try:
            for i in range(50):
                f, c = (u + i) % 2, (3 * u + i) % len(click_sets)
                got = client.predict(frames[f], points=click_sets[c][0], labels=click_sets[c][1])
                want = expected[(f, c)]
                if not (np.array_equal(got.mask, want.mask) and abs(got.score - want.score) < 1e-4):
                    failures.append((u, i, int((got.mask != want.mask).sum()), got.score, want.score))
                done.append(1)
        except Exception as error:  # noqa: BLE001 - reported below
            failures.append((u, repr(error)))
        finally:
            client.close()

    threads = [threading.Thread(target=user, args=(u,)) for u in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:5]
    assert len(done) == 200


def test_prediction_fields_refine_and_images_sent_once(client, predictor, echo_frames):
    image = echo_frames[1]
    first = client.predict(image, box=LV_BOX, key=("echo", 1))
    interactive = interactive_predictor(predictor)   # a user's box is answered at the model's scales, as in-process
    assert isinstance(interactive, ZoomedPredictor)
    want = interactive.predict(image, box=LV_BOX)
    assert first.masks.shape == (1, 480, 640) and first.masks.dtype == bool
    assert first.low_res_logits.shape == (1, 256, 256) and first.low_res_logits.dtype == np.float32
    assert np.array_equal(first.mask, want.mask) and np.allclose(first.logits, want.logits, atol=1e-4)
    array_id = wire.content_id(image)
    assert array_id in client._sent
    uploads = []
    original = client.upload
    client.upload = lambda *a, **k: uploads.append(1) or original(*a, **k)
    try:  # the known key: no hashing, no upload; the same pixels without a key: hashed, not re-sent
        refined = client.predict(lambda: pytest.fail("image read again"), box=LV_BOX, mask_logits=first.logits,
                                 key=("echo", 1))
        client.predict(image.copy(), points=[(370, 170)], labels=[1])
    finally:
        client.upload = original
    assert uploads == []
    want = interactive.predict(image, box=LV_BOX, mask_logits=want.logits)
    assert np.array_equal(refined.mask, want.mask)


@pytest.mark.slow  # a second server, with the opt-in model whose box sessions have their own decoder
def test_a_servers_box_sessions_and_clicks_take_the_route_they_take_in_process(tmp_path, echo_frames):
    from sonosam.models import load_model
    from sonosam.predictor import Predictor

    local = _start(tmp_path, model="litemedsam_boxes")
    try:
        client = local.client()
        here = interactive_predictor(Predictor(load_model("litemedsam_boxes", device="cpu")))
        image = echo_frames[2]
        for prompts in ({"box": LV_BOX}, {"box": LV_BOX, "points": [(370, 170)], "labels": [1]},
                        {"points": [(370, 170)], "labels": [1]}):
            served = client.predict(image, key=("echo", 2), **prompts)
            assert np.array_equal(served.mask, here.predict(image, **prompts).mask), prompts
    finally:
        local.stop()


@pytest.mark.slow  # encodes many images on a real server (fast tier: imports, refusals, prediction fields)
def test_prefetch_encodes_ahead_on_the_server(client, echo_frames):
    frames = [np.ascontiguousarray(echo_frames[3][:, ::-1]), np.ascontiguousarray(echo_frames[3][::-1])]
    calls = client.encoder_calls
    job = client.prefetch([(("flipped", i), (lambda i=i: frames[i])) for i in range(2)])
    job.wait(timeout=300)
    assert job.done and job.done_count == 2
    assert client.is_cached(("flipped", 0)) and client.is_cached(("flipped", 1))
    assert client.encoder_calls == calls + 2
    client.predict(frames[0], points=[(370, 170)], labels=[1], key=("flipped", 0))
    assert client.encoder_calls == calls + 2  # answered from the shared cache
    client.predict(frames[0], box=LV_BOX, key=("flipped", 0))   # the whole frame cached; the box's 2 crops encoded
    client.predict(frames[0], box=LV_BOX, points=[(370, 170)], labels=[1], key=("flipped", 0))
    assert client.encoder_calls == calls + 4  # a click inside the box: its crops from the shared cache too


def test_refusals_are_clear_and_the_server_keeps_serving(server, client, echo_frames):
    image = echo_frames[0]
    for token, needle in ((None, "needs its token"), ("x" * 40, "Wrong token")):
        conn = http.client.HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]), timeout=30)
        conn.request("GET", "/v1/info", headers={"Authorization": f"Bearer {token}"} if token else {})
        response = conn.getresponse()
        assert response.status == 401 and needle in json.loads(response.read())["message"]
        conn.close()
    with pytest.raises(ServerError, match="Wrong token"):
        SonoSAMClient(server.url, "y" * 40).info()

    # oversized: refused from the Content-Length header, before the body is read
    conn = http.client.HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]), timeout=30)
    conn.putrequest("POST", "/v1/predict")
    conn.putheader("Authorization", f"Bearer {server.token}")
    conn.putheader("Content-Length", str(10**9))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and "limit of 4 MiB" in json.loads(response.read())["message"]
    conn.close()
    big = np.ones((2000, 2000, 3), np.uint8)  # one request (client.upload would send it in chunks)
    with pytest.raises(ServerError, match="exceeds"):
        client._request("PUT", f"/v1/arrays/{wire.content_id(big)}", {}, {"array": big})

    # malformed messages and arrays
    good = wire.encode({"ids": []}, {"array": np.zeros((4, 4), np.uint8)})
    header_end = 8 + int.from_bytes(good[4:8], "little")
    header = json.loads(good[8:header_end])
    broken = dict(header, arrays={"array": dict(header["arrays"]["array"], shape=[5, 4])})
    bad_shape = good[:4] + len(json.dumps(broken)).to_bytes(4, "little") + json.dumps(broken).encode() + good[header_end:]
    pickled = dict(header, arrays={"array": dict(header["arrays"]["array"], dtype="object")})
    bad_dtype = good[:4] + len(json.dumps(pickled)).to_bytes(4, "little") + json.dumps(pickled).encode() + good[header_end:]
    for body, needle in ((b"\x80\x04pickle", "not a SonoSAM message"), (good[:-3], "beyond the"),
                         (bad_shape, "needs 20 bytes"), (bad_dtype, "dtype 'object' is not allowed")):
        with pytest.raises(ServerError, match=needle) as caught:
            client._request("PUT", f"/v1/arrays/{wire.content_id(np.zeros((4, 4), np.uint8))}", body=body)
        assert caught.value.status == 400
    with pytest.raises(ServerError, match="content id is"):
        client.upload(np.zeros((4, 4), np.uint8), array_id="0" * 32)
    with pytest.raises(InputImageError, match="shape"):
        client.predict(np.zeros((2, 3, 16, 16), np.float32), box=(1, 1, 5, 5))
    with pytest.raises(InputImageError, match="NaN"):
        client.predict(np.full((32, 32), np.nan, np.float32), box=(1, 1, 5, 5))
    image_id = client.upload(image)
    for prompts, needle in (({"points": [[10, 10]], "labels": [3]}, "labels"), ({"box": [5, 5, 1, 1]}, "x0 < x1"),
                            ({"points": "here"}, "points"), ({"centre": [1, 2]}, "unknown field")):
        with pytest.raises(PromptError, match=needle):  # sent as they are (the client's Prompts would refuse them)
            client._request("POST", "/v1/predict", {"image": image_id, "prompts": prompts})
    with pytest.raises(PromptError, match="labels"):
        client.predict(image, points=[(10, 10)], labels=[3])  # refused here already, by the core's Prompts

    # prompts outside the image
    with pytest.raises(PromptError, match=r"Point \(700, 100\) lies outside the 640x480 image"):
        client.predict(image, points=[(700, 100)], labels=[1])
    with pytest.raises(PromptError, match="Box corner"):
        client.predict(image, box=(10, 10, 650, 200))
    with pytest.raises(PromptError, match="encode job: Box corner"):   # a box's crops asked for ahead
        client.prefetch([(("echo", 0), image)], box=(10, 10, 650, 200))

    # malformed job parameters, a header nested beyond reason, a flood of points, a bad URL parameter: 4xx naming
    # the problem, never a 500 with a traceback
    volume_id = client.upload(np.zeros((3, 32, 32), np.uint8))
    seed = [{"index": 1, "box": [2, 2, 20, 20]}]
    for params, needle in (({"seeds": 5}, "'seeds' must be a list"), ({"options": [1, 2]}, "options must be an object"),
                           ({"axis": 0.0}, "axis must be"), ({"seeds": [{"index": 1, "mask": ["m"]}]}, "mask array"),
                           ({"previous": ["x"]}, "No job"), ({"options": "ab"}, "options must be an object")):
        with pytest.raises(ServerError, match=needle) as caught:
            client._request("POST", "/v1/jobs", {"kind": "propagate", "params": {"volume": volume_id, "seeds": seed,
                                                                                 **params}})
        assert caught.value.status in (400, 404)
    with pytest.raises(ServerError, match="No tracker") as caught:
        client._request("POST", "/v1/jobs", {"kind": "track", "params": {"tracker": ["x"]}})
    assert caught.value.status == 404
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(ServerError) as caught:
        client._request("POST", "/v1/predict", body=good[:4] + len(deep).to_bytes(4, "little") + deep)
    assert caught.value.status == 400
    with pytest.raises(PromptError, match="at most 1000"):
        client._request("POST", "/v1/predict", {"image": image_id, "prompts": {"points": [[5, 5]] * 1001,
                                                                               "labels": [1] * 1001}})
    with pytest.raises(ServerError, match="offset") as caught:
        client._request("PUT", "/v1/uploads/x?offset=abc", body=b"12", content_type="application/octet-stream")
    assert caught.value.status == 400

    assert client.info()["model"] == MODEL
    assert client.predict(image, box=LV_BOX).mask.any()


def _volume(shape=(40, 256, 256), seed=0):
    return np.random.default_rng(seed).integers(-1000, 3000, shape).astype(np.int16)  # 5 MiB: above one chunk


def _stored(client, array_id):
    meta, arrays = client._request("GET", f"/v1/arrays/{array_id}")
    return arrays["array"], meta["geometry"]


def test_chunked_upload_round_trip_and_a_known_array_costs_nothing(server, client):
    volume = _volume()
    geometry = {"spacing": [0.5, 0.5, 2.0]}
    upload = client.begin_upload(volume, geometry, what="volume")
    assert upload.phase == "hashing" and upload.sent_bytes == 0  # nothing happens before the first step
    steps = 0
    while not upload.step(budget=0):  # one unit per step: a piece hashed, or one request
        steps += 1
    assert upload.id == wire.content_id(volume) and upload.sent_bytes == volume.nbytes
    assert steps >= 5 * 2 + 2  # hashing and sending 1 MiB pieces, asking, finishing
    stored, stored_geometry = _stored(client, upload.id)
    np.testing.assert_array_equal(stored, volume)
    assert stored.dtype == volume.dtype and stored_geometry == geometry
    # a known array: this client skips it after hashing; a fresh one is told "stored" and sends nothing
    again = client.begin_upload(volume)
    while not again.step(budget=0):
        assert again.phase == "hashing"
    fresh = SonoSAMClient(server.url, server.token).begin_upload(volume)
    while not fresh.step(budget=0):
        assert fresh.phase in ("hashing", "asking")
    assert fresh.upload_id is None and client.info()["store"]["uploads"] == 0
    # one chunk's worth goes in one request; above the server's request limit (4 MiB here), in its chunks
    from sonosam.client import ArrayUpload

    big = ArrayUpload(client, _volume(seed=5), chunk_bytes=8 * 2**20)
    while not big.step(budget=0):
        pass
    assert big.upload_id is not None and big.chunk_bytes == 4 * 2**20
    np.testing.assert_array_equal(_stored(client, big.id)[0], _volume(seed=5))
    # non-contiguous and big-endian arrays travel as their canonical bytes, a piece at a time
    for array in (volume[:, ::2, 1::3], volume.astype(">i2")[::-1]):
        array_id = client.upload(array)  # above one chunk? else one request: both give the content id
        assert array_id == wire.content_id(array)
        np.testing.assert_array_equal(_stored(client, array_id)[0], array)


@pytest.mark.slow  # a server of its own, with a small store
def test_jobs_and_trackers_send_again_what_the_server_dropped(tmp_path):
    """A server whose store evicted a volume (other uploads; a restarted remote server alike): a job or tracker on
    it sends the volume again and starts, from a script and from a GUI's polls (every retry used to fail with
    'unknown_array' until the user reconnected)."""
    local = _start(tmp_path, "--store-mib", "3")
    try:
        client = local.client()
        volume = np.random.default_rng(0).normal(100, 20, (8, 256, 256)).astype(np.float32)   # 2 MiB: chunked
        volume_id = client.upload(volume)
        client.upload(volume[::-1] + 1)                                                        # evicts it
        assert client._request("POST", "/v1/arrays/missing", {"ids": [volume_id]})["missing"] == [volume_id]
        seeds = [{"index": 4, "box": [60, 60, 160, 160]}]
        result = client.start_job("propagate", volume=volume, seeds=seeds, axis=0, max_slices=1).result(timeout=600)
        assert result.mask.shape == volume.shape and result.mask[4].any()
        client.upload(volume[::-1] + 2)                                                        # evicts it again
        job = client.prepare_job("propagate", volume=volume, seeds=seeds, axis=0, max_slices=1)
        for _ in range(10000):
            if job.poll(timeout=5.0)["state"] in ("done", "failed", "cancelled"):
                break
        assert job.last["state"] == "done", job.last
        client.upload(volume[::-1] + 3)
        assert client._request("POST", "/v1/arrays/missing", {"ids": [volume_id]})["missing"] == [volume_id]
        tracker = client.tracker(volume, frames_id=volume_id)
        assert tracker.id
        # encode-ahead from a GUI's polls (prepare_prefetch): slices this client sent, dropped since, go again
        images = [(("slice", i), volume[i]) for i in range(2)]
        client.prefetch(images).wait(600)
        ids = [client._keys[("slice", i)] for i in range(2)]
        client.upload(volume[::-1] + 4)
        client.upload(volume[::-1] + 5)                                                        # evicts them
        assert client._request("POST", "/v1/arrays/missing", {"ids": ids})["missing"] == ids
        job = client.prepare_prefetch(images)
        for _ in range(10000):
            if job.done:
                break
        job.wait(0)
        assert job.job.last["state"] == "done", job.job.last
    finally:
        local.stop()


def test_corrupted_missing_or_interrupted_chunks(server, client):
    volume = _volume(seed=1)
    array_id, data = wire.content_id(volume), volume.tobytes()
    mib = 2**20

    def begin():
        return client._request("POST", "/v1/uploads", {"id": array_id, "dtype": "int16", "shape": list(volume.shape)})

    def put(upload_id, offset, chunk):
        return client._request("PUT", f"/v1/uploads/{upload_id}?offset={offset}", body=chunk,
                               content_type="application/octet-stream")

    upload = begin()
    assert upload["received"] == 0 and not upload["stored"]
    put(upload["upload"], 0, data[:mib])
    with pytest.raises(ServerError, match=f"expects its next chunk at byte {mib}, not at {2 * mib}") as caught:
        put(upload["upload"], 2 * mib, data[2 * mib:3 * mib])   # a chunk went missing
    assert caught.value.status == 409
    with pytest.raises(ServerError, match=f"has {mib} of its {len(data)} bytes") as caught:
        client._request("POST", f"/v1/uploads/{upload['upload']}/finish")
    assert caught.value.status == 409
    # the same array again (an interrupted client) resumes where the server stopped
    assert begin() == {**upload, "received": mib}
    corrupted = bytearray(data)
    corrupted[3 * mib + 5] ^= 0xFF
    for offset in range(mib, len(data), mib):
        put(upload["upload"], offset, bytes(corrupted[offset:offset + mib]))
    with pytest.raises(ServerError, match=f"hash to [0-9a-f]+, not {array_id}.*Nothing was kept") as caught:
        client._request("POST", f"/v1/uploads/{upload['upload']}/finish")
    assert caught.value.status == 400
    assert client._request("POST", "/v1/arrays/missing", {"ids": [array_id]})["missing"] == [array_id]
    with pytest.raises(ServerError, match="No upload") as caught:
        put(upload["upload"], len(data) - mib, data[-mib:])
    assert caught.value.status == 404
    # interrupted after two chunks: a new ArrayUpload (another client) carries on from byte 2 MiB
    upload = begin()
    put(upload["upload"], 0, data[:mib])
    put(upload["upload"], mib, data[mib:2 * mib])
    resumed = SonoSAMClient(server.url, server.token).begin_upload(volume)
    while resumed.phase != "sending":
        resumed.step(budget=0)
    assert resumed.upload_id == upload["upload"] and resumed.sent_bytes == 2 * mib
    while not resumed.step(budget=0):
        pass
    np.testing.assert_array_equal(_stored(client, array_id)[0], volume)
    # a wrong id announced by the sender; a declared size beyond the store; the server keeps serving
    with pytest.raises(ServerError, match="hash to"):
        client.upload(_volume(seed=2), array_id="0" * 32)
    with pytest.raises(ServerError, match="exceeds the server's array store") as caught:
        client._request("POST", "/v1/uploads", {"id": "1" * 32, "dtype": "float64", "shape": [4096, 4096, 4096]})
    assert caught.value.status == 413
    assert client.info()["store"]["uploads"] == 0


def test_a_start_sent_again_after_a_late_answer_names_the_same_job(client):
    volume = np.zeros((3, 32, 32), np.float32)
    volume[1, 5, 5] = np.nan   # the job fails at once: nothing runs
    meta = {"kind": "propagate", "params": {"volume": client.upload(volume), "seeds": [{"index": 1, "box": [2, 2, 20, 20]}]},
            "request": "start-1"}
    first, again = client._request("POST", "/v1/jobs", meta), client._request("POST", "/v1/jobs", meta)
    assert first["id"] == again["id"]
    assert client._request("POST", "/v1/jobs", {**meta, "request": "start-2"})["id"] != first["id"]


def test_propagation_options_are_checked_by_name_and_type_and_the_carrier_can_be_turned_off(client):
    volume = np.zeros((3, 48, 48), np.float32)
    volume[:, 12:36, 12:36] = 100.0
    seeds = [{"index": 1, "box": [10, 10, 38, 38]}]
    for options, needle in (({"carier": None}, "Unknown propagation option"), ({"carrier": 3}, "carrier = 3"),
                            ({"max_slices": "two"}, "max_slices"), ({"span": [0, 5]}, r"within 0..2"), ({"span": [0]}, "two slice indices"),
                            ({"span": "0,2"}, r"span must be \[first, last\]"),
                            ({"span": [2, 2]}, "Seed slice 1 lies outside the span 2..2")):
        with pytest.raises(ServerError, match=needle) as caught:
            client.start_job("propagate", volume=volume, seeds=seeds, axis=0, **options)
        assert caught.value.status == 400
    # carrier: "auto" by default, null (JSON) turns it off; the result says which decoder carried (none here)
    result = client.propagate(volume, seeds, axis=0, carrier=None, max_slices=1)
    assert result.mask[1].any() and result.carrier is None and "carried by" not in result.summary()
    spanned = client.propagate(volume, seeds, axis=0, carrier=None, span=[1, 2])   # the user's span: from 1 to 2
    assert not spanned.mask[0].any() and spanned.mask[1].any() and spanned.mask[2].any()
    # a re-run names the slices whose earlier mask it changed: erasing slice 0 clears nothing else here, erasing
    # slice 1 (the seed) clears what was propagated from it
    assert result.mask[0].any() and result.mask[2].any()
    erase = np.zeros((48, 48), bool)
    rerun = client.propagate(volume, [{"index": 1, "mask": erase}], axis=0, previous=result, carrier=None,
                             max_slices=1)
    assert rerun.replaced == [0, 2] and not rerun.mask.any() and "(0, 2): review them" in rerun.summary()
    # ... and the slices it filled that the earlier run left empty: the span kept slice 0 empty, a re-run from
    # slice 1 without it fills slice 0
    grown = client.propagate(volume, [{"index": 1, "mask": spanned.mask[1]}], axis=0, previous=spanned,
                             carrier=None)
    assert grown.added == [0] and grown.replaced == [] and grown.mask[0].any()
    assert "filled 1 slice the earlier run left empty (0): review them" in grown.summary()


def test_evaluation_job_takes_local_corrections_as_a_boolean(client):
    volume = np.zeros((2, 48, 48), np.float32)
    volume[:, 12:36, 12:36] = 100.0
    gt = (volume > 0).astype(np.uint8)
    with pytest.raises(ServerError, match="local_corrections must be true or false") as caught:
        client.start_job("evaluate", volume=volume, labelmap=gt, labels=[1], n_clicks=2, local_corrections="yes")
    assert caught.value.status == 400
    result = client.start_job("evaluate", volume=volume, labelmap=gt, labels=[1], n_clicks=2, start="box",
                              local_corrections=True).result(timeout=300)
    assert result["result"]["local_corrections"] is True and "local corrections" in result["table"][0]["Start"]


def test_refine_and_assist_options_are_range_checked_at_start_and_a_refine_job_cancels_between_steps(client):
    """Out-of-range options are a 400 bad_option when the job starts (steps 0 refined nothing and reported done;
    lr 0 learned nothing; seed -1, lr -1, batch 0 failed inside the job with a traceback); a running refine job
    reports each optimisation step and stops at the next one when cancelled (it ran to its end)."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 64)).astype(np.uint8)
    coarse = np.zeros((64, 64), np.float32)
    coarse[20:40, 20:40] = 1
    for options, needle in (({"steps": 0}, r"steps = 0 is out of range \[1, 2000\]"), ({"steps": -5}, "steps = -5"),
                            ({"seed": -1}, "seed = -1")):
        with pytest.raises(ServerError, match=needle) as caught:
            client.start_job("refine", image=image, coarse=coarse, **options)
        assert (caught.value.status, caught.value.code) == (400, "bad_option")
    stack = np.stack([image] * 3)
    masks = np.stack([coarse > 0] * 2)
    for options, needle in (({"lr": 0}, r"lr = 0 is out of range \(0, 1\]"), ({"lr": 1e9}, "lr = 1000000000"),
                            ({"lr": -1}, "lr = -1"), ({"batch": 0}, "batch = 0"), ({"seed": -1}, "seed = -1")):
        with pytest.raises(ServerError, match=needle) as caught:
            client.start_job("assist", volume=stack, slices=[0, 2], masks=masks, **options)
        assert (caught.value.status, caught.value.code) == (400, "bad_option")

    # a 0..255 integer picture is the command line's coarse map too (it was refused here)
    job = client.start_job("refine", image=image, coarse=(coarse * 255).astype(np.uint8), steps=2000)
    status = job.wait(timeout=600, interval=0.05, cancel=lambda: job.last["progress"][0] >= 2)
    assert status["state"] == "cancelled", status
    assert status["progress"][1] == 2000 and 2 <= status["progress"][0] < 2000, status
    with pytest.raises(JobCancelledError):
        job.result()


def test_prepared_job_sends_its_volume_from_polls_and_a_bad_volume_fails_naming_it(client):
    volume = _volume(seed=3).astype(np.float32)
    volume[7, 100, 100] = np.nan
    job = client.prepare_job("propagate", volume=volume, seeds=[{"index": 1, "box": [10, 10, 50, 50]}], axis=0)
    assert job.id is None and job.last["state"] == "queued"
    states = []
    while job.last["state"] not in ("done", "failed", "cancelled"):
        states.append(job.poll(timeout=0.1)["state"])
        if job.started:
            job.wait(timeout=120)
    assert states[0] == "sending" and job.last["state"] == "failed", states  # a step per poll, then started
    assert "NaN" in job.last["error"]["message"]
    with pytest.raises(InputImageError, match="NaN"):
        job.result()
    # cancelled while sending: never started, the server drops the unfinished upload
    # 20 MiB: several steps of chunks even on a quiet machine (a 5 MiB one can go in one step, and then the
    # job has started before a poll sees it sending)
    job = client.prepare_job("propagate", volume=_volume((160, 256, 256), seed=4),
                             seeds=[{"index": 1, "box": [10, 10, 50, 50]}])
    for _ in range(2000):
        status = job.poll(timeout=0.1)
        if status["state"] != "sending" or "sent" in status["message"]:
            break
    assert status["state"] == "sending" and "sent" in status["message"], status
    assert job.cancel()["state"] == "cancelled" and job.id is None
    assert client.info()["store"]["uploads"] == 0
    with pytest.raises(JobCancelledError, match="before it started"):
        job.result()


def _colin_cut(n_slices):
    from sonosam.data import mri_colin27_paths
    from sonosam.io import read_volume
    from bench.volume import label_seed

    t1, aal = mri_colin27_paths()
    volume, labels = read_volume(t1).array, read_volume(aal).array
    index, box = label_seed(labels, 78)  # Thalamus_R
    lo = max(0, index - n_slices // 2)
    return np.ascontiguousarray(volume[lo:lo + n_slices]), labels[lo:lo + n_slices], index - lo, box


@pytest.mark.slow  # encodes many images on a real server (fast tier: imports, refusals, prediction fields)
def test_propagation_cancelled_half_way_keeps_nothing(client):
    volume, _, index, box = _colin_cut(24)
    job = client.start_job("propagate", volume=volume, seeds=[{"index": index, "box": box}], axis=0)
    status = job.wait(timeout=600, interval=0.05, cancel=lambda: job.last["progress"][0] >= 2)
    assert status["state"] == "cancelled", status
    assert 2 <= status["progress"][0] < status["progress"][1]
    with pytest.raises(JobCancelledError, match="nothing was written"):
        job.result()
    with pytest.raises(ServerError, match="cancelled") as caught:
        client._request("GET", f"/v1/jobs/{job.id}/result")
    assert caught.value.status == 409
    with pytest.raises(ServerError, match="not a finished propagation"):
        client.start_job("propagate", volume=volume, seeds=[], previous=job.id)


@pytest.mark.slow
def test_propagation_and_evaluation_jobs_match_in_process(client, predictor):
    from sonosam.evaluate import evaluate, samples_from_arrays, summary_table
    from sonosam.image import to_uint8_rgb
    from sonosam.volume import Seed, propagate, volume_window

    volume, labels, index, box = _colin_cut(9)
    window = volume_window(volume)
    messages = []
    remote = client.propagate(volume, [{"index": index, "box": box}], axis=0, window=window, max_slices=2,
                              progress=lambda d, t, m: messages.append(m))
    local = propagate(predictor, volume, [Seed(index, box=box)], axis=0, window=window, max_slices=2)
    assert np.array_equal(remote.mask, local.mask) and remote.mask.any()
    assert remote.summary() == local.summary() and sorted(remote.anchors) == sorted(local.anchors)
    assert {i: s.status for i, s in remote.slices.items()} == {i: s.status for i, s in local.slices.items()}
    assert messages and messages[-1].startswith("slice")

    gt = (labels == 78).astype(np.uint8)
    slices = [index - 1, index + 1]
    job = client.start_job("evaluate", volume=volume, labelmap=gt, labels=[1], slices=slices, n_clicks=2,
                           start="box", window=window, name="thalamus")
    table = job.result(timeout=600)["table"]
    samples = samples_from_arrays(volume, gt, labels=[1], axis=0, name="thalamus", slices=slices, kind="volume")
    for sample in samples:
        sample.image = to_uint8_rgb(sample.image, window=window)
    want = summary_table([evaluate(interactive_predictor(predictor), samples, n_clicks=2, start="box",
                                   progress=False)])   # the user's boxes at the model's scales, as in the effect
    assert [row["Dice@1"] for row in table] == [row["Dice@1"] for row in want]


@pytest.mark.slow  # encodes many images on a real server (fast tier: imports, refusals, prediction fields)
def test_tracker_on_the_server_matches_in_process(client, predictor, echo_frames):
    from sonosam.track import Tracker

    frames = echo_frames[:3]
    remote = client.tracker(frames, model_every=5, pause=False, prefetch=False)
    remote.add_object("LV", 0, box=LV_BOX)
    progress = []
    report = remote.run(on_progress=lambda d, t: progress.append((d, t)))
    local = Tracker(predictor, frames, model_every=5, pause=False, prefetch=False)
    local.add_object("LV", 0, box=LV_BOX)
    local_report = local.run()
    assert report["paused"] == local_report.paused
    assert np.array_equal(remote.masks("LV"), local.masks("LV")) and remote.masks("LV")[1:].any()
    np.testing.assert_allclose(remote.confidences(), local.confidences(), atol=1e-6)
    remote.correct(0, "LV", mask=local.masks("LV")[1])
    assert remote.sources("LV") == ["keyframe", None, None]  # later frames are recomputed by the next run
    remote.close()


def _self_signed(tmp_path):
    """A certificate for 127.0.0.1 made with the openssl command (None when it is missing)."""
    import shutil

    if shutil.which("openssl") is None:
        return None
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def test_non_loopback_needs_a_token():
    from sonosam.errors import SonoSAMError
    from sonosam.server import is_loopback, resolve_token

    assert is_loopback("127.0.0.1") and is_loopback("::1") and not is_loopback("0.0.0.0")
    with pytest.raises(SonoSAMError, match="needs a token|give it a token"):
        resolve_token(None, None, "0.0.0.0")
    with pytest.raises(SonoSAMError, match="too short"):
        resolve_token("short", None, "0.0.0.0")
    assert len(resolve_token(None, None, "127.0.0.1")) >= 32


def test_a_token_file_saved_with_a_bom_gives_the_token(tmp_path):
    """Notepad's "UTF-8" begins the file with a BOM: the token is what follows it, not a 401 for every request."""
    from sonosam.server import resolve_token

    token = "s3cret-token-of-thirty-two-chars"
    (tmp_path / "token.txt").write_bytes(f"{token}\r\n".encode("utf-8-sig"))
    assert resolve_token(None, str(tmp_path / "token.txt"), "0.0.0.0") == token


@pytest.mark.slow  # encodes many images on a real server (fast tier: imports, refusals, prediction fields)
def test_server_killed_mid_job_is_named_over_tls(tmp_path, echo_frames):
    """The second server serves HTTPS (a self-signed certificate), then is killed while a job runs."""
    tls = _self_signed(tmp_path)
    args = ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])] if tls else []
    local = _start(tmp_path, *args)
    client = local.client(cafile=str(tls[0])) if tls else local.client()
    if tls:
        assert local.url.startswith("https://") and client.info()["model"] == MODEL
        with pytest.raises(ServerUnavailableError, match="CERTIFICATE_VERIFY_FAILED|certificate"):
            SonoSAMClient(local.url, local.token).info()  # not trusted without the certificate
    volume = np.stack([echo_frames[i % 4] for i in range(12)])
    job = client.start_job("propagate", volume=volume, seeds=[{"index": 0, "box": LV_BOX}], axis=0)
    job.poll()
    local.process.kill()
    local.process.wait(30)
    with pytest.raises(ServerUnavailableError) as caught:
        job.result(timeout=60)
    message = str(caught.value)
    assert "propagate job" in message and "killed by signal 9" in message and local.url in message
    local.stop()


def test_poll_with_a_timeout_never_waits_for_a_busy_server():
    """A listener that accepts and never answers stands in for a server too busy to answer: poll(timeout=)
    returns the last status marked late, at once; without a timeout the client says what happened."""
    import socket
    import time

    from sonosam.client import RemoteJob, ServerTimeoutError

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    try:
        client = SonoSAMClient(f"http://127.0.0.1:{listener.getsockname()[1]}", "t" * 32, timeout=0.5)
        job = RemoteJob(client, "0" * 32, "propagate")
        started = time.perf_counter()
        status = job.poll(timeout=0.2)
        assert status["late"] and status["state"] == "queued" and time.perf_counter() - started < 2
        with pytest.raises(ServerTimeoutError, match="no answer within 0.5 s while its propagate job 00000000 was "
                                                     r"running\.$"):   # not "lost": it may still run
            job.poll()
        # the Cancel button's request neither (the GUI's tasks cancel with a timeout; the result is refused anyway)
        started = time.perf_counter()
        assert job.cancel(timeout=0.2)["late"] and time.perf_counter() - started < 2
        # nor freeing a tracker (Track does it when the scene closes or a new session replaces it)
        from sonosam.client import RemoteTracker

        started = time.perf_counter()
        RemoteTracker(client, "0" * 32, (2, 8, 8)).close(timeout=0.2)
        assert time.perf_counter() - started < 2
        # nor the effect's encode-ahead: cancelled on leaving, its error asked for (wait(0)) once done
        from sonosam.client import RemotePrefetchJob

        prefetch = RemotePrefetchJob(RemoteJob(client, "1" * 32, "encode"), 1)
        prefetch.poll_timeout = 0.2
        started = time.perf_counter()
        prefetch.wait(0)
        prefetch.cancel()
        assert prefetch.cancelled and time.perf_counter() - started < 2
        # a prepared job sending its volume: a late answer is "still sending", never a held GUI
        job = client.prepare_job("propagate", volume=_volume(), seeds=[{"index": 1, "box": [10, 10, 50, 50]}])
        for _ in range(12):   # hashing (no request), then asking: each poll at most ~0.2 s
            started = time.perf_counter()
            status = job.poll(timeout=0.2)
            assert status["state"] == "sending" and time.perf_counter() - started < 2
        assert status.get("late") and job.id is None
    finally:
        listener.close()


def _delaying_proxy(port: int, delay: float, upload_rate: float | None = None):
    """127.0.0.1 proxy to ``port`` that holds every chunk ``delay`` s each way (a remote server's round trip) and
    carries at most ``upload_rate`` bytes/s towards the server (a slow uplink)."""
    import socket
    import time

    listener = socket.create_server(("127.0.0.1", 0))

    def pipe(source, target, rate=None):
        try:
            while data := source.recv(16384):
                time.sleep(delay + (len(data) / rate if rate else 0.0))
                target.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, target):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def serve():
        while True:
            try:
                near, _ = listener.accept()
            except OSError:
                return
            far = socket.create_connection(("127.0.0.1", port))
            for ends in ((near, far, upload_rate), (far, near)):
                threading.Thread(target=pipe, args=ends, daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return listener


def test_gui_polls_see_a_job_finish_over_a_slow_link(server):
    """Over a link whose round trip is longer than GUI_POLL_SECONDS every poll came late and a job was never
    seen to finish; polls now stretch to what the link takes, never past GUI_SEND_SECONDS."""
    import urllib.parse

    from sonosam.client import GUI_POLL_SECONDS, GUI_SEND_SECONDS

    proxy = _delaying_proxy(urllib.parse.urlsplit(server.url).port, 2 * GUI_POLL_SECONDS)   # a round trip > the limit
    try:
        client = SonoSAMClient(f"http://127.0.0.1:{proxy.getsockname()[1]}", server.token)
        image = np.random.default_rng(5).integers(0, 255, (64, 80), dtype=np.uint8)
        job = client.prefetch([(("slow link", 0), image)])
        done, slowest = _poll_until_done(job)
        assert done and job.done_count == 1
        assert slowest < GUI_SEND_SECONDS + 0.5           # a tick never held much past GUI_SEND_SECONDS
    finally:
        proxy.close()


def _poll_until_done(job, seconds=60):
    """A GUI timer's polls (``done``) until the job is done: (done, the longest poll)."""
    import time

    deadline, slowest, done = time.monotonic() + seconds, 0.0, False
    while not done and time.monotonic() < deadline:
        started = time.monotonic()
        done = job.done
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.02)
    return done, slowest


def test_a_gui_upload_over_a_slow_uplink_finishes_in_smaller_chunks(server):
    """A slice sent from GUI polls (each request within GUI_SEND_SECONDS) over an uplink too slow to carry it in one
    request was sent again and again, never finishing; late requests now halve the chunks."""
    import urllib.parse

    from sonosam.client import GUI_SEND_SECONDS

    proxy = _delaying_proxy(urllib.parse.urlsplit(server.url).port, 0.01, upload_rate=300_000)
    try:
        client = SonoSAMClient(f"http://127.0.0.1:{proxy.getsockname()[1]}", server.token)
        image = np.random.default_rng(6).integers(0, 255, (512, 768), dtype=np.uint8)   # 0.4 MiB: > 1 s up
        job = client.prepare_prefetch([(("slow uplink", 0), image)])
        done, slowest = _poll_until_done(job)
        assert done and job.done_count == 1 and client.is_cached(("slow uplink", 0))
        assert slowest < GUI_SEND_SECONDS + 0.5
    finally:
        proxy.close()


def test_a_hung_server_keeps_gui_polls_short_once_the_link_is_known():
    """A server that answered once, then hangs: each GUI poll still gives up after GUI_POLL_SECONDS (the limit
    stretches only for a link never timed), so the GUI is not held a second per request."""
    import socket
    import time

    from sonosam.client import GUI_POLL_SECONDS, RemoteJob

    listener = socket.create_server(("127.0.0.1", 0))
    body = json.dumps({"id": "0" * 32, "kind": "propagate", "state": "running", "progress": [0, 1],
                       "message": "", "error": None}).encode()

    def answer_once():
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
        while True:   # then hangs: reads, never answers
            try:
                if not conn.recv(65536):
                    return
            except OSError:
                return

    threading.Thread(target=answer_once, daemon=True).start()
    try:
        client = SonoSAMClient(f"http://127.0.0.1:{listener.getsockname()[1]}", "t" * 32)
        job = RemoteJob(client, "0" * 32, "propagate")
        assert job.poll(timeout=GUI_POLL_SECONDS)["state"] == "running"   # answered: the link is known
        for _ in range(5):
            started = time.perf_counter()
            assert job.poll(timeout=GUI_POLL_SECONDS)["late"]
            assert time.perf_counter() - started < 3 * GUI_POLL_SECONDS
    finally:
        listener.close()


def test_the_server_bounds_what_trackers_and_finished_jobs_hold(predictor, client):
    """Trackers (each holds its loop's frames) and finished jobs' results (a propagation's volume mask) grew
    without bound: the least recently used tracker goes beyond KEEP_TRACKERS, the oldest results beyond the
    results budget (never the newest of a kind, which a re-run may refer to)."""
    import time

    from sonosam.server.service import Job, Service

    service = Service(predictor, store_mib=64, results_mib=1)
    try:
        frames = np.zeros((3, 64, 64), np.uint8)
        service.store.put("f", frames, None)
        ids = [service.create_tracker({"frames": "f"}, {})["id"] for _ in range(Service.KEEP_TRACKERS)]
        service._tracker(ids[0])                       # used again: kept; the next two oldest go
        ids += [service.create_tracker({"frames": "f"}, {})["id"] for _ in range(2)]
        assert set(service.trackers) == {ids[0], *ids[3:]}
        with pytest.raises(Exception, match="No tracker .* it keeps 8"):
            service._tracker(ids[1])
        service.jobs["queued"] = Job("queued", "track", tracker=ids[3])   # a track job waits for its turn:
        ids.append(service.create_tracker({"frames": "f"}, {})["id"])      # its tracker stays, the next oldest goes
        assert ids[3] in service.trackers and ids[4] not in service.trackers
        del service.jobs["queued"]
        jobs = [("j0", "propagate", "done", True), ("j1", "propagate", "done", False),   # j1: never fetched
                ("j2", "propagate", "done", True), ("j3", "evaluate", "done", True), ("enc", "encode", "done", True),
                ("j4", "propagate", "done", True), ("cancelled", "propagate", "cancelled", False)]
        for n, (name, kind, state, fetched) in enumerate(jobs):
            holds = kind != "encode" and state == "done"
            job = Job(name, kind, state=state, fetched=fetched,
                      result=({}, {"mask": np.zeros(300_000, bool)}) if holds else None)
            job.finished = time.time() + n
            service.jobs[job.id] = job
        with service._lock:
            service._forget_old_jobs()
        # 1.5 MB > 1 MiB: the oldest fetched one goes first (j0), then j2; never the unfetched j1, the newest
        # propagation result j4 (not the cancelled re-run after it), nor jobs that hold nothing (encode)
        assert list(service.jobs) == ["j1", "j3", "enc", "j4", "cancelled"]
        assert service.info()["results_mib"] == 0.9 and service.info()["trackers"] == Service.KEEP_TRACKERS
    finally:
        service.close()
    # and a client frees its tracker on the server
    remote = client.tracker(frames, pause=True)
    before = client.info()["trackers"]
    remote.close()
    remote.close()                                     # twice: no error
    assert client.info()["trackers"] == before - 1
