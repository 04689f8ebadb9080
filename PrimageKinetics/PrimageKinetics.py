from typing import Annotated, Optional, Union

import slicer
import vtk
from slicer import (
    vtkMRMLDiffusionWeightedVolumeNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLSequenceNode,
)
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

# This file stays thin: the Widget binds the .ui to the parameter node, the Logic reads the
# parameter node and calls the MRML layer (primage.mrml.kinetics), which calls the engine
# (primage.kinetics). The engine is imported lazily, inside the Logic, so that loading the
# module at Slicer start-up stays fast.

ANALYSES = ["adc", "ivim", "dce", "tofts", "fcf_adc", "fcf_iauc60"]
# Analyses that read the DWI series (the others read the DCE series).
DWI_ANALYSES = ["adc", "ivim", "fcf_adc"]

#
# PrimageKinetics
#


class PrimageKinetics(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Kinetics")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "PRIMAGE")]
        self.parent.dependencies = ["Sequences"]
        self.parent.contributors = ["PRIMAGE for 3D Slicer contributors"]
        self.parent.helpText = _("""
Quantitative MR biomarkers of the PRIMAGE project, fitted to every voxel at once:
<ul>
<li>DWI: mono-exponential ADC (mm^2/s) with its standard error and goodness of fit;
segmented IVIM (D, f, D*).</li>
<li>DCE: bolus arrival, iAUC60, time to peak, peak enhancement, wash-in / wash-out slopes,
signal enhancement ratio; standard / extended Tofts (Ktrans, kep in 1/min; ve, vp) with the
Parker population AIF or a vessel segment.</li>
<li>Fit-Cluster-Fit: habitats of ADC or iAUC60 inside the tumour (1D k-means, confidence
from each voxel's standard error, robust refit of each habitat's mean signal).</li>
</ul>
The DWI is a sequence indexed by b-value or a diffusion-weighted volume; the DCE a sequence
indexed by time (s). Their b-values / times are shown for editing. Results become new
volumes, a segmentation (habitats), a table and a plot.
<b>Export to DICOM</b> writes the last analysis's maps as DICOM Parametric Maps, its habitats
and the tumour as DICOM SEG and a Structured Report (TID 1500) of the tumour volume and map
values, referencing the series they were computed on (loaded with the DICOM module); add
the folder to the DICOM database to send the objects to PACS.
The same analyses run from the command line: <code>primage kinetics --help</code>.
See <a href="https://github.com/primage-slicer/SlicerPRIMAGE">the extension documentation</a>.
""")
        self.parent.acknowledgementText = _("""
Developed for PRIMAGE (PRedictive In-silico Multiscale Analytics to support cancer
personalised diaGnosis and prognosis, Empowered by imaging biomarkers), a project funded by
the European Union's Horizon 2020 research and innovation programme under grant agreement
No 826494. Fit-Cluster-Fit follows Cerda-Alberich et al., Cancers 2020;12:3858; the
population AIF is Parker et al., Magn Reson Med 2006;56:993.
""")


#
# PrimageKineticsParameterNode
#


@parameterNodeWrapper
class PrimageKineticsParameterNode:
    """
    The parameters of the module, stored in the scene (saved and restored with it).

    analysis - adc, ivim, dce (semi-quantitative), tofts, fcf_adc or fcf_iauc60.
    dwiNode, bValues - DWI series and its b-values (s/mm^2) as editable text.
    dceNode, frameTimes - DCE series and its frame times (s) as editable text.
    tumourSegmentation, tumourSegment - tumour ROI (segment name or ID; empty: all).
    adcMethod, bMin, ivimThreshold - DWI fit settings (b in s/mm^2).
    baselineFrames - pre-contrast frames (0: automatic).
    aifSource, aifSegmentation, aifSegment - Tofts AIF: parker or a vessel segment.
    extendedTofts, signalIsConcentration, t10Tissue, t10Blood (s), flipAngle (deg),
    repetitionTime (ms), relaxivity (1/(mM s)), haematocrit - Tofts settings.
    clusters, confidence - Fit-Cluster-Fit settings.
    dicomSource - the series the results lie on, loaded from DICOM (Export to DICOM).
    dicomFolder, dicomPseudonym - output folder and PatientName / PatientID of the objects.
    dicomIncludeTumour - also export the tumour segmentation (SEG and the report).
    """

    analysis: Annotated[str, Choice(ANALYSES)] = "adc"
    dwiNode: Union[vtkMRMLSequenceNode, vtkMRMLDiffusionWeightedVolumeNode, None]
    bValues: str = ""
    dceNode: vtkMRMLSequenceNode
    frameTimes: str = ""
    tumourSegmentation: vtkMRMLSegmentationNode
    tumourSegment: str = ""
    adcMethod: Annotated[str, Choice(["nlls", "wls"])] = "nlls"
    bMin: Annotated[float, WithinRange(0.0, 5000.0)] = 0.0
    ivimThreshold: Annotated[float, WithinRange(0.0, 2000.0)] = 200.0
    baselineFrames: Annotated[int, WithinRange(0, 100)] = 0
    aifSource: Annotated[str, Choice(["parker", "segment"])] = "parker"
    aifSegmentation: vtkMRMLSegmentationNode
    aifSegment: str = ""
    extendedTofts: bool = False
    signalIsConcentration: bool = False
    t10Tissue: Annotated[float, WithinRange(0.05, 5.0)] = 1.3
    t10Blood: Annotated[float, WithinRange(0.05, 5.0)] = 1.6
    flipAngle: Annotated[float, WithinRange(1.0, 90.0)] = 15.0
    repetitionTime: Annotated[float, WithinRange(0.5, 100.0)] = 4.0
    relaxivity: Annotated[float, WithinRange(0.5, 20.0)] = 4.5
    haematocrit: Annotated[float, WithinRange(0.0, 0.9)] = 0.42
    clusters: Annotated[int, WithinRange(2, 6)] = 2
    confidence: Annotated[float, WithinRange(0.5, 0.99)] = 0.70
    dicomSource: Union[vtkMRMLScalarVolumeNode, vtkMRMLSequenceNode, None]
    dicomFolder: str = ""
    dicomPseudonym: str = ""
    dicomIncludeTumour: bool = True


#
# PrimageKineticsWidget
#


class PrimageKineticsWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
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
        self._seriesShown = {}
        self._cancelRequested = False
        self._lastResult = None  # (analysis, KineticsNodes) of the last run: what is exported

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.setup(self)

        # Load widget from .ui file (created by Qt Designer).
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PrimageKinetics.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        # Set scene in MRML widgets (the .ui connects mrmlSceneChanged to each of them).
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = PrimageKineticsLogic()
        self.ui.progressBar.hide()

        # These connections ensure that we update parameter node when scene is closed
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)

        # Make sure parameter node is initialized (needed for module reload)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
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
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Ensure parameter node exists and observed."""
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode: Optional[PrimageKineticsParameterNode]) -> None:
        """Set and observe the parameter node (the GUI follows it through connectGui)."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply
            )
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # The .ui sets the dynamic property "SlicerParameterName" on each bound widget.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        if not self._parameterNode:
            self.ui.applyButton.enabled = False
            self.ui.exportButton.enabled = False
            return
        # A newly selected series shows its b-values / times, which the user may then edit.
        for field, textField in (("dwiNode", "bValues"), ("dceNode", "frameTimes")):
            node = getattr(self._parameterNode, field)
            nodeID = node.GetID() if node else None
            if self._seriesShown.get(field, "unseen") == nodeID:
                continue
            firstLook = field not in self._seriesShown
            self._seriesShown[field] = nodeID
            # Keep values the user edited (saved in the scene) when the module opens.
            if not (firstLook and getattr(self._parameterNode, textField)):
                setattr(self._parameterNode, textField, self.logic.indexValuesText(node))
        problem = self.logic.missingInput(self._parameterNode)
        self.ui.applyButton.toolTip = problem or _("Run the analysis; results become new nodes")
        self.ui.applyButton.enabled = not problem
        problem = self.logic.missingExportInput(self._parameterNode, self._lastResult)
        self.ui.exportButton.toolTip = problem or _(
            "Write the last analysis's results as DICOM objects into the output folder"
        )
        self.ui.exportButton.enabled = not problem

    def onApplyButton(self) -> None:
        """Run processing when user clicks "Apply" button."""
        with slicer.util.tryWithErrorDisplay(_("Failed to compute results."), waitCursor=True):
            from primage.mrml.kinetics import KineticsCancelled

            self._cancelRequested = False
            self.ui.applyButton.enabled = False
            self.ui.cancelButton.enabled = True
            self.ui.progressBar.value = 0
            self.ui.progressBar.show()
            self.ui.statusLabel.text = ""
            try:
                result = self.logic.processParameterNode(
                    self._parameterNode, progress=self._showProgress
                )
            except KineticsCancelled:
                self.ui.statusLabel.text = _("Cancelled: nothing was added to the scene.")
                return
            finally:
                self.ui.progressBar.hide()
                self.ui.cancelButton.enabled = False
                self._checkCanApply()
            self._lastResult = (self._parameterNode.analysis, result)
            series = self.logic.analysedSeries(self._parameterNode)
            if not self._parameterNode.dicomSource and series is not None:
                # The maps lie on the analysed series: the natural source for the export.
                self._parameterNode.dicomSource = series
            self._checkCanApply()
            self._showResult(result)

    def onExportButton(self) -> None:
        """Write the last analysis's results as DICOM (Parametric Maps, SEG, SR)."""
        with slicer.util.tryWithErrorDisplay(_("Failed to export to DICOM."), waitCursor=True):
            analysis, result = self._lastResult or (None, None)
            database = slicer.dicomDatabase  # None until the DICOM module has started
            self.ui.statusLabel.text = self.logic.exportResults(
                self._parameterNode,
                analysis,
                result,
                database.filesForSeries if database else (lambda uid: []),
            )

    def onCancelButton(self) -> None:
        """Ask the running fit to stop at its next progress report."""
        self._cancelRequested = True

    def _showProgress(self, fraction: float, message: str) -> None:
        """Progress callback of the engine; also where a cancel request takes effect."""
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.progressBar.format = message.replace("%", "%%") + " (%p%)"
        slicer.app.processEvents()
        if self._cancelRequested:
            from primage.mrml.kinetics import KineticsCancelled

            raise KineticsCancelled("cancelled by the user")

    def _showResult(self, result) -> None:
        volumes = list(result.volumes.values())
        if volumes:
            slicer.util.setSliceViewerLayers(foreground=volumes[0], foregroundOpacity=0.6)
        if result.chart is not None:
            slicer.modules.plots.logic().ShowChartInLayout(result.chart)
        if result.table is not None:
            slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(result.table.GetID())
        self.ui.statusLabel.text = _("Created {count} volume(s){extra}.").format(
            count=len(volumes),
            extra=_(", a habitat segmentation") if result.segmentation is not None else "",
        )


