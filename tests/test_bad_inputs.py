"""Bad input, as a new user gives it: one stderr line, exit 2, no traceback, nothing written.

The table grows with every task and command."""

import numpy as np
import pytest
from PIL import Image

from dfbench.cli import main
from dfbench.errors import DfbenchInputError
from dfbench.images import image_size, load_image
from dfbench.results import Result, save_result

RUN = ["run", "--backbone", "tiny-sd15", "--task", "spair", "--select", "us6", "--data-root", "mini",
       "--resolution", "64", "--no-progress"]


@pytest.fixture(autouse=True)
def mini_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DFBENCH_HOME", str(tmp_path_factory.getbasetemp() / "dfbench_home"))


def _files(root):
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


CASES = [
    (RUN + ["--limit", "-3"], "--limit -3: must be ≥ 1"),
    (RUN + ["--results", "{tmp}/deep.tif"], "deep.tif is a file, not a folder"),
    # checked before the backbone loads or any image is extracted (it used to fail after the whole run)
    (RUN + ["--save-predictions", "{tmp}/deep.tif"],
     "--save-predictions {tmp}/deep.tif: {tmp}/deep.tif is a file, not a folder; choose another --save-predictions"),
    (["sweep", "--backbone", "tiny-sd15", "--task", "spair", "--candidates", "up_blocks.1", "--data-root", "mini",
      "--results", "{tmp}/deep.tif", "--cache-dir", "{tmp}/deep.tif/cache", "--no-progress"],
     "--results {tmp}/deep.tif: {tmp}/deep.tif is a file, not a folder"),
    (RUN + ["--cache-dir", "{tmp}/deep.tif/cache"], "feature cache {tmp}/deep.tif/cache: cannot create it"),
    (["activations", "sd15", "--resolution", "0"], "argument --resolution: 0 is not in 1…8192"),
    (["activations", "sd15", "--resolution", "1000000"], "argument --resolution: 1000000 is not in 1…8192"),
    (["extract", "tiny-sd15", "--images", "{tmp}/deep.tif", "--select", "us6", "--out", "{tmp}/f.safetensors",
      "--resolution", "0"], "argument --resolution: 0 is not in 1…8192"),
    (["activations", "tiny-sd15+tiny-dinov2", "--backbone-option", "resolution.1=1000000"],
     "backbone option resolution.tiny-sd15=1000000: must be an integer in 1…8192"),
    (RUN + ["--prompt", "a photo of a {categroy}"], "unknown placeholder {categroy}; the only placeholder is"),
    (RUN + ["--prompt", "a photo of a {"], "Single '{' encountered"),
    (RUN + ["--device", "cuda"], "--device cuda: this machine has no CUDA GPU"),
    (RUN + ["--device", "banana"], "--device 'banana': not a device torch knows"),
    (RUN + ["--option", "per_category=-1"], "option per_category=-1: must be ≥ 1"),
    (RUN + ["--option", "per_category=three"], "option per_category='three': expected int or none"),
    (RUN + ["--option", "colour=red"], "unknown option 'colour'; valid options: per_category (int or none)"),
    (RUN[:4] + ["spair/nearest"] + RUN[5:],
     "spair protocol 'nearest': available: dift-nn, patch-nn, geoaware, gdf-conv"),
    (RUN + ["--resolution", "500"], "tiny-sd15 needs a positive multiple of 8"),
    (RUN + ["--timestep", "1000"], "settings.timestep=1000"),
    (["run", "--backbone"],
     "dfbench run: error: argument --backbone: expected one argument (see `dfbench run --help`)"),
    (["cache", "verify", "--cache-dir", "{tmp}/nope"], "no such folder"),
    (["compare", "{tmp}/results", "--baseline", "{tmp}/missing.json"], "no such file; create it from the current"),
    (["perf", "matching", "--pairs", "0"], "--pairs 0: must be ≥ 1"),
    (["extract", "tiny-sd15", "--images", "{tmp}/deep.tif", "--select", "us6", "--out",
      "{tmp}/" + "x" * 300 + ".safetensors"], "more than this file system allows"),
    (["extract", "tiny-sd15", "--images", "{tmp}/deep.tif", "--select", "us6", "--out", "{tmp}/f.safetensors"],
     "mode I (values 0…100033) has no faithful 8-bit reading"),
]


