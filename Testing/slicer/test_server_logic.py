"""The Slicer logic against a real `sonosam serve` subprocess (127.0.0.1, port 0, a random token), as the
modules use it: the same masks as in-process through real MRML; propagation as a server job (cancelled
half-way: nothing written; server killed mid-job: segment unchanged and a message saying what happened);
tracking as a job, paused and resumed; and the module's Connection starting the server without blocking.

The real model (litemedsam_clicks, bundled) runs on both sides with the same backend, on a small
synthetic volume (a bright ball in a rotated, anisotropic grid) so that CPU time stays bounded.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed")
pytest.importorskip("torch")
client_module = pytest.importorskip("sonosam.client", reason="the server's client has not landed")

from mrml_scene import add_volume_from_array  # noqa: E402
from SonoSAMSegmentLib import connection as conn  # noqa: E402
from SonoSAMSegmentLib.logic import SegmentLogic, read_segment_block, write_segment_block  # noqa: E402

from sonosam.errors import SonoSAMError  # noqa: E402

pytestmark = pytest.mark.slow  # a server process and an in-process model, real encoders: minutes on 2 cores

MODEL = "litemedsam_clicks"
DIMS = (48, 40, 7)                        # I, J, K: 7 axial slices keep propagation short on CPU
CENTER = np.array([22.0, 19.0, 3.0])


@pytest.fixture(scope="module")
def server():
    local = client_module.start_local_server(python=sys.executable, model=MODEL, timeout=600)
    yield local
    local.stop()


@pytest.fixture(scope="module")
def clients(server):
    """(server client, in-process predictor with the server's backend)."""
    from sonosam.models import load_model
    from sonosam.predictor import Predictor

    client = server.client()
    backend = client.model.backend
    return client, Predictor(load_model(MODEL, device="cpu", backend=backend))


def _matrix():
    a = np.radians(20)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]) @ np.diag([-1, 1, 1])
    m = np.eye(4)
    m[:3, :3] = rot @ np.diag([0.9, 1.1, 3.0])
    m[:3, 3] = [5.0, -12.0, 30.0]
    return m


@pytest.fixture
def ball(mrml):
    m = _matrix()
    kk, jj, ii = np.meshgrid(*(np.arange(d) for d in DIMS[::-1]), indexing="ij")
    ijk = np.stack([ii, jj, kk], -1).astype(float)
    ras = ijk @ m[:3, :3].T + m[:3, 3]
    center_ras = m[:3, :3] @ CENTER + m[:3, 3]
    inside = np.linalg.norm(ras - center_ras, axis=-1) <= 10.0
    rng = np.random.default_rng(1)
    voxels = np.where(inside, 180.0, 40.0) + rng.normal(0, 6, inside.shape)
    volume = add_volume_from_array(mrml.scene, voxels.astype(np.float32), m, "ball")
    segmentation = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segs = segmentation.GetSegmentation()
    return dict(scene=mrml.scene, m=m, volume=volume, segmentation=segmentation, inside=inside,
                a=segs.AddEmptySegment("a", "a"), b=segs.AddEmptySegment("b", "b"), center_ras=center_ras,
                full=[0, DIMS[0] - 1, 0, DIMS[1] - 1, 0, DIMS[2] - 1])


def _read(b, sid):
    return read_segment_block(b["segmentation"], sid, b["m"], b["full"])


def _box_ras(b, k):
    m = b["m"]
    lo = m @ np.r_[CENTER[0] - 12, CENTER[1] - 12, k, 1]
    hi = m @ np.r_[CENTER[0] + 12, CENTER[1] + 12, k, 1]
    return [lo[:3], hi[:3]]


