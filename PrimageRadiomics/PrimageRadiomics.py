from typing import Annotated, Optional, Union

import slicer
import vtk
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# This file stays thin: the Widget binds the .ui to the parameter node and polls the
# background job; the Logic reads the parameter node and calls the MRML layer
# (primage.mrml.radiomics), which calls the engine. The engine and pyradiomics are imported
# lazily, inside the Logic, so that loading the module at Slicer start-up stays fast and
# works before pyradiomics is installed.

# Python packages the module needs that Slicer does not bundle are pinned in
# Resources/requirements.txt. pyradiomics-bhklab provides `radiomics`; when another extension
# (SlicerRadiomics) already provides `radiomics`, it is used as is rather than installing a
# second distribution of the same package (primage.mrml.dependencies checks imports).
POLL_INTERVAL_MS = 200

#
# PrimageRadiomics
#


class PrimageRadiomics(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Radiomics")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "PRIMAGE")]
        # The segment list of the .ui is a widget of the Segmentations module.
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["PRIMAGE for 3D Slicer contributors"]
        self.parent.helpText = _("""
Radiomic features with pyradiomics for every checked volume (T2w, ADC map, iAUC60 map, CT,
...) and every selected segment, into one table (one row per volume and segment) that can be
exported as CSV. Presets: <b>primage</b> (the 107 original-image features of the PRIMAGE
models; 1 mm isotropic; fixed bin width per modality), <b>ibsi</b> (IBSI-conformant CT
settings) and <b>full</b> (original, wavelet and Laplacian-of-Gaussian images), or any
pyradiomics parameter file. Extraction runs in a separate process: the application stays
responsive, progress is shown per (volume, segment) and the run can be cancelled.
The robustness section computes each feature's ICC(2,1) over cases segmented by two or
more observers, or over perturbations of one segmentation.
pyradiomics is installed on first use (with your confirmation).
The same computations run from the command line: <code>primage radiomics --help</code>.
See <a href="https://github.com/primage-slicer/SlicerPRIMAGE">the extension documentation</a>.
""")
        self.parent.acknowledgementText = _("""
Developed for PRIMAGE (PRedictive In-silico Multiscale Analytics to support cancer
personalised diaGnosis and prognosis, Empowered by imaging biomarkers), a project funded by
the European Union's Horizon 2020 research and innovation programme under grant agreement
No 826494. Features are computed by pyradiomics (van Griethuysen et al., Cancer Research
2017;77:e104-e107); ComBat harmonisation by neuroCombat (Fortin et al.).
""")


#
# PrimageRadiomicsParameterNode
#


@parameterNodeWrapper
class PrimageRadiomicsParameterNode:
    """
    The parameters of the module, stored in the scene (saved and restored with it).

    segmentation - Segmentation (selected segments; all when none is selected) or labelmap
        volume (every non-zero label) whose regions are measured.
    featurePreset - pyradiomics settings: a built-in preset, or "file" for parameterFile.
    parameterFile - A pyradiomics parameter file (YAML or JSON), used with "file".
    diagnostics - Diagnostics in a second table, as extra columns, or none.
    workers - Worker processes for the (volume, segment) pairs; 0 means one per CPU.
    outputTable, diagnosticsTable - The result tables (created when not selected).
    robustnessMode - "observers" (several segmentations per case) or "perturbations".
    robustnessSegmentName - Segment used from each case's segmentations ("" = the first).
    perturbErode, perturbDilate, perturbTranslate, perturbNoise - Perturbations used as
        repetitions in the "perturbations" mode.
    iccTable - The ICC result table (created when not selected).
    """

    # None in the Union: the wrapper needs it to store "no node" for a union of node types.
    segmentation: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode, None]
    featurePreset: Annotated[str, Choice(["primage", "ibsi", "full", "file"])] = "primage"
    parameterFile: str = ""
    diagnostics: Annotated[str, Choice(["table", "columns", "none"])] = "table"
    workers: Annotated[int, WithinRange(0, 64)] = 0
    outputTable: vtkMRMLTableNode
    diagnosticsTable: vtkMRMLTableNode
    robustnessMode: Annotated[str, Choice(["observers", "perturbations"])] = "observers"
    robustnessSegmentName: str = ""
    perturbErode: bool = True
    perturbDilate: bool = True
    perturbTranslate: bool = False
    perturbNoise: bool = False
    iccTable: vtkMRMLTableNode


