"""Benchmark of `sonosam serve` against the core in-process, in the same run, on the real A4C echo loop and
the Colin27 MRI:

    python -m bench.server [--clicks 60] [--threads 1] [--backend auto] [--users 8] [--out FILE.json]

0. send: on the fresh server, a 256^3 int16 volume sent and a propagation started from the 100 ms timer's
   polls (chunked upload, then the job): the longest single call on the ticking thread.
1. click -> mask with a cached embedding: through a local server (loopback HTTP) vs in-process, interleaved
   so both see the same machine load; the added latency is the difference of the medians.
2. GUI stall: a 10 ms ticking loop in this (client) process, polling the server every 100 ms as a QTimer
   would, while the server encodes ahead, propagates through the MRI and tracks through the echo loop; the
   stall is how late a tick came. For contrast, the same loop around one in-process encode.
3. load: N simulated users (threads, one client each) clicking on cached frames: throughput and latency.

Timings on a shared machine are noisy: say "under load" when quoting them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import numpy as np


def _pct(values, q) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _echo_frames(n: int) -> np.ndarray:
    from sonosam.data import echo_a4c_path
    from sonosam.io import read_cine

    frames = read_cine(echo_a4c_path()).frames[:n]
    if frames.ndim == 4:  # RGB -> grey, as the tracker and the tests use it
        frames = np.round(frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.uint8)
    return frames


def _clicks(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(1, 4))
        points = np.column_stack([rng.uniform(320, 420, k), rng.uniform(100, 240, k)]).round(1).tolist()
        out.append((points, [1] + [int(v) for v in rng.integers(0, 2, k - 1)]))
    return out


def bench_clicks(client, predictor, frame, clicks: int) -> dict:
    """Interleaved: server click, in-process click, ... on the same cached frame."""
    key = ("bench", "frame0")
    client.predict(frame, box=(300, 70, 440, 270), key=key)      # send + encode once
    predictor.predict(frame, box=(300, 70, 440, 270), key=key)
    remote, local, server_side, mismatches = [], [], [], 0
    cpu_remote = cpu_local = 0.0
    server_cpu = client.info()["cpu_s"]
    for points, labels in _clicks(clicks):
        t, c = time.perf_counter(), time.process_time()
        got = client.predict(frame, points=points, labels=labels, key=key)
        remote.append(1000 * (time.perf_counter() - t))
        cpu_remote += time.process_time() - c
        server_side.append(1000 * got.seconds)
        t, c = time.perf_counter(), time.process_time()
        want = predictor.predict(frame, points=points, labels=labels, key=key)
        local.append(1000 * (time.perf_counter() - t))
        cpu_local += time.process_time() - c
        mismatches += int(not np.array_equal(got.mask, want.mask))
    server_cpu = client.info()["cpu_s"] - server_cpu
    # CPU time does not grow with the machine's load as wall time does: the added CPU per click (client +
    # server - in-process) is the load-independent part of the overhead
    return {"clicks": clicks, "server_ms_median": statistics.median(remote), "server_ms_p95": _pct(remote, 95),
            "in_process_ms_median": statistics.median(local), "in_process_ms_p95": _pct(local, 95),
            "added_ms_median": statistics.median(remote) - statistics.median(local),
            "transport_ms_median": statistics.median(np.subtract(remote, server_side)),
            "cpu_ms_per_click_server_path": 1000 * (cpu_remote + server_cpu) / clicks,
            "cpu_ms_per_click_in_process": 1000 * cpu_local / clicks,
            "masks_differing": mismatches}


class Ticker:
    """A 10 ms loop standing in for Slicer's GUI thread: `poll` runs every 10th tick (a 100 ms QTimer), on
    this same thread, as the modules' QTimer callbacks run on Slicer's GUI thread; `calls` holds how long
    each poll held the thread (ms)."""

    def __init__(self, period: float = 0.010):
        self.period = period
        self.late: list[float] = []
        self.calls: list[float] = []
        self.labels: list[str] = []   # what each poll found before it ran (the job's state), for the longest

    def run_until(self, finished, poll=None, timeout: float = 900, label=None) -> None:
        start = time.perf_counter()
        last = start
        n = 0
        while time.perf_counter() - start < timeout:
            time.sleep(self.period)
            now = time.perf_counter()
            self.late.append(1000 * (now - last - self.period))
            last = now
            n += 1
            if poll is not None and n % 10 == 0:
                self.labels.append(label() if label is not None else "")
                poll()
                last_poll = time.perf_counter()
                self.calls.append(1000 * (last_poll - now))
                self.late[-1] += self.calls[-1]  # the poll itself runs on the "GUI" thread
                last = last_poll
            if finished():
                return
        raise TimeoutError("the server job did not finish")

    def figures(self) -> dict:
        return {"ticks": len(self.late), "stall_ms_max": max(self.late), "stall_ms_p99": _pct(self.late, 99),
                "stall_ms_median": statistics.median(self.late), "polls": len(self.calls),
                "longest_call_ms": max(self.calls, default=0.0),
                "longest_calls": sorted(zip(map(lambda v: round(v, 1), self.calls), self.labels), reverse=True)[:3]}


def bench_send(client, side: int = 256, seed_slices: int = 1) -> dict:
    """On a FRESH server: send a side^3 int16 volume and start a propagation the way the modules do it -- a
    prepared job polled from the 100 ms timer, whose polls hash and send the volume in chunks and then start
    the job -- until the job reports its first slice; then cancel it. Every call runs on the ticking thread."""
    from sonosam.client import GUI_POLL_SECONDS, UPLOAD_CHUNK_BYTES

    rng = np.random.default_rng(7)
    k, j, i = np.ogrid[:side, :side, :side]
    ball = (k - side / 2) ** 2 + (j - side / 2) ** 2 + (i - side / 2) ** 2 < (side / 5) ** 2
    volume = (np.where(ball, 900, 100) + rng.normal(0, 30, ball.shape)).astype(np.int16)
    centre, r = side // 2, side // 5
    box = [centre - r - 4, centre - r - 4, centre + r + 4, centre + r + 4]
    ticker, started = Ticker(), time.perf_counter()
    job = client.prepare_job("propagate", volume=volume, seeds=[{"index": centre, "box": box}], axis=0,
                             max_slices=seed_slices)
    marks: dict = {}

    phases: dict = {}

    def poll():
        before = job.last.get("message", "") if job.last["state"] == "sending" else job.last["state"]
        t = time.perf_counter()
        status = job.poll(timeout=GUI_POLL_SECONDS)
        phase = before.split(":")[-1].strip().split(" ")[0] if job.last["state"] == "sending" else before
        phases.setdefault(phase or "first", []).append(1000 * (time.perf_counter() - t))
        if status["state"] != "sending" and "sent_s" not in marks:
            marks["sent_s"] = time.perf_counter() - started
            marks["sending_polls"] = len(ticker.calls) + 1
        if status["state"] == "running" and status["progress"][0] >= 1 and "first_slice_s" not in marks:
            marks["first_slice_s"] = time.perf_counter() - started
            job.cancel()

    ticker.run_until(lambda: job.last["state"] in ("done", "failed", "cancelled"), poll=poll)
    sending = ticker.calls[:marks.get("sending_polls", len(ticker.calls))]
    return {**ticker.figures(), "job_s": time.perf_counter() - started, "state": job.last["state"],
            "volume_mib": volume.nbytes / 2**20, "longest_sending_call_ms": max(sending, default=0.0),
            "chunk_mib": UPLOAD_CHUNK_BYTES / 2**20,
            "calls_ms_by_phase": {k: [round(v, 1) for v in vs] for k, vs in phases.items()}, **marks}


def bench_stall(client, predictor, frames, volume, seed_index, seed_box, window) -> dict:
    from sonosam.client import GUI_POLL_SECONDS

    out = {}
    # the noise floor: the same loop and polls with the server idle
    ticker, started = Ticker(), time.perf_counter()
    ticker.run_until(lambda: time.perf_counter() - started > 3, poll=client.info)
    out["idle server (3 s)"] = {**ticker.figures(), "job_s": time.perf_counter() - started}
    # encode ahead: frames the server has not seen
    fresh = [np.ascontiguousarray(f[:, ::-1]) for f in frames[:3]]
    ticker, started = Ticker(), time.perf_counter()
    job = client.prefetch([(("bench-flip", i), f) for i, f in enumerate(fresh)])
    state = {"done": False}
    ticker.run_until(lambda: state["done"], poll=lambda: state.update(done=job.done))
    out["encode 3 frames"] = {**ticker.figures(), "job_s": time.perf_counter() - started}

    ticker, started = Ticker(), time.perf_counter()
    job = client.prepare_job("propagate", volume=volume, seeds=[{"index": seed_index, "box": seed_box}], axis=0,
                             window=window, max_slices=4)   # its polls send the volume, then start it
    ticker.run_until(lambda: job.last["state"] in ("done", "failed", "cancelled"),
                     poll=lambda: job.poll(timeout=GUI_POLL_SECONDS), label=lambda: job.last.get("message") or job.last["state"])
    out["propagate (MRI, 9 slices)"] = {**ticker.figures(), "job_s": time.perf_counter() - started,
                                        "state": job.last["state"]}

    tracker = client.tracker(frames, model_every=5, pause=False)
    tracker.add_object("LV", 0, box=(300, 70, 440, 270))
    ticker, started = Ticker(), time.perf_counter()
    job = tracker.start()
    ticker.run_until(lambda: job.last["state"] in ("done", "failed", "cancelled"),
                     poll=lambda: job.poll(timeout=GUI_POLL_SECONDS))
    out[f"track (echo, {len(frames)} frames)"] = {**ticker.figures(), "job_s": time.perf_counter() - started,
                                                  "state": job.last["state"]}
    tracker.close()

    # contrast: the same loop with one encode in-process (what a thread inside Slicer's Python amounts to)
    ticker, started = Ticker(), time.perf_counter()
    pending = [np.ascontiguousarray(frames[1][::-1])]

    def encode_in_process():
        if pending:
            predictor.embedding(pending.pop())
    ticker.run_until(lambda: not pending, poll=encode_in_process)
    out["in-process encode (1 frame)"] = {**ticker.figures(), "job_s": time.perf_counter() - started}
    return out


def bench_load(url: str, token: str, frames, users: int, clicks: int) -> dict:
    from sonosam.client import SonoSAMClient

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(users + 1)

    def user(u: int):
        client = SonoSAMClient(url, token)
        frame = frames[u % 2]
        try:
            client.predict(frame, box=(300, 70, 440, 270), key=("load", u % 2))  # cached after the first
            barrier.wait()
            for points, labels in _clicks(clicks, seed=u + 1):
                t = time.perf_counter()
                client.predict(frame, points=points, labels=labels, key=("load", u % 2))
                with lock:
                    latencies.append(1000 * (time.perf_counter() - t))
        except Exception as error:  # noqa: BLE001 - counted and shown
            errors.append(repr(error))
        finally:
            client.close()

    threads = [threading.Thread(target=user, args=(u,)) for u in range(users)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    return {"users": users, "clicks": len(latencies), "seconds": seconds, "clicks_per_s": len(latencies) / seconds,
            "latency_ms_median": statistics.median(latencies), "latency_ms_p95": _pct(latencies, 95),
            "errors": len(errors), "first_error": errors[0] if errors else None}


def _mri_cut():
    from sonosam.data import mri_colin27_paths
    from sonosam.io import read_volume
    from sonosam.volume import volume_window
    from bench.volume import label_seed

    t1, aal = mri_colin27_paths()
    volume, labels = read_volume(t1).array, read_volume(aal).array
    window = volume_window(volume)
    index, box = label_seed(labels, 78)  # Thalamus_R
    return np.ascontiguousarray(volume[index - 4:index + 5]), 4, box, window


def markdown(figures: dict) -> str:
    """The figures as the tables in docs/slicer.md."""
    lines = []
    c = figures.get("clicks")
    if c:
        lines += ["| click -> mask, cached embedding | median ms | p95 ms |", "|---|---|---|",
                  f"| in-process | {c['in_process_ms_median']:.1f} | {c['in_process_ms_p95']:.1f} |",
                  f"| through the local server | {c['server_ms_median']:.1f} | {c['server_ms_p95']:.1f} |",
                  f"| added (difference of medians) | {c['added_ms_median']:.1f} | |",
                  f"| transport (client total - server's decode) | {c['transport_ms_median']:.1f} | |",
                  f"| CPU per click: client + server / in-process | {c['cpu_ms_per_click_server_path']:.1f} / "
                  f"{c['cpu_ms_per_click_in_process']:.1f} | |", "",
                  f"{c['clicks']} clicks interleaved; masks differing between the two: {c['masks_differing']}.", ""]
    sd = figures.get("send")
    if sd:
        lines += ["| fresh server: send a volume + start a propagation, from the 100 ms timer | |", "|---|---|",
                  f"| volume | {sd['volume_mib']:.0f} MiB int16 |",
                  f"| server start-up (ready line) | {figures.get('startup_s', float('nan')):.1f} s |",
                  f"| polls while sending / sent and started after | {sd.get('sending_polls', 0)} / "
                  f"{sd.get('sent_s', float('nan')):.1f} s |",
                  f"| first slice done after | {sd.get('first_slice_s', float('nan')):.1f} s |",
                  f"| longest single GUI-side call while sending / in all | {sd['longest_sending_call_ms']:.1f} / "
                  f"{sd['longest_call_ms']:.1f} ms |",
                  f"| 10 ms ticks: late median / p99 / max | {sd['stall_ms_median']:.1f} / {sd['stall_ms_p99']:.1f} / "
                  f"{sd['stall_ms_max']:.1f} ms |", ""]
    st = figures.get("stall")
    if st:
        lines += ["| 10 ms GUI loop in the client while ... | job s | ticks | late ms median | p99 | max | longest call ms |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {name} | {v['job_s']:.1f} | {v['ticks']} | {v['stall_ms_median']:.1f} | {v['stall_ms_p99']:.1f} "
                  f"| {v['stall_ms_max']:.1f} | {v['longest_call_ms']:.1f} |" for name, v in st.items()]
        lines.append("")
    ld = figures.get("load")
    if ld:
        lines += ["| load | users | clicks | clicks/s | median ms | p95 ms | errors |", "|---|---|---|---|---|---|---|",
                  f"| cached frames | {ld['users']} | {ld['clicks']} | {ld['clicks_per_s']:.1f} | "
                  f"{ld['latency_ms_median']:.0f} | {ld['latency_ms_p95']:.0f} | {ld['errors']} |", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="litemedsam_clicks")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, server and in-process alike")
    parser.add_argument("--clicks", type=int, default=60)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--user-clicks", type=int, default=25)
    parser.add_argument("--frames", type=int, default=10, help="echo frames tracked in the stall test")
    parser.add_argument("--skip", nargs="*", default=[], choices=["send", "clicks", "stall", "load"])
    parser.add_argument("--side", type=int, default=256, help="the sent volume is side^3 int16")
    parser.add_argument("--chunk-mib", type=float, help="upload chunk size (default: sonosam.client's)")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)

    import torch

    from sonosam.client import start_local_server
    from sonosam.models import load_model
    from sonosam.predictor import Predictor

    torch.set_num_threads(args.threads)
    if args.chunk_mib:
        import sonosam.client

        sonosam.client.UPLOAD_CHUNK_BYTES = int(args.chunk_mib * 2**20)
    frames = _echo_frames(args.frames)
    started = time.perf_counter()
    server = start_local_server(model=args.model, backend=args.backend, args=["--threads", str(args.threads)],
                                env={"OMP_NUM_THREADS": str(args.threads)})
    figures = {"startup_s": time.perf_counter() - started}
    try:
        client = server.client()
        if "send" not in args.skip:  # first, while the server is fresh
            figures["send"] = bench_send(client, args.side)
            print(json.dumps({"send": figures["send"]}, indent=1), flush=True)
        info = client.info()
        predictor = Predictor(load_model(args.model, backend=args.backend, device="cpu"))
        figures["setup"] = {"model": args.model, "backend_server": info["backend"],
                            "backend_in_process": predictor.model.backend, "threads": args.threads}
        if "clicks" not in args.skip:
            figures["clicks"] = bench_clicks(client, predictor, frames[0], args.clicks)
            print(json.dumps({"clicks": figures["clicks"]}, indent=1), flush=True)
        if "stall" not in args.skip:
            volume, seed_index, seed_box, window = _mri_cut()
            figures["stall"] = bench_stall(client, predictor, frames, volume, seed_index, seed_box, window)
            print(json.dumps({"stall": figures["stall"]}, indent=1), flush=True)
        if "load" not in args.skip:
            figures["load"] = bench_load(server.url, server.token, frames, args.users, args.user_clicks)
            print(json.dumps({"load": figures["load"]}, indent=1), flush=True)
    finally:
        server.stop()
    print(markdown(figures))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(figures, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