def test_same_masks_through_the_server_as_in_process(ball, clients):
    client, local = clients
    remote_logic, local_logic = SegmentLogic(predictor=client), SegmentLogic(predictor=local)
    k = int(CENTER[2])
    click = (ball["m"] @ np.r_[CENTER, 1])[:3]
    for logic, sid in ((remote_logic, ball["a"]), (local_logic, ball["b"])):
        p = logic.segment(ball["volume"], ball["segmentation"], sid, points_ras=[click], labels=[1], sliceAxis="K")
        assert p.mask.any() and p.score > 0.3
        logic.segment(ball["volume"], ball["segmentation"], sid, box_ras=_box_ras(ball, k - 1), sliceAxis="K")
    a, b = _read(ball, ball["a"]), _read(ball, ball["b"])
    assert a.sum() > 100
    np.testing.assert_array_equal(a, b)
    precision = (a[k] & ball["inside"][k]).sum() / a[k].sum()   # the model's answer lies in the ball
    assert precision > 0.8, precision


def test_encode_ahead_then_click_uses_the_servers_cache(ball, clients):
    client, _ = clients
    logic = SegmentLogic(predictor=client)
    geometry = logic.slice_geometry(ball["volume"], "K", sliceIndex=1)
    assert not logic.is_cached(ball["volume"], geometry)
    job = logic.prefetch(ball["volume"], [geometry])
    deadline = time.monotonic() + 120
    while not job.done and time.monotonic() < deadline:
        time.sleep(0.1)
    assert logic.is_cached(ball["volume"], geometry)
    calls = client.encoder_calls
    click = (ball["m"] @ np.r_[CENTER[0], CENTER[1], 1, 1])[:3]
    logic.predict(ball["volume"], points_ras=[click], labels=[1], sliceAxis="K")
    assert client.encoder_calls == calls


def test_a_new_box_s_crops_are_encoded_ahead_then_its_answer_only_decodes(ball, clients):
    """The effect's flow for a box: the slice encoded ahead, then the box's zoomed crops in a server job
    (``prepare_box``), then the answer: no encode while the GUI waits, and the same mask as in-process."""
    client, local = clients
    logic = SegmentLogic(predictor=client)
    k = int(CENTER[2]) + 2
    box = _box_ras(ball, k)
    geometry = logic.slice_geometry(ball["volume"], "K", sliceIndex=k, box_ras=box)
    calls = client.encoder_calls
    _wait_done(logic.prefetch(ball["volume"], [geometry]))
    _wait_done(logic.prepare_box(ball["volume"], geometry, box))
    encoded = client.encoder_calls
    assert encoded >= calls + 2   # the slice and the box's crops (on this 48 x 40 slice the 3x crop is the slice)
    remote = logic.predict(ball["volume"], box_ras=box, sliceAxis="K", sliceIndex=k)
    assert client.encoder_calls == encoded
    here = SegmentLogic(predictor=local).predict(ball["volume"], box_ras=box, sliceAxis="K", sliceIndex=k)
    np.testing.assert_array_equal(remote.mask, here.mask)
    assert SegmentLogic(predictor=local).prepare_box(ball["volume"], geometry, box) is None   # in-process: no job
    # an assisted model answers on the whole slice: no crops to encode, whether the logic learned it or the
    # effect was handed the connection's assisted client
    assert SegmentLogic(predictor=client.with_assist("learned")).prepare_box(ball["volume"], geometry, box) is None


def _wait_done(job, timeout=120):
    deadline = time.monotonic() + timeout
    while not job.done and time.monotonic() < deadline:
        time.sleep(0.1)
    job.wait(0)
    assert job.done


def _seed(ball, logic, sid):
    k = int(CENTER[2])
    logic.segment(ball["volume"], ball["segmentation"], sid, box_ras=_box_ras(ball, k), sliceAxis="K")
    return k


def _wait(task, timeout=300):
    deadline = time.monotonic() + timeout
    while True:
        state = task.poll()[0]
        if state in ("done", "failed", "cancelled"):
            return state
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.1)


