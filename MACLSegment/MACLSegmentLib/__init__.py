"""Qt-free logic of the MACLSegment Slicer module.

Everything here runs inside the Slicer application and headless against the ``slicer-core`` MRML wheel:
no ``qt``/``ctk`` imports, and no third-party imports at file scope other than ``slicer`` and ``vtk``
(``torch`` and ``maclcore`` are imported inside functions, after the dependency check).

Modules: ``logic`` (the actions), ``jobs`` and ``progress`` (the background process), ``scene_io``
(scene <-> files), ``sequences`` (cine volume sequences), ``schema`` (label schemas and annotation checks),
``terminology`` (SNOMED CT codes of the cardiac labels), ``options``, ``parameters`` (the saved settings),
``controller`` (the Widget's behaviour without Qt), ``reloading`` (Reload and Test), ``dependencies``
(torch/MACLCore check, install and upgrade), ``selftests`` and ``testsupport`` (the self-test bodies shared
by Slicer and pytest). Import them directly, e.g.
``from MACLSegmentLib.logic import CoreLogic``; this file imports nothing, so that the MRML-free parts
(jobs, progress, options) load without Slicer.
"""
