from typing import Annotated, Optional, Union

import slicer
import vtk
from slicer import (
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLSequenceNode,
    vtkMRMLTableNode,
    vtkMRMLTransformNode,
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
# parameter node and calls the MRML layer (primage.mrml.registration), which calls the
# engine. The engine is imported lazily, inside the Logic, so that loading the module at
# Slicer start-up stays fast and a broken engine install shows up as a clear error on Apply.

PRESETS = ["mr-mr", "mr-ct", "mr-ct-rigid", "pet-ct", "dwi-to-t2", "dce-to-t2"]


class RegistrationCancelled(Exception):
    """Raised from the progress callback when the user presses Cancel."""


#
# PrimageRegistration
#


class PrimageRegistration(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Registration")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "PRIMAGE")]
        self.parent.dependencies = []
        self.parent.contributors = ["PRIMAGE for 3D Slicer contributors"]
        self.parent.helpText = _("""
Intra-patient multi-modal registration as in the PRIMAGE project: T2w, DWI, DCE, CT and
PET of one child into one space. Rigid, then affine, then B-spline stages, each
multi-resolution, with Mattes mutual information for multi-modal pairs; presets per pair
(mr-mr, mr-ct, mr-ct-rigid, pet-ct, dwi-to-t2, dce-to-t2). The result is a transform applied (not
hardened) to the moving volume, so it can be toggled, an optional resampled volume, and
quality control: mutual information and correlation before/after, Dice of the masks, the
Jacobian of a B-spline, and a verdict. When the verdict is "review", rerun with masks of
the tumour and/or adjacent organs. Motion correction registers every frame of a DWI or DCE
sequence to a reference frame and plots the motion.
The same processing runs from the command line: <code>primage register --help</code>.
See <a href="https://github.com/primage-slicer/SlicerPRIMAGE">the extension documentation</a>.
""")
        self.parent.acknowledgementText = _("""
Developed for PRIMAGE (PRedictive In-silico Multiscale Analytics to support cancer
personalised diaGnosis and prognosis, Empowered by imaging biomarkers), a project funded by
the European Union's Horizon 2020 research and innovation programme under grant agreement
No 826494. Registration is built on SimpleITK's registration framework.
""")


#
# PrimageRegistrationParameterNode
#


@parameterNodeWrapper
class PrimageRegistrationParameterNode:
    """
    The parameters of the module, stored in the scene (saved and restored with it).

    fixedVolume, movingVolume - The reference volume and the volume to align to it.
    fixedMask, movingMask - Optional label maps or segmentations restricting the metric
        (the PRIMAGE re-registration route: tumour and/or adjacent organs).
    fixedMaskSegment, movingMaskSegment - Segment name or ID to use (empty: all segments).
    preset - Named registration settings (data files of the engine).
    customStages, stageRigid, stageAffine, stageBspline - Choose the stages yourself.
    bsplineSpacing - B-spline control-point spacing in mm.
    initialisation - "preset" (the preset's), none, geometry (image centres) or moments.
    initialTransform - Optional start (e.g. a manual alignment).
    outputTransform - The result transform; a new one is created when none is selected.
    resample, outputVolume - Also resample the moving volume onto the fixed grid.
    sequence, motionReference, motionReferenceIndex, baselineFrames, motionTransform,
    motionMask, outputSequence, motionTable - Motion correction of a sequence.
    """

    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    # None in the Union: the wrapper needs it to store "no mask" for a union of node types.
    fixedMask: Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode, None]
    movingMask: Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode, None]
    fixedMaskSegment: str = ""
    movingMaskSegment: str = ""
    preset: Annotated[str, Choice(PRESETS)] = "mr-mr"
    customStages: bool = False
    stageRigid: bool = True
    stageAffine: bool = True
    stageBspline: bool = False
    bsplineSpacing: Annotated[float, WithinRange(5.0, 200.0)] = 50.0
    initialisation: Annotated[str, Choice(["preset", "none", "geometry", "moments"])] = "preset"
    initialTransform: vtkMRMLTransformNode
    outputTransform: vtkMRMLTransformNode
    resample: bool = False
    outputVolume: vtkMRMLScalarVolumeNode
    sequence: vtkMRMLSequenceNode
    motionReference: Annotated[str, Choice(["first", "mean-baseline", "index"])] = "first"
    motionReferenceIndex: Annotated[int, WithinRange(0, 100000)] = 0
    baselineFrames: Annotated[int, WithinRange(1, 100000)] = 3
    motionTransform: Annotated[str, Choice(["rigid", "affine"])] = "rigid"
    motionMask: Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode, None]
    outputSequence: vtkMRMLSequenceNode
    motionTable: vtkMRMLTableNode


