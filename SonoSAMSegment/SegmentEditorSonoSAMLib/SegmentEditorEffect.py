"""Segment Editor effect "SonoSAM": click / box prompts in any slice view, live preview, Apply / Cancel,
propagation through the volume.

Thin Qt layer over the Qt-free logic (SonoSAMSegmentLib.logic, tested headless): RAS -> slice geometry,
the model call, the writes. The model runs in a server process (SonoSAMSegmentLib.connection: a local
`sonosam serve` started by the SonoSAMSegment module, or a remote one); every wait here is a QTimer poll,
so the GUI thread never blocks on an encode or a propagation.

Mouse: left click = point inside; Shift + left click (or the "negative" toggle) = point outside; left
drag = box. Keys in a slice view: Enter = Apply. Escape is the Segment Editor's own "leave the effect",
which drops the preview. Writes go through ``scriptedEffect.modifySelectedSegmentByLabelmap``, so the
editor's masking (editable area, intensity range, modify other segments) applies.
"""

import logging
import os

import ctk
import numpy as np
import qt
import slicer
import vtk
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

from SonoSAMSegmentLib.connection import shared_connection
from SonoSAMSegmentLib.logic import (MODES, PromptSession, PropagationControl, SegmentationError, SegmentLogic,
                                     add_helper_node, cancel_quietly, editor_writer, show_preview)
from SonoSAMSegmentLib.ui import showErrors

