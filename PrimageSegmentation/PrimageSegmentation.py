from typing import Annotated, Optional

import slicer
import vtk
from slicer import (
    vtkMRMLModelNode,
    vtkMRMLPlotChartNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
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

# This file stays thin: the Widget binds the .ui to the parameter node and polls background
# jobs; the Logic reads the parameter node and calls the MRML layer
# (primage.mrml.segmentation_metrics, primage.mrml.segmentation_models), which calls the
# engine (primage.segmentation). The engine and torch are imported lazily, inside the Logic
# and the job processes, so the module loads fast and works before torch is installed.

POLL_INTERVAL_MS = 250

#
# PrimageSegmentation
#


class PrimageSegmentation(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "PRIMAGE")]
        self.parent.dependencies = []
        self.parent.contributors = ["PRIMAGE for 3D Slicer contributors"]
        self.parent.helpText = _("""
Agreement between two segmentations (observer vs observer, model vs observer), per segment:
Dice, Jaccard, Hausdorff distance and its 95th percentile, average symmetric surface distance
(mm), volumes (mL), relative volume difference, false-negative rate FN/(TP+FN) and the modified
false-positive rate FP/(TP+FN) of the PRIMAGE segmentation papers. Segments are compared on the
reference volume's grid when one is selected, else on the reference segmentation's geometry;
segments with the same name are paired unless segment names are given. Results go to a table;
optionally the test surface is coloured by its signed distance to the reference (a model node).
<br><b>Consensus</b>: STAPLE of three or more observers, with each observer's sensitivity and
specificity.
<br><b>Auto-segment</b>: run a trained model folder (made by Train, or an nnU-Net v2 folder) on
one volume per input channel; the result is a segmentation with named segments, ready for
correction in the Segment Editor.
<br><b>Train</b>: train the built-in 3D U-Net with deep supervision (MONAI DynUNet) on the
segmentations made on the checked volumes (or on a pairs CSV file); loss and validation Dice
are plotted live.
Segmentation and training run in a separate process with progress and Cancel. PyTorch is
installed on first use (through the PyTorch extension when it is installed), after asking.
The same from the command line: <code>primage segment --help</code>.
See <a href="https://github.com/primage-slicer/SlicerPRIMAGE">the extension documentation</a>.
""")
        self.parent.acknowledgementText = _("""
Developed for PRIMAGE (PRedictive In-silico Multiscale Analytics to support cancer
personalised diaGnosis and prognosis, Empowered by imaging biomarkers), a project funded by
the European Union's Horizon 2020 research and innovation programme under grant agreement
No 826494. The metrics follow the PRIMAGE segmentation studies of neuroblastoma MR
(Veiga-Canuto et al., Cancers 2022;14:3648).
""")


#
# PrimageSegmentationParameterNode
#


@parameterNodeWrapper
class PrimageSegmentationParameterNode:
    """
    The parameters of the module, stored in the scene (saved and restored with it).

    referenceSegmentation - The reference (e.g. the expert's) segmentation.
    referenceSegment - Segment name in the reference ("" = pair segments by name).
    testSegmentation - The segmentation measured against the reference.
    testSegment - Segment name in the test segmentation ("" = pair segments by name).
    referenceVolume - Optional volume whose grid the segments are compared on.
    outputTable - The metrics table (created when not selected).
    distanceMap - Also colour the test surface by signed distance (mm) to the reference.
    distanceModel - The model node of that surface (created when not selected).
    stapleSegment - Segment name in every observer's segmentation ("" = the first).
    stapleSegmentation, stapleTable - STAPLE consensus and per-observer table.
    modelFolder - Trained model folder (primage or nnU-Net v2).
    inputVolume, inputVolume2, inputVolume3 - The model's input channels, in order.
    device, trainingDevice - "cpu" or "cuda".
    postprocess - Post-processing steps ("largest,fill"; "" = none).
    trainingSegment - Tumour segment name in each training volume's segmentation.
    trainingPairsFile - Optional pairs CSV (image,mask) used instead of scene volumes.
    trainingOutputFolder - New folder that receives the trained model.
    epochs, iterationsPerEpoch - Training length.
    trainingChart - Plot chart of loss and validation Dice per epoch.
    """

    referenceSegmentation: vtkMRMLSegmentationNode
    referenceSegment: str = ""
    testSegmentation: vtkMRMLSegmentationNode
    testSegment: str = ""
    referenceVolume: vtkMRMLScalarVolumeNode
    outputTable: vtkMRMLTableNode
    distanceMap: bool = False
    distanceModel: vtkMRMLModelNode
    stapleSegment: str = ""
    stapleSegmentation: vtkMRMLSegmentationNode
    stapleTable: vtkMRMLTableNode
    modelFolder: str = ""
    inputVolume: vtkMRMLScalarVolumeNode
    inputVolume2: vtkMRMLScalarVolumeNode
    inputVolume3: vtkMRMLScalarVolumeNode
    device: Annotated[str, Choice(["cpu", "cuda"])] = "cpu"
    postprocess: str = "largest,fill"
    trainingSegment: str = ""
    trainingPairsFile: str = ""
    trainingOutputFolder: str = ""
    epochs: Annotated[int, WithinRange(1, 10000)] = 30
    iterationsPerEpoch: Annotated[int, WithinRange(1, 10000)] = 20
    trainingDevice: Annotated[str, Choice(["cpu", "cuda"])] = "cpu"
    trainingChart: vtkMRMLPlotChartNode


