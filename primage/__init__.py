"""PRIMAGE engine: quantitative imaging of paediatric solid tumours.

Plain Python on numpy, scipy and SimpleITK. Nothing here imports Slicer, VTK or Qt,
except the :mod:`primage.mrml` subpackage, which is the only bridge to MRML.
"""

__version__ = "0.1.0"
