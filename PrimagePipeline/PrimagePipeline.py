from typing import Optional, Union

import slicer
import vtk
from slicer import (
    vtkMRMLDiffusionWeightedVolumeNode,
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLSequenceNode,
)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# This file stays thin: the Widget binds the .ui to the parameter node and polls the
# background job; the Logic reads the parameter node and calls the MRML layer
# (primage.mrml.pipeline), which runs the cohort pipeline's chain (primage.pipeline) on this
# one case, in a separate process for the GUI. The engine is imported lazily, inside the
# Logic and the job process, so that loading the module at Slicer start-up stays fast.

POLL_INTERVAL_MS = 250

#
# PrimagePipeline
#


class PrimagePipeline(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Pipeline")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "PRIMAGE")]
        self.parent.dependencies = ["Sequences"]
        self.parent.contributors = ["PRIMAGE for 3D Slicer contributors"]
        self.parent.helpText = _("""
Process this case: the PRIMAGE chain (preprocessing, registration onto the reference series,
the tumour segmentation, DWI/DCE kinetic maps with Fit-Cluster-Fit habitats, radiomic
features) on the selected volumes, with the same configuration file and the same code as the
cohort command line. Every result becomes a node: preprocessed and registered volumes (4D
series as sequences), transforms with their QC, the tumour segmentation, parameter maps,
habitat segmentations, a registration QC table and a features table.
<b>Export to DICOM</b> writes the last processed case as DICOM SEG (tumour, habitats),
Parametric Maps (ADC, iAUC60, Ktrans, ...) and a Structured Report (TID 1500: tumour volume,
map values), referencing the reference volume's series (loaded with the DICOM module); add
the folder to the DICOM database to send the objects to PACS.
For a whole cohort use the command line: <code>primage pipeline run --help</code>.
""")
        self.parent.acknowledgementText = _("""
Developed for PRIMAGE (PRedictive In-silico Multiscale Analytics to support cancer
personalised diaGnosis and prognosis, Empowered by imaging biomarkers), a project funded by
the European Union's Horizon 2020 research and innovation programme under grant agreement
No 826494.
""")


#
# PrimagePipelineParameterNode
#


@parameterNodeWrapper
class PrimagePipelineParameterNode:
    """
    The parameters of the module, stored in the scene (saved and restored with it).

    t2wVolume, t1wVolume, ctVolume - 3D series of the case (the configuration's reference
        role, t2w by default, is required).
    dwiNode - DWI as a sequence indexed by b (s/mm^2) or a diffusion-weighted volume node.
    dceNode - DCE as a sequence indexed by time (s).
    tumourNode, tumourSegment - the tumour on the reference volume (segment: name or ID;
        empty: all segments).
    caseName - prefix of the result nodes (never a patient name).
    configFile - pipeline configuration (YAML); empty: the built-in defaults.
    outputFolder - folder keeping the case outputs for reuse; empty: a temporary folder.
    dicomSource - the reference volume as loaded from DICOM (Export to DICOM).
    dicomFolder, dicomPseudonym - output folder and PatientName / PatientID of the objects.
    """

    t2wVolume: vtkMRMLScalarVolumeNode
    t1wVolume: vtkMRMLScalarVolumeNode
    ctVolume: vtkMRMLScalarVolumeNode
    dwiNode: Union[vtkMRMLSequenceNode, vtkMRMLDiffusionWeightedVolumeNode, None]
    dceNode: vtkMRMLSequenceNode
    tumourNode: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode, None]
    tumourSegment: str = ""
    caseName: str = "case"
    configFile: str = ""
    outputFolder: str = ""
    dicomSource: vtkMRMLScalarVolumeNode
    dicomFolder: str = ""
    dicomPseudonym: str = ""


#
# PrimagePipelineWidget
#


class PrimagePipelineWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
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
        self._timer = None
        self._lastResult = None  # PipelineNodes of the last processed case: what is exported

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PrimagePipeline.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = PrimagePipelineLogic()
        # The job is polled from the GUI thread: the chain itself runs in another process.
        import qt

        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self._pollJob)
        self.ui.progressBar.hide()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)
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
        self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens a different module."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply
            )

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed."""
        self._lastResult = None  # its nodes go with the scene
        # A running job would add its results to the scene being closed: stop it.
        self.onCancelButton()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Ensure parameter node exists and observed."""
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode: Optional[PrimagePipelineParameterNode]) -> None:
        """Set and observe the parameter node; the GUI follows it (SlicerParameterName)."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply
            )
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        node = self._parameterNode
        self.ui.cancelButton.enabled = self._job is not None
        if self._job is not None:
            self.ui.applyButton.toolTip = _("The case is being processed")
            self.ui.applyButton.enabled = False
        elif not node or not any(
            [node.t2wVolume, node.t1wVolume, node.ctVolume, node.dwiNode, node.dceNode]
        ):
            self.ui.applyButton.toolTip = _("Select the volumes of the case")
            self.ui.applyButton.enabled = False
        else:
            self.ui.applyButton.toolTip = _("Run the configured chain on the selected volumes")
            self.ui.applyButton.enabled = True
        problem = self.logic.missingExportInput(node, self._lastResult) if node else "-"
        self.ui.exportButton.toolTip = problem or _(
            "Write the last processed case as DICOM objects into the output folder"
        )
        self.ui.exportButton.enabled = not problem and self._job is None

    def onApplyButton(self) -> None:
        """Start the chain in a separate process when the user clicks "Process this case"."""
        with slicer.util.tryWithErrorDisplay(_("Failed to process the case."), waitCursor=True):
            self._job = self.logic.startCase(self._parameterNode)
            self.ui.progressBar.value = 0
            self.ui.progressBar.format = _("starting") + " (%p%)"
            self.ui.progressBar.show()
            self.ui.statusLabel.text = ""
            self._timer.start()
            self._checkCanApply()

    def _pollJob(self) -> None:
        """Timer callback: show the progress; import the results as nodes when the job ends."""
        if self._job is None:
            self._timer.stop()
            return
        status = self._job.poll()
        self.ui.progressBar.value = int(round(100 * status.fraction))
        self.ui.progressBar.format = status.message.replace("%", "%%") + " (%p%)"
        if status.running:
            return
        self._timer.stop()
        job, self._job = self._job, None
        self.ui.progressBar.hide()
        self._checkCanApply()
        with slicer.util.tryWithErrorDisplay(_("Failed to process the case."), waitCursor=True):
            result = self.logic.finishCase(self._parameterNode, job)
            self._lastResult = result
            self._checkCanApply()
            self.ui.statusLabel.text = self.logic.describe(result)
            reference = result.volumes.get("t2w") or next(iter(result.volumes.values()), None)
            if reference is not None:
                slicer.util.setSliceViewerLayers(background=reference, fit=True)

    def onExportButton(self) -> None:
        """Write the last processed case as DICOM (SEG, Parametric Maps, SR)."""
        with slicer.util.tryWithErrorDisplay(_("Failed to export to DICOM."), waitCursor=True):
            database = slicer.dicomDatabase  # None until the DICOM module has started
            self.ui.statusLabel.text = self.logic.exportResults(
                self._parameterNode,
                self._lastResult,
                database.filesForSeries if database else (lambda uid: []),
            )

    def onCancelButton(self) -> None:
        """Stop the running job (its process is killed, no result node is added)."""
        if self._job is None:
            return
        self._timer.stop()
        self._job.cancel()
        self._job = None
        self.ui.progressBar.hide()
        self.ui.statusLabel.text = _("Cancelled.")
        slicer.util.showStatusMessage(_("Cancelled"), 3000)
        self._checkCanApply()


#
# PrimagePipelineLogic
#


class PrimagePipelineLogic(ScriptedLoadableModuleLogic):
    """Runs the pipeline chain on one case's nodes (primage.mrml.pipeline): in a separate
    process (startCase, then finishCase; what the widget does) or in this one (process).
    Usable without the widget, e.g. from the Python console."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return PrimagePipelineParameterNode(super().getParameterNode())

    @staticmethod
    def volumesFromParameterNode(parameterNode) -> dict:
        """Role -> node of the selected series (unselected roles left out)."""
        roles = {
            "t2w": parameterNode.t2wVolume,
            "t1w": parameterNode.t1wVolume,
            "ct": parameterNode.ctVolume,
            "dwi": parameterNode.dwiNode,
            "dce": parameterNode.dceNode,
        }
        return {role: node for role, node in roles.items() if node is not None}

    @staticmethod
    def _require(parameterNode) -> None:
        if parameterNode is None:
            raise ValueError(
                "No parameter node: open the Pipeline module once or call getParameterNode()."
            )

    def startCase(self, parameterNode):
        """Start processing the case set in a parameter node in a separate process; returns the
        job (poll() it, cancel() it, or pass it to finishCase when it has ended). Bad input is
        refused here, before any process starts."""
        from primage.errors import PrimageInputError
        from primage.mrml.pipeline import start_case_job

        self._require(parameterNode)
        volumes = self.volumesFromParameterNode(parameterNode)
        if not volumes:
            raise PrimageInputError("Select the volumes of the case.")
        return start_case_job(
            volumes,
            parameterNode.tumourNode,
            tumour_segment=parameterNode.tumourSegment or None,
            config=parameterNode.configFile or None,
            case_name=parameterNode.caseName or "case",
            output_folder=parameterNode.outputFolder or None,
        )

    def finishCase(self, parameterNode, job):
        """The created nodes of an ended job (primage.mrml.pipeline.PipelineNodes); raises
        ValueError with the failed step's message when the case failed."""
        return job.finish()

    def processParameterNode(self, parameterNode, progress=None):
        """Process the case set in a parameter node in this process (scripts); returns the
        created nodes (primage.mrml.pipeline.PipelineNodes)."""
        self._require(parameterNode)
        return self.process(
            self.volumesFromParameterNode(parameterNode),
            parameterNode.tumourNode,
            tumourSegment=parameterNode.tumourSegment,
            configFile=parameterNode.configFile,
            caseName=parameterNode.caseName,
            outputFolder=parameterNode.outputFolder,
            progress=progress,
        )

    def process(
        self,
        volumes,
        tumourNode=None,
        *,
        tumourSegment="",
        configFile="",
        caseName="case",
        outputFolder="",
        progress=None,
    ):
        """
        Run the configured chain on one case. Can be used without GUI widget.
        :param volumes: dict role -> node (t2w, t1w, ct scalar volumes; dwi, dce sequences)
        :param tumourNode: tumour segmentation or labelmap on the reference volume
        :param tumourSegment: segment name or ID ("" = all segments)
        :param configFile: pipeline configuration YAML ("" = built-in defaults)
        :param caseName: prefix of the result nodes
        :param outputFolder: folder keeping the outputs for reuse ("" = temporary)
        :param progress: optional callable progress(fraction, message)
        :return: the created nodes (PipelineNodes)
        Raises ValueError (PrimageInputError) with a clear message on bad input or a failed step.
        """
        from primage.errors import PrimageInputError
        from primage.mrml.pipeline import process_case_nodes

        if not volumes:
            raise PrimageInputError("Select the volumes of the case.")
        return process_case_nodes(
            volumes,
            tumourNode,
            tumour_segment=tumourSegment or None,
            config=configFile or None,
            case_name=caseName or "case",
            output_folder=outputFolder or None,
            progress=progress,
        )

    @staticmethod
    def missingExportInput(parameterNode, lastResult) -> str:
        """What Export to DICOM still needs ("" when ready)."""
        if lastResult is None:
            return _("Process the case first")
        if not parameterNode.dicomSource:
            return _("Select the reference volume as loaded from DICOM")
        if not parameterNode.dicomFolder.strip():
            return _("Give the output folder")
        if not parameterNode.dicomPseudonym.strip():
            return _("Give the pseudonym")
        return ""

    def exportResults(self, parameterNode, result, filesForSeries) -> str:
        """Write a processed case's nodes (PipelineNodes) as DICOM SEG / Parametric Maps / SR
        into parameterNode.dicomFolder, referencing parameterNode.dicomSource's series (its
        files from filesForSeries(seriesUID), e.g. slicer.dicomDatabase.filesForSeries).
        Returns a one-line description. Raises ValueError (PrimageInputError) on bad input."""
        from primage.mrml.dicom_export import describe_export, export_pipeline_result

        self._require(parameterNode)
        exported, skipped = export_pipeline_result(
            result,
            parameterNode.dicomSource,
            filesForSeries,
            parameterNode.dicomFolder,
            pseudonym=parameterNode.dicomPseudonym,
        )
        return describe_export(exported, skipped)

    @staticmethod
    def describe(result) -> str:
        """One line for the status label: the case status and what was created."""
        summary = result.summary
        text = f"{summary['case_id']}: {summary['status']}"
        if summary.get("message"):
            text += f" ({summary['message']})"
        created = len(result.volumes) + len(result.sequences) + len(result.maps)
        return text + f"; {created} volumes/series, {len(result.transforms)} transforms created."


