import pytest

from dfbench.errors import DfbenchInputError
from dfbench.settings import ExtractSettings


def test_frozen_and_hashable():
    a = ExtractSettings(timestep=50, seed=3)
    b = ExtractSettings(timestep=50, seed=3)
    assert a == b and hash(a) == hash(b)
    assert len({a, b, ExtractSettings(timestep=51, seed=3)}) == 2
    with pytest.raises(AttributeError):
        a.timestep = 10  # type: ignore[misc]


@pytest.mark.parametrize("field,value,fragment", [
    ("timestep", 1000, "timestep=1000"),
    ("timestep", -1, "timestep=-1"),
    ("resolution", 0, "integer in 1…8192"),
    ("resolution", 100000, "integer in 1…8192"),
    ("resize_mode", "crop", "resize_mode"),
    ("ensemble_size", 0, "ensemble_size"),
    ("latent_mode", "median", "latent_mode"),
    ("dtype", "float64", "dtype"),
    ("batch_size", 0, "batch_size"),
])
def test_bad_values_name_the_field(field, value, fragment):
    with pytest.raises(DfbenchInputError, match=fragment):
        ExtractSettings(**{field: value})


def test_round_trip_and_unknown_key():
    settings = ExtractSettings(resolution=768, ensemble_size=8, prompt="a photo of a {category}")
    assert ExtractSettings.from_dict(settings.to_dict()) == settings
    with pytest.raises(DfbenchInputError, match="unknown settings field.*timesteps"):
        ExtractSettings.from_dict({"timesteps": 5})


def test_the_backbone_adds_its_input_size_rule(tiny_sd15):
    from dfbench.settings import resolve_settings

    assert ExtractSettings(resolution=518).resolution == 518  # DINOv2's size is a valid setting
    with pytest.raises(DfbenchInputError, match="tiny-sd15 needs a positive multiple of 8"):
        resolve_settings(tiny_sd15, {}, {"resolution": 500})
    assert resolve_settings(tiny_sd15, {}, {}).resolution == 64  # resolved, never "default"
    preset = {"timestep": 50, "prompt": "p"}
    assert resolve_settings(tiny_sd15, preset, {"timestep": 10}).timestep == 10  # given > preset > defaults
    assert resolve_settings(tiny_sd15, preset, {}).prompt == "p"
