"""SonoSAMTrack logic without Qt: volume sequence -> numpy frames -> `sonosam.track.Tracker` -> segmentation sequence.

Runs inside Slicer and headless on `slicer-core` (the tests). Only MRML / vtkSegmentationCore calls on
the nodes' own scene -- never ``slicer.app``, ``slicer.mrmlScene`` or ``slicer.modules``.

Console use inside Slicer (the model runs in the SonoSAM server the modules connect to; outside Slicer any
``sonosam.predictor.Predictor`` works too)::

    from SonoSAMTrackLib.logic import TrackLogic
    logic = TrackLogic(slicer.mrmlScene, predictor=slicer.util.getModuleLogic("SonoSAMSegment").predictor)
    session = logic.start(getNode("Sequence"), objects=[{"name": "LV", "frame": 0, "box": (300, 70, 440, 270)}],
                          browser=getNode("SequenceBrowser"))
    report = logic.run(session)          # pauses on frames that need attention
    logic.correct(session, report.frame, "LV", mask=...); logic.run(session)
    logic.save_sequence(session, "/tmp/lv.seq.nrrd")

Boxes/points are in frame pixel coordinates (x = column = I, y = row = J). The output segmentation
sequence has one segmentation per frame, one segment per object, and the input's index values, so a
sequence browser that synchronises both shows each frame's masks on that frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import slicer.util

from sonosam.errors import SonoSAMError

DEFAULT_COLORS = [(0.95, 0.35, 0.25), (0.25, 0.65, 0.95), (0.35, 0.85, 0.35), (0.95, 0.8, 0.25)]


@dataclass
class TrackReport:
    """What a run ended with: ``paused`` on ``frame`` for ``events`` (dicts: frame, object, reason, ...);
    ``kept``: frames the user edited while it ran, left as edited (not rewritten from the tracker)."""
    paused: bool
    frame: int | None
    events: list
    kept: list = field(default_factory=list)


def event_dict(event) -> dict:
    """An intervention request as a dict, whether from the in-process tracker or from the server."""
    return dict(event) if isinstance(event, dict) else event.as_dict()


@dataclass
class TrackSession:
    tracker: object                       # sonosam.track.Tracker, or sonosam.client.RemoteTracker (a server's)
    input_sequence: object
    output_sequence: object
    ijk_to_ras: np.ndarray
    index_values: list
    names: list = field(default_factory=list)
    colors: list = field(default_factory=list)
    browser: object = None
    table: object = None
    chart: object = None
    shape: tuple = ()                     # (H, W) of a frame


class TrackStart:
    """A tracking session being started, for a GUI timer: ``poll()`` -> (state, done, total, message). With a
    server, the first polls send the loop's frames a chunk at a time ("sending", MiB); the next creates the
    tracker and adds the objects (one request each: the server predicts each object's first mask, encoding
    its frame) and the output sequence; then ``session`` is set and the state is "done"."""

    def __init__(self, logic: "TrackLogic", frames: np.ndarray, args: tuple):
        self.logic, self.frames, self.args = logic, frames, args
        self.session = None
        begin_upload = getattr(logic.predictor, "begin_upload", None)
        self.upload = begin_upload(frames, what="cine loop") if begin_upload is not None else None

    def poll(self, budget: float | None = None):
        if self.session is not None:
            return "done", 1, 1, ""
        if self.upload is not None and not self.upload.done:
            self.upload.step() if budget is None else self.upload.step(budget)
            total = max(1, int(np.ceil(self.upload.nbytes / 2**20)))
            return "sending", int(self.upload.sent_bytes / 2**20), total, f"sending the {self.upload.what}: " \
                f"{self.upload.message}"
        frames_id = self.upload.id if self.upload is not None else None
        self.session = self.logic._create_session(self.frames, frames_id, *self.args)
        return "done", 1, 1, ""

    def cancel(self):
        if self.upload is not None:
            self.upload.cancel()


class TrackRun:
    """A tracking run for a GUI timer: ``poll()`` -> (state, done, total), ``cancel()`` (a pause: the
    frames tracked so far, and their requests, are kept), ``finish()`` -> TrackReport after it ended, with
    the output sequence and confidence table refreshed, except the masks the user edited while it ran
    (``report.kept``), which stay as edited, to be used or undone."""

    def __init__(self, logic: "TrackLogic", session: TrackSession, rerun: bool = False):
        self.logic, self.session = logic, session
        self.job = None
        self.report = None
        self.shown, self.edited = None, set()   # the output before a server job; (frame, name) edited since
        tracker = session.tracker
        if hasattr(tracker, "start"):
            self.shown = logic.output_digests(session)   # to find what the user edits while the job runs
            self.job = tracker.start(rerun=rerun)
        else:
            report = tracker.rerun() if rerun else tracker.run()
            self.report = TrackReport(report.paused, report.frame, [event_dict(e) for e in report.events])

    def poll(self):
        if self.job is None:
            return "done", 1, 1
        from sonosam.client import GUI_POLL_SECONDS

        status = self.job.poll(timeout=GUI_POLL_SECONDS)  # late: the last status, asked again next tick
        done, total = (status.get("progress") or [0, 0])[:2]
        return status["state"], int(done), int(total)

    def cancel(self):
        if self.job is not None:
            from sonosam.client import GUI_POLL_SECONDS

            self.job.cancel(timeout=GUI_POLL_SECONDS)   # a hung server must not hold Slicer (a late pause still lands)

    def finish(self) -> TrackReport:
        if self.report is None:
            status = self.job.poll()
            if status["state"] == "cancelled":  # paused by the user: the server kept every finished frame
                self.session.tracker.refresh()
                self.report = TrackReport(True, None, [])
            else:
                r = self.session.tracker.finish(self.job, timeout=5)
                self.report = TrackReport(bool(r["paused"]), r["frame"], [event_dict(e) for e in r["events"]])
            now = self.logic.output_digests(self.session)
            self.edited = {key for key, digest in now.items() if self.shown.get(key) != digest}
            self.report.kept = sorted({t for t, _ in self.edited})
        self.logic.update_output(self.session, keep=self.edited)
        return self.report


def volume_frame(volume_node) -> np.ndarray:
    """A one-slice volume node -> (H, W) uint8-or-numeric frame (RGB turned into BT.601 luma)."""
    from vtk.util import numpy_support

    image = volume_node.GetImageData()
    dims = image.GetDimensions()
    comps = image.GetNumberOfScalarComponents()
    array = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    array = array.reshape(tuple(reversed(dims)) + ((comps,) if comps > 1 else ()))
    if dims[2] != 1:
        raise ValueError(f"'{volume_node.GetName()}' has {dims[2]} slices; a cine frame has one.")
    frame = array[0]
    if frame.ndim == 3:
        rgb = frame[..., :3].astype(np.float32)
        frame = np.clip(np.rint(rgb @ np.array([0.299, 0.587, 0.114], np.float32)), 0, 255).astype(np.uint8)
    return frame


def mask_from_segment(segmentation_node, segment_id, shape, ijk_to_ras=None) -> np.ndarray:
    """(H, W) bool of a segment stored on the frame grid by this logic (its labelmap may be cropped); with the
    frame's ``ijk_to_ras``, of any segment (the user's), resampled onto the frame grid where it lies on another."""
    import slicer
    from vtk.util import numpy_support

    if ijk_to_ras is not None:
        from SonoSAMSegmentLib.logic import read_segment_block

        return read_segment_block(segmentation_node, segment_id, ijk_to_ras, [0, shape[1] - 1, 0, shape[0] - 1, 0, 0])[0]

    out = np.zeros(shape, bool)
    labelmap = slicer.vtkOrientedImageData()
    if not slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
            segmentation_node, segment_id, labelmap, False):
        return out
    ext = labelmap.GetExtent()
    if ext[0] > ext[1] or labelmap.GetPointData().GetScalars() is None:
        return out
    label = segmentation_node.GetSegmentation().GetSegment(segment_id).GetLabelValue()
    block = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(
        ext[5] - ext[4] + 1, ext[3] - ext[2] + 1, ext[1] - ext[0] + 1)[0]
    out[ext[2]:ext[3] + 1, ext[0]:ext[1] + 1] = block == label
    return out


class TrackLogic:
    """MRML in, MRML out. ``predictor``: a ``sonosam.client.SonoSAMClient`` (the tracker then lives on the
    server and runs as a job) or an in-process ``sonosam.predictor.Predictor``; default (outside Slicer):
    LiteMedSAM in-process, loaded on first use."""

    def __init__(self, scene, predictor=None):
        self.scene = scene
        self._predictor = predictor

    @property
    def predictor(self):
        if self._predictor is None:
            from sonosam.models import load_model
            from sonosam.predictor import Predictor

            self._predictor = Predictor(load_model("litemedsam_clicks", backend="auto"))
        return self._predictor

    def set_predictor(self, predictor):
        self._predictor = predictor

    # ------------------------------------------------------------------------------------------ input
    def frames_from_sequence(self, sequence_node):
        """(frames (T, H, W), IJK-to-RAS of frame 0, index values) of a volume sequence."""
        n = sequence_node.GetNumberOfDataNodes()
        if n == 0:
            raise ValueError(f"The sequence '{sequence_node.GetName()}' is empty.")
        frames, values = [], []
        ijk_to_ras = None
        for i in range(n):
            node = sequence_node.GetNthDataNode(i)
            if node is None or not node.IsA("vtkMRMLScalarVolumeNode"):
                raise ValueError(f"Item {i} of '{sequence_node.GetName()}' is not a volume: choose a volume sequence.")
            frames.append(volume_frame(node))
            values.append(sequence_node.GetNthIndexValue(i))
            if ijk_to_ras is None:
                m = __import__("vtk").vtkMatrix4x4()
                node.GetIJKToRASMatrix(m)
                ijk_to_ras = slicer.util.arrayFromVTKMatrix(m)
        shapes = {f.shape for f in frames}
        if len(shapes) != 1:
            raise ValueError(f"The frames of '{sequence_node.GetName()}' differ in size: {sorted(shapes)}.")
        return np.stack(frames), ijk_to_ras, values

    @staticmethod
    def browser_frame(browser, sequence) -> int:
        """The frame (item number) of ``sequence`` that ``browser`` shows now, matched by index value; refused
        when the browser does not play that sequence (its frame would be another cine's)."""
        if browser is None or not browser.IsSynchronizedSequenceNodeID(sequence.GetID(), True):
            raise SonoSAMError(f"Choose the sequence browser that plays '{sequence.GetName()}' (none selected, or "
                               "it plays another sequence).")
        master = browser.GetMasterSequenceNode()
        value = master.GetNthIndexValue(browser.GetSelectedItemNumber())
        frame = sequence.GetItemNumberFromIndexValue(value, True)   # numeric: within its tolerance, not the nearest earlier
        if frame < 0:
            raise SonoSAMError(f"'{sequence.GetName()}' has no frame at {master.GetIndexName()} = {value}; go to one "
                               "of its frames in the browser.")
        return frame

    @staticmethod
    def show_frame(browser, sequence, frame: int):
        """Make ``browser`` show ``sequence``'s item ``frame`` (by its index value)."""
        browser.SetSelectedItemByIndexValue(sequence.GetNthIndexValue(int(frame)), False)

    # ------------------------------------------------------------------------------------------ tracking
    def start(self, input_sequence, objects, browser=None, threshold: float = 0.85, model_every: int = 5,
              output_name: str | None = None) -> TrackSession:
        """objects: [{"name", "frame", "box" | "points"+"labels" | "mask"}]. Creates the output sequence
        (and adds it to ``browser``, synchronised). Waits for the frames to reach a server; the module uses
        ``begin`` (polled) instead."""
        starting = self.begin(input_sequence, objects, browser, threshold, model_every, output_name)
        while starting.poll(budget=1.0)[0] != "done":
            pass
        return starting.session

    def begin(self, input_sequence, objects, browser=None, threshold: float = 0.85, model_every: int = 5,
              output_name: str | None = None) -> "TrackStart":
        """``start`` for a GUI timer: reads the frames now; its polls send them to the server a chunk at a
        time, then create the session (``.session``)."""
        frames, ijk_to_ras, values = self.frames_from_sequence(input_sequence)
        return TrackStart(self, frames, (input_sequence, objects, browser, threshold, model_every, output_name,
                                         ijk_to_ras, values))

    def _create_session(self, frames, frames_id, input_sequence, objects, browser, threshold, model_every,
                        output_name, ijk_to_ras, values) -> TrackSession:
        predictor = self.predictor
        if hasattr(predictor, "tracker"):  # a server: the tracker lives there, the frames are sent once
            tracker = predictor.tracker(frames, pause=True, frames_id=frames_id, threshold=threshold,
                                        model_every=model_every)
        else:
            from sonosam.track import Tracker

            tracker = Tracker(predictor, frames, threshold=threshold, model_every=model_every, pause=True)
        names, colors = [], []
        for i, spec in enumerate(objects):
            tracker.add_object(spec["name"], int(spec.get("frame", 0)), mask=spec.get("mask"), box=spec.get("box"),
                               points=spec.get("points"), labels=spec.get("labels"))
            names.append(spec["name"])
            colors.append(tuple(spec.get("color", DEFAULT_COLORS[i % len(DEFAULT_COLORS)])))
        output = self.scene.AddNewNodeByClass("vtkMRMLSequenceNode", output_name or self.scene.GenerateUniqueName(
            f"{input_sequence.GetName()} SonoSAMTrack"))
        output.SetIndexName(input_sequence.GetIndexName())
        output.SetIndexUnit(input_sequence.GetIndexUnit())
        output.SetIndexType(input_sequence.GetIndexType())
        session = TrackSession(tracker, input_sequence, output, ijk_to_ras, values, names, colors, browser,
                               shape=tuple(frames.shape[1:]))
        self.update_output(session)
        if browser is not None:
            self.show_output(session, browser)
        return session

    @staticmethod
    def end(session: TrackSession | None):
        """Free what the session holds outside the scene (a server's tracker keeps the loop's frames); its output
        nodes stay. The module calls it when a new session replaces it and when the scene closes."""
        if session is None:
            return
        if hasattr(session.tracker, "start"):   # a server's: never hold Slicer on a hung server
            from sonosam.client import GUI_POLL_SECONDS

            session.tracker.close(timeout=GUI_POLL_SECONDS)
        else:
            session.tracker.close()

    @staticmethod
    def show_output(session: TrackSession, browser):
        """Synchronise the output with ``browser``. The user's edits of the shown frame go into the output
        (Slicer's "save changes"), where ``edited_frames`` finds them, instead of being dropped when the frame
        changes; a master frame the cine lacks shows nothing and adds no item to the output."""
        output = session.output_sequence
        browser.AddSynchronizedSequenceNode(output)
        browser.SetSaveChanges(output, True)
        browser.SetMissingItemMode(output, browser.MissingItemSetToDefault)
        session.browser = browser

    def run(self, session: TrackSession, on_progress=None) -> TrackReport:
        """Track until done or until a frame needs attention (then ``report.paused``), waiting here; refreshes
        the output sequence and the confidence table. The module uses ``start_run`` (polled) instead.
        Refused while the output holds edits not yet used (``use_edits``), which the run would overwrite."""
        self._refuse_unused_edits(session, "Nothing tracked")
        r = session.tracker.run(on_progress=on_progress)
        if isinstance(r, dict):  # the server's report
            report = TrackReport(bool(r["paused"]), r["frame"], [event_dict(e) for e in r["events"]])
        else:
            report = TrackReport(r.paused, r.frame, [event_dict(e) for e in r.events])
        self.update_output(session)
        return report

    def start_run(self, session: TrackSession, rerun: bool = False) -> TrackRun:
        """Start tracking: a server job when the tracker is a server's, else run in-process now (refused as
        ``run`` is)."""
        self._refuse_unused_edits(session, "Nothing tracked")
        return TrackRun(self, session, rerun)

    def correct(self, session: TrackSession, frame: int, name: str, mask=None, box=None, points=None, labels=None):
        """The user's correction on a paused frame: a keyframe, never overwritten by later runs."""
        pending = self._refuse_unused_edits(session, "Nothing corrected", frame, keep=[name])
        mask = session.tracker.correct(frame, name, mask=mask, box=box, points=points, labels=labels)
        self.update_output(session, keep=pending - {(frame, name)})
        return mask

    def correct_from_segmentation(self, session: TrackSession, frame: int, segmentation_node, name: str | None = None):
        """Take the (edited, e.g. with the SonoSAM effect) segment(s) of ``segmentation_node`` as keyframes."""
        shape = session.shape
        found = [obj for obj in ([name] if name else session.names)
                 if segmentation_node.GetSegmentation().GetSegmentIdBySegmentName(obj)]
        if not found:
            raise SonoSAMError(f"Nothing corrected: '{segmentation_node.GetName()}' has no segment named "
                               f"{' or '.join(repr(n) for n in ([name] if name else session.names))}.")
        pending = self._refuse_unused_edits(session, "Nothing corrected", frame, keep=found)
        for obj in found:
            segment_id = segmentation_node.GetSegmentation().GetSegmentIdBySegmentName(obj)
            session.tracker.correct(frame, obj, mask=mask_from_segment(segmentation_node, segment_id, shape,
                                                                        session.ijk_to_ras))
        self.update_output(session, keep=pending - {(frame, obj) for obj in found})

    def accept(self, session: TrackSession, frame: int, name: str | None = None):
        """The tracker's mask of ``name`` (default: every object) on ``frame`` becomes a keyframe as it is, and the
        output shows it. All or nothing: refused, with nothing accepted, when an object has no mask there yet."""
        names = [name] if name else list(session.names)
        if name and name not in session.names:
            raise SonoSAMError(f"No tracked object {name!r}; tracked: {', '.join(session.names)}.")
        tracked = ~np.isnan(np.asarray(session.tracker.confidences(), float)[frame])   # columns: session.names
        untracked = [n for n in names if not tracked[session.names.index(n)]]
        if untracked:
            raise SonoSAMError(f"Nothing accepted: {', '.join(untracked)} has no mask on frame {frame} yet; run the "
                               "tracker to that frame, or correct it there.")
        pending = self._refuse_unused_edits(session, "Nothing accepted", frame)
        for n in names:
            session.tracker.accept(frame, n)
        self.update_output(session, keep=pending)

    def _shown_mask(self, session: TrackSession, t: int, name: str) -> np.ndarray:
        """Object ``name``'s mask in the output's item for frame ``t`` (found by its index value)."""
        item = session.output_sequence.GetDataNodeAtValue(session.index_values[t])
        segment_id = item.GetSegmentation().GetSegmentIdBySegmentName(name) if item is not None else ""
        return mask_from_segment(item, segment_id, session.shape) if segment_id else np.zeros(session.shape, bool)

    def edited_frames(self, session: TrackSession) -> dict:
        """{frame: [object names]} where the output differs from the tracker's masks: the user's edits (painted on
        the browser's proxy, which saves them into the output), not yet used as corrections."""
        self._require_output(session)
        edited = {}
        for name in session.names:
            tracked = session.tracker.masks(name)
            for t in range(len(tracked)):
                if not np.array_equal(self._shown_mask(session, t, name), tracked[t]):
                    edited.setdefault(t, []).append(name)
        return edited

    def output_digests(self, session: TrackSession) -> dict:
        """{(frame, name): digest} of the output's masks, to tell later which the user changed."""
        import hashlib

        return {(t, name): hashlib.blake2b(np.packbits(self._shown_mask(session, t, name)).tobytes()).digest()
                for t in range(len(session.index_values)) for name in session.names}

    def use_edits(self, session: TrackSession) -> dict:
        """Every edited object on every edited frame (``edited_frames``) becomes a keyframe with the mask the
        user left; returns what was used. Refused when nothing was edited."""
        edited = self.edited_frames(session)
        if not edited:
            raise SonoSAMError(f"Nothing to use: no frame of '{session.output_sequence.GetName()}' was edited. Paint "
                               "the correction on the shown frame of that output (Segment Editor) first.")
        for t, names in edited.items():
            for name in names:
                session.tracker.correct(t, name, mask=self._shown_mask(session, t, name))
        self.update_output(session)   # all of it: a keyframe can change the tracker's later frames too
        return edited

    def _refuse_unused_edits(self, session: TrackSession, what: str, frame: int | None = None, keep=()) -> set:
        """Refuse (nothing done) where an action would overwrite edits not yet used: on any frame, or on
        ``frame`` only (except the objects in ``keep``, which the action itself replaces). Returns every
        (frame, name) edited, for the output to keep as it is when the action rewrites it (``update_output``)."""
        edited = self.edited_frames(session)
        pending = {(t, name) for t, names in edited.items() for name in names}
        if frame is not None:
            edited = {t: [n for n in names if n not in keep] for t, names in edited.items() if t == frame}
            edited = {t: names for t, names in edited.items() if names}
        if edited:
            where = "; ".join(f"frame {t}: {', '.join(names)}" for t, names in list(edited.items())[:5])
            raise SonoSAMError(f"{what}: the output holds edits not yet used ({where}). Press 'Use my correction' "
                               "(console: use_edits(session)) to make them keyframes, or undo them first.")
        return pending

    def next_attention(self, session: TrackSession, after: int = -1):
        return session.tracker.next_attention(after)

    # ------------------------------------------------------------------------------------------ output
    def _segmentation_for_frame(self, session: TrackSession, t: int, masks: dict):
        import slicer
        import vtk
        from vtk.util import numpy_support

        node = slicer.vtkMRMLSegmentationNode()
        node.SetName(f"{session.output_sequence.GetName()} {t}")
        h, w = session.shape
        for name, color in zip(session.names, session.colors):
            segment_id = node.GetSegmentation().AddEmptySegment(name, name, list(color))
            mask = masks[name][t]
            if not mask.any():
                continue
            image = slicer.vtkOrientedImageData()
            image.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(session.ijk_to_ras))
            image.SetExtent(0, w - 1, 0, h - 1, 0, 0)
            image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
            numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = mask.astype(np.uint8).ravel()
            slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
                image, node, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
        return node

    @staticmethod
    def _require_output(session: TrackSession):
        if session.output_sequence.GetScene() is None:
            raise SonoSAMError(f"The output '{session.output_sequence.GetName()}' is no longer in the scene (deleted, "
                               "or the scene was closed): press Start to track again.")

    def update_output(self, session: TrackSession, frames=None, keep=()):
        """Write the tracker's masks into the output segmentation sequence (one item per input frame; by
        default only the items that differ), except the (frame, name) pairs in ``keep``, which stay as the
        output shows them."""
        self._require_output(session)
        seq = session.output_sequence
        masks = {name: np.array(session.tracker.masks(name)) for name in session.names}   # copies: edited below
        for t, name in keep:
            masks[name][t] = self._shown_mask(session, t, name)
        for t in (range(session.tracker.n_frames) if frames is None else frames):
            if frames is None and seq.GetDataNodeAtValue(session.index_values[t]) is not None and all(
                    np.array_equal(self._shown_mask(session, t, name), masks[name][t]) for name in session.names):
                continue
            seq.SetDataNodeAtValue(self._segmentation_for_frame(session, t, masks), session.index_values[t])
        self.update_confidence_table(session)

    def output_masks(self, session: TrackSession, name: str) -> np.ndarray:
        """(T, H, W) bool read back from the output sequence's segmentation nodes."""
        return self.sequence_masks(session.output_sequence, name, session.shape)

    @staticmethod
    def sequence_masks(sequence_node, name: str, shape) -> np.ndarray:
        out = np.zeros((sequence_node.GetNumberOfDataNodes(),) + tuple(shape), bool)
        for t in range(out.shape[0]):
            node = sequence_node.GetNthDataNode(t)
            segment_id = node.GetSegmentation().GetSegmentIdBySegmentName(name) if node is not None else ""
            if segment_id:
                out[t] = mask_from_segment(node, segment_id, shape)
        return out

    def update_confidence_table(self, session: TrackSession):
        """A table node (frame, confidence per object, intervention 0/1) and a plot chart over frames."""
        import slicer
        import vtk

        tracker = session.tracker
        if session.table is not None and session.table.GetScene() is None:   # the user deleted it: a new one
            session.table = session.chart = None
        if session.chart is not None and session.chart.GetScene() is None:
            session.chart = None
        if session.table is None:
            session.table = self.scene.AddNewNodeByClass("vtkMRMLTableNode", f"{session.output_sequence.GetName()} confidence")
        table = session.table.GetTable()
        table.Initialize()
        conf = tracker.confidences()
        flagged = {event_dict(e)["frame"] for e in tracker.events}
        columns = [("frame", np.arange(tracker.n_frames, dtype=float))]
        columns += [(f"{n} confidence", np.nan_to_num(conf[:, j], nan=0.0)) for j, n in enumerate(session.names)]
        columns += [("intervention", np.array([1.0 if t in flagged else 0.0 for t in range(tracker.n_frames)]))]
        for title, values in columns:
            array = vtk.vtkDoubleArray()
            array.SetName(title)
            for v in values:
                array.InsertNextValue(float(v))
            table.AddColumn(array)
        session.table.Modified()
        if session.chart is None:
            chart = self.scene.AddNewNodeByClass("vtkMRMLPlotChartNode", f"{session.output_sequence.GetName()} confidence")
            chart.SetTitle("SonoSAMTrack confidence")
            chart.SetXAxisTitle("frame")
            chart.SetYAxisTitle("confidence")
            for title, _ in columns[1:]:
                series = self.scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", title)
                series.SetAndObserveTableNodeID(session.table.GetID())
                series.SetXColumnName("frame")
                series.SetYColumnName(title)
                series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
                if title == "intervention":
                    series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatterBar)
                chart.AddAndObservePlotSeriesNodeID(series.GetID())
            session.chart = chart
        return session.table

    # ------------------------------------------------------------------------------------------ files
    def labelmap_sequence(self, session: TrackSession, name: str | None = None):
        """A new sequence of labelmap volumes (label i + 1 = object i), what `.seq.nrrd` stores."""
        import slicer
        import vtk
        from vtk.util import numpy_support

        from sonosam.track.outputs import segment_fields

        labels = session.tracker.labelmap()
        seq = self.scene.AddNewNodeByClass("vtkMRMLSequenceNode", name or f"{session.output_sequence.GetName()} labelmaps")
        seq.SetIndexName(session.output_sequence.GetIndexName())
        seq.SetIndexUnit(session.output_sequence.GetIndexUnit())
        seq.SetIndexType(session.output_sequence.GetIndexType())   # text indices would all read as 0 otherwise
        for key, value in segment_fields(session.names, session.colors).items():
            seq.SetAttribute(key, value)   # the storage node writes node attributes into the file's header
        h, w = labels.shape[1:]
        for t in range(labels.shape[0]):
            node = slicer.vtkMRMLLabelMapVolumeNode()
            image = vtk.vtkImageData()
            image.SetDimensions(w, h, 1)
            image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
            numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = labels[t].ravel()
            node.SetAndObserveImageData(image)
            node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(session.ijk_to_ras))
            seq.SetDataNodeAtValue(node, session.index_values[t])
        return seq

    def save_sequence(self, session: TrackSession, path: str, overwrite: bool = False):
        """Write the tracking result as `.seq.nrrd` through Slicer's volume sequence storage node, with the
        objects' names and colours in its header; written to a temp file and renamed, so a failed write leaves
        any earlier file as it was, and an existing file is only replaced with ``overwrite=True``."""
        from sonosam.io.atomic import atomic_output

        with atomic_output(path, overwrite) as tmp:
            seq = self.labelmap_sequence(session)
            storage = self.scene.AddNewNodeByClass("vtkMRMLVolumeSequenceStorageNode")
            storage.SetFileName(str(tmp))
            try:
                if not storage.WriteData(seq):
                    raise OSError(f"Slicer could not write {path}.")
            finally:
                self.scene.RemoveNode(storage)
                self.scene.RemoveNode(seq)
        return path

    def load_sequence(self, path: str, names=None, colors=None, name: str = "SonoSAMTrack loaded"):
        """Read a `.seq.nrrd` labelmap sequence (ours or Slicer's) into a new segmentation sequence, one
        segment per label; names and colours from ``names`` / ``colors``, else from the file's
        SonoSAMTrack_Segment fields."""
        import slicer
        from vtk.util import numpy_support

        from sonosam.errors import DataFileError

        if names is None:
            try:
                import nrrd

                header = nrrd.read_header(str(path))
                names, stored_colors = [], []
                while f"SonoSAMTrack_Segment{len(names)}_Name" in header:
                    field = f"SonoSAMTrack_Segment{len(names)}"
                    names.append(header[f"{field}_Name"])
                    if f"{field}_Color" in header:
                        stored_colors.append(tuple(float(v) for v in header[f"{field}_Color"].split()))
                colors = colors or (stored_colors if stored_colors and len(stored_colors) == len(names) else None)
            except Exception:  # pynrrd missing or unusual header: fall back to label numbers
                names = []
        labelmaps = self.scene.AddNewNodeByClass("vtkMRMLSequenceNode", name + " labelmaps")
        storage = self.scene.AddNewNodeByClass("vtkMRMLVolumeSequenceStorageNode")
        try:
            storage.SetFileName(str(path))
            if not storage.ReadData(labelmaps):
                raise DataFileError(f"Slicer could not read {path} as a volume sequence.")
            output = self.scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
            output.SetIndexName(labelmaps.GetIndexName())
            output.SetIndexUnit(labelmaps.GetIndexUnit())
            output.SetIndexType(labelmaps.GetIndexType())
            for t in range(labelmaps.GetNumberOfDataNodes()):
                volume = labelmaps.GetNthDataNode(t)
                image = volume.GetImageData()
                dims = image.GetDimensions()
                labels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0])[0]
                count = max(int(labels.max()), len(names))
                m = __import__("vtk").vtkMatrix4x4()
                volume.GetIJKToRASMatrix(m)
                node = slicer.vtkMRMLSegmentationNode()
                for label in range(1, count + 1):
                    seg_name = names[label - 1] if label - 1 < len(names) else f"Segment_{label}"
                    color = (colors or DEFAULT_COLORS)[(label - 1) % len(colors or DEFAULT_COLORS)]
                    segment_id = node.GetSegmentation().AddEmptySegment(seg_name, seg_name, list(color))
                    mask = labels == label
                    if not mask.any():
                        continue
                    oriented = slicer.vtkOrientedImageData()
                    oriented.SetImageToWorldMatrix(m)
                    oriented.SetExtent(0, dims[0] - 1, 0, dims[1] - 1, 0, 0)
                    oriented.AllocateScalars(__import__("vtk").VTK_UNSIGNED_CHAR, 1)
                    numpy_support.vtk_to_numpy(oriented.GetPointData().GetScalars())[:] = mask.astype(np.uint8).ravel()
                    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
                        oriented, node, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
                output.SetDataNodeAtValue(node, labelmaps.GetNthIndexValue(t))
            return output
        finally:
            self.scene.RemoveNode(storage)
            self.scene.RemoveNode(labelmaps)