#
# PrimageRadiomicsWidget
#


class PrimageRadiomicsWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent=None) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._jobKind = None
        self._timer = None

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.setup(self)

        # Load widget from .ui file (created by Qt Designer).
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PrimageRadiomics.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        # Set scene in MRML widgets. In the .ui file the top-level qMRMLWidget's
        # "mrmlSceneChanged(vtkMRMLScene*)" signal is connected to each MRML widget's
        # "setMRMLScene(vtkMRMLScene*)" slot.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        # Logic implements all computations that should be possible to run in batch mode.
        self.logic = PrimageRadiomicsLogic()

        # The job is polled from the GUI thread: the work itself runs in another process.
        import qt

        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self._pollJob)
        self.ui.progressBar.hide()

        # These connections ensure that we update parameter node when scene is closed
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        # Buttons and the selections the parameter node does not hold (lists of nodes).
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)
        self.ui.robustnessButton.connect("clicked(bool)", self.onRobustnessButton)
        self.ui.browseParameterFileButton.connect("clicked(bool)", self.onBrowseParameterFile)
        self.ui.volumesSelector.connect("checkedNodesChanged()", self._checkCanApply)

        # Make sure parameter node is initialized (needed for module reload)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        if self._job is not None:
            self._job.cancel()
            self._job = None
        if self._timer is not None:
            self._timer.stop()
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        # Make sure parameter node exists and observed
        self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens a different module."""
        # Do not react to parameter node changes (GUI will be updated when the user enters into the module)
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply
            )

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed."""
        # A running job writes into the scene being closed: stop it.
        self.onCancelButton()
        # Parameter node will be reset, do not use it anymore
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        # If this module is shown while the scene is closed then recreate a new parameter node immediately
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Ensure parameter node exists and observed."""
        self.setParameterNode(self.logic.getParameterNode())

        # Select a segmentation if nothing is selected yet to save a few clicks for the user
        if not self._parameterNode.segmentation:
            firstSegmentation = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
            if firstSegmentation:
                self._parameterNode.segmentation = firstSegmentation

    def setParameterNode(self, inputParameterNode: Optional[PrimageRadiomicsParameterNode]) -> None:
        """
        Set and observe parameter node.
        Observation is needed because when the parameter node is changed then the GUI must be updated immediately.
        """
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply
            )
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Note: in the .ui file, a Qt dynamic property called "SlicerParameterName" is set on each
            # ui element that needs connection.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        parameterNode = self._parameterNode
        segmentation = parameterNode.segmentation if parameterNode else None
        shown = (
            segmentation if segmentation and segmentation.IsA("vtkMRMLSegmentationNode") else None
        )
        if self.ui.segmentsTableView.segmentationNode() != shown:
            self.ui.segmentsTableView.setSegmentationNode(shown)
        self.ui.parameterFileLineEdit.enabled = (
            bool(parameterNode) and parameterNode.featurePreset == "file"
        )
        self.ui.browseParameterFileButton.enabled = self.ui.parameterFileLineEdit.enabled
        running = self._job is not None
        self.ui.cancelButton.enabled = running
        volumes = self.ui.volumesSelector.checkedNodes()
        if running:
            self.ui.applyButton.toolTip = _("A computation is running")
            self.ui.applyButton.enabled = False
        elif not volumes:
            self.ui.applyButton.toolTip = _("Check at least one volume")
            self.ui.applyButton.enabled = False
        elif not segmentation:
            self.ui.applyButton.toolTip = _("Select a segmentation or labelmap")
            self.ui.applyButton.enabled = False
        elif parameterNode.featurePreset == "file" and not parameterNode.parameterFile:
            self.ui.applyButton.toolTip = _("Choose a pyradiomics parameter file")
            self.ui.applyButton.enabled = False
        else:
            self.ui.applyButton.toolTip = _("Extract the features in a separate process")
            self.ui.applyButton.enabled = True
        self.ui.robustnessButton.enabled = not running and len(volumes) >= 3
        self.ui.robustnessButton.toolTip = (
            _("Compute each feature's ICC(2,1)")
            if len(volumes) >= 3
            else _("Check at least three volumes (cases)")
        )
        self.ui.exportButton.enabled = bool(parameterNode and parameterNode.outputTable)

    def _ensureDependencies(self) -> bool:
        """Install missing Python packages after asking the user; False when declined."""
        missing = self.logic.missingRequirements(self.resourcePath("requirements.txt"))
        if not missing:
            return True
        # Slicer 5.12+ (slicer.packaging; named slicer.pydeps in some 5.11 previews) asks,
        # installs with progress and offers a restart; older versions: ask, then pip_install.
        for helperName in ("packaging", "pydeps"):
            helper = getattr(slicer, helperName, None)
            if helper is not None and hasattr(helper, "pip_ensure"):
                helper.pip_ensure(missing, requester="PRIMAGE Radiomics")
                return not self.logic.missingRequirements(self.resourcePath("requirements.txt"))
        if not slicer.util.confirmOkCancelDisplay(
            _(
                "PRIMAGE Radiomics needs these Python packages, which will be downloaded and installed now:\n"
            )
            + "\n".join(missing),
            _("Install Python packages"),
        ):
            return False
        slicer.util.pip_install(missing)
        return not self.logic.missingRequirements(self.resourcePath("requirements.txt"))

    def onApplyButton(self) -> None:
        """Start the extraction in a separate process."""
        with slicer.util.tryWithErrorDisplay(_("Failed to compute results."), waitCursor=True):
            if not self._ensureDependencies():
                return
            segmentIds = list(self.ui.segmentsTableView.selectedSegmentIDs())
            self._startJob(
                "extract",
                self.logic.startExtraction(
                    self._parameterNode, self.ui.volumesSelector.checkedNodes(), segmentIds
                ),
            )

    def onRobustnessButton(self) -> None:
        """Start the ICC computation in a separate process."""
        with slicer.util.tryWithErrorDisplay(
            _("Failed to compute the ICC table."), waitCursor=True
        ):
            if not self._ensureDependencies():
                return
            self._startJob(
                "robustness",
                self.logic.startRobustness(
                    self._parameterNode, self.ui.volumesSelector.checkedNodes()
                ),
            )

    def _startJob(self, kind, job) -> None:
        self._job, self._jobKind = job, kind
        self.ui.progressBar.value = 0
        self.ui.progressBar.format = _("starting") + " (%p%)"
        self.ui.progressBar.show()
        self._timer.start()
        self._checkCanApply()

    def _pollJob(self) -> None:
        """Timer callback: show the job's progress; collect the result when it ends."""
        if self._job is None:
            self._timer.stop()
            return
        status = self._job.poll()
        self.ui.progressBar.value = int(round(100 * status.fraction))
        self.ui.progressBar.format = status.message.replace("%", "%%") + " (%p%)"
        if status.running:
            return
        self._timer.stop()
        job, kind = self._job, self._jobKind
        self._job = self._jobKind = None
        self.ui.progressBar.hide()
        self._checkCanApply()
        with slicer.util.tryWithErrorDisplay(_("Failed to compute results."), waitCursor=True):
            if kind == "extract":
                table = self.logic.finishExtraction(self._parameterNode, job)
            else:
                table = self.logic.finishRobustness(self._parameterNode, job)
            self._showTable(table)
            if job.warnings:
                slicer.util.showStatusMessage(job.warnings[-1], 5000)

    def _showTable(self, tableNode) -> None:
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:
            return
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
        slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(tableNode.GetID())
        slicer.app.applicationLogic().PropagateTableSelection()

    def onCancelButton(self) -> None:
        """Stop the running job (its worker processes too)."""
        if self._job is None:
            return
        self._timer.stop()
        self._job.cancel()
        self._job = self._jobKind = None
        self.ui.progressBar.hide()
        slicer.util.showStatusMessage(_("Radiomics computation cancelled"), 3000)
        self._checkCanApply()

    def onExportButton(self) -> None:
        """Save the feature table as CSV."""
        import qt

        path = qt.QFileDialog.getSaveFileName(
            slicer.util.mainWindow(), _("Export features"), "features.csv", "CSV (*.csv)"
        )
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to export the table."), waitCursor=True):
            self.logic.exportTable(self._parameterNode.outputTable, path)

    def onBrowseParameterFile(self) -> None:
        """Choose a pyradiomics parameter file."""
        import qt

        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(),
            _("pyradiomics parameter file"),
            self._parameterNode.parameterFile,
            "pyradiomics parameters (*.yaml *.yml *.json)",
        )
        if path:
            self._parameterNode.parameterFile = path