def test_propagation_job_equals_in_process_propagation(ball, clients):
    client, local = clients
    remote_logic, local_logic = SegmentLogic(predictor=client), SegmentLogic(predictor=local)
    _seed(ball, remote_logic, ball["a"])
    seed = _read(ball, ball["a"])
    write_segment_block(ball["segmentation"], ball["b"], seed, ball["m"], ball["full"])
    plan = remote_logic.plan_propagation(ball["volume"], ball["segmentation"], ball["a"], "axial")
    task = remote_logic.start_propagation(plan)
    assert _wait(task) == "done"
    summary = task.finish()
    local_logic.propagate(ball["volume"], ball["segmentation"], ball["b"], "axial")
    a, b = _read(ball, ball["a"]), _read(ball, ball["b"])
    assert a.sum() > seed.sum() and "accepted" in summary
    np.testing.assert_array_equal(a, b)
    # the user erases the last propagated slice in both: the next run keeps it empty, through the server as here
    end = max(k for k in range(DIMS[2]) if a[k].any() and not seed[k].any())
    for sid, block in ((ball["a"], a), (ball["b"], b)):
        block[end] = False
        write_segment_block(ball["segmentation"], sid, block, ball["m"], ball["full"])
    task = remote_logic.start_propagation(remote_logic.plan_propagation(ball["volume"], ball["segmentation"],
                                                                        ball["a"], "axial"))
    assert _wait(task) == "done"
    task.finish()
    local_logic.propagate(ball["volume"], ball["segmentation"], ball["b"], "axial")
    a, b = _read(ball, ball["a"]), _read(ball, ball["b"])
    assert not a[end].any() and a.sum() > seed.sum()
    np.testing.assert_array_equal(a, b)
    # the server dropped that run (newer results outgrew its budget): the re-run says so, writes nothing, and the
    # next Propagate runs afresh (it used to fail with "No job ..." every time)
    first = min(k for k in range(DIMS[2]) if a[k].any() and not seed[k].any())
    a[first] = False                                   # another correction: a re-run that continues the last one
    write_segment_block(ball["segmentation"], ball["a"], a, ball["m"], ball["full"])
    plan = remote_logic.plan_propagation(ball["volume"], ball["segmentation"], ball["a"], "axial")
    client._request("DELETE", f"/v1/jobs/{plan.previous.job_id}")
    with pytest.raises(SonoSAMError, match="no longer holds this segment's earlier run"):
        _wait(remote_logic.start_propagation(plan))
    np.testing.assert_array_equal(_read(ball, ball["a"]), a)
    task = remote_logic.start_propagation(remote_logic.plan_propagation(ball["volume"], ball["segmentation"],
                                                                        ball["a"], "axial"))
    assert _wait(task) == "done"
    task.finish()


def test_cancelled_propagation_writes_nothing(ball, clients):
    client, _ = clients
    logic = SegmentLogic(predictor=client)
    _seed(ball, logic, ball["a"])
    before = _read(ball, ball["a"]).copy()
    task = logic.start_propagation(logic.plan_propagation(ball["volume"], ball["segmentation"], ball["a"], "axial"))
    task.cancel()
    assert _wait(task) == "cancelled"
    with pytest.raises(SonoSAMError, match="cancelled"):
        task.finish()
    np.testing.assert_array_equal(_read(ball, ball["a"]), before)


def test_server_killed_mid_job_leaves_the_segment_and_says_what_happened(ball):
    local = client_module.start_local_server(python=sys.executable, model=MODEL, timeout=600)
    try:
        logic = SegmentLogic(predictor=local.client())
        _seed(ball, logic, ball["a"])
        before = _read(ball, ball["a"]).copy()
        task = logic.start_propagation(logic.plan_propagation(ball["volume"], ball["segmentation"], ball["a"],
                                                              "axial"))
        local.process.kill()
        local.process.wait(30)
        with pytest.raises(SonoSAMError) as error:
            _wait(task, timeout=60)
            task.finish()
        assert "killed" in str(error.value) or "exited" in str(error.value), str(error.value)
        np.testing.assert_array_equal(_read(ball, ball["a"]), before)
    finally:
        local.stop()


