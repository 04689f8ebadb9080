from typing import Annotated, Optional, Union

import slicer
import vtk
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
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
# parameter node and calls the MRML layer (primage.mrml), which calls the engine. The engine
# is imported lazily, inside the Logic, so that loading the module at Slicer start-up stays
# fast and a broken engine install shows up as a clear error on Apply.

# Engine step names of the module's choices (as `primage preprocess --denoise/--normalise`).
DENOISE_STEPS = {
    "anisotropic": "anisotropic_diffusion",
    "curvature": "curvature_flow",
    "bilateral": "bilateral",
    "nlm": "non_local_means",
}
NORMALISE_STEPS = {"zscore": "zscore", "percentile": "percentile", "histogram": "histogram_match"}

#
# PrimagePreprocessing
#


class PrimagePreprocessing(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Preprocessing")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "PRIMAGE")]
        self.parent.dependencies = []
        self.parent.contributors = ["PRIMAGE for 3D Slicer contributors"]
        self.parent.helpText = _("""
Preprocessing of MR and CT volumes as in the PRIMAGE project: denoising (gradient anisotropic
diffusion, curvature flow, bilateral, non-local means), N4 bias-field correction with an
optional mask, intensity normalisation (z-score within a mask, percentile scaling, histogram
matching to a reference volume) and resampling to a given spacing.
Pick a named preset per modality (T2w, T1w, DWI, DCE, CT) or choose "custom" to set each step.
The result is a new volume (the input is never modified unless it is chosen as the output);
the applied steps are recorded on the output node.
The same processing runs from the command line: <code>primage preprocess --help</code>.
See <a href="https://github.com/primage-slicer/SlicerPRIMAGE">the extension documentation</a>.
""")
        self.parent.acknowledgementText = _("""
Developed for PRIMAGE (PRedictive In-silico Multiscale Analytics to support cancer
personalised diaGnosis and prognosis, Empowered by imaging biomarkers), a project funded by
the European Union's Horizon 2020 research and innovation programme under grant agreement
No 826494. The default T2-weighted settings (anisotropic diffusion with conductance 1 and
2 iterations; N4 with a control-point grid of about 50 mm) follow the PRIMAGE group's
published preprocessing study of neuroblastoma MR.
""")


#
# PrimagePreprocessingParameterNode
#


@parameterNodeWrapper
class PrimagePreprocessingParameterNode:
    """
    The parameters of the module, stored in the scene (saved and restored with it).

    inputVolume - The volume to preprocess.
    maskNode - Optional label map (non-zero voxels) or segmentation (all segments) that
        restricts N4 fitting and z-score / percentile normalisation.
    referenceVolume - Volume whose histogram is matched (histogram normalisation).
    outputVolume - The result; a new volume is created when none is selected.
    biasFieldVolume - Optional volume that receives the N4 bias field.
    preset - A named preset of the engine, or "custom" to use the step settings below.
    denoiseMethod, conductance, denoiseIterations - Denoising step (custom preset).
    n4, n4Spacing - N4 bias-field correction and its control-point spacing in mm (custom).
    normalise - Intensity normalisation method (custom preset).
    resample, resampleSpacingX/Y/Z - Resampling to a voxel spacing in mm (custom preset).
    """

    inputVolume: vtkMRMLScalarVolumeNode
    # None in the Union: the wrapper needs it to store "no mask" for a union of node types.
    maskNode: Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode, None]
    referenceVolume: vtkMRMLScalarVolumeNode
    outputVolume: vtkMRMLScalarVolumeNode
    biasFieldVolume: vtkMRMLScalarVolumeNode
    preset: Annotated[str, Choice(["t2w", "t1w", "dwi", "dce", "ct", "custom"])] = "t2w"
    denoiseMethod: Annotated[
        str, Choice(["none", "anisotropic", "curvature", "bilateral", "nlm"])
    ] = "anisotropic"
    conductance: Annotated[float, WithinRange(0.1, 10.0)] = 1.0
    denoiseIterations: Annotated[int, WithinRange(1, 100)] = 2
    n4: bool = True
    n4Spacing: Annotated[float, WithinRange(5.0, 500.0)] = 50.0
    normalise: Annotated[str, Choice(["none", "zscore", "percentile", "histogram"])] = "none"
    resample: bool = False
    resampleSpacingX: Annotated[float, WithinRange(0.1, 10.0)] = 1.0
    resampleSpacingY: Annotated[float, WithinRange(0.1, 10.0)] = 1.0
    resampleSpacingZ: Annotated[float, WithinRange(0.1, 10.0)] = 1.0


#
# PrimagePreprocessingWidget
#


class PrimagePreprocessingWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
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
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PrimagePreprocessing.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        # Set scene in MRML widgets. In the .ui file the top-level qMRMLWidget's
        # "mrmlSceneChanged(vtkMRMLScene*)" signal is connected to each MRML widget's
        # "setMRMLScene(vtkMRMLScene*)" slot.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        # Logic implements all computations that should be possible to run in batch mode.
        self.logic = PrimagePreprocessingLogic()

        # The progress bar is only shown while processing.
        self.ui.progressBar.hide()

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
        # Parameter node stores all user choices in parameter values, node selections, etc.
        # so that when the scene is saved and reloaded, these settings are restored.
        self.setParameterNode(self.logic.getParameterNode())

        # Select default input nodes if nothing is selected yet to save a few clicks for the user
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode and not firstVolumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(
        self, inputParameterNode: Optional[PrimagePreprocessingParameterNode]
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
        # The step settings are only used (so only editable) with the "custom" preset.
        custom = bool(self._parameterNode) and self._parameterNode.preset == "custom"
        for widget in (
            self.ui.denoiseMethodComboBox,
            self.ui.n4CheckBox,
            self.ui.normaliseComboBox,
            self.ui.resampleCheckBox,
            self.ui.conductanceSliderWidget,
            self.ui.iterationsSpinBox,
            self.ui.n4SpacingSpinBox,
            self.ui.resampleSpacingXSpinBox,
            self.ui.resampleSpacingYSpinBox,
            self.ui.resampleSpacingZSpinBox,
        ):
            widget.enabled = custom

        if not self._parameterNode or not self._parameterNode.inputVolume:
            self.ui.applyButton.toolTip = _("Select an input volume")
            self.ui.applyButton.enabled = False
        elif custom and not self.logic.stepsFromParameterNode(self._parameterNode):
            self.ui.applyButton.toolTip = _("Choose at least one step (or a preset)")
            self.ui.applyButton.enabled = False
        elif (
            custom
            and self._parameterNode.normalise == "histogram"
            and not self._parameterNode.referenceVolume
        ):
            self.ui.applyButton.toolTip = _("Select a reference volume for histogram matching")
            self.ui.applyButton.enabled = False
        else:
            self.ui.applyButton.toolTip = _("Preprocess the input volume")
            self.ui.applyButton.enabled = True

    def onApplyButton(self) -> None:
        """Run processing when user clicks "Apply" button."""
        with slicer.util.tryWithErrorDisplay(_("Failed to compute results."), waitCursor=True):
            # Processing keeps the event loop alive for the progress bar: block a second Apply.
            self.ui.applyButton.enabled = False
            self.ui.progressBar.value = 0
            self.ui.progressBar.show()
            try:
                outputVolume = self.logic.processParameterNode(
                    self._parameterNode, progress=self._showProgress
                )
            finally:
                self.ui.progressBar.hide()
                self._checkCanApply()
            slicer.util.setSliceViewerLayers(background=outputVolume, fit=True)

    def _showProgress(self, fraction: float, message: str) -> None:
        """Progress callback of the engine: fraction in [0, 1] and what is being done."""
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.progressBar.format = message.replace("%", "%%") + " (%p%)"
        slicer.app.processEvents()


#
# PrimagePreprocessingLogic
#


class PrimagePreprocessingLogic(ScriptedLoadableModuleLogic):
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
        return PrimagePreprocessingParameterNode(super().getParameterNode())

    @staticmethod
    def stepsFromParameterNode(parameterNode) -> list:
        """The engine steps of the "custom" settings of a parameter node.

        Order as in the PRIMAGE T2w pipeline and the command line: N4 on the raw intensities,
        then denoising, resampling, and normalisation last so the output is normalised.
        Parameters not set here take the engine's defaults.
        """
        steps = []
        if parameterNode.n4:
            steps.append({"step": "n4", "control_point_spacing_mm": parameterNode.n4Spacing})
        if parameterNode.denoiseMethod != "none":
            denoise = {"step": DENOISE_STEPS[parameterNode.denoiseMethod]}
            if parameterNode.denoiseMethod in ("anisotropic", "curvature", "nlm"):
                denoise["iterations"] = parameterNode.denoiseIterations
            if parameterNode.denoiseMethod == "anisotropic":
                denoise["conductance"] = parameterNode.conductance
            steps.append(denoise)
        if parameterNode.resample:
            spacing = [
                parameterNode.resampleSpacingX,
                parameterNode.resampleSpacingY,
                parameterNode.resampleSpacingZ,
            ]
            steps.append({"step": "resample", "spacing_mm": spacing})
        if parameterNode.normalise != "none":
            steps.append({"step": NORMALISE_STEPS[parameterNode.normalise]})
        return steps

    def processParameterNode(self, parameterNode, progress=None):
        """Run the preprocessing set in a parameter node; the new output is stored in it and returned."""
        if parameterNode is None:
            raise ValueError(
                "No parameter node: open the Preprocessing module once or create one with getParameterNode()."
            )
        custom = parameterNode.preset == "custom"
        outputVolume = self.process(
            parameterNode.inputVolume,
            parameterNode.outputVolume,
            preset=None if custom else parameterNode.preset,
            steps=self.stepsFromParameterNode(parameterNode) if custom else None,
            maskNode=parameterNode.maskNode,
            referenceVolume=parameterNode.referenceVolume,
            biasFieldVolume=parameterNode.biasFieldVolume,
            progress=progress,
        )
        parameterNode.outputVolume = outputVolume
        return outputVolume

    def process(
        self,
        inputVolume,
        outputVolume=None,
        *,
        preset=None,
        steps=None,
        maskNode=None,
        referenceVolume=None,
        biasFieldVolume=None,
        progress=None,
    ):
        """
        Preprocess a volume node. Can be used without GUI widget.
        :param inputVolume: scalar volume to preprocess (never modified unless it is also the output)
        :param outputVolume: volume that receives the result; None creates a new one in the input's scene
        :param preset: name of an engine preset (e.g. "t2w"); give either a preset or steps
        :param steps: engine step list (see stepsFromParameterNode)
        :param maskNode: optional label map or segmentation (all segments) for N4 and normalisation
        :param referenceVolume: volume whose histogram is matched (histogram normalisation)
        :param biasFieldVolume: optional volume that receives the N4 bias field
        :param progress: optional callable progress(fraction, message)
        :return: the output volume node
        Raises ValueError (PrimageInputError) with a clear message on bad input.
        """
        from primage.errors import PrimageInputError

        if inputVolume is None:
            raise PrimageInputError("No input volume: select the volume to preprocess.")
        if (preset is None) == (steps is None):
            raise PrimageInputError(
                "Give either a preset name or a list of steps (not both, not neither)."
            )

        from primage.mrml.preprocessing import preprocess_volume_node

        return preprocess_volume_node(
            inputVolume,
            steps=steps,
            preset=preset,
            mask_node=maskNode,
            reference_node=referenceVolume,
            output_node=outputVolume,
            bias_field_node=biasFieldVolume,
            progress=progress,
        )


#
# PrimagePreprocessingTest
#


class PrimagePreprocessingTest(ScriptedLoadableModuleTest):
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
        self.test_PrimagePreprocessingSharedScenario()
        self.setUp()
        self.test_PrimagePreprocessingParameterNode()
        self.setUp()
        self.test_PrimagePreprocessingBadInput()

    def test_PrimagePreprocessingSharedScenario(self):
        """The scenario the pytest suite runs with slicer-core, here inside the application."""
        self.delayDisplay("Starting the shared preprocessing scenario")
        from primage.mrml.selftest import preprocessing_scenario

        preprocessing_scenario(slicer.mrmlScene)
        self.delayDisplay("Test passed")

    def test_PrimagePreprocessingParameterNode(self):
        """The module's own path: parameter node -> logic -> new output node."""
        self.delayDisplay("Starting the parameter node test")
        import numpy as np

        inputVolume = self._createNoisyVolume()
        inputVoxels = slicer.util.arrayFromVolume(inputVolume).copy()

        logic = PrimagePreprocessingLogic()
        parameterNode = logic.getParameterNode()
        parameterNode.inputVolume = inputVolume
        parameterNode.preset = "custom"
        parameterNode.denoiseMethod = "anisotropic"
        parameterNode.conductance = 1.0
        parameterNode.denoiseIterations = 2
        parameterNode.n4 = False
        parameterNode.normalise = "zscore"
        parameterNode.resample = False
        self.assertEqual(
            [step["step"] for step in logic.stepsFromParameterNode(parameterNode)],
            ["anisotropic_diffusion", "zscore"],
        )

        outputVolume = logic.processParameterNode(parameterNode)

        self.assertIsNotNone(outputVolume)
        self.assertIs(parameterNode.outputVolume, outputVolume)
        self.assertNotEqual(outputVolume.GetID(), inputVolume.GetID())
        self.assertEqual(
            outputVolume.GetImageData().GetDimensions(), inputVolume.GetImageData().GetDimensions()
        )
        outputVoxels = slicer.util.arrayFromVolume(outputVolume)
        self.assertAlmostEqual(float(outputVoxels.mean()), 0.0, delta=0.05)
        self.assertAlmostEqual(float(outputVoxels.std()), 1.0, delta=0.05)
        # The input is never modified.
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(inputVolume), inputVoxels)

        # A named preset through the same path, into the same output node.
        parameterNode.preset = "t2w"
        self.assertIs(logic.processParameterNode(parameterNode), outputVolume)
        self.delayDisplay("Test passed")

    def test_PrimagePreprocessingBadInput(self):
        """Bad input gives a ValueError with a message, not a crash."""
        self.delayDisplay("Starting the bad input test")
        logic = PrimagePreprocessingLogic()
        parameterNode = logic.getParameterNode()
        parameterNode.inputVolume = None
        with self.assertRaises(ValueError):
            logic.processParameterNode(parameterNode)
        with self.assertRaises(ValueError):
            logic.process(self._createNoisyVolume(), preset="t2w", steps=[])
        self.delayDisplay("Test passed")

    def _createNoisyVolume(self):
        """A small anisotropic volume: a bright block in noise."""
        import numpy as np

        rng = np.random.default_rng(0)
        voxels = 100.0 + 10.0 * rng.standard_normal((12, 20, 24))
        voxels[4:8, 6:14, 8:16] += 80.0
        volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "PrimageTestInput")
        slicer.util.updateVolumeFromArray(volume, voxels.astype(np.float32))
        volume.SetSpacing(0.8, 0.8, 3.0)
        return volume