#
# PrimageRadiomicsLogic
#


class PrimageRadiomicsLogic(ScriptedLoadableModuleLogic):
    """This class should implement all the actual computation done by your module.
    The interface should be such that other python code can import this class and make use
    of the functionality without requiring an instance of the Widget.
    Uses ScriptedLoadableModuleLogic base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self) -> None:
        """Called when the logic class is instantiated. Can be used for initializing member variables."""
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return PrimageRadiomicsParameterNode(super().getParameterNode())

    @staticmethod
    def missingRequirements(requirementsPath) -> list:
        """Requirements of the file whose module cannot be imported (to install)."""
        from primage.mrml.dependencies import missing_requirements, read_requirements

        return missing_requirements(read_requirements(requirementsPath))

    @staticmethod
    def parameterSource(parameterNode) -> tuple:
        """(preset name or None, parameter file or None) of a parameter node."""
        if parameterNode.featurePreset == "file":
            return None, parameterNode.parameterFile or None
        return parameterNode.featurePreset, None

    @staticmethod
    def perturbationsFromParameterNode(parameterNode) -> list:
        """The chosen perturbations, in the engine's order (empty for observers)."""
        if parameterNode.robustnessMode != "perturbations":
            return []
        chosen = {
            "erode": parameterNode.perturbErode,
            "dilate": parameterNode.perturbDilate,
            "translate": parameterNode.perturbTranslate,
            "noise": parameterNode.perturbNoise,
        }
        return [kind for kind, wanted in chosen.items() if wanted]

    @staticmethod
    def _workers(parameterNode):
        return parameterNode.workers or None  # 0: one per CPU

    def process(
        self,
        volumeNodes,
        maskNode,
        segmentIds=None,
        *,
        preset="primage",
        parameterFile=None,
        diagnostics="table",
        tableNode=None,
        diagnosticsTableNode=None,
        workers=1,
        progress=None,
    ):
        """
        Extract features in this process (scripts, tests). Can be used without GUI widget.
        :param volumeNodes: scalar volumes to measure
        :param maskNode: segmentation (segments segmentIds, default all) or labelmap volume
        :param preset: built-in preset name (ignored when parameterFile is given)
        :param parameterFile: pyradiomics parameter file (YAML or JSON)
        :param diagnostics: "table", "columns" or "none"
        :return: (feature table node, diagnostics table node or None)
        Raises ValueError (PrimageInputError) with a clear message on bad input.
        """
        from primage.mrml.radiomics import extract_features_from_nodes

        return extract_features_from_nodes(
            volumeNodes,
            maskNode,
            segmentIds or None,
            preset=None if parameterFile else preset,
            params_file=parameterFile or None,
            table_node=tableNode,
            diagnostics=diagnostics,
            diagnostics_node=diagnosticsTableNode,
            workers=workers,
            progress=progress,
        )

    def startExtraction(self, parameterNode, volumeNodes, segmentIds=None):
        """Start the extraction set in a parameter node in a separate process; returns the job."""
        from primage.errors import PrimageInputError
        from primage.mrml.radiomics import start_extraction_job

        if parameterNode is None:
            raise PrimageInputError(
                "No parameter node: open the Radiomics module once or call getParameterNode()."
            )
        preset, parameterFile = self.parameterSource(parameterNode)
        if preset is None and not parameterFile:
            raise PrimageInputError("Choose a pyradiomics parameter file (or a preset).")
        return start_extraction_job(
            volumeNodes,
            parameterNode.segmentation,
            segmentIds or None,
            preset=preset,
            params_file=parameterFile,
            workers=self._workers(parameterNode),
        )

    def finishExtraction(self, parameterNode, job):
        """Table node(s) of a finished extraction job, stored in the parameter node."""
        table, diagnosticsTable = job.finish(
            parameterNode.outputTable, parameterNode.diagnosticsTable, parameterNode.diagnostics
        )
        parameterNode.outputTable = table
        if diagnosticsTable is not None:
            parameterNode.diagnosticsTable = diagnosticsTable
        return table

    def startRobustness(self, parameterNode, volumeNodes):
        """Start the ICC computation (each volume a case) in a separate process; returns the job."""
        from primage.mrml.radiomics import robustness_cases_from_volumes, start_robustness_job

        preset, parameterFile = self.parameterSource(parameterNode)
        cases = robustness_cases_from_volumes(
            volumeNodes, parameterNode.robustnessSegmentName or None
        )
        return start_robustness_job(
            cases,
            perturbations=self.perturbationsFromParameterNode(parameterNode),
            preset=preset,
            params_file=parameterFile,
            workers=self._workers(parameterNode),
        )

    def finishRobustness(self, parameterNode, job):
        """ICC table node of a finished robustness job, stored in the parameter node."""
        table, _ = job.finish(parameterNode.iccTable)
        parameterNode.iccTable = table
        return table

    def exportTable(self, tableNode, path):
        """Write a table node as a CSV file."""
        from primage.errors import PrimageInputError
        from primage.mrml.radiomics import export_table_csv

        if tableNode is None:
            raise PrimageInputError("No feature table to export: extract features first.")
        return export_table_csv(tableNode, path)