def test_track_job_pauses_and_resumes_on_the_server(mrml, clients):
    """TrackLogic on a RemoteTracker: a run that asks on every frame pauses at frame 1; a pause (cancel)
    keeps what was tracked; the output sequence equals the server tracker's masks."""
    from SonoSAMTrackLib.logic import TrackLogic
    from test_track_logic import _volume_sequence

    client, _ = clients
    yy, xx = np.mgrid[:64, :80]
    frames = np.stack([np.where((xx - 36 - 2 * t) ** 2 + (yy - 32) ** 2 < 14 ** 2, 40, 170) for t in range(4)])
    frames = frames.astype(np.uint8)
    seq, browser = _volume_sequence(mrml.scene, frames)
    logic = TrackLogic(mrml.scene, predictor=client)
    first = (xx - 36) ** 2 + (yy - 32) ** 2 < 14 ** 2
    session = logic.start(seq, [{"name": "disc", "frame": 0, "mask": first}], browser=browser, threshold=1.0,
                          model_every=4)
    run = logic.start_run(session)
    assert _wait(run) == "done"
    report = run.finish()
    assert report.paused and report.frame == 1 and report.events[0]["object"] == "disc"
    np.testing.assert_array_equal(logic.output_masks(session, "disc"), session.tracker.masks("disc"))
    assert logic.output_masks(session, "disc")[1].any()

    # the user paints frame 1 of the output while the next run is on the server: its end keeps that edit
    run = logic.start_run(session)
    painted = np.zeros_like(first)
    painted[10:30, 10:40] = True
    _paint_shown_frame(mrml, browser, session, 1, "disc", painted)
    assert _wait(run) == "done"
    report = run.finish()
    assert report.kept == [1]
    np.testing.assert_array_equal(logic.output_masks(session, "disc")[1], painted)
    assert logic.edited_frames(session) == {1: ["disc"]}
    assert logic.use_edits(session) == {1: ["disc"]}
    np.testing.assert_array_equal(session.tracker.masks("disc")[1], painted)

    run = logic.start_run(session)
    run.cancel()
    state = _wait(run)
    report = run.finish()
    assert state in ("cancelled", "done")
    if state == "cancelled":
        assert report.paused and report.frame is None
    np.testing.assert_array_equal(logic.output_masks(session, "disc"), session.tracker.masks("disc"))
    assert logic.output_masks(session, "disc")[1].any()   # the frame tracked before the pause is kept


def _paint_shown_frame(mrml, browser, session, frame, name, mask):
    """What a Segment Editor stroke on the browser's output segmentation does: the browser shows ``frame``, the
    proxy's segment becomes ``mask`` (on the frame's grid), and the browser saves it into the output."""
    import slicer
    import vtk
    from vtk.util import numpy_support

    browser.SetSelectedItemNumber(frame)
    mrml.logic("Sequences").UpdateProxyNodesFromSequences(browser)
    proxy = browser.GetProxyNode(session.output_sequence)
    image = slicer.vtkOrientedImageData()
    image.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(session.ijk_to_ras))
    image.SetExtent(0, mask.shape[1] - 1, 0, mask.shape[0] - 1, 0, 0)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = mask.astype(np.uint8).ravel()
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        image, proxy, proxy.GetSegmentation().GetSegmentIdBySegmentName(name),
        slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)