#
# PrimagePipelineTest
#


class PrimagePipelineTest(ScriptedLoadableModuleTest):
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
        self.setUp()
        self.test_PrimagePipelineSharedScenario()
        self.setUp()
        self.test_PrimagePipelineBackgroundJob()
        self.setUp()
        self.test_PrimagePipelineBadInput()
        self.setUp()
        self.test_PrimagePipelineExportToDicom()

    def test_PrimagePipelineSharedScenario(self):
        """The scenario the pytest suite runs with slicer-core, here inside the application."""
        self.delayDisplay("Starting the shared pipeline scenario")
        from primage.mrml.selftest import pipeline_scenario

        pipeline_scenario(slicer.mrmlScene)
        self.delayDisplay("Test passed")

    def test_PrimagePipelineBackgroundJob(self):
        """The shared scenario in a separate process, as "Process this case" runs it."""
        self.delayDisplay("Starting the shared pipeline scenario as a background job")
        from primage.mrml.selftest import pipeline_scenario

        pipeline_scenario(slicer.mrmlScene, background=True)
        self.delayDisplay("Test passed")

    def test_PrimagePipelineBadInput(self):
        """No volumes, or no reference volume: a ValueError with a message, not a crash, and
        no job is started."""
        self.delayDisplay("Starting the bad input test")
        logic = PrimagePipelineLogic()
        parameterNode = logic.getParameterNode()
        with self.assertRaises(ValueError):
            logic.processParameterNode(parameterNode)
        with self.assertRaises(ValueError):
            logic.startCase(parameterNode)
        ct = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
        parameterNode.ctVolume = ct
        with self.assertRaises(ValueError):
            logic.processParameterNode(parameterNode)
        with self.assertRaises(ValueError):
            logic.startCase(parameterNode)
        self.delayDisplay("Test passed")

    def test_PrimagePipelineExportToDicom(self):
        """Process a case loaded from DICOM (T2w, DWI), then Export to DICOM through the logic:
        tumour and habitat SEG, ADC Parametric Map and the SR, referencing the T2w series."""
        self.delayDisplay("Starting the DICOM export test")
        import tempfile
        from pathlib import Path

        from primage.mrml.selftest import dicom_export_inputs

        with tempfile.TemporaryDirectory() as folder:
            inputs = dicom_export_inputs(slicer.mrmlScene, folder)
            config = Path(folder) / "config.yaml"
            config.write_text("steps: [segment, kinetics]\nkinetics: {dce: {enabled: false}}\n")
            logic = PrimagePipelineLogic()
            parameterNode = logic.getParameterNode()
            parameterNode.t2wVolume = inputs["t2w"]
            parameterNode.dwiNode = inputs["dwi"]
            parameterNode.tumourNode = inputs["tumour"]
            parameterNode.configFile = str(config)
            result = logic.processParameterNode(parameterNode)
            self.assertIn("reference volume", logic.missingExportInput(parameterNode, result))
            parameterNode.dicomSource = inputs["t2w"]
            parameterNode.dicomFolder = str(Path(folder) / "out")
            parameterNode.dicomPseudonym = "SELFTEST02"
            self.assertEqual(logic.missingExportInput(parameterNode, result), "")
            text = logic.exportResults(parameterNode, result, inputs["files_for_series"])
            written = sorted(p.name for p in (Path(folder) / "out").glob("*.dcm"))
            self.assertEqual(
                written,
                ["pm_adc.dcm", "seg_fcf_adc_habitats.dcm", "seg_tumour.dcm",
                 "sr_measurements.dcm"],
            )  # fmt: skip
            self.assertIn("Wrote", text)
            with self.assertRaises(ValueError):
                logic.exportResults(parameterNode, None, inputs["files_for_series"])
        self.delayDisplay("Test passed")
