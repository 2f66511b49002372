"""The command line: outputs, files, and one-line errors with exit code 2."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from dfbench.cli import main


@pytest.fixture(scope="module")
def image_files(tmp_path_factory, photos):
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for index, photo in enumerate(photos[:2]):
        path = folder / f"photo{index}.png"
        photo.save(path)
        paths.append(str(path))
    (folder / "broken.png").write_text("not an image")
    return paths, folder


def test_activations_json_lists_real_sd15_shapes(capsys):
    assert main(["activations", "sd15", "--resolution", "512", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) >= 190
    assert set(rows[0]) == {"name", "channels", "height", "width", "aliases"}
    by_name = {row["name"]: row for row in rows}
    assert by_name["up_blocks.1.attentions.1.transformer_blocks.0.attn2.q"] == {
        "name": "up_blocks.1.attentions.1.transformer_blocks.0.attn2.q", "channels": 1280, "height": 16, "width": 16,
        "aliases": ["up-level1-repeat1-vit-block0-cross-q"]}


def test_activations_table_with_grep(capsys):
    assert main(["activations", "tiny-sd15", "--grep", r"^up_blocks\.1\.resnets\.\d$"]) == 0
    out = capsys.readouterr().out
    assert "tiny-sd15 at 64px: 3 activations" in out
    assert "up_blocks.1.resnets.2" in out and "increment" not in out


def test_extract_writes_requested_activations(tmp_path, image_files, capsys):
    paths, _ = image_files
    out = tmp_path / "features.safetensors"
    code = main(["extract", "tiny-sd15", "--images", *paths, "--select", "us6", "up-level1-repeat1-vit-block0-cross-q",
                 "--timestep", "50", "--seed", "3", "--out", str(out), "--no-progress"])
    assert code == 0
    with safe_open(str(out), "pt") as handle:
        keys = list(handle.keys())
        metadata = handle.metadata()
        block = handle.get_tensor("up_blocks.1")
    assert sorted(keys) == ["up_blocks.1", "up_blocks.1.attentions.1.transformer_blocks.0.attn2.q"]
    assert block.shape == (2, 64, 4, 4) and block.dtype == torch.float32
    settings = json.loads(metadata["settings"])
    assert settings["timestep"] == 50 and settings["seed"] == 3
    assert json.loads(metadata["images"]) == paths
    assert [p.name for p in tmp_path.iterdir()] == ["features.safetensors"]  # no temp file left


def test_extract_with_preset_and_folder(tmp_path, image_files):
    paths, folder = image_files
    images_only = tmp_path / "imgs"
    images_only.mkdir()
    for path in paths:
        (images_only / path.rsplit("/", 1)[-1]).write_bytes(open(path, "rb").read())
    out = tmp_path / "dift.safetensors"
    code = main(["extract", "tiny-sd21", "--images", str(images_only), "--preset", "dift", "--category", "cat",
                 "--resolution", "64", "--ensemble", "2", "--out", str(out), "--no-progress"])
    assert code == 0
    with safe_open(str(out), "pt") as handle:
        settings = json.loads(handle.metadata()["settings"])
        assert handle.get_tensor("up_blocks.1").shape == (2, 64, 4, 4)
    assert settings["ensemble_size"] == 2 and settings["timestep"] == 261
    assert settings["prompt"] == "a photo of a {category}" and settings["latent_mode"] == "sample"


@pytest.mark.parametrize("args,fragment", [
    (["extract", "tiny-sd16", "--select", "up_blocks.1"],
     "unknown backbone 'tiny-sd16'; did you mean: tiny-sd21, tiny-sd15"),
    (["extract", "tiny-sd15", "--select", "up_blocks.7"], "unknown activation of tiny-sd15 'up_blocks.7'"),
    (["extract", "tiny-sd15", "--select", "up_blocks.1.attentions.0.transformer_blocks.0.attn2.v"], "cross-attention"),
    (["extract", "tiny-sd15", "--select", "up_blocks.1", "--timestep", "1000"], "timestep=1000"),
    (["extract", "tiny-sd15", "--preset", "dift"], "needs one category per image"),
    (["extract", "tiny-sd15", "--preset", "dfit"], "unknown preset 'dfit'; did you mean: dift"),
])
def test_bad_input_is_one_line_exit_2(args, fragment, tmp_path, image_files, capsys):
    paths, _ = image_files
    code = main([*args, "--images", paths[0], "--out", str(tmp_path / "f.safetensors"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert fragment in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "f.safetensors").exists()


def test_bad_files_are_one_line_exit_2(tmp_path, image_files, capsys):
    paths, folder = image_files
    cases = [
        ([str(folder / "broken.png")], str(tmp_path / "f.safetensors"), "not a readable image"),
        ([str(folder / "missing.png")], str(tmp_path / "f.safetensors"), "no such file or folder"),
        (paths[:1], str(tmp_path / "nowhere" / "f.safetensors"), "does not exist; create it first"),
        (paths[:1], str(tmp_path / "f.pt"), "must end in .safetensors"),
    ]
    for images, out, fragment in cases:
        code = main(["extract", "tiny-sd15", "--images", *images, "--select", "up_blocks.1", "--out", out])
        err = capsys.readouterr().err.strip()
        assert code == 2 and fragment in err and len(err.splitlines()) == 1, (fragment, err)


def test_list_presets_and_backbones(capsys):
    assert main(["list", "presets"]) == 0
    out = capsys.readouterr().out
    for name in ("dift", "cleandift-dift", "gdf-ours-sd15", "gdf-legacy-sdxl", "cleandift-us10", "cleandift-mid"):
        assert f"  {name} " in out
    assert main(["list", "backbones", "--pattern", "tiny-*"]) == 0
    out = capsys.readouterr().out
    assert "tiny-sdxl" in out and "  sd15 " not in out


def test_console_script_and_run_bench_agree():
    """`python run_bench.py …` is `dfbench …` (checked through real subprocesses)."""
    via_script = subprocess.run([sys.executable, "run_bench.py", "list", "presets"], capture_output=True, text=True)
    via_module = subprocess.run([sys.executable, "-m", "dfbench", "list", "presets"], capture_output=True, text=True)
    assert via_script.returncode == via_module.returncode == 0
    assert via_script.stdout == via_module.stdout and "dift" in via_script.stdout
    bad = subprocess.run([sys.executable, "-m", "dfbench", "activations", "sd99"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("dfbench: error: unknown backbone 'sd99'")


@pytest.mark.parametrize("command", ["run", "score", "sweep"])
def test_help_lists_every_task_protocol_and_option_from_the_metadata(command, capsys):
    """The help of the commands that take --task / --option is generated from the registered tasks, so it
    names every protocol with every option (it was written by hand and had drifted: --split omitted nyuv2)."""
    import dataclasses

    from dfbench import registry

    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    for name in registry.TASKS.names("*"):
        task = registry.TASKS.get(name)()
        sweep = f"; sweep: {task.sweep_protocol}" if task.sweep_protocol else ""
        assert f"  {name} (default split: {task.default_split}{sweep})" in lines
        for protocol in task.protocols.values():
            (index,) = [i for i, line in enumerate(lines) if line.strip().startswith(
                f"{name}/{protocol.name} v{protocol.version}:")]
            options = lines[index + 1]
            for option in dataclasses.fields(protocol.options):
                assert f" {option.name}: " in options, (name, protocol.name, option.name)