#
# PrimageRegistrationWidget
#


class PrimageRegistrationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
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
        self._cancelRequested = False
        self._running = False

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.setup(self)

        # Load widget from .ui file (created by Qt Designer).
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PrimageRegistration.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        # Set scene in MRML widgets.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = PrimageRegistrationLogic()

        # The progress bar and Cancel are only shown while processing.
        self.ui.progressBar.hide()
        self.ui.cancelButton.hide()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.rerunWithMasksButton.connect("clicked(bool)", self.onRerunWithMasksButton)
        self.ui.showFusionButton.connect("clicked(bool)", self.onShowFusionButton)
        self.ui.motionApplyButton.connect("clicked(bool)", self.onMotionApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)

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
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Ensure parameter node exists and observed."""
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(
        self, inputParameterNode: Optional[PrimageRegistrationParameterNode]
    ) -> None:
        """Set and observe the parameter node; the GUI follows it."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply
            )
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets are bound through their "SlicerParameterName" dynamic property.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        node = self._parameterNode
        custom = bool(node) and node.customStages
        for widget in (
            self.ui.stageRigidCheckBox,
            self.ui.stageAffineCheckBox,
            self.ui.stageBsplineCheckBox,
        ):
            widget.enabled = custom
        self.ui.motionReferenceIndexSpinBox.enabled = bool(node) and node.motionReference == "index"
        self.ui.baselineFramesSpinBox.enabled = (
            bool(node) and node.motionReference == "mean-baseline"
        )
        ready = bool(node) and bool(node.fixedVolume) and bool(node.movingVolume)
        if self._running:
            self.ui.applyButton.enabled = False
        elif not ready:
            self.ui.applyButton.toolTip = _("Select a fixed and a moving volume")
            self.ui.applyButton.enabled = False
        elif node.fixedVolume == node.movingVolume:
            self.ui.applyButton.toolTip = _("The fixed and moving volumes must differ")
            self.ui.applyButton.enabled = False
        elif custom and not self.logic.stagesFromParameterNode(node):
            self.ui.applyButton.toolTip = _("Choose at least one stage")
            self.ui.applyButton.enabled = False
        else:
            self.ui.applyButton.toolTip = _("Register the moving volume to the fixed volume")
            self.ui.applyButton.enabled = True
        hasMask = bool(node) and (bool(node.fixedMask) or bool(node.movingMask))
        self.ui.rerunWithMasksButton.enabled = (
            not self._running and self.logic.lastRun is not None and hasMask
        )
        self.ui.showFusionButton.enabled = ready
        self.ui.motionApplyButton.enabled = not self._running and bool(node) and bool(node.sequence)

    def _runWithProgress(self, function):
        """Run ``function(progress)`` with the progress bar and Cancel; None when cancelled."""
        self._running = True
        self._cancelRequested = False
        self._checkCanApply()
        self.ui.progressBar.value = 0
        self.ui.progressBar.show()
        self.ui.cancelButton.show()
        try:
            return function(self._showProgress)
        except RegistrationCancelled:
            slicer.util.showStatusMessage(_("Cancelled"), 3000)
            return None
        finally:
            self._running = False
            self.ui.progressBar.hide()
            self.ui.cancelButton.hide()
            self._checkCanApply()

    def onApplyButton(self) -> None:
        """Register with the settings of the parameter node."""
        with slicer.util.tryWithErrorDisplay(_("Failed to compute results."), waitCursor=True):
            result = self._runWithProgress(
                lambda progress: self.logic.processParameterNode(self._parameterNode, progress)
            )
            self._showResult(result)

    def onRerunWithMasksButton(self) -> None:
        """Repeat the last registration with the selected masks (the PRIMAGE route)."""
        with slicer.util.tryWithErrorDisplay(_("Failed to compute results."), waitCursor=True):
            result = self._runWithProgress(
                lambda progress: self.logic.rerunWithMasks(self._parameterNode, progress)
            )
            self._showResult(result)

    def onMotionApplyButton(self) -> None:
        """Motion-correct the selected sequence; show the motion plot."""
        with slicer.util.tryWithErrorDisplay(_("Failed to compute results."), waitCursor=True):
            result = self._runWithProgress(
                lambda progress: self.logic.processMotion(self._parameterNode, progress)
            )
            if result is not None:
                slicer.modules.plots.logic().ShowChartInLayout(result.chart_node)

    def onShowFusionButton(self) -> None:
        """Fixed in the background, moving in the foreground at 50 % in the slice views."""
        slicer.util.setSliceViewerLayers(
            background=self._parameterNode.fixedVolume,
            foreground=self._parameterNode.movingVolume,
            foregroundOpacity=0.5,
            fit=True,
        )

    def onCancelButton(self) -> None:
        """Stop the running registration at its next iteration."""
        self._cancelRequested = True

    def _showResult(self, result) -> None:
        if result is None:
            return
        self.ui.qcTextEdit.plainText = self.logic.qcText(result.qc)
        self.onShowFusionButton()

    def _showProgress(self, fraction: float, message: str) -> None:
        """Progress callback of the engine: fraction in [0, 1]; raises to cancel."""
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.progressBar.format = message.replace("%", "%%") + " (%p%)"
        slicer.app.processEvents()
        if self._cancelRequested:
            raise RegistrationCancelled()