#
# PrimageKineticsLogic
#


class PrimageKineticsLogic(ScriptedLoadableModuleLogic):
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
        return PrimageKineticsParameterNode(super().getParameterNode())

    @staticmethod
    def indexValuesText(node) -> str:
        """b-values / frame times of a series node as editable text ("" for none)."""
        from primage.mrml.kinetics import index_values_text

        return index_values_text(node)

    @staticmethod
    def missingInput(parameterNode) -> str:
        """What must still be chosen before the analysis can run ("" when ready)."""
        analysis = parameterNode.analysis
        if analysis in DWI_ANALYSES and not parameterNode.dwiNode:
            return _("Select a DWI series")
        if analysis not in DWI_ANALYSES and not parameterNode.dceNode:
            return _("Select a DCE series")
        if analysis.startswith("fcf") and not parameterNode.tumourSegmentation:
            return _("Select the tumour segmentation")
        if analysis == "tofts" and parameterNode.aifSource == "segment":
            if not parameterNode.aifSegmentation:
                return _("Select the AIF vessel segmentation")
        return ""

    @staticmethod
    def analysedSeries(parameterNode):
        """The series node the selected analysis reads (DWI or DCE)."""
        if parameterNode.analysis in DWI_ANALYSES:
            return parameterNode.dwiNode
        return parameterNode.dceNode

    @staticmethod
    def missingExportInput(parameterNode, lastResult) -> str:
        """What Export to DICOM still needs ("" when ready)."""
        if lastResult is None:
            return _("Run an analysis first")
        if not parameterNode.dicomSource:
            return _("Select the source series (loaded from DICOM)")
        if not parameterNode.dicomFolder.strip():
            return _("Give the output folder")
        if not parameterNode.dicomPseudonym.strip():
            return _("Give the pseudonym")
        return ""

    def exportResults(self, parameterNode, analysis, result, filesForSeries) -> str:
        """Write an analysis's result nodes as DICOM Parametric Maps / SEG / SR into
        parameterNode.dicomFolder, referencing parameterNode.dicomSource's series (its files
        from filesForSeries(seriesUID), e.g. slicer.dicomDatabase.filesForSeries). Returns a
        one-line description. Raises ValueError (PrimageInputError) with a clear message."""
        from primage.mrml.dicom_export import describe_export, export_kinetics_result

        p = parameterNode
        exported, skipped = export_kinetics_result(
            result,
            analysis,
            p.dicomSource,
            filesForSeries,
            p.dicomFolder,
            pseudonym=p.dicomPseudonym,
            tumour_node=p.tumourSegmentation if p.dicomIncludeTumour else None,
            tumour_segment=p.tumourSegment or None,
        )
        return describe_export(exported, skipped)

    def processParameterNode(self, parameterNode, progress=None):
        """Run the analysis set in a parameter node; returns the created nodes (KineticsNodes)."""
        if parameterNode is None:
            raise ValueError(
                "No parameter node: open the Kinetics module once or call getParameterNode()."
            )
        problem = self.missingInput(parameterNode)
        if problem:
            raise ValueError(problem)
        p = parameterNode
        return self.process(
            p.analysis,
            dwiNode=p.dwiNode,
            bValues=p.bValues,
            dceNode=p.dceNode,
            frameTimes=p.frameTimes,
            tumourSegmentation=p.tumourSegmentation,
            tumourSegment=p.tumourSegment,
            options={
                "adcMethod": p.adcMethod,
                "bMin": p.bMin,
                "ivimThreshold": p.ivimThreshold,
                "baselineFrames": p.baselineFrames,
                "aifSource": p.aifSource,
                "aifSegmentation": p.aifSegmentation,
                "aifSegment": p.aifSegment,
                "extendedTofts": p.extendedTofts,
                "signalIsConcentration": p.signalIsConcentration,
                "t10Tissue": p.t10Tissue,
                "t10Blood": p.t10Blood,
                "flipAngle": p.flipAngle,
                "repetitionTime": p.repetitionTime,
                "relaxivity": p.relaxivity,
                "haematocrit": p.haematocrit,
                "clusters": p.clusters,
                "confidence": p.confidence,
            },
            progress=progress,
        )

    def process(
        self,
        analysis,
        *,
        dwiNode=None,
        bValues="",
        dceNode=None,
        frameTimes="",
        tumourSegmentation=None,
        tumourSegment="",
        options=None,
        progress=None,
    ):
        """
        Run one analysis on scene nodes. Can be used without GUI widget.
        :param analysis: one of ANALYSES
        :param dwiNode, bValues: DWI sequence or diffusion-weighted volume, b-values text ("" = from the node)
        :param dceNode, frameTimes: DCE sequence, frame times text in s ("" = from the node)
        :param tumourSegmentation, tumourSegment: tumour ROI (segment name or ID; "" = all segments)
        :param options: dict of the parameter node's settings (see processParameterNode)
        :param progress: optional callable progress(fraction, message); may raise KineticsCancelled
        :return: KineticsNodes (volumes, table, chart, segmentation, summary)
        Raises ValueError (PrimageInputError) with a clear message on bad input.
        """
        from primage.mrml import kinetics

        o = dict(options or {})
        mask = {"mask_node": tumourSegmentation, "mask_segment": tumourSegment or None}
        baseline = int(o.get("baselineFrames", 0)) or None
        if analysis not in ANALYSES:
            raise ValueError(f"Unknown analysis {analysis!r}; choose one of {ANALYSES}.")
        if analysis == "adc":
            return kinetics.adc_from_nodes(
                dwiNode,
                b_values=bValues,
                bmin=o.get("bMin") or None,
                method=o.get("adcMethod", "nlls"),
                progress=progress,
                **mask,
            )
        if analysis == "ivim":
            return kinetics.ivim_from_nodes(
                dwiNode,
                b_values=bValues,
                b_threshold=o.get("ivimThreshold", 200.0),
                progress=progress,
                **mask,
            )
        if analysis == "dce":
            return kinetics.dce_from_nodes(
                dceNode, times=frameTimes, baseline_frames=baseline, progress=progress, **mask
            )
        if analysis == "tofts":
            return kinetics.tofts_from_nodes(
                dceNode,
                times=frameTimes,
                aif=o.get("aifSource", "parker"),
                aif_node=o.get("aifSegmentation"),
                aif_segment=o.get("aifSegment") or None,
                extended=bool(o.get("extendedTofts", False)),
                signal_is_concentration=bool(o.get("signalIsConcentration", False)),
                t10_tissue_s=o.get("t10Tissue", 1.3),
                t10_blood_s=o.get("t10Blood", 1.6),
                flip_angle_deg=o.get("flipAngle", 15.0),
                repetition_time_s=o.get("repetitionTime", 4.0) / 1000.0,
                relaxivity=o.get("relaxivity", 4.5),
                haematocrit=o.get("haematocrit", 0.42),
                baseline_frames=baseline,
                progress=progress,
                **mask,
            )
        parameter = "adc" if analysis == "fcf_adc" else "iauc60"
        return kinetics.fcf_from_nodes(
            dwiNode if parameter == "adc" else dceNode,
            parameter,
            values=bValues if parameter == "adc" else frameTimes,
            clusters=int(o.get("clusters", 2)),
            confidence=o.get("confidence", 0.70),
            baseline_frames=baseline,
            progress=progress,
            **mask,
        )