DRAG_PIXELS = 6       # mouse travel that turns a click into a box
POLL_MS = 100         # timer period: every wait is a poll of at most this


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """Segment-Anything-family segmentation from clicks and boxes (SonoSAM)."""

    def __init__(self, scriptedEffect):
        scriptedEffect.name = "SonoSAM"
        scriptedEffect.title = "SonoSAM"
        scriptedEffect.perSegment = True
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        # All state is created here; nodes are created only on the first prompt after activate().
        self.logic = SegmentLogic(in_process=False)  # the model never loads in Slicer's process
        self.connection = shared_connection()
        self.session = None              # PromptSession, once there is a prompt
        self.preparedBox = None          # (volume ID, box) whose zoomed crops the server was last asked to encode
        self.previewNode = None
        self.markupsNode = None
        self.boxNode = None
        self.markupsObserver = None
        self.sceneObserver = None
        self.prefetchJob = None          # encode-ahead job on the server
        self.afterPrefetch = None        # what to run when it is done (the pending preview)
        self.propagation = PropagationControl()   # a running propagation, or a finished one held for its segment
        self.pressXY = None
        self.pressRAS = None
        self.pressView = None
        self.lastSliceToRAS = None
        self.widgets = None              # set by setupOptionsFrame
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.connect("timeout()", self._onTimer)

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        path = os.path.join(os.path.dirname(__file__), "SegmentEditorEffect.png")
        return qt.QIcon(path) if os.path.exists(path) else qt.QIcon()

    def helpText(self):
        return """<html>Segment with Segment-Anything-family models (SonoSAM).<p>
<b>Left click</b>: point inside the structure. <b>Shift + click</b> (or the toggle): point outside.
<b>Drag</b>: box around the structure. The mask is previewed at once; <b>Apply</b> (Enter in the view)
writes it into the selected segment on this slice (replace / add / remove), honouring the masking
settings below; <b>Cancel</b> drops it (Escape leaves the effect and drops it too).
The model runs in a SonoSAM server: the <b>SonoSAM Segment</b> module starts one on this computer,
or connects to a GPU host.</html>"""

    # -- options panel ------------------------------------------------------------------------------
    def setupOptionsFrame(self):
        self.connectionLabel = qt.QLabel("")
        self.connectionLabel.wordWrap = True
        self.connectButton = qt.QPushButton("Server...")
        self.connectButton.toolTip = "Start the local SonoSAM server or connect to a remote one (SonoSAM Segment module)"
        row = qt.QHBoxLayout()
        row.addWidget(self.connectionLabel, 1)
        row.addWidget(self.connectButton)
        self.scriptedEffect.addOptionsWidget(row)

        self.modeButtons = {}
        modeRow = qt.QHBoxLayout()
        group = qt.QButtonGroup(modeRow)
        for mode, text, tip in (("replace", "Replace", "Replace the segment on this slice"),
                                ("add", "Add", "Add the mask to the segment"),
                                ("remove", "Remove", "Remove the mask from the segment")):
            button = qt.QRadioButton(text)
            button.toolTip = tip
            group.addButton(button)
            modeRow.addWidget(button)
            self.modeButtons[mode] = button
        self.scriptedEffect.addLabeledOptionsWidget("Mode:", modeRow)

        self.negativeCheckBox = qt.QCheckBox("Next clicks are negative (outside)")
        self.negativeCheckBox.toolTip = "Or hold Shift while clicking"
        self.refineCheckBox = qt.QCheckBox("Refine the existing segment (use it as mask prompt)")
        self.localCheckBox = qt.QCheckBox("Each click changes only the part it is on")
        self.localCheckBox.toolTip = ("On: a click added to the preview changes it only where the model changed the "
                                      "clicked pixel, near the click, so a correction cannot undo what earlier "
                                      "clicks got right: it changes nothing nearer an earlier click of the other "
                                      "kind, and after a box it adds nothing outside the box (click outside it to "
                                      "grow past it). A click the model ignores changes the disk around it up to "
                                      "the mask's edge. "
                                      "Off: the model redraws the whole mask on every click (SAM's behaviour).")
        self.scriptedEffect.addOptionsWidget(self.negativeCheckBox)
        self.scriptedEffect.addOptionsWidget(self.refineCheckBox)
        self.scriptedEffect.addOptionsWidget(self.localCheckBox)

        # the seed check of a boxed preview: its warning and the alternatives, previewed when picked
        self.choiceLabel = qt.QLabel("")
        self.choiceLabel.wordWrap = True
        self.choiceLabel.setStyleSheet("color: #c05000")
        self.choiceCombo = qt.QComboBox()
        self.choiceCombo.toolTip = ("Other masks for your box (the model's other answers, the box's darker or "
                                    "brighter part): pick one to preview it on the slice; Apply writes the one "
                                    "shown, and Propagate starts from it. Where the check finds the model's answer "
                                    "to a box wrong, its suggestion is shown first; the model's answer stays at the "
                                    "top of the list.")
        self.choiceFrame = qt.QFrame()
        choiceRow = qt.QHBoxLayout(self.choiceFrame)
        choiceRow.setContentsMargins(0, 0, 0, 0)
        choiceRow.addWidget(qt.QLabel("Mask:"))
        choiceRow.addWidget(self.choiceCombo, 1)
        self.scriptedEffect.addOptionsWidget(self.choiceLabel)
        self.scriptedEffect.addOptionsWidget(self.choiceFrame)
        self._showChoices(None)

        self.statusLabel = qt.QLabel("")
        self.statusLabel.wordWrap = True
        self.busyBar = qt.QProgressBar()
        self.busyBar.setRange(0, 0)  # indeterminate until a job reports its total
        self.busyBar.visible = False
        self.scriptedEffect.addOptionsWidget(self.busyBar)
        self.scriptedEffect.addOptionsWidget(self.statusLabel)

        buttons = qt.QHBoxLayout()
        self.undoPromptButton = qt.QPushButton("Remove last point")
        self.cancelButton = qt.QPushButton("Cancel")
        self.cancelButton.toolTip = "Drop the preview and the prompts"
        self.applyButton = qt.QPushButton("Apply")
        self.applyButton.toolTip = "Write the preview into the selected segment (Enter). Ctrl+Z undoes it."
        for b in (self.undoPromptButton, self.cancelButton, self.applyButton):
            buttons.addWidget(b)
        self.scriptedEffect.addOptionsWidget(buttons)
        self._setupPropagate()

        # Signals last, once every widget holds its value: filling a widget must not write parameters.
        for button in self.modeButtons.values():
            button.connect("toggled(bool)", self.updateMRMLFromGUI)
        self.refineCheckBox.connect("toggled(bool)", self.updateMRMLFromGUI)
        self.localCheckBox.connect("toggled(bool)", self.updateMRMLFromGUI)
        self.connectButton.connect("clicked()", self.onServer)
        self.undoPromptButton.connect("clicked()", self.onRemoveLastPrompt)
        self.applyButton.connect("clicked()", self.onApply)
        self.cancelButton.connect("clicked()", self.onCancel)
        self.propagateButton.connect("clicked()", self.onPropagate)
        self.choiceCombo.connect("currentIndexChanged(int)", self.onChoice)
        self.stopButton.connect("clicked()", self.onStopPropagation)
        self.widgets = True

    def _setupPropagate(self):
        """"Propagate": carry the selected segment through the volume from its slices (a server job)."""
        self.propagateAxis = qt.QComboBox()
        self.propagateAxis.addItems(["axial", "coronal", "sagittal"])
        self.propagateRange = qt.QComboBox()
        self.propagateRange.addItems(["until the structure ends", "N slices", "between two slices"])
        self.propagateRange.toolTip = ("Until the structure ends: the model's stop rules end each front. "
                                       "N slices: at most N from each seed. Between two slices: you say where the "
                                       "structure starts and ends; no front runs past those slices (inside them "
                                       "the stop rules judge as usual).")
        self.propagateSlices = qt.QSpinBox()
        self.propagateSlices.setRange(1, 2000)
        self.propagateSlices.value = 10
        self.propagateFirst, self.propagateLast = qt.QSpinBox(), qt.QSpinBox()
        for spin in (self.propagateFirst, self.propagateLast):
            spin.setRange(0, 4000)
            spin.toolTip = ("Slice index along the axis (the volume's IJK index, as the Data Probe shows it; the "
                            "status line names slices the same way)")
        self.propagateDirection = qt.QComboBox()
        self.propagateDirection.addItems(["both", "forward", "backward"])
        self.propagateDirection.toolTip = "Forward = increasing slice index along the axis"
        self.propagateCarry = qt.QCheckBox("Carry the mask from slice to slice")
        self.propagateCarry.checked = True
        self.propagateCarry.toolTip = ("Where the model has a slice decoder (litemedsam_clicks: litemedsam_slices), it "
                                       "answers each propagated slice by continuing the previous slice's mask; "
                                       "seeds and high-contrast structures stay with the model. Off: the model "
                                       "answers every slice.")
        self.propagateButton = qt.QPushButton("Propagate")
        self.propagateButton.toolTip = ("Segment the selected segment on the other slices, starting from the slices "
                                        "it already has (kept as they are). After correcting a slice, click again: "
                                        "only the slices next to the correction are recomputed. Changed options (axis, range, "
                                        "direction, carry) start a new run, which replaces the slices the earlier "
                                        "one wrote. Ctrl+Z undoes it.")
        self.stopButton = qt.QPushButton("Stop")
        self.stopButton.toolTip = ("Cancel the propagation, or discard a finished one that waits for its segment to "
                                   "be selected again: nothing is written")
        self.stopButton.enabled = False
        form = qt.QFormLayout()
        form.addRow("Slice axis:", self.propagateAxis)
        form.addRow("Range:", self.propagateRange)
        form.addRow("Slices (N):", self.propagateSlices)
        between = qt.QHBoxLayout()
        for label, spin in (("", self.propagateFirst), ("to", self.propagateLast)):
            if label:
                between.addWidget(qt.QLabel(label))
            between.addWidget(spin)
            here = qt.QPushButton("here")
            here.toolTip = "The slice the view of this axis shows now"
            here.connect("clicked()", lambda spin=spin: self.onSliceHere(spin))
            between.addWidget(here)
        form.addRow("Between slices:", between)
        form.addRow("Direction:", self.propagateDirection)
        form.addRow("", self.propagateCarry)
        row = qt.QHBoxLayout()
        row.addWidget(self.propagateButton)
        row.addWidget(self.stopButton)
        form.addRow(row)
        box = ctk.ctkCollapsibleButton()
        box.text = "Propagate through the volume"
        box.collapsed = True
        box.setLayout(form)
        self.scriptedEffect.addOptionsWidget(box)

    def setMRMLDefaults(self):
        self.scriptedEffect.setParameterDefault("Mode", "replace")
        self.scriptedEffect.setParameterDefault("Refine", 1)
        self.scriptedEffect.setParameterDefault("LocalClicks", 1)

    def updateGUIFromMRML(self):
        if self.widgets is None or self.scriptedEffect.parameterSetNode() is None:
            return
        widgets = [self.refineCheckBox, self.localCheckBox] + list(self.modeButtons.values())
        blocked = [w.blockSignals(True) for w in widgets]
        try:
            self.refineCheckBox.checked = self.scriptedEffect.integerParameter("Refine") != 0
            self.localCheckBox.checked = self.scriptedEffect.integerParameter("LocalClicks") != 0
            mode = self.scriptedEffect.parameter("Mode")
            self.modeButtons.get(mode, self.modeButtons["replace"]).checked = True
        finally:
            for w, b in zip(widgets, blocked):
                w.blockSignals(b)
        self._updateButtons()

    def updateMRMLFromGUI(self, *unused):
        if self.scriptedEffect.parameterSetNode() is None:
            return
        self.scriptedEffect.setParameter("Refine", 1 if self.refineCheckBox.checked else 0)
        self.scriptedEffect.setParameter("LocalClicks", 1 if self.localCheckBox.checked else 0)
        for mode, button in self.modeButtons.items():
            if button.checked:
                self.scriptedEffect.setParameter("Mode", mode)

    def _updateButtons(self):
        hasPreview = self.session is not None and self.session.prediction is not None
        self.applyButton.enabled = hasPreview
        self.cancelButton.enabled = self.session is not None and not self.session.empty
        self.undoPromptButton.enabled = self.session is not None and bool(self.session.points_ras)
        busy = self.propagation.busy   # running, or finished and held for its segment
        self.propagateButton.enabled = not busy
        self.stopButton.enabled = busy
        self.connectionLabel.text = self.connection.status

    # -- life cycle ---------------------------------------------------------------------------------
    def activate(self):
        if self._onConnectionChanged not in self.connection.listeners:
            self.connection.listeners.append(self._onConnectionChanged)
        self._onConnectionChanged(self.connection)
        self.sceneObserver = slicer.mrmlScene.AddObserver(slicer.vtkMRMLScene.EndCloseEvent, self._onSceneClosed)
        self.timer.start()
        qt.QTimer.singleShot(0, self._startPrefetchForViews)

    def deactivate(self):
        self.timer.stop()
        if self._onConnectionChanged in self.connection.listeners:
            self.connection.listeners.remove(self._onConnectionChanged)
        if self.sceneObserver is not None:
            slicer.mrmlScene.RemoveObserver(self.sceneObserver)
            self.sceneObserver = None
        # leaving the effect (another effect, Escape, another module): a running propagation stops, nothing written;
        # a finished one waiting for its segment stays, to be written when the effect is back with it selected
        stopped = self._stopJobs(keepHeld=True)
        self.session = None
        self._removeHelperNodes()
        if self.widgets is not None:   # what the panel shows on return: nothing running
            self.busyBar.visible = False
            self.statusLabel.text = ("Propagation stopped when you left the SonoSAM effect: nothing was written."
                                     if stopped else "")

    def cleanup(self):
        """Called by Slicer before the effect is deleted (without deactivate() first): stop the timer, the jobs and
        the observers, and drop its connection."""
        self.timer.stop()
        self.timer.disconnect("timeout()", self._onTimer)
        if self._onConnectionChanged in self.connection.listeners:
            self.connection.listeners.remove(self._onConnectionChanged)
        if self.sceneObserver is not None:
            slicer.mrmlScene.RemoveObserver(self.sceneObserver)
            self.sceneObserver = None
        self._stopJobs()

    def _stopJobs(self, keepHeld: bool = False) -> bool:
        """Stop the encode-ahead and a running propagation, and discard a held one unless ``keepHeld`` (nothing is
        written); True when a propagation was stopped or discarded."""
        if self.prefetchJob is not None:
            cancel_quietly(self.prefetchJob)
        self.prefetchJob = self.afterPrefetch = None
        return self.propagation.end(keep_held=keepHeld)

    def _onConnectionChanged(self, connection):
        self.logic.set_predictor(connection.client)  # None when not connected
        if self.widgets is not None:
            self.connectionLabel.text = connection.status

    def _onSceneClosed(self, caller, event):
        # the scene close removed our helper nodes: forget them, and the prompts that were on them; a propagation
        # for the closed scene's segment stops (its write would be refused anyway)
        self.previewNode = self.markupsNode = self.boxNode = None
        self.markupsObserver = None
        self.session = None
        self._stopJobs()
        if self.widgets is not None:
            self.busyBar.visible = False
            self.statusLabel.text = ""
            self._showChoices(None)
            self._updateButtons()

    def onServer(self):
        slicer.util.selectModule("SonoSAMSegment")

    # -- helper nodes (created on the first prompt, removed on deactivate) ---------------------------
    def _ensureSession(self):
        if self.markupsNode is None or self.markupsNode.GetScene() is None:
            self.markupsNode = add_helper_node(slicer.mrmlScene, "vtkMRMLMarkupsFiducialNode", "SonoSAM prompts")
            display = self.markupsNode.GetDisplayNode()
            display.SetGlyphScale(2.0)
            display.SetSelectedColor(0.2, 0.9, 0.2)
            self.markupsObserver = self.markupsNode.AddObserver(
                slicer.vtkMRMLMarkupsNode.PointRemovedEvent, lambda *a: qt.QTimer.singleShot(0, self._onMarkupsEdited))
            self.session = None
        if self.boxNode is None or self.boxNode.GetScene() is None:
            self.boxNode = add_helper_node(slicer.mrmlScene, "vtkMRMLMarkupsLineNode", "SonoSAM box")
            self.boxNode.SetLocked(True)
            self.session = None
        if self.session is None:
            self.session = PromptSession(self.logic, self.markupsNode, self.boxNode)
        return self.session

    def _previewSegmentation(self):
        if self.previewNode is None or self.previewNode.GetScene() is None:
            self.previewNode = add_helper_node(slicer.mrmlScene, "vtkMRMLSegmentationNode", "SonoSAM preview")
            self.previewNode.GetDisplayNode().SetOpacity(0.6)
        return self.previewNode

    def _removeHelperNodes(self):
        if self.markupsNode is not None and self.markupsObserver is not None:
            self.markupsNode.RemoveObserver(self.markupsObserver)
        self.markupsObserver = None
        for attr in ("previewNode", "markupsNode", "boxNode"):
            node = getattr(self, attr)
            if node is not None and node.GetScene() is not None:
                slicer.mrmlScene.RemoveNode(node)
            setattr(self, attr, None)

    # -- mouse and keys -----------------------------------------------------------------------------
    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        if viewWidget.className() != "qMRMLSliceWidget":
            return False
        if eventId == vtk.vtkCommand.KeyPressEvent:
            key = callerInteractor.GetKeySym()
            if key in ("Return", "KP_Enter") and self.session is not None and self.session.prediction is not None:
                self.onApply()
                return True
            if key == "Escape" and self.session is not None and not self.session.empty:
                self.onCancel()
                return True
            return False
        parameterSet = self.scriptedEffect.parameterSetNode()
        volume = parameterSet.GetSourceVolumeNode() if parameterSet is not None else None
        if volume is None:
            return False
        xy = callerInteractor.GetEventPosition()
        if eventId == vtk.vtkCommand.LeftButtonPressEvent:
            if callerInteractor.GetControlKey() or callerInteractor.GetAltKey():
                return False  # leave Ctrl/Alt + click to Slicer (Ctrl+click is a right click on macOS)
            self.pressXY, self.pressView = xy, viewWidget
            self.pressRAS = self.xyToRas(xy, viewWidget)
            return True
        if eventId == vtk.vtkCommand.LeftButtonReleaseEvent and self.pressXY is not None:
            sliceToRAS = self._sliceToRAS(viewWidget)
            ras = self.xyToRas(xy, viewWidget)
            dragged = max(abs(xy[0] - self.pressXY[0]), abs(xy[1] - self.pressXY[1])) >= DRAG_PIXELS
            negative = bool(callerInteractor.GetShiftKey()) or self.negativeCheckBox.checked
            self.pressXY = None
            with showErrors("SonoSAM could not use this prompt."):
                self._requireServer()
                session = self._ensureSession()
                if dragged:
                    session.set_box(volume, self.pressRAS, ras, slice_to_ras=sliceToRAS)
                else:
                    session.add_point(volume, ras, not negative, slice_to_ras=sliceToRAS)
                self.lastSliceToRAS = sliceToRAS
                self._updatePreview(volume, sliceToRAS)
            return True
        return False

    def processViewNodeEvents(self, callerViewNode, eventId, viewWidget):
        # the slice moved: encode the new slice (and neighbours) on the server ahead of the first click
        if callerViewNode and callerViewNode.IsA("vtkMRMLSliceNode"):
            qt.QTimer.singleShot(0, self._startPrefetchForViews)

    @staticmethod
    def _sliceToRAS(viewWidget):
        m = viewWidget.sliceLogic().GetSliceNode().GetSliceToRAS()
        return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])

    def _requireServer(self):
        if self.connection.client is None:
            from sonosam.errors import SonoSAMError

            raise SonoSAMError("SonoSAM's server is not running: " + self.connection.status
                               + " Open the SonoSAM Segment module ('Server...') to start or connect it.")

    # -- model calls --------------------------------------------------------------------------------
    def _updatePreview(self, volume, sliceToRAS, encoded=False):
        parameterSet = self.scriptedEffect.parameterSetNode()
        segmentation = parameterSet.GetSegmentationNode()
        segmentId = parameterSet.GetSelectedSegmentID()
        session = self.session
        geometry = self.logic.slice_geometry(volume, sliceToRAS=sliceToRAS,
                                             points_ras=session.points_ras or None, box_ras=session.box_ras)
        if not encoded and not self.logic.is_cached(volume, geometry):
            # first prompt on this slice: the server encodes it; re-run this preview when it is done
            self._prefetch(self.logic.prefetch(volume, [geometry]),
                           then=lambda: self._updatePreview(volume, sliceToRAS, encoded=True))
            return
        box = (volume.GetID(), tuple(map(tuple, np.asarray(session.box_ras, float).tolist()))) \
            if session.box_ras is not None else None
        if box is not None and box != self.preparedBox:
            # a new box: the server encodes the zoomed crops its answer needs; re-run this preview when it is done
            self.preparedBox = box
            job = self.logic.prepare_box(volume, geometry, session.box_ras)
            if job is not None:
                self._prefetch(job, then=lambda: self._updatePreview(volume, sliceToRAS, encoded=True),
                               message="Zooming in on the box on the server...")
                return
        session.local_corrections = self.scriptedEffect.integerParameter("LocalClicks") != 0
        prediction = session.predict(volume, segmentation, segmentId, slice_to_ras=sliceToRAS,
                                     refine=self.scriptedEffect.integerParameter("Refine") != 0)
        # check the answer against the prompt (two more decodes at most) and offer the alternatives: for a box, its
        # darker or brighter part; for clicks alone, the region the first positive click is in. For a box's first
        # answer the session shows the check's suggestion where it makes one (the logic decides)
        choices = session.check(volume) if prediction is not None else None
        segment = segmentation.GetSegmentation().GetSegment(segmentId) if segmentId else None
        color = segment.GetColor() if segment is not None else (1.0, 1.0, 0.0)
        show_preview(self.logic, session.prediction, volume, self._previewSegmentation(), color)
        if prediction is not None and session.shown_choice:   # the check's suggestion, or a pick brought back
            shown = choices.labels[session.shown_choice].removesuffix(" (suggested)")
            self.statusLabel.text = f"Showing {shown}; the model's answer is first in the Mask list."
        elif prediction is not None:
            notes = " ".join(prediction.notes)
            self.statusLabel.text = f"Predicted IoU {prediction.score:.2f}. {notes}".strip()
        self._showChoices(choices)
        self._updateButtons()

    def _showChoices(self, choices):
        """Show the seed check's alternatives whenever there are any (also for a correction on another slice,
        where the box's darker or brighter part may be the better mask), and its warning when the answer
        disagrees with the box."""
        shown = choices is not None and len(choices.choices) > 1
        warned = shown and not choices.ok
        self.choiceLabel.text = f"Check this mask: {'; '.join(choices.problems)}." if warned else ""
        self.choiceLabel.visible = warned
        self.choiceFrame.visible = shown
        blocked = self.choiceCombo.blockSignals(True)
        try:
            self.choiceCombo.clear()
            if shown:
                self.choiceCombo.addItems(list(choices.labels))
                self.choiceCombo.currentIndex = self.session.shown_choice   # the one the preview shows
        finally:
            self.choiceCombo.blockSignals(blocked)

    def onChoice(self, index):
        """Preview the picked alternative; Apply writes it and Propagate starts from it."""
        if self.session is None or self.session.choices is None or index < 0:
            return
        parameterSet = self.scriptedEffect.parameterSetNode()
        volume = parameterSet.GetSourceVolumeNode()
        segmentation = parameterSet.GetSegmentationNode()
        segmentId = parameterSet.GetSelectedSegmentID()
        with showErrors("SonoSAM could not show this mask."):
            prediction = self.session.choose(index)
            segment = segmentation.GetSegmentation().GetSegment(segmentId) if segmentId else None
            color = segment.GetColor() if segment is not None else (1.0, 1.0, 0.0)
            show_preview(self.logic, prediction, volume, self._previewSegmentation(), color)
            self.statusLabel.text = " ".join(prediction.notes)
        self._updateButtons()

    def _prefetch(self, job, then=None, message="Computing the image embedding on the server..."):
        """Poll an encode job from the timer (its polls send the slices, then start it); ``then`` when done."""
        if self.prefetchJob is not None:
            cancel_quietly(self.prefetchJob)
        self.prefetchJob = job
        self.afterPrefetch = then
        self.busyBar.visible = True
        self.statusLabel.text = message

    def _onTimer(self):
        """Every POLL_MS: advance the server connection, the encode-ahead job and a running propagation
        (each drops its job before an error is shown, so an error is shown once, not on every tick)."""
        self.connection.poll()
        with showErrors("SonoSAM could not encode this slice."):
            self._pollPrefetch()
        with showErrors("SonoSAM could not propagate the segment."):
            self._pollPropagation()

    def _pollPrefetch(self):
        job = self.prefetchJob
        if job is None:
            return
        try:
            finished = job.done
        except Exception:
            self.prefetchJob = self.afterPrefetch = None
            self.busyBar.visible = self.propagation.running is not None
            raise
        if not finished:
            return
        self.prefetchJob = None
        self.busyBar.visible = self.propagation.running is not None
        self.statusLabel.text = ""
        then, self.afterPrefetch = self.afterPrefetch, None
        job.wait(0)  # raises the server's error, if any
        if then is not None and not job.cancelled:
            then()

    def _startPrefetchForViews(self):
        """Encode the slice shown in each visible slice view (and its neighbours) ahead of the first click."""
        parameterSet = self.scriptedEffect.parameterSetNode()
        volume = parameterSet.GetSourceVolumeNode() if parameterSet is not None else None
        if volume is None or self.connection.client is None or self.prefetchJob is not None:
            return
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:
            return
        with showErrors("SonoSAM could not encode ahead."):
            shown = []
            for name in layoutManager.sliceViewNames():
                widget = layoutManager.sliceWidget(name)
                # sliceViewNames() also lists views of other layouts: only those on screen now
                if widget is not None and widget.isVisible() and widget.mrmlSliceNode().IsViewVisibleInLayout():
                    shown.append(self._sliceToRAS(widget))
            job = self.logic.encode_ahead(volume, shown, radius=1)   # one short request; the slices go from the timer
            if job is not None:
                self._prefetch(job)

    # -- buttons ------------------------------------------------------------------------------------
    def onApply(self):
        if self.session is None or self.session.prediction is None:
            return
        if self.scriptedEffect.confirmCurrentSegmentVisible() == self.scriptedEffect.NotConfirmed:
            return
        parameterSet = self.scriptedEffect.parameterSetNode()
        volume = parameterSet.GetSourceVolumeNode()
        segmentation = parameterSet.GetSegmentationNode()
        segmentId = parameterSet.GetSelectedSegmentID()
        mode = self.scriptedEffect.parameter("Mode") or "replace"
        if mode not in MODES:
            mode = "replace"
        with showErrors("SonoSAM could not write the segment."):
            self.logic.apply(self.session.prediction, volume, segmentation, segmentId, mode, modify=self._writer())
            self.onCancel()

    def _writer(self):
        """The logic's writer (see logic.editor_writer): the Segment Editor's own, with its masking."""
        return editor_writer(self.scriptedEffect.parameterSetNode(), self._modify,
                             before_first_write=self._saveStateForUndo)

    def _saveStateForUndo(self, segmentationNode, segmentId):
        # the effect writes into the editor's selected segment: it must still be the one the result is for
        parameterSet = self.scriptedEffect.parameterSetNode()
        if segmentationNode is not parameterSet.GetSegmentationNode() or segmentId != parameterSet.GetSelectedSegmentID():
            segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
            name = segment.GetName() if segment is not None else segmentId
            raise SegmentationError(f"The selected segmentation or segment changed: this result is for '{name}' of "
                                    f"'{segmentationNode.GetName()}'. Select it again and repeat (Apply, or Propagate); "
                                    "nothing was written.")
        self.scriptedEffect.saveStateForUndo()

    def _modify(self, segmentationNode, segmentId, labelmap, mode, extent):
        modes = {"add": slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeAdd,
                 "remove": slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeRemove}
        # bypassMasking given: PythonQt must pick the (labelmap, mode, QList<int> extent, bool bypassMasking) overload,
        # never (labelmap, mode, bool bypassMasking), which would write the whole labelmap past the editor's masking
        self.scriptedEffect.modifySelectedSegmentByLabelmap(labelmap, modes[mode], [int(e) for e in extent], False)

    def onCancel(self):
        if self.session is not None:
            self.session.clear()
        if self.widgets is not None:
            self._showChoices(None)
        if self.previewNode is not None and self.previewNode.GetScene() is not None:
            self.previewNode.GetSegmentation().RemoveAllSegments()
        self.statusLabel.text = ""
        self._updateButtons()

    def onRemoveLastPrompt(self):
        if self.session is None or not self.session.points_ras:
            return
        self.session.remove_point(len(self.session.points_ras) - 1)
        self._onMarkupsEdited()

    def _onMarkupsEdited(self):
        if self.session is None:
            return
        self.session.sync_from_markups()
        parameterSet = self.scriptedEffect.parameterSetNode()
        volume = parameterSet.GetSourceVolumeNode() if parameterSet is not None else None
        with showErrors("SonoSAM could not update the preview."):
            if self.session.empty or volume is None:
                self.onCancel()
            else:
                self._updatePreview(volume, self.lastSliceToRAS)

    # -- propagation (a server job, polled) -----------------------------------------------------------
    def onPropagate(self):
        if self.propagation.running is not None:
            return
        if self.scriptedEffect.confirmCurrentSegmentVisible() == self.scriptedEffect.NotConfirmed:
            return
        parameterSet = self.scriptedEffect.parameterSetNode()
        nSlices = self.propagateSlices.value if self.propagateRange.currentText == "N slices" else None
        span = (self.propagateFirst.value, self.propagateLast.value) \
            if self.propagateRange.currentText == "between two slices" else None
        with showErrors("SonoSAM could not start the propagation."):
            if self.session is not None and self.session.prediction is not None:   # it would be thrown away
                raise SegmentationError("A preview is shown but not applied: Apply it first (Propagate starts from "
                                        "the segment's slices), or Cancel it.")
            self._requireServer()
            self.onCancel()
            plan = self.logic.plan_propagation(parameterSet.GetSourceVolumeNode(), parameterSet.GetSegmentationNode(),
                                               parameterSet.GetSelectedSegmentID(), self.propagateAxis.currentText,
                                               direction=self.propagateDirection.currentText, maxSlices=nSlices,
                                               carry=self.propagateCarry.checked, span=span)
            self.propagation.start(self.logic.start_propagation(plan))
            self.busyBar.setRange(0, 0)
            self.busyBar.visible = True
            self.statusLabel.text = "Propagating on the server..."
        self._updateButtons()

    def onSliceHere(self, spin):
        """Fill a "between two slices" box with the slice shown in the first view of the chosen axis."""
        axis = self.propagateAxis.currentText
        layoutManager = slicer.app.layoutManager()
        views = [layoutManager.sliceWidget(name).mrmlSliceNode() for name in layoutManager.sliceViewNames()]
        view = next((v for v in views if v.GetOrientation().lower() == axis), None)
        volume = self.scriptedEffect.parameterSetNode().GetSourceVolumeNode()
        if view is None or volume is None:
            self.statusLabel.text = f"No {axis} slice view (or no source volume) to take the slice from."
            return
        sliceToRAS = view.GetSliceToRAS()
        with showErrors("SonoSAM could not find that slice."):
            spin.value = self.logic.slice_index(volume, axis, [sliceToRAS.GetElement(i, 3) for i in range(3)])

    def onStopPropagation(self):
        """Cancel a running propagation, or discard a finished one held for its segment (the logic's rules)."""
        discarding = self.propagation.running is None and self.propagation.held is not None
        message = self.propagation.stop()
        if message is not None:
            self.statusLabel.text = message
        if discarding:   # as before: the encode-ahead stops with it, and Propagate is back
            self._stopJobs()
            self._updateButtons()

    def _pollPropagation(self):
        """A tick of the propagation (PropagationControl decides: progress, hold, write, errors); shown here."""
        parameterSet = self.scriptedEffect.parameterSetNode()
        running = self.propagation.running is not None
        try:
            tick = self.propagation.poll(parameterSet.GetSegmentationNode() if parameterSet is not None else None,
                                         parameterSet.GetSelectedSegmentID() if parameterSet is not None else None,
                                         self._writer)
        except Exception:
            if running:
                self.busyBar.visible = False
            self._updateButtons()
            raise
        if tick.progress is not None:
            self.busyBar.setRange(0, tick.progress[1])
            self.busyBar.value = tick.progress[0]
        if tick.ended:
            self.busyBar.visible = False
        if tick.changed:
            self._updateButtons()
        if tick.status is not None:
            self.statusLabel.text = tick.status


logging.debug("SonoSAM Segment Editor effect loaded")