#
# PrimageRegistrationLogic
#


class PrimageRegistrationLogic(ScriptedLoadableModuleLogic):
    """This class should implement all the actual computation done by your module.
    The interface should be such that other python code can import this class and make use
    of the functionality without requiring an instance of the Widget.
    Uses ScriptedLoadableModuleLogic base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        #: Keyword arguments of the last registration (for "rerun with masks").
        self.lastRun = None

    def getParameterNode(self):
        return PrimageRegistrationParameterNode(super().getParameterNode())

    @staticmethod
    def stagesFromParameterNode(parameterNode) -> list:
        """Stage names chosen with the custom stage check boxes, in order."""
        chosen = [
            ("rigid", parameterNode.stageRigid),
            ("affine", parameterNode.stageAffine),
            ("bspline", parameterNode.stageBspline),
        ]
        return [name for name, wanted in chosen if wanted]

    def processParameterNode(self, parameterNode, progress=None):
        """Register as set in a parameter node; the outputs are stored in it and returned."""
        if parameterNode is None:
            raise ValueError("No parameter node: open the Registration module once first.")
        kwargs = {
            "preset": parameterNode.preset,
            "stages": self.stagesFromParameterNode(parameterNode)
            if parameterNode.customStages
            else None,
            "initialisation": None
            if parameterNode.initialisation == "preset"
            else parameterNode.initialisation,
            "bspline_spacing_mm": parameterNode.bsplineSpacing
            if parameterNode.customStages and parameterNode.stageBspline
            else None,
            "initial_transform_node": parameterNode.initialTransform,
            "resample": parameterNode.resample,
        }
        return self.process(
            parameterNode,
            kwargs,
            fixedMask=parameterNode.fixedMask,
            movingMask=parameterNode.movingMask,
            progress=progress,
        )

    def rerunWithMasks(self, parameterNode, progress=None):
        """Repeat the last registration's settings with the masks now selected."""
        if self.lastRun is None:
            raise ValueError("Run a registration first; the rerun reuses its settings.")
        if not parameterNode.fixedMask and not parameterNode.movingMask:
            raise ValueError("Select a fixed and/or moving mask (tumour or adjacent organs).")
        return self.process(
            parameterNode,
            dict(self.lastRun),
            fixedMask=parameterNode.fixedMask,
            movingMask=parameterNode.movingMask,
            progress=progress,
        )

    def process(self, parameterNode, kwargs, fixedMask=None, movingMask=None, progress=None):
        """Run primage.mrml.registration.register_volume_nodes; store outputs in the parameter node.
        Raises ValueError (PrimageInputError) with a clear message on bad input."""
        from primage.errors import PrimageInputError
        from primage.mrml.registration import register_volume_nodes

        if not parameterNode.fixedVolume or not parameterNode.movingVolume:
            raise PrimageInputError("Select a fixed and a moving volume.")
        result = register_volume_nodes(
            parameterNode.fixedVolume,
            parameterNode.movingVolume,
            fixed_mask_node=fixedMask,
            fixed_mask_segment=parameterNode.fixedMaskSegment or None,
            moving_mask_node=movingMask,
            moving_mask_segment=parameterNode.movingMaskSegment or None,
            output_transform_node=parameterNode.outputTransform,
            output_volume_node=parameterNode.outputVolume if kwargs.get("resample") else None,
            progress=progress,
            **kwargs,
        )
        self.lastRun = kwargs
        parameterNode.outputTransform = result.transform_node
        if result.volume_node is not None:
            parameterNode.outputVolume = result.volume_node
        return result

    def processMotion(self, parameterNode, progress=None):
        """Motion-correct the sequence of a parameter node; outputs stored in it and returned."""
        from primage.errors import PrimageInputError
        from primage.mrml.registration import correct_sequence_motion

        if not parameterNode.sequence:
            raise PrimageInputError("Select a sequence (DWI or DCE series) to motion-correct.")
        reference = parameterNode.motionReference
        if reference == "index":
            reference = parameterNode.motionReferenceIndex
        result = correct_sequence_motion(
            parameterNode.sequence,
            reference=reference,
            baseline_frames=parameterNode.baselineFrames,
            transform=parameterNode.motionTransform,
            mask_node=parameterNode.motionMask,
            output_sequence_node=parameterNode.outputSequence,
            table_node=parameterNode.motionTable,
            progress=progress,
        )
        parameterNode.outputSequence = result.sequence_node
        parameterNode.motionTable = result.table_node
        return result

    @staticmethod
    def qcText(qc) -> str:
        """The QC panel's text (verdict, reasons, numbers before -> after)."""
        from primage.mrml.registration import qc_text

        return qc_text(qc)


