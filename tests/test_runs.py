"""Run records, leaderboards and suites, end to end on the tiny backbones and the mini set."""

import json
from pathlib import Path

import pytest

from dfbench.cli import main
from dfbench.results import Result, leaderboard_table, load_results, save_result


@pytest.fixture(autouse=True)
def mini_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DFBENCH_HOME", str(tmp_path_factory.getbasetemp() / "dfbench_home"))


def test_run_writes_record_figures_and_leaderboard(tmp_path, capsys):
    results = tmp_path / "results"
    code = main(["run", "--backbone", "tiny-sd15", "--task", "spair", "--select", "up_blocks.1",
                 "--data-root", "mini", "--resolution", "64", "--results", str(results), "--no-progress"])
    assert code == 0
    (record_path,) = (results / "runs").glob("*/record.json")
    record = json.loads(record_path.read_text())
    assert record["protocol"] == "spair/dift-nn" and record["protocol_version"] == 1
    assert record["metric_specs"]["pck@0.1_bbox"] == {"higher_is_better": True, "primary": True, "unit": "%"}
    assert record["backbone"] == "tiny-sd15" and record["selection"] == ["up_blocks.1"]
    assert record["settings"]["resolution"] == 64 and record["settings"]["timestep"] == 261
    assert record["run_id"] == record_path.parent.name
    assert {"torch", "diffusers", "transformers", "git_revision", "device"} <= set(record["environment"])
    assert record["timings"]["images"] == 14 and record["timings"]["extract_s"] > 0
    metrics = record["metrics"]
    assert metrics["pairs"] == 9 and metrics["keypoints"] == 90
    # every test category has 20 keypoints, except 'motorbike' with 10: the pooled PCK is the
    # keypoint-weighted mean of the category PCKs
    weights = {"cat": 20, "person": 20, "cup": 20, "rocket": 20, "motorbike": 10}
    pooled = sum(record["per_category"][c]["pck@0.1_bbox"] * n for c, n in weights.items()) / 90
    assert metrics["pck@0.1_bbox"] == pytest.approx(pooled)
    assert [Path(figure).name for figure in record["details"]["figures"]] == ["per-category.png", "matches.png"]
    for figure in record["details"]["figures"]:
        assert Path(figure).parent == record_path.parent / "figures" and Path(figure).stat().st_size
    markdown = (results / "leaderboard.md").read_text()
    assert "tiny-sd15 / up_blocks.1" in markdown and "## spair/dift-nn\n" in markdown and "pck@0.1_bbox" in markdown
    assert "mini:spair-v2 test" in markdown
    assert (results / "leaderboard.csv").read_text().startswith("backbone / selection,data,settings,id,")
    assert "pck@0.1_bbox" in capsys.readouterr().out


def _record(backbone, value, created, selection=("up_blocks.1",), preset=None, **details):
    return Result(task="spair", protocol="spair/dift-nn", protocol_version=1, backbone=backbone,
                  selection=list(selection), settings={"resolution": 768, "timestep": 261, "ensemble_size": 8},
                  metrics={"pck@0.1_bbox": value, "pck@0.1_img": value + 10}, preset=preset, created=created,
                  details={"leaderboard_metrics": ["pck@0.1_bbox"], "split": "test", **details})


def test_leaderboard_keeps_the_latest_record_per_row(tmp_path):
    records = [_record("sd21", 50.0, "2026-01-01T00:00:00"), _record("sd21", 52.5, "2026-02-01T00:00:00"),
               _record("cleandift-sd21", 60.0, "2026-01-15T00:00:00", preset="dift")]
    frame = leaderboard_table(sorted(records, key=lambda r: r.created))
    assert list(frame.columns) == ["backbone / selection", "data", "settings", "id", "spair/dift-nn pck@0.1_bbox"]
    assert frame.set_index("backbone / selection")["spair/dift-nn pck@0.1_bbox"].to_dict() == {
        "cleandift-sd21 / dift": 60.0, "sd21 / up_blocks.1": 52.5}
    assert frame["settings"].tolist() == ["768px t=261 ens=8"] * 2 and frame["data"].tolist() == ["test"] * 2
    for record in records:
        save_result(record, tmp_path)
    assert main(["leaderboard", "--results", str(tmp_path)]) == 0
    assert "| sd21 / up_blocks.1" in (tmp_path / "leaderboard.md").read_text()


