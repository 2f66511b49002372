"""The plugin contracts: every registered task end to end, and a task and a non-diffusion backbone
defined outside dfbench (tests/toy_plugin.py, the backbone through a `dfbench.plugins` entry point)
going through run, cache, extract --dataset, save, score, leaderboard and compare with no edit of
dfbench's files."""

import json

import numpy as np
import pytest
import torch
import toy_plugin
from PIL import Image

from dfbench import registry
from dfbench.cli import main
from dfbench.images import to_model_input
from dfbench.registry import BACKBONES, TASKS


@pytest.fixture(autouse=True)
def mini_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DFBENCH_HOME", str(tmp_path_factory.getbasetemp() / "dfbench_home"))


def _single_record(results):
    (path,) = (results / "runs").glob("*/record.json")
    return json.loads(path.read_text()), path.parent


#: options that make a task's default protocol short enough for a test (its defaults are the papers')
SHORT_OPTIONS = {"horse21": ["--option", "seeds=1", "--option", "epochs=1", "--option", "members=2",
                             "--option", "resolution=32"]}
#: the options of those that choose what is scored
SCORE_OPTIONS = {"horse21": ["--option", "resolution=32"]}


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS.names())
def test_every_registered_task_runs_saves_scores_and_compares(task, tmp_path, capsys):
    results = tmp_path / "results"
    short = SHORT_OPTIONS.get(task, [])
    assert main(["run", "--backbone", "tiny-sd15", "--task", task, "--select", "up_blocks.1", "--data-root",
                 "mini", "--results", str(results), "--no-progress", "--limit", "2", "--save-predictions",
                 *short]) == 0
    record, folder = _single_record(results)
    assert record["settings"]["resolution"] == 64 and record["metric_specs"]
    capsys.readouterr()
    assert main(["score", "--task", record["protocol"], "--data-root", "mini", "--predictions",
                 str(folder / "predictions"), "--limit", "2", "--format", "json",
                 *SCORE_OPTIONS.get(task, [])]) == 0
    assert json.loads(capsys.readouterr().out) == record["metrics"]
    baseline = tmp_path / "baseline.json"
    assert main(["compare", str(results), "--baseline", str(baseline), "--update"]) == 0
    assert main(["compare", str(results), "--baseline", str(baseline)]) == 0


@pytest.fixture
def toy_plugins(tmp_path, monkeypatch):
    """The toy plugin installed as an entry point (a dist-info on sys.path): its backbone and its task both
    arrive through it."""
    site = tmp_path / "site"
    dist = site / "toy_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[dfbench.plugins]\ntoy = toy_plugin:register\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    monkeypatch.setenv("DFBENCH_HOME", str(tmp_path / "home"))
    yield toy_plugin                       # nothing registered by hand: the entry point brings both
    TASKS.unregister(toy_plugin.TASK)
    BACKBONES.unregister(toy_plugin.BACKBONE)


def _expected_accuracy(mini, threshold):
    """A second implementation of the toy task: the CNN by hand on every image, then the threshold."""
    cnn = toy_plugin.ToyCNN()
    labels = json.loads((mini / "test" / "labels.json").read_text())
    means = []
    for stem in sorted(labels):
        pixels = to_model_input([Image.open(mini / "test" / f"{stem}.png").convert("RGB")], 32, "squash")
        with torch.no_grad():
            means.append(float(torch.relu(cnn.conv2(torch.relu(cnn.conv1(pixels)))).mean()))
    means = np.array(means)
    scaled = (means - means.min()) / (means.max() - means.min())
    right = sum(int(value > threshold) == labels[stem] for stem, value in zip(sorted(labels), scaled, strict=True))
    return 100 * right / len(labels)


