"""A headless 3D Slicer MRML scene built from the Qt-free `slicer-core` wheel.

Inside Slicer the application builds this for us (``slicer.mrmlScene``, ``slicer.app.applicationLogic()``);
outside it we create the scene and register the module logics that segment, volume, markups and sequence
nodes need. Reusable by every Slicer-logic test (the tracker's tests use it for sequences)::

    from mrml_scene import make_scene
    ctx = make_scene()
    volume = ctx.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class HeadlessSlicer:
    scene: object
    app_logic: object
    logics: dict = field(default_factory=dict)

    def logic(self, name: str):
        return self.logics[name]

    def close(self):
        """Clear the scene and detach the logics (call at the end of a test)."""
        for logic in self.logics.values():
            logic.SetMRMLScene(None)
        self.scene.Clear(True)


def _quiet_vtk():
    """Route VTK's messages to Python's logging so expected warnings (no share directory for default
    colour files in the wheel) do not flood the test output; errors still surface as log records."""
    import vtk

    vtk.vtkObject.GlobalWarningDisplayOff()
    try:
        vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_OFF)
    except AttributeError:  # older VTK
        pass


def make_scene(quiet: bool = True) -> HeadlessSlicer:
    """A new MRML scene with the application logic and the Colors, Volumes, SubjectHierarchy,
    Segmentations, Markups and Sequences module logics registered (what Slicer's startup does)."""
    import slicer

    if quiet:
        _quiet_vtk()
    scene = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    color = app.GetColorLogic()
    color.SetMRMLScene(scene)
    color.AddDefaultColorNodes()
    logics = {"Colors": color}
    for name, cls in (("Volumes", slicer.vtkSlicerVolumesLogic),
                      ("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic),
                      ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
                      ("Markups", slicer.vtkSlicerMarkupsLogic),
                      ("Sequences", slicer.vtkSlicerSequencesLogic)):
        logic = cls()
        logic.SetMRMLApplicationLogic(app)
        logic.SetMRMLScene(scene)
        app.SetModuleLogic(name, logic)
        logics[name] = logic
    return HeadlessSlicer(scene, app, logics)


def add_volume_from_array(scene, array_kji, ijk_to_ras, name: str = "volume"):
    """A scalar volume node holding ``array_kji`` ((K, J, I) numpy) with the given 4x4 IJK-to-RAS."""
    import numpy as np
    import slicer
    import vtk
    from vtk.util import numpy_support

    array_kji = np.ascontiguousarray(array_kji)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    image = vtk.vtkImageData()
    image.SetDimensions(array_kji.shape[2], array_kji.shape[1], array_kji.shape[0])
    vtk_array = numpy_support.numpy_to_vtk(array_kji.ravel(), deep=True,
                                           array_type=numpy_support.get_vtk_array_type(array_kji.dtype))
    image.GetPointData().SetScalars(vtk_array)
    node.SetAndObserveImageData(image)
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(ijk_to_ras[r][c]))
    node.SetIJKToRASMatrix(matrix)
    node.CreateDefaultDisplayNodes()
    assert isinstance(node, slicer.vtkMRMLScalarVolumeNode)
    return node


def read_volume_file(scene, path, name: str | None = None):
    """Load a NIfTI/NRRD volume through its storage node (``slicer.util.loadVolume`` needs the app)."""
    import os

    import slicer

    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name or os.path.basename(str(path)).split(".")[0])
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        raise OSError(f"could not read volume {path}")
    node.SetAndObserveStorageNodeID(storage.GetID())
    node.CreateDefaultDisplayNodes()
    return node


def write_segmentation(segmentation_node, path):
    """Write a segmentation node as .seg.nrrd through its storage node."""
    scene = segmentation_node.GetScene()
    storage = segmentation_node.GetStorageNode()
    if storage is None:
        storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
        segmentation_node.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetFileName(str(path))
    if not storage.WriteData(segmentation_node):
        raise OSError(f"could not write segmentation {path}")


def read_segmentation(scene, path, name: str = "segmentation"):
    """Read a .seg.nrrd into a new segmentation node through a segmentation storage node."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        raise OSError(f"could not read segmentation {path}")
    node.SetAndObserveStorageNodeID(storage.GetID())
    return node
