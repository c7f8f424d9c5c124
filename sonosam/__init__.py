"""SonoSAM core: Segment-Anything-family models for medical images and ultrasound cine loops.

GUI-free (numpy, torch, SimpleITK, pydicom); the 3D Slicer modules, the command line and the tests
all call this same code. Never imports slicer, qt or vtk.
"""

__version__ = "0.1.0"
