"""SonoSAMTrack: segment structures on the first frame of an ultrasound cine (a Slicer sequence) and
track them through the loop, asking for a correction when confidence drops. (Placeholder module: the
tracker logic and UI are added by the tracking work.)"""

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
        self.parent.helpText = "Track segmented structures through an ultrasound cine loop (Slicer sequence)."
        self.parent.acknowledgementText = "Builds on Segment Anything (Meta AI) and LiteMedSAM (Apache-2.0)."


class SonoSAMTrackWidget(ScriptedLoadableModuleWidget):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        import qt

        self.layout.addWidget(qt.QLabel("SonoSAM tracking: coming with the tracker."))
        self.layout.addStretch(1)


class SonoSAMTrackLogic(ScriptedLoadableModuleLogic):
    pass


class SonoSAMTrackTest(ScriptedLoadableModuleTest):
    def runTest(self):
        slicer.mrmlScene.Clear()
        self.assertIsNotNone(SonoSAMTrackLogic())
