"""SonoSAMTrack: segment structures on one frame of an ultrasound cine (a Slicer sequence) and track them through
the loop, asking for a correction when confidence drops.

The widget is a thin adapter: the work is in ``SonoSAMTrackLib/logic.py`` (Qt-free, tested headless) and in
the ``sonosam.track`` core."""

import numpy as np
import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)


class SonoSAMTrack(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SonoSAM Track"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Sequences", "Segmentations"]
        self.parent.contributors = ["SonoSAM developers"]
        self.parent.helpText = (
            "Track segmented structures through an ultrasound cine loop (Slicer sequence). Draw one segment per "
            "structure on a frame (e.g. with the SonoSAM effect), press Start: the tracker stops on frames where "
            "its confidence is low; correct the paused frame (SonoSAM effect) and press 'Use my correction', or "
            "'Accept frame', then Resume. Corrected and accepted frames are never overwritten.")
        self.parent.acknowledgementText = "Builds on Segment Anything (Meta AI) and LiteMedSAM (Apache-2.0)."


class _PauseRequested(Exception):
    pass


class SonoSAMTrackWidget(ScriptedLoadableModuleWidget):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        widget = slicer.util.loadUI(self.resourcePath("UI/SonoSAMTrack.ui"))
        self.layout.addWidget(widget)
        self.ui = slicer.util.childWidgetVariables(widget)
        widget.setMRMLScene(slicer.mrmlScene)
        self.logic = SonoSAMTrackLogic()
        self.session = None
        self._pauseRequested = False
        self.ui.startButton.connect("clicked(bool)", self.onStart)
        self.ui.pauseButton.connect("clicked(bool)", self.onPause)
        self.ui.resumeButton.connect("clicked(bool)", self.onResume)
        self.ui.nextAttentionButton.connect("clicked(bool)", self.onNextAttention)
        self.ui.acceptButton.connect("clicked(bool)", self.onAccept)
        self.ui.useCorrectionButton.connect("clicked(bool)", self.onUseCorrection)

    def _browser(self):
        return self.ui.browserSelector.currentNode()

    def _currentFrame(self):
        browser = self._browser()
        return browser.GetSelectedItemNumber() if browser is not None else 0

    def _goTo(self, frame):
        browser = self._browser()
        if browser is not None and frame is not None:
            browser.SetSelectedItemNumber(int(frame))

    def onStart(self):
        with slicer.util.tryWithErrorDisplay("Could not start tracking.", waitCursor=True):
            sequence = self.ui.inputSequenceSelector.currentNode()
            segmentation = self.ui.segmentationSelector.currentNode()
            if sequence is None or segmentation is None:
                raise ValueError("Choose the cine sequence and a segmentation with one segment per structure.")
            frame = self._currentFrame()
            core = self.logic.core()
            frames, _, _ = core.frames_from_sequence(sequence)
            from SonoSAMTrackLib.logic import mask_from_segment

            objects = []
            seg = segmentation.GetSegmentation()
            for i in range(seg.GetNumberOfSegments()):
                segment_id = seg.GetNthSegmentID(i)
                mask = mask_from_segment(segmentation, segment_id, frames.shape[1:])
                if mask.any():
                    objects.append({"name": seg.GetSegment(segment_id).GetName(), "frame": frame, "mask": mask,
                                    "color": seg.GetSegment(segment_id).GetColor()})
            if not objects:
                raise ValueError("The segmentation has no non-empty segment on the current frame.")
            self.session = core.start(sequence, objects, browser=self._browser(),
                                      threshold=self.ui.thresholdSlider.value,
                                      model_every=self.ui.modelEverySpinBox.value)
            self._showChart()
        self.onResume()

    def _progress(self, done, total):
        self.ui.statusLabel.text = f"Tracking: {done}/{total} frames"
        slicer.app.processEvents()
        if self._pauseRequested:
            raise _PauseRequested()

    def onPause(self):
        self._pauseRequested = True

    def onResume(self):
        if self.session is None:
            return
        self._pauseRequested = False
        core = self.logic.core()
        with slicer.util.tryWithErrorDisplay("Tracking failed.", waitCursor=True):
            try:
                report = core.run(self.session, on_progress=self._progress)
            except _PauseRequested:
                core.update_output(self.session)
                self.ui.statusLabel.text = "Paused."
                return
            if report.paused:
                reasons = "; ".join(f"{e.object}: {e.reason}" for e in report.events)
                self.ui.statusLabel.text = f"Frame {report.frame} needs attention - {reasons}"
                self._goTo(report.frame)
            else:
                count = len(self.session.tracker.events)
                self.ui.statusLabel.text = f"Done: {self.session.tracker.n_frames} frames, {count} intervention request(s)."

    def onNextAttention(self):
        if self.session is not None:
            frame = self.logic.core().next_attention(self.session, self._currentFrame())
            self.ui.statusLabel.text = "No frame needs attention." if frame is None else f"Frame {frame} needs attention."
            self._goTo(frame)

    def onAccept(self):
        if self.session is not None:
            with slicer.util.tryWithErrorDisplay("Could not accept the frame."):
                for name in self.session.names:
                    self.logic.core().accept(self.session, self._currentFrame(), name)

    def onUseCorrection(self):
        """The browser's proxy segmentation for the output sequence holds what the user edited on this frame."""
        if self.session is None:
            return
        with slicer.util.tryWithErrorDisplay("Could not use the correction."):
            proxy = self._browser().GetProxyNode(self.session.output_sequence) if self._browser() else None
            if proxy is None:
                raise ValueError("Select the sequence browser that shows the tracking output.")
            self.logic.core().correct_from_segmentation(self.session, self._currentFrame(), proxy)
            self.ui.statusLabel.text = f"Frame {self._currentFrame()} corrected (keyframe). Press Resume."

    def _showChart(self):
        layout = slicer.app.layoutManager()
        if layout is None or self.session.chart is None:
            return
        layout.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotView)
        plot_widget = layout.plotWidget(0)
        if plot_widget is not None:
            plot_widget.mrmlPlotViewNode().SetPlotChartNodeID(self.session.chart.GetID())


class SonoSAMTrackLogic(ScriptedLoadableModuleLogic):
    """Slicer-side wrapper around the Qt-free ``SonoSAMTrackLib.logic.SonoSAMTrackLogic`` (``core()``)."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._core = None

    def core(self):
        if self._core is None:
            from SonoSAMTrackLib.logic import SonoSAMTrackLogic as CoreLogic

            self._core = CoreLogic(slicer.mrmlScene)
        return self._core


class SonoSAMTrackTest(ScriptedLoadableModuleTest):
    def runTest(self):
        slicer.mrmlScene.Clear()
        self.test_track_small_sequence()

    def test_track_small_sequence(self):
        """Track a disc moving across 4 synthetic frames (known truth) through a real sequence node."""
        import vtk
        from vtk.util import numpy_support

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
        core = SonoSAMTrackLogic().core()
        session = core.start(seq, [{"name": "disc", "frame": 0, "mask": truth[0]}], threshold=0.0, model_every=10)
        core.run(session)
        masks = core.output_masks(session, "disc")
        for t in range(4):
            inter = (masks[t] & truth[t]).sum()
            self.assertGreater(2 * inter / (masks[t].sum() + truth[t].sum()), 0.85)
        self.delayDisplay("SonoSAMTrack test passed")