def test_different_experiments_never_share_a_row(tmp_path):
    """A subset, another split, data root, prompt, resize or latent mode, dtype or protocol option is
    another experiment: its own leaderboard row, never the latest value of the full-set row."""
    full = _record("sd21", 77.78, "2026-01-01T00:00:00", data_root="SPair-71k")
    variants = [
        _record("sd21", 40.0, "2026-01-02T00:00:00", data_root="SPair-71k", limit=1),
        _record("sd21", 41.0, "2026-01-02T00:00:01", data_root="SPair-71k", split="val"),
        _record("sd21", 42.0, "2026-01-02T00:00:02", data_root="elsewhere"),
        _record("sd21", 43.0, "2026-01-02T00:00:03", data_root="SPair-71k",
                options={"per_category": 20, "pairs_file": None}, options_changed={"per_category": 20}),
    ]
    for key, value in (("prompt", "a cat"), ("resize_mode", "pad"), ("latent_mode", "sample"),
                       ("dtype", "bfloat16")):
        changed = _record("sd21", 44.0, "2026-01-02T00:00:04", data_root="SPair-71k")
        changed.settings = {**changed.settings, key: value}
        variants.append(changed)
    frame = leaderboard_table([full, *variants])
    assert len(frame) == 1 + len(variants) and frame["id"].is_unique
    full_row = frame[frame["id"] == full.identity_hash].iloc[0]
    assert full_row["spair/dift-nn pck@0.1_bbox"] == 77.78 and full_row["data"] == "spair:SPair-71k test"
    assert frame["data"].tolist().count("spair:SPair-71k test limit=1") == 1
    assert "spair:SPair-71k test per_category=20" in frame["data"].tolist()
    assert "spair:elsewhere test" in frame["data"].tolist()
    # batch size changes no value: the same experiment
    rerun = _record("sd21", 78.0, "2026-01-03T00:00:00", data_root="SPair-71k")
    rerun.settings = {**rerun.settings, "batch_size": 2}
    assert rerun.identity_hash == full.identity_hash


def test_an_omitted_resolution_is_recorded_resolved(tmp_path):
    results = tmp_path / "results"
    for extra in ([], ["--resolution", "64"]):
        assert main(["run", "--backbone", "tiny-sd15", "--task", "spair", "--select", "us6", "--data-root", "mini",
                     "--results", str(results), "--no-progress", "--no-figures", "--limit", "2", *extra]) == 0
    records = [json.loads(path.read_text()) for path in (results / "runs").glob("*/record.json")]
    assert [record["settings"]["resolution"] for record in records] == [64, 64]
    frame = leaderboard_table(load_results(results))
    assert len(frame) == 1 and "defaultpx" not in frame["settings"].iloc[0]


@pytest.mark.slow
def test_suite_runs_once_then_skips(tmp_path, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "defaults:\n  task: spair/dift-nn\n  data_root: mini\n  settings: {resolution: 64}\n"
        "runs:\n  - {backbone: tiny-sd15, selection: [us6]}\n"
        "  - {backbone: tiny-sd21, preset: dift, settings: {ensemble_size: 2}}\n"
    )
    results = tmp_path / "results"
    assert main(["suite", str(suite), "--results", str(results), "--no-progress"]) == 0
    assert len(list((results / "runs").glob("*/record.json"))) == 2
    assert main(["suite", str(suite), "--results", str(results), "--no-progress"]) == 0
    assert capsys.readouterr().err.count("already recorded, skipped") == 2
    assert len(list((results / "runs").glob("*/record.json"))) == 2