@pytest.mark.parametrize("argv,fragment", CASES, ids=[" ".join(argv[:6]) + f" #{i}" for i, (argv, _) in
                                                     enumerate(CASES)])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, fragment, tmp_path, capsys):
    (tmp_path / "results").mkdir()
    save_result(Result(task="spair", protocol="spair/dift-nn", protocol_version=1, backbone="b", selection=["x"],
                       settings={}, metrics={"pck@0.1_bbox": 1.0}, details={"split": "test"},
                       created="2026-01-01T00:00:00"), tmp_path / "results")
    Image.fromarray(np.arange(20 * 30, dtype=np.int32).reshape(20, 30) * 167).save(tmp_path / "deep.tif")
    before = _files(tmp_path)
    argv = [part.replace("{tmp}", str(tmp_path)) for part in argv]
    fragment = fragment.replace("{tmp}", str(tmp_path))
    if argv[0] == "run" and len(argv) > 2 and "--results" not in argv:
        argv += ["--results", str(tmp_path / "results")]
    try:
        code = main(argv)
    except SystemExit as exited:  # argparse's usage errors exit from inside the parser
        code = exited.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert fragment in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert _files(tmp_path) == before  # nothing written, no folder created


def test_sixteen_bit_float_palette_grey_alpha_cmyk_and_exif_images(tmp_path):
    ramp16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)          # 0 … 63,000
    Image.fromarray(ramp16).save(tmp_path / "sixteen.png")
    sixteen = np.asarray(load_image(tmp_path / "sixteen.png"))
    assert sixteen.shape == (8, 8, 3) and sixteen.dtype == np.uint8
    assert np.array_equal(sixteen[..., 0], np.round(ramp16 / 257).astype(np.uint8))  # not almost white
    assert sixteen.mean() < 130

    unit = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(unit, mode="F").save(tmp_path / "unit.tif")
    assert np.array_equal(np.asarray(load_image(tmp_path / "unit.tif"))[..., 1], np.round(unit * 255).astype(np.uint8))
    Image.fromarray(unit * 1000, mode="F").save(tmp_path / "metres.tif")
    with pytest.raises(DfbenchInputError, match=r"metres.tif: mode F \(values 0…1000\)"):
        load_image(tmp_path / "metres.tif")

    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    rgb[:, :3] = (200, 10, 10)
    rgb[:, 3:] = (10, 10, 200)
    Image.fromarray(rgb).quantize(2).save(tmp_path / "palette.png")
    assert np.array_equal(np.asarray(load_image(tmp_path / "palette.png")), rgb)
    Image.fromarray(np.full((4, 4, 2), (90, 0), dtype=np.uint8), mode="LA").save(tmp_path / "grey_alpha.png")
    assert np.array_equal(np.asarray(load_image(tmp_path / "grey_alpha.png")), np.full((4, 4, 3), 90, np.uint8))
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    red = np.asarray(load_image(tmp_path / "cmyk.jpg")).reshape(-1, 3).mean(0)
    assert red[0] > 200 and red[1] < 60 and red[2] < 60

    # EXIF orientation 6: stored 30 wide × 20 high, shown rotated 90° clockwise (20 wide × 30 high)
    stored = np.zeros((20, 30, 3), dtype=np.uint8)
    stored[:, :5] = 255                                     # a white band on the stored left edge
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    upright = np.asarray(load_image(tmp_path / "rotated.jpg"))
    assert upright.shape == (30, 20, 3) and image_size(tmp_path / "rotated.jpg") == (30, 20)
    assert upright[:5].mean() > 200 and upright[-5:].mean() < 50   # the band is now along the top