#
# PrimageSegmentationWidget
#


class PrimageSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
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
        self._shownChart = None

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.setup(self)

        # Load widget from .ui file (created by Qt Designer).
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PrimageSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        # Set scene in MRML widgets. In the .ui file the top-level qMRMLWidget's
        # "mrmlSceneChanged(vtkMRMLScene*)" signal is connected to each MRML widget's
        # "setMRMLScene(vtkMRMLScene*)" slot.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        # Logic implements all computations that should be possible to run in batch mode.
        self.logic = PrimageSegmentationLogic()

        # Jobs are polled from the GUI thread: the work itself runs in another process.
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
        self.ui.stapleButton.connect("clicked(bool)", self.onStapleButton)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.trainButton.connect("clicked(bool)", self.onTrainButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.browseModelFolderButton.connect("clicked(bool)", self.onBrowseModelFolder)
        self.ui.browseTrainingPairsButton.connect("clicked(bool)", self.onBrowseTrainingPairs)
        self.ui.browseTrainingOutputButton.connect("clicked(bool)", self.onBrowseTrainingOutput)
        self.ui.observersSelector.connect("checkedNodesChanged()", self._checkCanApply)
        self.ui.trainingVolumesSelector.connect("checkedNodesChanged()", self._checkCanApply)

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
        # A running job would write into the scene being closed: stop it.
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

    def setParameterNode(
        self, inputParameterNode: Optional[PrimageSegmentationParameterNode]
    ) -> None:
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

    @staticmethod
    def _enable(button, reason) -> None:
        """Enable a button when there is no reason against it (the reason is its tooltip)."""
        button.enabled = reason is None
        if reason is not None:
            button.toolTip = reason

    def _checkCanApply(self, caller=None, event=None) -> None:
        parameterNode = self._parameterNode
        running = _("A segmentation or training job is running") if self._job else None
        self.ui.cancelButton.enabled = self._job is not None
        if not parameterNode:
            for button in (
                self.ui.applyButton,
                self.ui.stapleButton,
                self.ui.segmentButton,
                self.ui.trainButton,
            ):
                self._enable(button, _("No parameter node"))
            return
        compareReason = None
        if not parameterNode.referenceSegmentation:
            compareReason = _("Select a reference segmentation")
        elif not parameterNode.testSegmentation:
            compareReason = _("Select a test segmentation")
        self._enable(self.ui.applyButton, compareReason)
        if compareReason is None:
            self.ui.applyButton.toolTip = _("Compute the agreement metrics into a table")
        observers = self.ui.observersSelector.checkedNodes()
        self._enable(
            self.ui.stapleButton,
            None if len(observers) >= 3 else _("Check three or more segmentations"),
        )
        if len(observers) >= 3:
            self.ui.stapleButton.toolTip = _("STAPLE consensus of the checked segmentations")
        segmentReason = running
        if segmentReason is None and not parameterNode.modelFolder:
            segmentReason = _("Choose a model folder")
        elif segmentReason is None and not parameterNode.inputVolume:
            segmentReason = _("Select an input volume")
        self._enable(self.ui.segmentButton, segmentReason)
        if segmentReason is None:
            self.ui.segmentButton.toolTip = _("Segment the input volume(s) in a separate process")
        trainReason = running
        volumes = self.ui.trainingVolumesSelector.checkedNodes()
        if trainReason is None and not volumes and not parameterNode.trainingPairsFile:
            trainReason = _("Check training volumes or choose a pairs file")
        elif trainReason is None and not parameterNode.trainingOutputFolder:
            trainReason = _("Choose a new output folder for the model")
        self._enable(self.ui.trainButton, trainReason)
        if trainReason is None:
            self.ui.trainButton.toolTip = _("Train in a separate process; the chart updates live")

    def onApplyButton(self) -> None:
        """Run processing when user clicks "Apply" button."""
        with slicer.util.tryWithErrorDisplay(_("Failed to compute results."), waitCursor=True):
            table = self.logic.processParameterNode(self._parameterNode)
            self._showTable(table)

    def onStapleButton(self) -> None:
        """STAPLE consensus of the checked segmentations."""
        with slicer.util.tryWithErrorDisplay(
            _("Failed to compute the consensus."), waitCursor=True
        ):
            _segmentation, table = self.logic.stapleFromParameterNode(
                self._parameterNode, self.ui.observersSelector.checkedNodes()
            )
            self._showTable(table)

    def _showTable(self, tableNode) -> None:
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:
            return
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
        slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(tableNode.GetID())
        slicer.app.applicationLogic().PropagateTableSelection()

    def _ensureDependencies(self, requirements) -> bool:
        """Install PyTorch (through the PyTorch extension when present) and the missing Python
        packages, after asking the user; False when declined or still missing."""
        if not self.logic.torchInstalled():
            try:
                import PyTorchUtils  # the PyTorch extension's utilities (optional)
            except ImportError:
                PyTorchUtils = None
            if PyTorchUtils is not None:
                # It asks, picks the CUDA build for this machine, and installs.
                if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True) is None:
                    return False
            else:
                if not slicer.util.confirmOkCancelDisplay(
                    _(
                        "Automatic segmentation and training need PyTorch, which is not installed. "
                        "Install the CPU build of torch into Slicer's Python now (about 200 MB)? "
                        "For a GPU build, install the PyTorch extension from the Extensions "
                        "Manager instead and try again."
                    ),
                    _("Install PyTorch"),
                ):
                    return False
                slicer.util.pip_install(self.logic.torchRequirement())
        missing = self.logic.missingRequirements(requirements)
        if not missing:
            return True
        if not slicer.util.confirmOkCancelDisplay(
            _("PRIMAGE Segmentation needs these Python packages, which will be installed now:\n")
            + "\n".join(missing),
            _("Install Python packages"),
        ):
            return False
        slicer.util.pip_install(missing)
        return not self.logic.missingRequirements(requirements)

    def onSegmentButton(self) -> None:
        """Start the model on the input volume(s) in a separate process."""
        with slicer.util.tryWithErrorDisplay(
            _("Failed to start the segmentation."), waitCursor=True
        ):
            requirements = self.logic.requirementsForModel(
                self.resourcePath("requirements.txt"), self._parameterNode.modelFolder
            )
            if not self._ensureDependencies(requirements):
                return
            self._startJob("segment", self.logic.startSegmentation(self._parameterNode))

    def onTrainButton(self) -> None:
        """Start training in a separate process; the chart follows the epochs."""
        with slicer.util.tryWithErrorDisplay(_("Failed to start the training."), waitCursor=True):
            requirements = self.logic.requirementsForTraining(self.resourcePath("requirements.txt"))
            if not self._ensureDependencies(requirements):
                return
            job = self.logic.startTraining(
                self._parameterNode, self.ui.trainingVolumesSelector.checkedNodes()
            )
            self._startJob("train", job)

    def _startJob(self, kind, job) -> None:
        self._job, self._jobKind = job, kind
        self.ui.progressBar.value = 0
        self.ui.progressBar.format = _("starting") + " (%p%)"
        self.ui.progressBar.show()
        self._timer.start()
        self._checkCanApply()

    def _pollJob(self) -> None:
        """Timer callback: show progress and new epochs; collect the result when it ends."""
        if self._job is None:
            self._timer.stop()
            return
        status = self._job.poll()
        self.ui.progressBar.value = int(round(100 * status.fraction))
        self.ui.progressBar.format = status.message.replace("%", "%%") + " (%p%)"
        if self._jobKind == "train":
            with slicer.util.tryWithErrorDisplay(_("Failed to plot the training curves.")):
                self._showChart(self.logic.updateTrainingChart(self._parameterNode, self._job))
        if status.running:
            return
        self._timer.stop()
        job, kind = self._job, self._jobKind
        self._job = self._jobKind = None
        self.ui.progressBar.hide()
        self._checkCanApply()
        with slicer.util.tryWithErrorDisplay(_("The job failed."), waitCursor=True):
            if kind == "segment":
                segmentation = self.logic.finishSegmentation(self._parameterNode, job)
                segmentation.CreateClosedSurfaceRepresentation()
                slicer.util.showStatusMessage(
                    _("Segmented: {name}").format(name=segmentation.GetName()), 5000
                )
            else:
                config = self.logic.finishTraining(self._parameterNode, job)
                dice = config["training"].get("final_validation_dice")
                slicer.util.showStatusMessage(
                    _("Model trained; final validation Dice {dice}").format(dice=dice), 10000
                )

    def _showChart(self, chartNode) -> None:
        if chartNode is None or self._shownChart is chartNode:
            return
        self._shownChart = chartNode
        slicer.modules.plots.logic().ShowChartInLayout(chartNode)

    def onCancelButton(self) -> None:
        """Stop the running job (its files are removed; a model folder keeps its checkpoint)."""
        if self._job is None:
            return
        self._timer.stop()
        self._job.cancel()
        self._job = self._jobKind = None
        self.ui.progressBar.hide()
        slicer.util.showStatusMessage(_("Cancelled"), 3000)
        self._checkCanApply()

    def _browseFolder(self, title, current):
        import qt

        return qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), title, current)

    def onBrowseModelFolder(self) -> None:
        """Choose a trained model folder."""
        path = self._browseFolder(_("Model folder"), self._parameterNode.modelFolder)
        if path:
            self._parameterNode.modelFolder = path

    def onBrowseTrainingOutput(self) -> None:
        """Choose the folder that receives the trained model."""
        path = self._browseFolder(
            _("Output model folder"), self._parameterNode.trainingOutputFolder
        )
        if path:
            self._parameterNode.trainingOutputFolder = path

    def onBrowseTrainingPairs(self) -> None:
        """Choose a pairs CSV file (image,mask)."""
        import qt

        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(),
            _("Training pairs"),
            self._parameterNode.trainingPairsFile,
            "CSV (*.csv)",
        )
        if path:
            self._parameterNode.trainingPairsFile = path


