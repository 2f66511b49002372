"""Saved predictions and `dfbench score`: the run's metrics again, with no backbone loaded."""

import json

import pytest
from PIL import Image

from dfbench.cli import main


@pytest.fixture(autouse=True)
def mini_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DFBENCH_HOME", str(tmp_path_factory.getbasetemp() / "dfbench_home"))


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """One run with --save-predictions (a 5-pair seeded subset of the mini test split)."""
    import os

    os.environ.setdefault("DFBENCH_HOME", str(tmp_path_factory.getbasetemp() / "dfbench_home"))
    results = tmp_path_factory.mktemp("score") / "results"
    assert main(["run", "--backbone", "tiny-sd15", "--task", "spair", "--select", "us6", "--data-root", "mini",
                 "--resolution", "64", "--results", str(results), "--no-progress", "--no-figures", "--limit", "5",
                 "--seed", "3", "--save-predictions"]) == 0
    (record_path,) = (results / "runs").glob("*/record.json")
    return json.loads(record_path.read_text()), record_path.parent / "predictions"


def _score(folder, *extra):
    return ["score", "--task", "spair", "--data-root", "mini", "--predictions", str(folder), "--limit", "5",
            "--seed", "3", *extra]


def test_run_save_predictions_then_score_gives_the_runs_metrics(saved_run, capsys, tmp_path):
    record, folder = saved_run
    table = json.loads((folder / "predictions.json").read_text())
    assert len(table) == 5 and all(isinstance(points, list) for points in table.values())
    assert record["details"]["predictions"] == str(folder)
    capsys.readouterr()
    assert main(_score(folder, "--format", "json")) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored == record["metrics"]  # exactly: the same pairs, the same scoring
    results = tmp_path / "results"
    assert main(_score(folder, "--results", str(results), "--name", "my-method")) == 0
    (scored_path,) = (results / "runs").glob("*/record.json")
    scored_record = json.loads(scored_path.read_text())
    assert scored_record["metrics"] == record["metrics"] and scored_record["backbone"] == "my-method"
    assert "my-method / saved predictions" in (results / "leaderboard.md").read_text()


@pytest.mark.parametrize("mutate,fragment", [
    (lambda t: t.pop(sorted(t)[0]), "no prediction for 1 of 5 pairs of SPair test (first: "),
    (lambda t: t.__setitem__(sorted(t)[0], t[sorted(t)[0]][:-1]), "points, expected"),
    (lambda t: t.__setitem__(sorted(t)[0], [[1e6, 0]] * len(t[sorted(t)[0]])), "is outside the"),
    (lambda t: t.__setitem__(sorted(t)[0], "here"), "expected a list of"),
    (lambda t: t[sorted(t)[0]].__setitem__(1, ["12", 3]), "point 1 ['12', 3] has '12', not a number (write"),
    (lambda t: t[sorted(t)[0]].__setitem__(0, [float("nan"), 3]), "point 0 [nan, 3] is not finite (NaN or Infinity)"),
    (lambda t: t[sorted(t)[0]].__setitem__(2, [4]), "point 2 is [4], expected [x, y]"),
])
def test_bad_predictions_are_one_line(saved_run, tmp_path, capsys, mutate, fragment):
    _, folder = saved_run
    table = json.loads((folder / "predictions.json").read_text())
    mutate(table)
    (tmp_path / "predictions.json").write_text(json.dumps(table))
    assert main(_score(tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1


def test_unreadable_or_foreign_prediction_folders(tmp_path, capsys):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "predictions.json").write_text("{not json")
    assert main(_score(tmp_path / "broken")) == 2
    assert "not readable JSON" in capsys.readouterr().err
    (tmp_path / "dense").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "dense" / "ADE_val_00000001.png")
    assert main(_score(tmp_path / "dense")) == 2
    assert "holds .png files: made for a dense task?" in capsys.readouterr().err
    assert main(_score(tmp_path / "nowhere")) == 2
    assert "no such folder" in capsys.readouterr().err
