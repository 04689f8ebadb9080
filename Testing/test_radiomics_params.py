"""Radiomics presets and parameter-file validation (primage.radiomics.params)."""

import pytest

from primage.errors import PrimageInputError
from primage.radiomics.params import (
    enabled_feature_count,
    list_presets,
    load_modalities,
    load_params,
    params_hash,
)


def test_presets_exist_and_count_features():
    assert list_presets() == ["full", "ibsi", "primage"]
    # The PRIMAGE models' 107 original features: pyradiomics' default set.
    assert enabled_feature_count(load_params("primage").params) == 107
    assert enabled_feature_count(load_params("ibsi").params) == 107
    # full: shape (14) + 12 images (original, 8 wavelet bands, LoG 1, 2, 3 mm) x 93.
    full = load_params("full").params
    assert enabled_feature_count(full) == 14 + 12 * 93
    assert full["imageType"]["LoG"]["sigma"] == [1.0, 2.0, 3.0]
    assert set(full["imageType"]) == {"Original", "Wavelet", "LoG"}


def test_primage_preset_settings_are_stated():
    settings = load_params("primage").params["setting"]
    assert settings["resampledPixelSpacing"] == [1, 1, 1]  # isotropic, mm
    assert settings["binWidth"] == 5 and settings["normalize"] is True
    ibsi = load_params("ibsi").params["setting"]
    assert ibsi["resegmentRange"] == [-1000, 400] and ibsi["binWidth"] == 25
    assert ibsi["resampledPixelSpacing"] == [2, 2, 2] and ibsi["interpolator"] == "sitkLinear"


def test_fixed_bin_width_per_modality():
    parameters = load_params("primage")
    assert parameters.modality_of("CT") == "ct"
    assert parameters.modality_of("ct_venous") == "ct"
    assert parameters.modality_of("ADC map") == "adc"
    assert parameters.modality_of("T2w") is None
    assert parameters.modality_of("iAUC60") is None
    assert parameters.modality_of("T2w", "ct") == "ct"  # explicit wins
    ct = parameters.for_modality("ct")["setting"]
    assert ct["binWidth"] == 25 and ct["normalize"] is False
    assert ct["resampledPixelSpacing"] == [1, 1, 1]  # the rest of the preset is kept
    mibg = parameters.for_modality("mibg")
    assert mibg["setting"]["force2D"] is True and "shape2D" in mibg["featureClass"]
    assert "shape" not in mibg["featureClass"]
    # The preset itself is unchanged, and hashes tell the variants apart.
    assert parameters.params["setting"]["binWidth"] == 5
    assert params_hash(parameters.params) != params_hash(parameters.for_modality("ct"))
    with pytest.raises(PrimageInputError, match="unknown modality 'pet'"):
        parameters.modality_of("x", "pet")
    assert set(load_modalities()) == {"ct", "adc", "mibg"}


def test_user_file_is_used_as_written(tmp_path):
    path = tmp_path / "ct.yaml"
    path.write_text("setting:\n  binWidth: 3\n")
    parameters = load_params(params_file=path)
    assert parameters.params == {"setting": {"binWidth": 3}}
    assert parameters.modality_of("CT") is None  # no per-modality settings for user files
    json_path = tmp_path / "p.json"
    json_path.write_text('{"setting": {"binCount": 16}}')
    assert load_params(params_file=json_path).params["setting"]["binCount"] == 16
    assert load_params(str(path)).source == str(path.resolve())  # a preset that is a file


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "setting:\n  binwidth: 25\n",
            "unknown key 'binwidth' in setting; did you mean 'binWidth'",
        ),
        ("settings:\n  binWidth: 25\n", "unknown key 'settings' in the top level"),
        ("setting:\n  binWidth: abc\n", "setting.binWidth = 'abc' has the wrong type"),
        ("setting:\n  force2D: 3\n", "setting.force2D = '3' has the wrong type"),
        ("setting:\n  binWidth: -2\n", "setting.binWidth"),
        ("imageType:\n  Wavelett: {}\n", "Image Type Wavelett is not recognized"),
        ("featureClass:\n  glcm: [Foo]\n", "unrecognized features"),
        ("setting: [1, 2\n", "is not valid YAML"),
        ("setting:\n  binWidth: 5\n  binCount: 16\n", "either setting binWidth or binCount"),
        ("- 1\n- 2\n", "must be a mapping"),
    ],
)
def test_bad_parameter_files_name_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(PrimageInputError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_params(params_file=path)


def test_missing_or_unknown_sources():
    with pytest.raises(PrimageInputError, match="does not exist"):
        load_params(params_file="/no/such/file.yaml")
    with pytest.raises(PrimageInputError, match="unknown radiomics preset 'fast'"):
        load_params("fast")
    with pytest.raises(PrimageInputError, match="not both"):
        load_params("primage", "x.yaml")


def test_every_pyradiomics_image_type_is_accepted_or_clearly_refused(tmp_path):
    import importlib.util

    import scipy.special

    types = ["Original", "Wavelet", "LoG", "Square", "SquareRoot", "Logarithm", "Exponential"]
    types += ["Gradient"]
    path = tmp_path / "all.yaml"
    path.write_text("imageType:\n" + "".join(f"  {name}: {{}}\n" for name in types))
    assert list(load_params(params_file=path).params["imageType"]) == types
    lbp2d = tmp_path / "lbp2d.yaml"
    lbp2d.write_text("setting:\n  force2D: true\nimageType:\n  LBP2D: {}\n")
    if importlib.util.find_spec("skimage") is None:
        with pytest.raises(PrimageInputError, match="LBP2D needs scikit-image"):
            load_params(params_file=lbp2d)
    else:
        load_params(params_file=lbp2d)
    lbp3d = tmp_path / "lbp3d.yaml"
    lbp3d.write_text("imageType:\n  LBP3D: {}\n")
    if importlib.util.find_spec("trimesh") is None or not hasattr(scipy.special, "sph_harm"):
        with pytest.raises(PrimageInputError, match="LBP3D needs trimesh"):
            load_params(params_file=lbp3d)