def test_track_start_sends_the_loop_from_timer_polls(mrml, clients):
    """TrackLogic.begin: its polls send the frames in chunks ("sending", MiB), then create the session;
    a start cancelled while sending keeps nothing on the server."""
    from SonoSAMTrackLib.logic import TrackLogic
    from test_track_logic import _volume_sequence

    from sonosam import wire

    client, _ = clients
    yy, xx = np.mgrid[:240, :320]
    disc = (xx - 150) ** 2 + (yy - 120) ** 2 < 40 ** 2
    rng = np.random.default_rng(0)
    frames = np.stack([np.where(np.roll(disc, 2 * t, axis=1), 50, 170) + rng.integers(0, 9, disc.shape)
                       for t in range(24)]).astype(np.uint8)   # 1.8 MB: two chunks
    seq, browser = _volume_sequence(mrml.scene, frames)
    logic = TrackLogic(mrml.scene, predictor=client)
    objects = [{"name": "disc", "frame": 0, "mask": disc}]
    starting = logic.begin(seq, objects, browser=browser)
    states = []
    while not states or states[-1] != "done":
        states.append(starting.poll()[0])
    assert "sending" in states and starting.session.tracker.n_frames == 24
    stored = client._request("GET", f"/v1/arrays/{wire.content_id(frames)}")[1]["array"]
    np.testing.assert_array_equal(stored, frames)
    assert starting.session.tracker.masks("disc")[0].sum() == disc.sum()   # the keyframe is the given mask
    trackers = client.info()["trackers"]
    logic.end(starting.session)                      # a new session, or a closed scene: the server frees it
    assert client.info()["trackers"] == trackers - 1
    reversed_seq, _ = _volume_sequence(mrml.scene, np.ascontiguousarray(frames[::-1]))   # not on the server yet
    cancelled = logic.begin(reversed_seq, objects)
    while cancelled.upload.phase != "sending":
        cancelled.poll(budget=0)
    cancelled.cancel()
    assert cancelled.upload.phase == "cancelled" and client.info()["store"]["uploads"] == 0


def test_connection_starts_the_local_server_without_blocking(tmp_path):
    """The module's path: use_local returns at once, every poll() is short, then the client answers; stop()
    ends the process."""
    c = conn.Connection(tmp_path)
    t0 = time.perf_counter()
    assert c.use_local(sys.executable, model=MODEL, slicer_version=(5, 10)) == "starting"
    assert time.perf_counter() - t0 < 1.0
    polls = []
    deadline = time.monotonic() + 600
    while c.state == "starting" and time.monotonic() < deadline:
        t = time.perf_counter()
        c.poll()
        polls.append(time.perf_counter() - t)
        time.sleep(0.05)
    assert c.state == "ready", c.status
    assert max(polls) < 0.1, max(polls)
    assert c.client.info()["model"] == MODEL and MODEL in c.status
    process = c._server.process
    c.stop()
    assert process.poll() is not None and c.client is None and c.state == "off"


def test_seed_choices_through_the_server_equal_in_process(ball, clients):
    """The effect's seed check runs on the server client (predict requests): same problems and choices as
    in-process."""
    from SonoSAMSegmentLib.logic import PromptSession

    client, local = clients
    k = int(CENTER[2])
    for prompt in ("box", "click"):   # a click alone: the region it is in is offered
        out = []
        for predictor in (client, local):
            logic = SegmentLogic(predictor=predictor)
            session = PromptSession(logic)
            if prompt == "box":
                corners = _box_ras(ball, k)
                session.set_box(ball["volume"], corners[0], corners[1], slice_axis="K")
            else:
                session.add_point(ball["volume"], (ball["m"] @ np.r_[CENTER[0], CENTER[1], k, 1])[:3], slice_axis="K")
            session.predict(ball["volume"], slice_axis="K")
            out.append(session.check(ball["volume"]))
        remote, here = out
        assert remote.labels == here.labels and remote.problems == here.problems \
            and remote.suggested == here.suggested
        assert len(remote.choices) >= 2, remote.labels  # the model's answer and the box's brighter part / the region
        for a, b in zip(remote.choices, here.choices):
            np.testing.assert_array_equal(a.mask, b.mask)
    assert any(label.startswith("the bright region the click is in") for label in remote.labels), remote.labels


def _views(b, shift=0):
    """sliceToRAS of two slice views along the volume's own K axis (a 1x2 layout): through the ball's centre
    (``shift`` slices further) and through slice 0. (The volume's 7 slices are too few for views along I or J.)"""
    m = b["m"]
    unit = m[:3, :3] / np.linalg.norm(m[:3, :3], axis=0)
    out = []
    for k in (CENTER[2] + shift, 0):
        view = np.eye(4)
        view[:3, :3], view[:3, 3] = unit, (m @ np.r_[CENTER[0], CENTER[1], k, 1])[:3]
        out.append(view)
    return out


