"""Bridge between the PRIMAGE engine (SimpleITK, LPS) and Slicer's MRML scene (RAS).

The only part of PRIMAGE that imports ``slicer`` and ``vtk``. It runs inside the Slicer
application and outside it with the ``slicer-core`` wheel. Every function takes the scene
or the nodes it works on as arguments; nothing here uses ``slicer.mrmlScene``.

Submodules: :mod:`~primage.mrml.geometry` (the one place for RAS/LPS conversions),
:mod:`~primage.mrml.volumes`, :mod:`~primage.mrml.sequences`,
:mod:`~primage.mrml.segmentations`, :mod:`~primage.mrml.transforms`,
:mod:`~primage.mrml.tables`, :mod:`~primage.mrml.plots`,
:mod:`~primage.mrml.preprocessing`, :mod:`~primage.mrml.radiomics` and
:mod:`~primage.mrml.selftest`.
"""