#
# PrimageRadiomicsTest
#


class PrimageRadiomicsTest(ScriptedLoadableModuleTest):
    """
    This is the test case for your scripted module.
    Uses ScriptedLoadableModuleTest base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def setUp(self):
        """Do whatever is needed to reset the state - typically a scene clear will be enough."""
        slicer.mrmlScene.Clear()

    def runTest(self):
        """Run as few or as many tests as needed here."""
        import importlib.util

        if importlib.util.find_spec("radiomics") is None:
            # Tests never install packages; open the module and click Extract once first.
            self.skipTest("pyradiomics is not installed in this Slicer")
        self.setUp()
        self.test_PrimageRadiomicsSharedScenario()
        self.setUp()
        self.test_PrimageRadiomicsBackgroundJob()
        self.setUp()
        self.test_PrimageRadiomicsParameterNode()

    def test_PrimageRadiomicsSharedScenario(self):
        """The scenario the pytest suite runs with slicer-core, here inside the application."""
        self.delayDisplay("Starting the shared radiomics scenario")
        from primage.mrml.selftest import radiomics_scenario

        radiomics_scenario(slicer.mrmlScene)
        self.delayDisplay("Test passed")

    def test_PrimageRadiomicsBackgroundJob(self):
        """Extraction in a separate process (Slicer's own Python), polled and collected."""
        self.delayDisplay("Starting the background job scenario")
        from primage.mrml.selftest import radiomics_job_scenario

        radiomics_job_scenario(slicer.mrmlScene)
        self.delayDisplay("Test passed")

    def test_PrimageRadiomicsParameterNode(self):
        """The module's own path: parameter node -> logic -> job -> table nodes."""
        self.delayDisplay("Starting the parameter node test")
        from primage.mrml.selftest import radiomics_scene

        volumes, segmentation = radiomics_scene(slicer.mrmlScene)
        logic = PrimageRadiomicsLogic()
        parameterNode = logic.getParameterNode()
        parameterNode.segmentation = segmentation
        parameterNode.featurePreset = "primage"
        parameterNode.workers = 1
        job = logic.startExtraction(parameterNode, volumes)
        self.assertFalse(job.wait(300).error)
        table = logic.finishExtraction(parameterNode, job)
        self.assertIs(parameterNode.outputTable, table)
        self.assertEqual(table.GetNumberOfRows(), len(volumes) * 3)
        self.assertIsNotNone(parameterNode.diagnosticsTable)

        parameterNode.featurePreset = "file"
        parameterNode.parameterFile = ""
        with self.assertRaises(ValueError):
            logic.startExtraction(parameterNode, volumes)
        parameterNode.robustnessMode = "perturbations"
        self.assertEqual(logic.perturbationsFromParameterNode(parameterNode), ["erode", "dilate"])
        self.delayDisplay("Test passed")