#
# PrimageRegistrationTest
#


class PrimageRegistrationTest(ScriptedLoadableModuleTest):
    """
    This is the test case for your scripted module.
    Uses ScriptedLoadableModuleTest base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def setUp(self):
        """Reset the state: clear the scene."""
        slicer.mrmlScene.Clear()

    def runTest(self):
        """Run every test."""
        self.setUp()
        self.test_PrimageRegistrationSharedScenario()
        self.setUp()
        self.test_PrimageRegistrationMotionScenario()
        self.setUp()
        self.test_PrimageRegistrationParameterNode()
        self.setUp()
        self.test_PrimageRegistrationBadInput()

    def test_PrimageRegistrationSharedScenario(self):
        """The registration scenario the pytest suite runs with slicer-core."""
        self.delayDisplay("Starting the shared registration scenario")
        from primage.mrml.selftest import registration_scenario

        registration_scenario(slicer.mrmlScene)
        self.delayDisplay("Test passed")

    def test_PrimageRegistrationMotionScenario(self):
        """The motion-correction scenario the pytest suite runs with slicer-core."""
        self.delayDisplay("Starting the shared motion-correction scenario")
        from primage.mrml.selftest import motion_scenario

        motion_scenario(slicer.mrmlScene)
        self.delayDisplay("Test passed")

    def test_PrimageRegistrationParameterNode(self):
        """The module's own path: parameter node -> logic -> transform node on the moving volume."""
        self.delayDisplay("Starting the parameter node test")
        from primage.mrml.selftest import registration_pair_nodes

        fixed, moving, fixedMask, movingMask = registration_pair_nodes(slicer.mrmlScene)
        logic = PrimageRegistrationLogic()
        parameterNode = logic.getParameterNode()
        parameterNode.fixedVolume = fixed
        parameterNode.movingVolume = moving
        parameterNode.customStages = True
        parameterNode.stageRigid = True
        parameterNode.stageAffine = False
        parameterNode.stageBspline = False
        self.assertEqual(logic.stagesFromParameterNode(parameterNode), ["rigid"])
        result = logic.processParameterNode(parameterNode)
        self.assertIs(parameterNode.outputTransform, result.transform_node)
        self.assertEqual(moving.GetTransformNodeID(), result.transform_node.GetID())
        self.assertIn(result.qc["verdict"], ("ok", "review"))
        # Rerun with masks into the same transform node.
        parameterNode.fixedMask = fixedMask
        parameterNode.movingMask = movingMask
        again = logic.rerunWithMasks(parameterNode)
        self.assertIs(again.transform_node, result.transform_node)
        self.assertGreater(again.qc["dice_after"], 0.8)
        self.delayDisplay("Test passed")

    def test_PrimageRegistrationBadInput(self):
        """Bad input gives a ValueError with a message, not a crash."""
        self.delayDisplay("Starting the bad input test")
        logic = PrimageRegistrationLogic()
        parameterNode = logic.getParameterNode()
        parameterNode.fixedVolume = None
        with self.assertRaises(ValueError):
            logic.processParameterNode(parameterNode)
        with self.assertRaises(ValueError):
            logic.rerunWithMasks(parameterNode)
        with self.assertRaises(ValueError):
            logic.processMotion(parameterNode)
        self.delayDisplay("Test passed")