#
# PrimageSegmentationLogic
#


class PrimageSegmentationLogic(ScriptedLoadableModuleLogic):
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
        return PrimageSegmentationParameterNode(super().getParameterNode())

    @staticmethod
    def _require(parameterNode):
        if parameterNode is None:
            raise ValueError(
                "No parameter node: open the Segmentation module once or create one with getParameterNode()."
            )
        return parameterNode

    def processParameterNode(self, parameterNode):
        """Compare the segmentations set in a parameter node; the table is stored in it and
        returned (and the distance-map model, when asked for)."""
        self._require(parameterNode)
        table = self.compare(
            parameterNode.referenceSegmentation,
            parameterNode.testSegmentation,
            referenceSegment=parameterNode.referenceSegment,
            testSegment=parameterNode.testSegment,
            referenceVolume=parameterNode.referenceVolume,
            outputTable=parameterNode.outputTable,
        )
        parameterNode.outputTable = table
        if parameterNode.distanceMap:
            parameterNode.distanceModel = self.distanceMap(
                parameterNode.referenceSegmentation,
                parameterNode.testSegmentation,
                referenceSegment=parameterNode.referenceSegment,
                testSegment=parameterNode.testSegment,
                referenceVolume=parameterNode.referenceVolume,
                modelNode=parameterNode.distanceModel,
            )
        return table

    def compare(
        self,
        referenceSegmentation,
        testSegmentation,
        *,
        referenceSegment="",
        testSegment="",
        referenceVolume=None,
        outputTable=None,
    ):
        """
        Agreement metrics of test segments against reference segments, into a table node.
        :param referenceSegmentation: the reference segmentation node
        :param testSegmentation: the segmentation node measured against it
        :param referenceSegment, testSegment: segment names; both empty pairs segments by name
        :param referenceVolume: optional volume whose grid the segments are compared on
        :param outputTable: table node to fill; None creates one
        :return: the table node
        Raises ValueError (PrimageInputError) with a clear message on bad input.
        """
        from primage.mrml.segmentation_metrics import compare_segmentation_nodes

        pairs = self._segmentPairs(referenceSegment, testSegment)
        return compare_segmentation_nodes(
            referenceSegmentation,
            testSegmentation,
            pairs=pairs,
            reference_volume=referenceVolume,
            output_table=outputTable,
        )

    @staticmethod
    def _segmentPairs(referenceSegment, testSegment):
        from primage.errors import PrimageInputError

        if bool(referenceSegment) != bool(testSegment):
            raise PrimageInputError(
                "Give both segment names (reference and test) or neither (pair segments by name)."
            )
        return [(referenceSegment, testSegment)] if referenceSegment else None

    def distanceMap(
        self,
        referenceSegmentation,
        testSegmentation,
        *,
        referenceSegment="",
        testSegment="",
        referenceVolume=None,
        modelNode=None,
    ):
        """Model node of the test segment's surface coloured by signed distance (mm) to the
        reference segment's surface; without names, the first pair of segments by name."""
        from primage.mrml.segmentation_metrics import (
            segment_pairs_by_name,
            surface_distance_model,
        )

        pairs = self._segmentPairs(referenceSegment, testSegment)
        if pairs is None:
            pairs = segment_pairs_by_name(referenceSegmentation, testSegmentation)[:1]
        (referenceName, testName) = pairs[0]
        return surface_distance_model(
            referenceSegmentation,
            testSegmentation,
            referenceName,
            testName,
            reference_volume=referenceVolume,
            model_node=modelNode,
        )

    def stapleFromParameterNode(self, parameterNode, segmentationNodes):
        """STAPLE consensus of three or more segmentation nodes; the consensus segmentation and
        the per-observer table are stored in the parameter node and returned."""
        from primage.mrml.segmentation_metrics import staple_from_segmentation_nodes

        self._require(parameterNode)
        segmentation, table = staple_from_segmentation_nodes(
            segmentationNodes,
            parameterNode.stapleSegment or None,
            output_segmentation=parameterNode.stapleSegmentation,
            output_table=parameterNode.stapleTable,
        )
        parameterNode.stapleSegmentation = segmentation
        parameterNode.stapleTable = table
        return segmentation, table

    # --- dependencies (the asking is done by the widget)

    @staticmethod
    def torchInstalled() -> bool:
        from primage.mrml.dependencies import torch_installed

        return torch_installed()

    @staticmethod
    def torchRequirement() -> str:
        from primage.mrml.dependencies import TORCH_REQUIREMENT

        return TORCH_REQUIREMENT

    @staticmethod
    def missingRequirements(requirements) -> list:
        """The requirements whose module cannot be imported (to install)."""
        from primage.mrml.dependencies import missing_requirements

        return missing_requirements(requirements)

    @staticmethod
    def requirementsForModel(requirementsPath, modelFolder) -> list:
        """Pinned requirements (besides torch) to run a model folder: MONAI or nnunetv2."""
        from primage.mrml.dependencies import requirements_for_model

        return requirements_for_model(requirementsPath, modelFolder)

    @staticmethod
    def requirementsForTraining(requirementsPath) -> list:
        """Pinned requirements (besides torch) to train the built-in network: MONAI."""
        from primage.mrml.dependencies import requirements_for_model

        return requirements_for_model(requirementsPath, None)

    # --- automatic segmentation and training (separate processes)

    @staticmethod
    def inputVolumes(parameterNode) -> list:
        """The selected input channels, in order (empty selectors skipped)."""
        volumes = [
            parameterNode.inputVolume,
            parameterNode.inputVolume2,
            parameterNode.inputVolume3,
        ]
        return [volume for volume in volumes if volume is not None]

    def startSegmentation(self, parameterNode):
        """Start the model set in a parameter node in a separate process; returns the job."""
        from primage.mrml.segmentation_models import start_segmentation_job

        self._require(parameterNode)
        return start_segmentation_job(
            parameterNode.modelFolder,
            self.inputVolumes(parameterNode),
            device=parameterNode.device,
            postprocess=parameterNode.postprocess.strip() or None,
        )

    def finishSegmentation(self, parameterNode, job):
        """The new segmentation node of a finished job (segments named as the model's labels)."""
        return job.finish()

    def trainingOptions(self, parameterNode):
        """TrainOptions of a parameter node (the other options keep the engine defaults)."""
        from primage.mrml.segmentation_models import training_options

        return training_options(
            epochs=parameterNode.epochs, iterations_per_epoch=parameterNode.iterationsPerEpoch
        )

    def startTraining(self, parameterNode, volumeNodes):
        """Start training in a separate process, on the pairs file when one is set, else on the
        segmentations made on the given volumes; returns the job."""
        from primage.mrml.segmentation_models import (
            start_training_job,
            start_training_job_from_file,
            training_pairs_from_volumes,
        )

        self._require(parameterNode)
        options = self.trainingOptions(parameterNode)
        if parameterNode.trainingPairsFile:
            return start_training_job_from_file(
                parameterNode.trainingPairsFile,
                parameterNode.trainingOutputFolder,
                parameterNode.parameterNode.GetScene(),  # the chart goes into the module's scene
                options=options,
                device=parameterNode.trainingDevice,
            )
        pairs = training_pairs_from_volumes(volumeNodes, parameterNode.trainingSegment or None)
        return start_training_job(
            pairs,
            parameterNode.trainingOutputFolder,
            options=options,
            device=parameterNode.trainingDevice,
        )

    def updateTrainingChart(self, parameterNode, job):
        """Refresh the loss/Dice chart of a training job (stored in the parameter node)."""
        chart = job.update_chart(parameterNode.trainingChart)
        if chart is not None and parameterNode.trainingChart is not chart:
            parameterNode.trainingChart = chart
        return chart

    def finishTraining(self, parameterNode, job):
        """The trained model's config; the model folder becomes the Auto-segment model."""
        config = job.finish()
        parameterNode.modelFolder = job.spec["output"]
        return config