def test_a_plugin_task_and_a_cnn_backbone_go_through_every_path(toy_plugins, tmp_path, capsys):
    assert toy_plugins.BACKBONE in BACKBONES.names() and toy_plugins.TASK in TASKS.names()  # the entry point
    results, cache = tmp_path / "results", tmp_path / "cache"
    run = ["run", "--backbone", "toy-cnn", "--task", "toy-brightness", "--select", "conv2", "--data-root", "mini",
           "--results", str(results), "--no-progress", "--save-predictions", "--option", "threshold=0.4",
           "--cache-dir", str(cache)]
    assert main(run) == 0
    record, folder = _single_record(results)
    expected = _expected_accuracy(toy_plugins.BrightnessTask().mini_root(), 0.4)
    assert record["metrics"]["accuracy"] == pytest.approx(expected, abs=1e-9)
    assert record["metric_specs"]["error"]["higher_is_better"] is False
    assert record["settings"] == {"resolution": 32, "resize_mode": "squash", "dtype": "float32", "batch_size": 8}
    assert record["details"]["options"] == {"threshold": 0.4}
    assert (results / "leaderboard.md").read_text().count("toy-cnn / conv2") == 1
    capsys.readouterr()
    assert main(["score", "--task", "toy-brightness", "--data-root", "mini", "--predictions",
                 str(folder / "predictions"), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == record["metrics"]
    baseline = tmp_path / "baseline.json"
    assert main(["compare", str(results), "--baseline", str(baseline), "--update"]) == 0
    assert json.loads(baseline.read_text())["entries"][0]["higher_is_better"] == {"accuracy": True, "error": False}
    assert main(["extract", "toy-cnn", "--dataset", "toy-brightness", "--data-root", "mini", "--select", "conv1",
                 "--cache-dir", str(cache), "--no-progress"]) == 0
    assert "12 images extracted" in capsys.readouterr().out
    assert main([*run[:-2], "--option", "threshold=high"]) == 2
    assert "toy-brightness/threshold option threshold='high': expected float" in capsys.readouterr().err
    assert main([*run[:-2], "--option", "threshold=3"]) == 2
    assert "must be in 0…1" in capsys.readouterr().err
    assert main([*run[:-2], "--timestep", "50", "--prompt", "a cat"]) == 2  # diffusion-only settings
    assert "toy-cnn does not use the setting(s) prompt, timestep" in capsys.readouterr().err


def test_diffusion_and_plugin_backbones_satisfy_the_backbone_protocol(tiny_sd15):
    from dfbench.backbones.protocol import Backbone

    assert isinstance(tiny_sd15, Backbone)
    assert isinstance(toy_plugin.ToyCNN(), Backbone)


def test_the_plugin_backbone_works_with_activations_and_sweep(toy_plugins, tmp_path, capsys):
    """The contract's catalog and activation names are all `dfbench activations` and `sweep` need: a 3×3
    stride-2 conv with padding 1 brings 32 px to 16 and then 8 (⌈32/2⌉, ⌈16/2⌉), with 4 and 6 channels."""
    assert main(["activations", "toy-cnn", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(row["name"], row["channels"], row["height"], row["width"]) for row in rows] == [
        ("conv1", 4, 16, 16), ("conv2", 6, 8, 8)]
    results = tmp_path / "results"
    assert main(["sweep", "--backbone", "toy-cnn", "--task", "toy-brightness", "--candidates", "conv*",
                 "--data-root", "mini", "--results", str(results), "--cache-dir", str(tmp_path / "cache"),
                 "--no-progress", "--option", "threshold=0.4"]) == 0
    (table,) = (results / "sweeps").glob("*/sweep.json")
    ranked = json.loads(table.read_text())
    assert json.dumps(ranked).count("conv1") >= 1 and json.dumps(ranked).count("conv2") >= 1
    accuracy = {1: _expected_accuracy(toy_plugins.BrightnessTask().mini_root(), 0.4)}
    records = [json.loads(path.read_text()) for path in (results / "runs").glob("*/record.json")]
    by_selection = {tuple(record["selection"]): record["metrics"]["accuracy"] for record in records}
    assert by_selection[("conv2",)] == pytest.approx(accuracy[1], abs=1e-9)


def test_a_factory_that_breaks_the_contract_is_one_line():
    from dfbench.errors import DfbenchInputError
    from dfbench.registry import create_backbone

    class Half:
        name, default_resolution = "half", 32

    BACKBONES.register("half-backbone", lambda: Half(), override=True)
    try:
        with pytest.raises(DfbenchInputError, match=r"backbone half-backbone: its factory made a Half without "
                                                    r"activation_names, canonical_selection, catalog, "):
            create_backbone("half-backbone")
    finally:
        BACKBONES.unregister("half-backbone")


def test_the_test_doubles_satisfy_the_whole_contract():
    """Every stand-in backbone the tests hand to the runner is a complete Backbone (so a test cannot pass on
    a member the real contract does not promise)."""
    from references import TextureBackbone
    from test_geometry import ColourBackbone

    from dfbench.backbones.protocol import Backbone, missing_members

    for backbone in (TextureBackbone(), ColourBackbone(), toy_plugin.ToyCNN()):
        assert missing_members(backbone) == [] and isinstance(backbone, Backbone)
