"""SonoSAMTrack: segment structures on one frame of an ultrasound cine (a Slicer sequence) and track them through
the loop, asking for a correction when confidence drops.

Module / Widget / Logic / Test like SonoSAMSegment: the Logic is the Qt-free ``SonoSAMTrackLib.logic.TrackLogic``
(tested headless); the tracker runs in the SonoSAM server that the SonoSAM Segment module starts or connects
(SonoSAMSegmentLib.connection), as a job this widget polls with a QTimer, so the GUI never waits on it."""


import logging

import numpy as np
import qt
import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from SonoSAMSegmentLib import connection as conn
from SonoSAMSegmentLib.ui import showErrors
from SonoSAMTrackLib.logic import TrackLogic, mask_from_segment

POLL_MS = 100


class SonoSAMTrack(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SonoSAM Track"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Sequences", "Segmentations", "SonoSAMSegment"]  # its server connection
        self.parent.contributors = ["SonoSAM developers"]
        self.parent.helpText = (
            "Track segmented structures through an ultrasound cine loop (Slicer sequence). Draw one segment per "
            "structure on a frame (e.g. with the SonoSAM effect), press Start: the tracker stops on frames where "
            "its confidence is low; correct the paused frame (SonoSAM effect) and press 'Use my correction', or "
            "'Accept frame', then Resume. Corrected and accepted frames are never overwritten. The tracker runs "
            "in the SonoSAM server (start it in the SonoSAM Segment module).")
        self.parent.acknowledgementText = "Builds on Segment Anything (Meta AI) and LiteMedSAM (Apache-2.0)."


class SonoSAMTrackWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.connection = conn.shared_connection()
        self.session = None
        self.run = None               # TrackRun while the server tracks
        self.starting = None          # TrackStart while the frames travel to the server
        self.timer = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        widget = slicer.util.loadUI(self.resourcePath("UI/SonoSAMTrack.ui"))
        self.layout.addWidget(widget)
        self.ui = slicer.util.childWidgetVariables(widget)
        widget.setMRMLScene(slicer.mrmlScene)
        self.logic = SonoSAMTrackLogic()
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.connect("timeout()", self.onTimer)
        self.ui.startButton.connect("clicked(bool)", self.onStart)
        self.ui.pauseButton.connect("clicked(bool)", self.onPause)
        self.ui.resumeButton.connect("clicked(bool)", self.onResume)
        self.ui.nextAttentionButton.connect("clicked(bool)", self.onNextAttention)
        self.ui.acceptButton.connect("clicked(bool)", self.onAccept)
        self.ui.useCorrectionButton.connect("clicked(bool)", self.onUseCorrection)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.updateButtons()

    def cleanup(self):
        self.removeObservers()
        if self.timer is not None:   # None when setup() failed before making it
            self.timer.stop()

    def onSceneStartClose(self, caller, event):
        """The session's nodes go with the scene: stop what runs for it and forget it, so that the buttons say
        what is possible (Start) instead of every action failing on the missing output."""
        for job in (self.starting, self.run):
            if job is not None:
                try:
                    job.cancel()
                except Exception:  # the server may be gone already; nothing of this session is kept anyway
                    pass
        self._end(self.session)
        self.session = self.run = self.starting = None
        if self.timer is not None:
            self.timer.stop()
        self.ui.statusLabel.text = "The scene was closed: press Start to track again."
        self.updateButtons()

    def _end(self, session):
        try:
            self.logic.end(session)
        except Exception as error:  # best effort: the server may be gone, and it drops old trackers itself
            logging.warning(f"SonoSAM Track: could not free a tracking session on the server: {error}")

    def updateButtons(self):
        running = self.run is not None or self.starting is not None
        self.ui.startButton.enabled = not running
        self.ui.pauseButton.enabled = running
        for button in (self.ui.resumeButton, self.ui.nextAttentionButton, self.ui.acceptButton,
                       self.ui.useCorrectionButton):
            button.enabled = self.session is not None and not running

    def _browser(self):
        return self.ui.browserSelector.currentNode()

    def _currentFrame(self, sequence=None):
        """The frame of the cine (the session's, or ``sequence``) the browser shows; refused for another cine's."""
        return self.logic.browser_frame(self._browser(), sequence or self.session.input_sequence)

    def _goTo(self, frame):
        browser = self._browser()
        if browser is not None and frame is not None:
            self.logic.show_frame(browser, self.session.input_sequence, frame)

    def _requireServer(self):
        self.connection.poll()
        if self.connection.client is None:
            raise RuntimeError("SonoSAM's server is not running (" + self.connection.status + "). Start it, or "
                               "connect to a remote one, in the SonoSAM Segment module.")
        self.logic.set_predictor(self.connection.client)

    def onStart(self):
        with showErrors("Could not start tracking."):
            self._requireServer()
            sequence = self.ui.inputSequenceSelector.currentNode()
            segmentation = self.ui.segmentationSelector.currentNode()
            if sequence is None or segmentation is None:
                raise ValueError("Choose the cine sequence and a segmentation with one segment per structure.")
            frame = self._currentFrame(sequence)
            frames, ijk_to_ras, _ = self.logic.frames_from_sequence(sequence)
            objects = []
            seg = segmentation.GetSegmentation()
            for i in range(seg.GetNumberOfSegments()):
                segment_id = seg.GetNthSegmentID(i)
                mask = mask_from_segment(segmentation, segment_id, frames.shape[1:], ijk_to_ras)
                if mask.any():
                    objects.append({"name": seg.GetSegment(segment_id).GetName(), "frame": frame, "mask": mask,
                                    "color": seg.GetSegment(segment_id).GetColor()})
            if not objects:
                raise ValueError("The segmentation has no non-empty segment on the current frame.")
            # the timer's polls send the frames a chunk at a time, then create the session (onTimer)
            self.starting = self.logic.begin(sequence, objects, browser=self._browser(),
                                             threshold=self.ui.thresholdSlider.value,
                                             model_every=self.ui.modelEverySpinBox.value)
            self.ui.statusLabel.text = "Sending the loop to the server..."
            self.updateButtons()
            self.timer.start()

    def _startRun(self):
        self.run = self.logic.start_run(self.session)
        self.ui.statusLabel.text = "Tracking on the server..."
        self.updateButtons()
        self.timer.start()

    def onTimer(self):
        self.connection.poll()
        if self.starting is not None:
            self._pollStart()
            return
        run = self.run
        if run is None:
            self.timer.stop()
            return
        with showErrors("Tracking failed."):
            try:
                state, done, total = run.poll()
            except Exception:  # the server is gone: the run is over, the output keeps what it had
                self.run = None
                self.updateButtons()
                raise
            if state not in ("done", "failed", "cancelled"):
                self.ui.statusLabel.text = f"Tracking: {done}/{total} frames"
                return
            self.run = None
            self.updateButtons()
            report = run.finish()  # raises the job's error if it failed
            kept = (f" Your edits on frame(s) {', '.join(map(str, report.kept))} made while it ran were kept: "
                    "press 'Use my correction' or undo them." if report.kept else "")
            if report.paused and report.frame is None:
                self.ui.statusLabel.text = "Paused: every frame tracked so far is kept. Resume to go on." + kept
            elif report.paused:
                reasons = "; ".join(f"{e['object']}: {e['reason']}" for e in report.events)
                self.ui.statusLabel.text = f"Frame {report.frame} needs attention - {reasons}." + kept
                self._goTo(report.frame)
            else:
                count = len(self.session.tracker.events)
                self.ui.statusLabel.text = (f"Done: {self.session.tracker.n_frames} frames, {count} intervention "
                                            "request(s)." + kept)

    def _pollStart(self):
        with showErrors("Could not start tracking."):
            try:
                state, _, _, message = self.starting.poll()
            except Exception:
                self.starting = None
                self.updateButtons()
                raise
            if state != "done":
                self.ui.statusLabel.text = f"Starting: {message}"
                return
            previous, self.session, self.starting = self.session, self.starting.session, None
            self._end(previous)
            self._showChart()
            self._startRun()

    def onPause(self):
        if self.starting is not None:  # still sending the frames: nothing is tracked yet, nothing kept
            self.starting.cancel()
            self.starting = None
            self.ui.statusLabel.text = "Start cancelled: nothing was tracked."
            self.updateButtons()
            return
        if self.run is not None:
            with showErrors("Could not pause."):
                self.run.cancel()  # the server stops between frames; what is tracked (and requested) is kept
                self.ui.statusLabel.text = "Pausing..."

    def onResume(self):
        if self.session is None or self.run is not None:
            return
        with showErrors("Could not resume tracking."):
            self._requireServer()
            self._startRun()

    def onNextAttention(self):
        if self.session is not None:
            with showErrors("Could not find the next frame."):
                frame = self.logic.next_attention(self.session, self._currentFrame())
                self.ui.statusLabel.text = ("No frame needs attention." if frame is None
                                            else f"Frame {frame} needs attention.")
                self._goTo(frame)

    def onAccept(self):
        if self.session is not None:
            with showErrors("Could not accept the frame."):
                self.logic.accept(self.session, self._currentFrame())

    def onUseCorrection(self):
        """What the user painted on the output's frames (the browser saves proxy edits into it) becomes keyframes."""
        if self.session is None:
            return
        with showErrors("Could not use the correction."):
            edited = self.logic.use_edits(self.session)
            self.ui.statusLabel.text = (f"Frame(s) {', '.join(str(t) for t in edited)} corrected (keyframes). "
                                        "Press Resume.")

    def _showChart(self):
        layout = slicer.app.layoutManager()
        if layout is None or self.session.chart is None:
            return
        layout.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotView)
        plot_widget = layout.plotWidget(0)
        if plot_widget is not None:
            plot_widget.mrmlPlotViewNode().SetPlotChartNodeID(self.session.chart.GetID())