def test_a_view_change_asks_the_server_once_and_sends_the_slices_from_the_timer(ball, server, monkeypatch):
    """What the effect runs on Slicer's GUI thread when the slice views show new slices (``encode_ahead``, from
    _startPrefetchForViews) makes one request at most, the batched /v1/cached (it was one per slice, then every
    upload and the job's start: a second or more per scroll step on a remote server); the slices go from the
    job's polls (the effect's timer), one request per poll, each bounded by GUI_POLL_SECONDS. Requests are
    counted on the real client talking to the real server."""
    client = server.client()
    logic = SegmentLogic(in_process=False)   # the effect's logic
    logic.set_predictor(client)
    requests, real = [], client._request

    def counting(method, path, meta=None, arrays=None, **kw):
        requests.append((method, path.split("?")[0], kw.get("timeout")))
        return real(method, path, meta, arrays, **kw)

    monkeypatch.setattr(client, "_request", counting)

    def drive(job):
        per_poll = []
        deadline = time.monotonic() + 300
        while True:
            before = len(requests)
            finished = job.done                 # one timer tick of the effect (_pollPrefetch)
            per_poll.append(len(requests) - before)
            if finished:
                break
            assert time.monotonic() < deadline, "encode-ahead did not finish"
            time.sleep(0.05)
        job.wait(0)
        return per_poll

    job = logic.encode_ahead(ball["volume"], _views(ball))
    assert requests == []                      # slices the server never saw: nothing to ask, nothing sent yet
    assert job.total == 3 + 2                  # each view's slice and its neighbours (slice 0 has one)
    per_poll = drive(job)
    assert max(per_poll) == 1 and sum(per_poll) >= 5 + 1 + 1   # 5 uploads, the start, a status
    # every request bounded: polls by GUI_POLL_SECONDS, a step that sends by what sending may take
    assert all(t is not None and t <= client_module.GUI_SEND_SECONDS for _, _, t in requests), requests
    assert all(t <= client_module.GUI_POLL_SECONDS for m, _, t in requests if m == "GET"), requests
    for shift, expected in ((0, 0), (1, 1)):   # the same views again; then the K view one slice further
        requests.clear()
        job = logic.encode_ahead(ball["volume"], _views(ball, shift))
        assert [(m, p) for m, p, _ in requests] == [("POST", "/v1/cached")]
        assert requests[0][2] == client_module.GUI_POLL_SECONDS
        assert (job.total if job is not None else 0) == expected   # only the slice not encoded yet
        if job is not None:
            assert max(drive(job)) == 1
    assert not logic.uncached(ball["volume"], [logic.slice_geometry(ball["volume"], sliceToRAS=v)
                                               for v in _views(ball, 1)])


def test_the_effect_s_stop_and_leaving_it_stop_a_running_propagation_and_write_nothing(ball, clients):
    """PropagationControl (the effect's rules) with a job running on the server: Stop says it is stopping, the
    next ticks say it stopped; leaving the effect (end(keep_held=True)) stops a running one. Nothing written."""
    from SonoSAMSegmentLib.logic import PropagationControl, editor_writer

    client, _ = clients
    logic = SegmentLogic(predictor=client)
    _seed(ball, logic, ball["a"])
    before = _read(ball, ball["a"]).copy()
    plan = lambda: logic.plan_propagation(ball["volume"], ball["segmentation"], ball["a"], "axial")  # noqa: E731
    control = PropagationControl()
    control.start(logic.start_propagation(plan()))
    assert control.busy and control.stop() == "Stopping the propagation (nothing will be written)..."
    deadline, tick = time.monotonic() + 300, None
    while control.running is not None:
        assert time.monotonic() < deadline
        tick = control.poll(ball["segmentation"], ball["a"], editor_writer)
        time.sleep(0.05)
    assert tick.status == "Propagation stopped: the segment is unchanged." and tick.ended and not control.busy
    control.start(logic.start_propagation(plan()))
    assert control.end(keep_held=True) is True and not control.busy   # leaving the effect
    for _ in range(3):
        assert control.poll(ball["segmentation"], ball["a"], editor_writer).status is None
    np.testing.assert_array_equal(_read(ball, ball["a"]), before)
