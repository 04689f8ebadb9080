from typing import Optional

import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
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

# This file stays thin: the Widget binds the .ui to the parameter node, the Logic reads the
# parameter node and calls the MRML layer (primage.mrml.segmentation_metrics), which calls
# the engine (primage.segmentation). The engine is imported lazily, inside the Logic.

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
segments with the same name are paired unless segment names are given. Results go to a table.
STAPLE consensus of three or more observers and post-processing run from the command line:
<code>primage segment --help</code>.
Automatic segmentation (nnU-Net models) and training a network on your own masks come in a
later version.
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
    """

    referenceSegmentation: vtkMRMLSegmentationNode
    referenceSegment: str = ""
    testSegmentation: vtkMRMLSegmentationNode
    testSegment: str = ""
    referenceVolume: vtkMRMLScalarVolumeNode
    outputTable: vtkMRMLTableNode


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

        # These connections ensure that we update parameter node when scene is closed
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        # Buttons
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)

        # Make sure parameter node is initialized (needed for module reload)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
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

    def _checkCanApply(self, caller=None, event=None) -> None:
        parameterNode = self._parameterNode
        if not parameterNode or not parameterNode.referenceSegmentation:
            self.ui.applyButton.toolTip = _("Select a reference segmentation")
            self.ui.applyButton.enabled = False
        elif not parameterNode.testSegmentation:
            self.ui.applyButton.toolTip = _("Select a test segmentation")
            self.ui.applyButton.enabled = False
        else:
            self.ui.applyButton.toolTip = _("Compute the agreement metrics into a table")
            self.ui.applyButton.enabled = True

    def onApplyButton(self) -> None:
        """Run processing when user clicks "Apply" button."""
        with slicer.util.tryWithErrorDisplay(_("Failed to compute results."), waitCursor=True):
            table = self.logic.processParameterNode(self._parameterNode)
            slicer.app.layoutManager().setLayout(
                slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView
            )
            slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(table.GetID())
            slicer.app.applicationLogic().PropagateTableSelection()


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

    def processParameterNode(self, parameterNode):
        """Compare the segmentations set in a parameter node; the table is stored in it and returned."""
        if parameterNode is None:
            raise ValueError(
                "No parameter node: open the Segmentation module once or create one with getParameterNode()."
            )
        table = self.compare(
            parameterNode.referenceSegmentation,
            parameterNode.testSegmentation,
            referenceSegment=parameterNode.referenceSegment,
            testSegment=parameterNode.testSegment,
            referenceVolume=parameterNode.referenceVolume,
            outputTable=parameterNode.outputTable,
        )
        parameterNode.outputTable = table
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
        from primage.errors import PrimageInputError

        if bool(referenceSegment) != bool(testSegment):
            raise PrimageInputError(
                "Give both segment names (reference and test) or neither (pair segments by name)."
            )
        from primage.mrml.segmentation_metrics import compare_segmentation_nodes

        pairs = [(referenceSegment, testSegment)] if referenceSegment else None
        return compare_segmentation_nodes(
            referenceSegmentation,
            testSegmentation,
            pairs=pairs,
            reference_volume=referenceVolume,
            output_table=outputTable,
        )


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

    def test_PrimageSegmentationSharedScenario(self):
        """The scenario the pytest suite runs with slicer-core, here inside the application."""
        self.delayDisplay("Starting the shared segmentation scenario")
        from primage.mrml.selftest import segmentation_scenario

        segmentation_scenario(slicer.mrmlScene)
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