#
# PrimageSegmentationTest
#


class PrimageSegmentationTest(ScriptedLoadableModuleTest):
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
        self.test_PrimageSegmentationSharedScenario()
        self.setUp()
        self.test_PrimageSegmentationBadInput()
        import importlib.util

        if all(importlib.util.find_spec(name) for name in ("torch", "monai")):
            self.setUp()
            self.test_PrimageSegmentationJobs()
        else:
            # Tests never install packages; click Segment or Train once to install them.
            self.skipTest("PyTorch and MONAI are not installed in this Slicer")

    def test_PrimageSegmentationSharedScenario(self):
        """The scenario the pytest suite runs with slicer-core, here inside the application."""
        self.delayDisplay("Starting the shared segmentation scenario")
        from primage.mrml.selftest import segmentation_scenario

        segmentation_scenario(slicer.mrmlScene)
        self.delayDisplay("Test passed")

    def test_PrimageSegmentationJobs(self):
        """Train and auto-segment in separate processes, as the Train and Auto-segment
        sections do (the scenario the pytest suite runs with slicer-core)."""
        import tempfile

        self.delayDisplay("Starting the training and auto-segmentation scenario")
        from primage.mrml.selftest import segmentation_jobs_scenario

        with tempfile.TemporaryDirectory() as folder:
            segmentation_jobs_scenario(slicer.mrmlScene, folder)
        self.delayDisplay("Test passed")

    def test_PrimageSegmentationBadInput(self):
        """Bad input gives a ValueError with a message, not a crash."""
        self.delayDisplay("Starting the bad input test")
        logic = PrimageSegmentationLogic()
        parameterNode = logic.getParameterNode()
        parameterNode.referenceSegmentation = None
        with self.assertRaises(ValueError):
            logic.processParameterNode(parameterNode)
        self.delayDisplay("Test passed")