@pytest.mark.parametrize("text,fragment", [
    ("runs: []\n", "non-empty list under 'runs:'"),
    ("runs:\n  - {backbone: tiny-sd15, task: spair, colour: red, data_root: mini}\n", "unknown field(s) colour"),
    ("runs:\n  - {backbone: tiny-sd15, data_root: mini}\n", "needs 'backbone' and 'task'"),
    ("runs: [\n", "not valid YAML"),
])
def test_bad_suites_are_one_line_exit_2(tmp_path, capsys, text, fragment):
    suite = tmp_path / "suite.yaml"
    suite.write_text(text)
    assert main(["suite", str(suite), "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1


def test_run_needs_a_data_root(capsys):
    assert main(["run", "--backbone", "tiny-sd15", "--task", "spair", "--select", "up_blocks.1"]) == 2
    assert "--data-root DIR is required" in capsys.readouterr().err


@pytest.mark.slow
def test_run_bench_without_arguments_runs_the_offline_demo(tmp_path):
    """`python run_bench.py`: the demo suite, offline, prints and writes the leaderboard."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "run_bench.py"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DFBENCH_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tiny-sdxl / gdf-ours-sdxl" in done.stdout and "demo finished" in done.stdout
    assert "tiny-pixart / transformer_blocks.13" in done.stdout
    assert len(list((tmp_path / "results" / "runs").glob("*/record.json"))) == 10
    assert "horse21/ddpm" in done.stdout                                 # the short Horse-21 run is in it
    assert "tiny-sd15+tiny-dinov2 / tale-of-two" in done.stdout          # and the fusion
    assert "nyuv2/cleandift-linear" in done.stdout                       # and the depth probe
    assert (tmp_path / "results" / "leaderboard.md").is_file()


def test_compare_gate_by_hand(tmp_path, capsys):
    base = tmp_path / "baseline.json"
    first = _record("sd21", 60.0, "2026-01-01T00:00:00")
    save_result(first, tmp_path)
    assert main(["compare", str(tmp_path), "--baseline", str(base), "--update", "--tolerance", "0.5"]) == 0
    baseline = json.loads(base.read_text())
    assert baseline["entries"] == [{"id": first.identity_hash, "protocol": "spair/dift-nn",
                                    "row": "sd21 / up_blocks.1", "data": "test", "settings": "768px t=261 ens=8",
                                    "metrics": {"pck@0.1_bbox": 60.0}, "higher_is_better": {"pck@0.1_bbox": True}}]
    capsys.readouterr()
    save_result(_record("sd21", 59.6, "2026-01-02T00:00:00"), tmp_path)   # −0.4: within 0.5
    assert main(["compare", str(tmp_path), "--baseline", str(base)]) == 0
    assert "no regression" in capsys.readouterr().out
    save_result(_record("sd21", 59.4, "2026-01-03T00:00:00"), tmp_path)   # −0.6: a regression
    assert main(["compare", str(tmp_path), "--baseline", str(base)]) == 1
    assert "REGRESSION" in capsys.readouterr().out
    assert main(["compare", str(tmp_path), "--baseline", str(base), "--tolerance", "1.0"]) == 0
    other = tmp_path / "other"
    save_result(_record("sd15", 70.0, "2026-01-01T00:00:00"), other)       # the baseline's row has no run
    assert main(["compare", str(other), "--baseline", str(base)]) == 1
    assert "MISSING" in capsys.readouterr().out
    subset = tmp_path / "subset"                                            # a 2-pair run is another experiment
    save_result(_record("sd21", 30.0, "2026-01-04T00:00:00", limit=2), subset)
    assert main(["compare", str(subset), "--baseline", str(base)]) == 1
    out = capsys.readouterr().out
    assert "MISSING" in out and "REGRESSION" not in out
    base.write_text("{}")
    assert main(["compare", str(tmp_path), "--baseline", str(base)]) == 2


def test_directions_come_from_the_records_metric_specs(tmp_path, capsys):
    """log10, sq_rel, silog: lower is better because the record says so, whatever their names."""
    specs = {"rmse": False, "log10": False, "sq_rel": False, "silog": False, "delta1": True}

    def depth_record(values, created):
        return Result(task="toy-depth", protocol="toy-depth/probe", protocol_version=1, backbone="b",
                      selection=["x"], settings={"resolution": 64, "timestep": 1}, metrics=values, created=created,
                      details={"split": "test"},
                      metric_specs={key: {"higher_is_better": up, "primary": False, "unit": ""}
                                    for key, up in specs.items()})

    base = tmp_path / "baseline.json"
    save_result(depth_record({"rmse": 1.0, "log10": 0.2, "sq_rel": 0.5, "silog": 10.0, "delta1": 80.0},
                             "2026-01-01T00:00:00"), tmp_path)
    assert main(["compare", str(tmp_path), "--baseline", str(base), "--update", "--tolerance", "0.05"]) == 0
    capsys.readouterr()
    save_result(depth_record({"rmse": 0.5, "log10": 0.3, "sq_rel": 0.4, "silog": 9.0, "delta1": 90.0},
                             "2026-01-02T00:00:00"), tmp_path)
    assert main(["compare", str(tmp_path), "--baseline", str(base)]) == 1
    rows = [line for line in capsys.readouterr().out.splitlines() if "REGRESSION" in line]
    assert len(rows) == 1 and "log10" in rows[0]   # log10 went up: worse; every other change is better


def test_version_1_suites_and_records_keep_loading(tmp_path):
    from dfbench.suite import load_suite

    suite = tmp_path / "old.yaml"
    suite.write_text("defaults: {task: spair, data_root: mini}\n"
                     "runs:\n  - {backbone: tiny-sd15, selection: [us6], limit_pairs: 3, per_category: 2,"
                     " pairs_file: subset.txt}\n")
    (spec,) = load_suite(suite)
    assert spec.limit == 3 and spec.options == {"per_category": 2, "pairs_file": "subset.txt"}
    # a version-1 record: a flat runs/<id>.json, no metric specs, the subset in details
    old = {"task": "spair", "protocol": "spair/dift-nn", "protocol_version": 1, "backbone": "sd21",
           "selection": ["up_blocks.1"], "settings": {"resolution": 768, "timestep": 261},
           "metrics": {"pck@0.1_bbox": 59.0, "pck@0.1_img": 66.0}, "per_category": {}, "timings": {},
           "details": {"split": "test", "limit_pairs": 20, "per_category": None, "pairs_file": None,
                       "leaderboard_metrics": ["pck@0.1_bbox"], "config_hash": "abc"},
           "preset": "dift", "weights": "", "environment": {}, "created": "2026-11-01T00:00:00+00:00",
           "run_id": "old-run", "record_version": 1}
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "old-run.json").write_text(json.dumps(old))
    (record,) = load_results(tmp_path)
    assert record.record_version == 1 and record.data_label == "test limit=20"
    assert record.higher_is_better("pck@0.1_bbox")  # from the installed task's spec
    frame = leaderboard_table([record])
    assert frame["spair/dift-nn pck@0.1_bbox"].tolist() == [59.0]


def test_paper_suite_skips_what_is_missing_and_checks_published_values(tmp_path, capsys, monkeypatch):
    """A suite row carries published values: the leaderboard shows measured, published and Δ; rows whose
    data or weights are missing are skipped with one line each; --check-published compares."""
    import json

    monkeypatch.setenv("DFBENCH_DATA", str(tmp_path / "data"))
    results = tmp_path / "results"

    def write_suite(published):
        suite = tmp_path / "paper.yaml"
        suite.write_text(
            "defaults: {task: spair/dift-nn, settings: {resolution: 64}, limit: 2}\nruns:\n"
            f"  - {{backbone: tiny-sd15, selection: [up_blocks.1], data_root: mini, published: {published},"
            " source: 'a paper, Table 1'}\n"
            "  - {backbone: tiny-sd15, selection: [up_blocks.1], data_root: '${DFBENCH_DATA}/SPair-71k',"
            " published: {pck@0.1_bbox: 50.0}}\n"
            f"  - {{backbone: tiny-sd21, selection: [up_blocks.1], data_root: mini, weights: {tmp_path / 'none'}}}\n")
        return suite

    suite = write_suite("{pck@0.1_bbox: 40.0}")
    assert main(["suite", str(suite), "--results", str(results), "--no-progress"]) == 0     # one ran: exit 0
    captured = capsys.readouterr()
    skipped = [line for line in captured.err.splitlines() if "skipped —" in line]
    assert len(skipped) == 2
    assert f"data_root {tmp_path / 'data' / 'SPair-71k'}: not found; get it: dfbench data get spair" in skipped[0]
    assert f"set DFBENCH_DATA (now {tmp_path / 'data'}) to the folder that holds" in skipped[0]
    assert f"--weights {tmp_path / 'none'}: no such file or folder (backbone tiny-sd21)" in skipped[1]
    (record_path,) = (results / "runs").glob("*/record.json")
    record = json.loads(record_path.read_text())
    measured = record["metrics"]["pck@0.1_bbox"]
    assert record["details"]["published"] == {"pck@0.1_bbox": 40.0}
    assert record["details"]["published_source"] == "a paper, Table 1"
    from dfbench.results import leaderboard_table, load_results

    row = leaderboard_table(load_results(results)).iloc[0]
    assert row["spair/dift-nn pck@0.1_bbox (published)"] == 40.0 and row["data"] == "mini:spair-v2 test limit=2"
    assert "spair/dift-nn pck@0.1_bbox Δ" not in row          # a mini set's number is no measurement of the paper's

    # the published values are not part of the run's identity: the recorded run is reused and checked
    suite = write_suite(f"{{pck@0.1_bbox: {measured + 0.5}}}")
    assert main(["suite", str(suite), "--results", str(results), "--no-progress", "--check-published",
                 "--tolerance", "1"]) == 0
    assert "all 1 measured values within ±1" in capsys.readouterr().out
    suite = write_suite(f"{{pck@0.1_bbox: {measured + 2}}}")
    assert main(["suite", str(suite), "--results", str(results), "--no-progress", "--check-published",
                 "--tolerance", "1"]) == 1
    out = capsys.readouterr().out
    assert "MISSES" in out and "1 of 1 measured values miss" in out
    assert main(["suite", str(suite), "--results", str(results), "--no-progress", "--strict"]) == 2
    assert "skipped (--strict)" in capsys.readouterr().err


def test_suite_where_nothing_ran_exits_1_and_unknown_published_metric_is_exit_2(tmp_path, capsys):
    suite = tmp_path / "paper.yaml"
    suite.write_text("runs:\n  - {backbone: tiny-sd15, task: spair, selection: [up_blocks.1], "
                     f"data_root: {tmp_path / 'missing'}}}\n")
    assert main(["suite", str(suite), "--results", str(tmp_path / "r"), "--no-progress"]) == 1
    assert "nothing ran" in capsys.readouterr().err
    suite.write_text("runs:\n  - {backbone: tiny-sd15, task: spair, selection: [up_blocks.1], data_root: mini, "
                     "published: {PCK: 50}}\n")
    assert main(["suite", str(suite), "--results", str(tmp_path / "r")]) == 2
    assert "published PCK: not a metric of spair" in capsys.readouterr().err


@pytest.mark.slow
def test_paper_suites_parse_and_name_their_sources():
    from pathlib import Path

    from dfbench.suite import load_suite, spec_problems

    folder = Path(__file__).resolve().parents[1] / "configs" / "paper"
    for name in ("dift_spair.yaml", "cleandift.yaml", "meng2024.yaml"):
        specs = load_suite(folder / name)
        assert specs and all(spec.source for spec in specs)
        assert not [problem for spec in specs for problem in spec_problems(spec)]
    (dift,) = load_suite(folder / "dift_spair.yaml")
    assert dift.published == {"pck@0.1_bbox": 59.57, "pck@0.1_bbox_per_image": 66.53}
    cleandift = load_suite(folder / "cleandift.yaml")
    assert [spec.published.get("rmse") for spec in cleandift[2:5]] == [0.469, 0.444, 0.444]
    published_probe = cleandift[4]           # CleanDIFT's own probe and learned timestep, in bfloat16, no training
    assert (published_probe.options, published_probe.backbone_options, published_probe.settings) == (
        {"probe": "hub"}, {"full": "hub"}, {"dtype": "bfloat16", "resample": "bilinear"})
    # the DINOv2 and fused rows, as CleanDIFT's table gives them
    assert [(spec.backbone, spec.task, spec.preset, spec.published) for spec in cleandift[5:]] == [
        ("dinov2-base", "spair/patch-nn", None, {"pck@0.1_bbox": 55.6}),
        ("sd15+dinov2-base", "spair/patch-nn", "tale-of-two", {"pck@0.1_bbox": 63.73, "pck@0.1_bbox_per_image": 72.31}),
        ("cleandift-sd15+dinov2-base", "spair/patch-nn", "cleandift-fusion",
         {"pck@0.1_bbox": 64.81, "pck@0.1_bbox_per_image": 73.35}),
        ("sd15+dinov2-base", "spair/geoaware", "geoaware-fusion", {"pck@0.1_bbox": 68.64}),
        ("cleandift-sd15+dinov2-base", "spair/geoaware", "cleandift-fusion", {"pck@0.1_bbox": 69.99})]
    for suite in ("ci.yaml", "demo.yaml"):                  # the other shipped suites check out too
        assert not [problem for spec in load_suite(folder.parent / suite) for problem in spec_problems(spec)]


def _markdown_cells(line: str) -> list[str]:
    """The cells of one Markdown table row, split on unescaped pipes (GFM: ``\\|`` is a pipe inside a cell)."""
    import re

    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def test_leaderboard_names_the_data_and_keeps_one_table_per_protocol(tmp_path):
    """The same selection on the mini set and on a real folder: two rows that say which is which; a depth run
    gets its own table with its own columns; a fusion's settings cell (with a '|') parses back to one cell."""
    mini = _record("sd21", 40.0, "2026-01-01T00:00:00", data_root="mini:mini-spair-v2")
    real = _record("sd21", 59.6, "2026-01-01T00:00:01", data_root="/data/SPair-71k", limit=200,
                   published={"pck@0.1_bbox": 59.57})
    fused = _record("sd15+dinov2-base", 61.0, "2026-01-01T00:00:02", preset="tale-of-two",
                    data_root="/data/SPair-71k", backbone_detail="sd15@960 pca256 ×1 ⊕ dinov2-base@840 ×1")
    depth = Result(task="nyuv2", protocol="nyuv2/cleandift-linear", protocol_version=1, backbone="sd21",
                   selection=["up_blocks.1"], settings={"resolution": 768, "timestep": 261},
                   metrics={"rmse": 0.47, "delta1": 0.8}, created="2026-01-01T00:00:03",
                   details={"split": "test", "data_root": "mini:mini-nyuv2-v1/nyuv2",
                            "leaderboard_metrics": ["rmse", "delta1"]})
    for record in (mini, real, fused, depth):
        save_result(record, tmp_path)
    assert main(["leaderboard", "--results", str(tmp_path)]) == 0
    markdown = (tmp_path / "leaderboard.md").read_text()
    sections = markdown.split("\n## ")[1:]
    assert [section.splitlines()[0] for section in sections] == ["nyuv2/cleandift-linear", "spair/dift-nn"]
    depth_table, spair_table = ([line for line in section.splitlines() if line.startswith("|")]
                                for section in sections)
    header = _markdown_cells(spair_table[0])
    assert header == ["backbone / selection", "data", "settings", "id", "pck@0.1_bbox", "pck@0.1_bbox (published)",
                      "pck@0.1_bbox Δ"]
    assert _markdown_cells(depth_table[0]) == ["backbone / selection", "data", "settings", "id", "delta1", "rmse"]
    rows = [_markdown_cells(line) for line in spair_table[2:]]
    assert len(rows) == 3 and all(len(cells) == len(header) for cells in rows)
    fused_row = next(cells for cells in rows if cells[0] == "sd15+dinov2-base / tale-of-two")
    assert fused_row[2] == "768px t=261 ens=8 | sd15@960 pca256 ×1 ⊕ dinov2-base@840 ×1"
    data = sorted(cells[1] for cells in rows)
    assert data == ["mini:spair-v2 test", "spair:SPair-71k test", "spair:SPair-71k test limit=200"]
    real_row = next(cells for cells in rows if cells[1].endswith("limit=200"))
    assert real_row[4:] == ["59.6", "59.57", "0.03"]
    assert _markdown_cells(depth_table[2])[1] == "mini:nyuv2-v1 test"


def test_a_suite_refuses_typos_instead_of_running_the_mini_set(tmp_path, capsys):
    """``default:`` for ``defaults:`` used to be ignored, every row falling back to the embedded set (exit 0)."""
    results = tmp_path / "results"
    cases = {
        "default: {data_root: X}\nruns:\n  - {backbone: tiny-sd15, task: spair, selection: [us6]}\n":
            "unknown top-level key(s) default (default → defaults?)",
        "runs:\n  - {backbone: tiny-sd15, task: spair, selection: [us6]}\n":
            "run 1 names no data; give data_root: mini",
        "runs:\n\t- {backbone: tiny-sd15}\n":
            ":2:1: not valid YAML (found character '\\t' that cannot start any token); that line holds a tab",
        "runs:\n  - {backbone: tiny-sd15, task: spair\n  - {backbone: x}\n":
            ":3:5: not valid YAML (expected ',' or '}', but got '{')",
        "- just a list\n": "expected a mapping with defaults and runs, found a list",
    }
    for number, (text, fragment) in enumerate(cases.items()):
        suite = tmp_path / f"suite{number}.yaml"
        suite.write_text(text)
        assert main(["suite", str(suite), "--results", str(results), "--no-progress"]) == 2
        error = capsys.readouterr().err.strip()
        assert fragment in error and "\n" not in error, error
        assert error.startswith(f"dfbench: error: suite {suite}")
    assert not (results / "runs").exists()


def test_meng2024_suite_carries_the_papers_table():
    """Every Legacy/Ours row of Meng et al.'s tables as published (SPair img / bbox, ADE20K, Cityscapes, Horse-21
    mean ± std); the SPair rows that claim them run GDF's report (val-360, float16), each with an honest twin."""
    from pathlib import Path

    from dfbench.suite import load_suite

    specs = load_suite(Path(__file__).resolve().parents[1] / "configs" / "paper" / "meng2024.yaml")
    published = {(spec.preset, spec.task.split("/")[0]): spec.published for spec in specs if spec.published}
    assert published[("gdf-legacy-sd15", "spair")] == {"pck@0.1_img": 75.14, "pck@0.1_bbox": 66.73}
    assert published[("gdf-ours-sdxl", "spair")] == {"pck@0.1_img": 81.72, "pck@0.1_bbox": 75.18}
    assert published[("gdf-legacy-sdxl-ade20k", "ade20k")] == {"mIoU": 27.78}
    assert published[("gdf-ours-sd15-cityscapes", "cityscapes")] == {"mIoU": 64.10}
    assert published[("gdf-ours-sdxl-horse21", "horse21")] == {"mIoU": 62.7, "mIoU_std": 0.7}
    assert published[("dift", "spair")] == {"pck@0.1_bbox": 52.90}
    assert published[("gdf-ours-xl-t", "spair")] == {"pck@0.1_img": 83.90, "pck@0.1_bbox": 76.86}
    assert published[("gdf-ours-xl-t-ade20k", "ade20k")] == {"mIoU": 45.71}
    assert published[("gdf-ours-xl-t-cityscapes", "cityscapes")] == {"mIoU": 75.89}
    assert published[("gdf-ours-xl-t-horse21", "horse21")] == {"mIoU": 66.3, "mIoU_std": 0.9}
    claimed = [spec for spec in specs if spec.task == "spair/gdf-conv" and spec.published]
    twins = [spec for spec in specs if spec.task == "spair/gdf-conv" and not spec.published]
    assert len(claimed) == len(twins) == 5
    assert all(spec.options["report"] == "gdf" and spec.settings == {"dtype": "float16"}
               and spec.options["val_pairs_file"].endswith("spair_71k_val-360.json") for spec in claimed)
    assert {spec.preset for spec in claimed} == {spec.preset for spec in twins}
    assert all("report" not in spec.options for spec in twins)
