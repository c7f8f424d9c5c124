"""How long the Slicer GUI thread is held by SonoSAM, measured on the modules' own code path without Qt.

Runs what the effect and the modules run on the GUI thread -- Connection.poll() while the local server
starts, the encode-ahead poll, a click through the server, a propagation job (plan, start, polls, write)
and a tracking job (start, polls, finish) -- on a headless slicer-core scene, calling each poll from a
100 ms "timer" loop like the QTimer does, and prints how long each call held the thread.

    .venv/bin/python SonoSAMSegment/Testing/Python/bench_gui_ticks.py [--model litemedsam_clicks] [--slices 12]

Figures go to docs/slicer.md (say "under load" on a shared machine: the server and this loop share the CPUs).
"""

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
sys.path[:0] = [os.path.join(ROOT, "SonoSAMSegment"), os.path.join(ROOT, "SonoSAMTrack"), ROOT]


def _import_slicer_core():
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.join(ROOT, "Testing")]
    import slicer  # noqa: F401
    sys.path[:] = saved


class Ticks:
    """Durations (ms) of the calls made on the 'GUI thread', per phase."""

    def __init__(self):
        self.rows = []

    def call(self, phase, fn, *args, **kwargs):
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        self.rows.append((phase, (time.perf_counter() - t) * 1000))
        return out

    def loop(self, phase, poll, finished, timeout=900):
        """Call ``poll`` every 100 ms (a QTimer) until ``finished(result)``; returns the wall time."""
        start = time.perf_counter()
        while True:
            result = self.call(phase, poll)
            if finished(result):
                return time.perf_counter() - start
            if time.perf_counter() - start > timeout:
                raise TimeoutError(phase)
            time.sleep(0.1)

    def report(self, walls):
        print(f"{'phase':34s} {'calls':>5s} {'median ms':>9s} {'p95 ms':>7s} {'max ms':>7s} {'wall s':>7s}")
        for phase in dict.fromkeys(p for p, _ in self.rows):
            d = np.array([ms for p, ms in self.rows if p == phase])
            wall = walls.get(phase)
            print(f"{phase:34s} {len(d):5d} {np.median(d):9.1f} {np.percentile(d, 95):7.1f} {d.max():7.1f} "
                  f"{'' if wall is None else f'{wall:7.1f}'}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="litemedsam_clicks")
    parser.add_argument("--slices", type=int, default=12, help="slices of the synthetic volume (propagation length)")
    parser.add_argument("--side", type=int, default=160, help="rows and columns of the synthetic volume")
    parser.add_argument("--frames", type=int, default=8, help="frames of the synthetic cine loop")
    args = parser.parse_args()
    _import_slicer_core()
    sys.path.insert(0, os.path.join(ROOT, "Testing", "slicer"))
    from mrml_scene import add_volume_from_array, make_scene
    from SonoSAMSegmentLib.connection import Connection
    from SonoSAMSegmentLib.logic import SegmentLogic
    from SonoSAMTrackLib.logic import TrackLogic

    ticks, walls = Ticks(), {}
    connection = Connection(os.path.join(ROOT, "runs", "bench-connection"))
    walls["server start (poll)"] = None
    ticks.call("server start (use_local)", connection.use_local, sys.executable, args.model, slicer_version=(5, 10))
    walls["server start (poll)"] = ticks.loop("server start (poll)", connection.poll, lambda s: s != "starting")
    assert connection.state == "ready", connection.status
    client = connection.client
    ctx = make_scene()
    try:
        # a bright ball in a 160 x 160 x N volume, 1 x 1 x 2.5 mm
        dims = (args.side, args.side, args.slices)
        kk, jj, ii = np.meshgrid(*(np.arange(d) for d in dims[::-1]), indexing="ij")
        m = np.diag([1.0, 1.0, 2.5, 1.0])
        r = np.sqrt((ii - 80.0) ** 2 + (jj - 75.0) ** 2 + ((kk - args.slices / 2) * 2.5) ** 2)
        rng = np.random.default_rng(0)
        voxels = (np.where(r < 40, 170.0, 50.0) + rng.normal(0, 8, r.shape)).astype(np.float32)
        volume = add_volume_from_array(ctx.scene, voxels, m, "ball")
        seg = ctx.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
        seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        sid = seg.GetSegmentation().AddEmptySegment("ball", "ball")
        logic = SegmentLogic(predictor=client)
        k = args.slices // 2
        geometries = logic.neighbour_geometries(volume, logic.slice_geometry(volume, "K", sliceIndex=k), radius=1)
        job = ticks.call("encode ahead (start, 3 slices)", logic.prefetch, volume, geometries)
        walls["encode ahead (poll)"] = ticks.loop("encode ahead (poll)", lambda: job.done, bool)
        box = [(m @ np.r_[40.0, 35.0, k, 1])[:3], (m @ np.r_[120.0, 115.0, k, 1])[:3]]
        click = (m @ np.r_[80.0, 75.0, k, 1])[:3]
        ticks.call("Apply box (predict + write)", logic.segment, volume, seg, sid, box_ras=box, sliceAxis="K")
        for _ in range(20):
            ticks.call("click, cached slice (predict)", logic.predict, volume, points_ras=[click], labels=[1],
                       sliceAxis="K")
        plan = ticks.call("propagate: plan (read MRML)", logic.plan_propagation, volume, seg, sid, "axial")
        task = ticks.call("propagate: start (prepare)", logic.start_propagation, plan)
        # the polls send the volume in chunks, then start the job, then follow it
        walls["propagate: poll (send)"] = ticks.loop("propagate: poll (send)", task.poll, lambda s: s[0] != "sending")
        walls["propagate: poll"] = ticks.loop("propagate: poll", task.poll,
                                              lambda s: s[0] in ("done", "failed", "cancelled"))
        summary = ticks.call("propagate: finish (fetch + write)", task.finish)
        # tracking: a disc moving across the frames
        yy, xx = np.mgrid[:240, :320]
        frames = np.stack([np.where((xx - 140 - 4 * t) ** 2 + (yy - 120) ** 2 < 50 ** 2, 50, 170)
                           + rng.normal(0, 8, xx.shape) for t in range(args.frames)]).clip(0, 255).astype(np.uint8)
        seq = ctx.scene.AddNewNodeByClass("vtkMRMLSequenceNode", "cine")
        for t, frame in enumerate(frames):
            node = add_volume_from_array(ctx.scene, frame[None], np.eye(4), f"f{t}")
            seq.SetDataNodeAtValue(node, str(t))
            ctx.scene.RemoveNode(node)
        track = TrackLogic(ctx.scene, predictor=client)
        first = (xx - 140) ** 2 + (yy - 120) ** 2 < 50 ** 2
        starting = ticks.call("track: begin (read frames)", track.begin, seq,
                              [{"name": "disc", "frame": 0, "mask": first}], threshold=0.0, model_every=4)
        walls["track: start (poll: send frames, add object)"] = ticks.loop(
            "track: start (poll: send frames, add object)", starting.poll, lambda s: s[0] == "done")
        session = starting.session
        run = ticks.call("track: start job", track.start_run, session)
        walls["track: poll"] = ticks.loop("track: poll", run.poll, lambda s: s[0] in ("done", "failed", "cancelled"))
        ticks.call("track: finish (fetch + write sequence)", run.finish)
        print(f"model {args.model} on {client.info()['device']} ({client.info()['backend']}); volume {dims}, "
              f"loop {frames.shape}; propagation: {summary}")
        ticks.report(walls)
    finally:
        ctx.close()
        connection.stop()


if __name__ == "__main__":
    main()