def test_a_suite_is_checked_whole_before_anything_runs(tmp_path, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "defaults: {task: spair, data_root: mini}\n"
        "runs:\n"
        "  - {backbone: tiny-sd15, selection: [us6]}\n"                       # fine, but must not run
        "  - {backbone: tiny-sd15, selection: [up_blocks.9]}\n"
        "  - {backbone: tiny-sdx, selection: [us6]}\n"
        "  - {backbone: tiny-sd15, selection: [us6], options: {colour: red}, settings: {timestep: \"50\"}}\n"
        "  - {backbone: tiny-sd15, task: spair/nope, selection: [us6], data_root: /no/where}\n")
    assert main(["suite", str(suite), "--results", str(tmp_path / "results")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    # a missing data_root is not a problem of the suite: that row is skipped at run time with how to get the data
    assert "5 problem(s), nothing was run" in lines[0] and len(lines) == 6
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["run 2", "run 3", "run 4", "run 4", "run 5"]
    assert "'up_blocks.9'" in lines[1] and "'tiny-sdx'" in lines[2] and "settings.timestep='50'" in lines[4]
    assert not (tmp_path / "results").exists()
    suite.write_text("runs:\n  - {backbone: tiny-sd15, task: spair, selection: up_blocks.1, data_root: mini}\n")
    assert main(["suite", str(suite), "--results", str(tmp_path / "results")]) == 2
    assert "selection='up_blocks.1' must be of type list (a YAML list: [up_blocks.1])" in capsys.readouterr().err


def test_messages_say_what_is_wrong_with_local_files(tmp_path, capsys, tiny_sd15):
    empty = tmp_path / "model"
    (empty / "unet").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    code = main(["extract", "sd15", "--images", str(tmp_path), "--select", "us6", "--out",
                 str(tmp_path / "f.safetensors"), "--weights", str(empty)])
    err = capsys.readouterr().err
    assert code == 2 and "not a diffusers model folder for sd15 (missing vae/, scheduler/, text_encoder/, " \
                         "tokenizer/)" in err and "hf download" not in err
    code = main(["extract", "cleandift-sd15", "--images", str(tmp_path), "--select", "us6", "--out",
                 str(tmp_path / "f.safetensors"), "--unet-weights", str(tmp_path / "nope.safetensors")])
    assert code == 2 and "--unet-weights" in capsys.readouterr().err


def test_out_of_memory_is_one_line_with_what_to_lower(tiny_sd15, photos, monkeypatch):
    from dfbench import ExtractSettings

    def exhausted(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(tiny_sd15.vae, "encode", exhausted)
    with pytest.raises(DfbenchInputError, match="out of memory extracting at 64px with 8 UNet rows per forward; "
                                                "lower --batch-size or --resolution"):
        tiny_sd15.extract(photos[:1], ["us6"], ExtractSettings(resolution=64))


def test_a_resized_spair_image_is_refused_before_extraction(tmp_path, capsys, monkeypatch):
    """Keypoints, boxes and thresholds are in the pixels of the pair files' src_imsize / trg_imsize: a
    resized copy of an image would be scored wrongly without a sound (it used to be)."""
    import shutil

    from dfbench.tasks.spair import protocols
    from dfbench.tasks.spair.mini import mini_spair_root

    root = tmp_path / "SPair-71k"
    shutil.copytree(mini_spair_root(), root)
    image = sorted((root / "JPEGImages" / "cat").glob("*.jpg"))[0]
    with Image.open(image) as opened:
        width, height = opened.size
        opened.resize((width // 2, height // 2)).save(image)
    monkeypatch.setattr(protocols, "image_features", lambda *a, **k: pytest.fail("extracted before the check"))
    code = main(RUN[:8] + [str(root)] + RUN[9:] + ["--results", str(tmp_path / "results")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"SPair image {image}: {width // 2}×{height // 2} px, but pair " in err
    assert f"{width}×{height}; keypoints are in the original pixels" in err
    assert not list((tmp_path / "results").rglob("record.json"))