#
# PrimageKineticsTest
#


class PrimageKineticsTest(ScriptedLoadableModuleTest):
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
        self.test_PrimageKineticsSharedScenario()
        self.setUp()
        self.test_PrimageKineticsParameterNode()
        self.setUp()
        self.test_PrimageKineticsBadInput()
        self.setUp()
        self.test_PrimageKineticsExportToDicom()

    def test_PrimageKineticsSharedScenario(self):
        """The scenario the pytest suite runs with slicer-core, here inside the application."""
        self.delayDisplay("Starting the shared kinetics scenario")
        from primage.mrml.selftest import kinetics_scenario

        kinetics_scenario(slicer.mrmlScene)
        self.delayDisplay("Test passed")

    def test_PrimageKineticsParameterNode(self):
        """The module's own path: parameter node -> logic -> new nodes."""
        self.delayDisplay("Starting the parameter node test")
        from primage.mrml.selftest import kinetics_inputs

        dwi, dce, segmentation = kinetics_inputs(slicer.mrmlScene)
        logic = PrimageKineticsLogic()
        parameterNode = logic.getParameterNode()
        parameterNode.dwiNode = dwi
        parameterNode.tumourSegmentation = segmentation
        parameterNode.analysis = "fcf_adc"
        parameterNode.bValues = logic.indexValuesText(dwi)
        result = logic.processParameterNode(parameterNode)
        self.assertIsNotNone(result.segmentation)
        self.assertEqual(result.segmentation.GetSegmentation().GetNumberOfSegments(), 2)
        parameterNode.analysis = "dce"
        parameterNode.dceNode = dce
        parameterNode.frameTimes = logic.indexValuesText(dce)
        result = logic.processParameterNode(parameterNode)
        self.assertIn("iauc60", result.volumes)
        self.delayDisplay("Test passed")

    def test_PrimageKineticsBadInput(self):
        """Bad input gives a ValueError with a message, not a crash."""
        self.delayDisplay("Starting the bad input test")
        from primage.mrml.selftest import kinetics_inputs

        dwi, _dce, _segmentation = kinetics_inputs(slicer.mrmlScene)
        logic = PrimageKineticsLogic()
        parameterNode = logic.getParameterNode()
        parameterNode.analysis = "adc"
        parameterNode.dwiNode = None
        with self.assertRaises(ValueError):
            logic.processParameterNode(parameterNode)
        with self.assertRaises(ValueError):
            logic.process("adc", dwiNode=dwi, bValues="0, 500")  # fewer b-values than volumes
        self.delayDisplay("Test passed")

    def test_PrimageKineticsExportToDicom(self):
        """Fit-Cluster-Fit on a DWI loaded from DICOM, then Export to DICOM through the logic:
        habitat and tumour SEG, confidence Parametric Map and the SR."""
        self.delayDisplay("Starting the DICOM export test")
        import tempfile
        from pathlib import Path

        from primage.mrml.selftest import dicom_export_inputs

        with tempfile.TemporaryDirectory() as folder:
            inputs = dicom_export_inputs(slicer.mrmlScene, folder)
            dwi, segmentation = inputs["dwi"], inputs["tumour"]
            filesForSeries = inputs["files_for_series"]
            logic = PrimageKineticsLogic()
            parameterNode = logic.getParameterNode()
            parameterNode.analysis = "fcf_adc"
            parameterNode.dwiNode = dwi
            parameterNode.bValues = logic.indexValuesText(dwi)
            parameterNode.tumourSegmentation = segmentation
            result = logic.processParameterNode(parameterNode)
            self.assertIn("source series", logic.missingExportInput(parameterNode, result))
            parameterNode.dicomSource = logic.analysedSeries(parameterNode)
            parameterNode.dicomFolder = str(Path(folder) / "out")
            parameterNode.dicomPseudonym = "SELFTEST01"
            self.assertEqual(logic.missingExportInput(parameterNode, result), "")
            text = logic.exportResults(parameterNode, "fcf_adc", result, filesForSeries)
            written = sorted(p.name for p in (Path(folder) / "out").glob("*.dcm"))
            self.assertEqual(
                written,
                ["pm_fcf_adc_confidence.dcm", "seg_fcf_adc_habitats.dcm", "seg_tumour.dcm",
                 "sr_measurements.dcm"],
            )  # fmt: skip
            self.assertIn("Wrote", text)
            parameterNode.dicomPseudonym = ""
            with self.assertRaises(ValueError):
                logic.exportResults(parameterNode, "fcf_adc", result, filesForSeries)
        self.delayDisplay("Test passed")