class SonoSAMTrackLogic(TrackLogic, ScriptedLoadableModuleLogic):
    """The Qt-free TrackLogic on Slicer's scene, with the shared SonoSAM server as its predictor. TrackLogic comes
    first: ScriptedLoadableModuleLogic.__init__ calls super().__init__() with no arguments, which would reach
    TrackLogic.__init__ (it needs the scene) if TrackLogic came after it."""

    def __init__(self, predictor=None):
        ScriptedLoadableModuleLogic.__init__(self)
        TrackLogic.__init__(self, slicer.mrmlScene, predictor or conn.shared_connection().client)


class SonoSAMTrackTest(ScriptedLoadableModuleTest):
    def runTest(self):
        slicer.mrmlScene.Clear()
        self.test_track_small_sequence()

    def test_track_small_sequence(self):
        """Track a disc moving across 4 synthetic frames (known truth) through a real sequence node, on the
        connected SonoSAM server (skipped without one)."""
        import vtk
        from vtk.util import numpy_support

        client = conn.shared_connection().client
        if client is None:
            self.delayDisplay("No SonoSAM server connected: start one in SonoSAM Segment to run this test")
            return
        seq = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceNode", "cine")
        yy, xx = np.mgrid[:96, :128]
        truth = []
        rng = np.random.default_rng(0)
        for t in range(4):
            disc = (xx - 50 - 3 * t) ** 2 + (yy - 48) ** 2 < 20 ** 2
            frame = np.where(disc, 40, 160) + rng.normal(0, 10, disc.shape)
            node = slicer.vtkMRMLScalarVolumeNode()
            image = vtk.vtkImageData()
            image.SetDimensions(128, 96, 1)
            image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
            numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = np.clip(frame, 0, 255).astype(np.uint8).ravel()
            node.SetAndObserveImageData(image)
            seq.SetDataNodeAtValue(node, str(t))
            truth.append(disc)
        logic = SonoSAMTrackLogic(client)
        session = logic.start(seq, [{"name": "disc", "frame": 0, "mask": truth[0]}], threshold=0.0, model_every=10)
        logic.run(session)
        masks = logic.output_masks(session, "disc")
        for t in range(4):
            inter = (masks[t] & truth[t]).sum()
            self.assertGreater(2 * inter / (masks[t].sum() + truth[t].sum()), 0.85)
        self.delayDisplay("SonoSAMTrack test passed")
