"""Records and a feature cache written by dfbench before its package was reshaped
(tests/fixtures/before_reshape, made by its write.py) stay what they were: every record keeps its run identity
and config hash, the CI suite finds all its runs already recorded, the gate reads them against the committed
baseline, and the cache serves every entry without extracting anything."""

import json
import shutil
from pathlib import Path

import pytest

from dfbench.cli import main
from dfbench.errors import DfbenchInputError
from dfbench.gate import compare_to_baseline
from dfbench.results import leaderboard_table, load_results
from dfbench.suite import run_suite

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "before_reshape"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())


@pytest.fixture(autouse=True)
def mini_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DFBENCH_HOME", str(tmp_path_factory.getbasetemp() / "dfbench_home"))


def test_every_record_keeps_its_identity_and_config_hash():
    records = load_results(FIXTURE / "results")
    assert {record.run_id for record in records} == set(EXPECTED["records"])
    assert len(records) == 11
    for record in records:
        expected = EXPECTED["records"][record.run_id]
        assert (record.identity_hash, record.details.get("config_hash"), record.protocol, record.row_label) == (
            expected["identity"], expected["config_hash"], expected["protocol"], expected["row"])
    assert set(leaderboard_table(records)["id"]) == {entry["identity"] for entry in EXPECTED["records"].values()}


#: rows whose preset changed meaning after the fixture was written, so they are other runs now: tale-of-two runs SD
#: through ODISE's 512-px sliding window (setting tile) since Tale's extractor does
CHANGED_PRESET_ROWS = {"tiny-sd15+tiny-dinov2 / tale-of-two"}


def test_the_gate_reads_the_old_records_against_the_baseline():
    """Every baseline row the fixture's runs stand for matches them exactly; the only rows without a run are those
    the CI suite gained after the fixture was written (a DiT) and those whose preset has changed since."""
    rows, _ = compare_to_baseline(load_results(FIXTURE / "results"), ROOT / "results" / "baselines" / "ci.json",
                                  two_sided=True)
    matched = [row for row in rows if row[-1] != "MISSING"]
    assert matched and {row[-1] for row in matched} == {"ok"}
    assert {row[1] for row in rows if row[-1] == "MISSING"} == {"tiny-pixart / transformer_blocks.13",
                                                                 *CHANGED_PRESET_ROWS}


def test_the_ci_suite_finds_every_run_already_recorded(tmp_path, monkeypatch):
    from dfbench import suite

    results = tmp_path / "results"
    shutil.copytree(FIXTURE / "results", results)
    ran = []

    def run_one(spec, *args, **kwargs):
        if spec.preset != "tale-of-two":              # its meaning changed (CHANGED_PRESET_ROWS): a new run
            pytest.fail(f"ran {spec}")
        ran.append(spec.task)
        raise DfbenchInputError("not run here")        # a failed row, for the suite: nothing is written

    monkeypatch.setattr(suite, "run_one", run_one)
    lines = []
    # the CI suite as it was when the fixture was written (rows added since, e.g. a DiT, are not in it)
    run_suite(FIXTURE / "ci.yaml", results, progress=False, log=lines.append)
    assert sum("already recorded, skipped" in line for line in lines) == 8
    assert sorted(ran) == ["spair/dift-nn", "spair/patch-nn"]


@pytest.mark.slow
def test_the_old_cache_serves_every_entry(tmp_path, capsys):
    cache = tmp_path / "cache"
    shutil.copytree(FIXTURE / "cache", cache)
    ((store, entries),) = EXPECTED["cache"].items()
    assert main(["extract", "tiny-sd15", "--dataset", "spair", "--data-root", "mini", "--split", "val", "--select",
                 "up_blocks.1", "us4", "--resolution", "64", "--cache-dir", str(cache), "--no-progress"]) == 0
    out = capsys.readouterr().out
    images = {entry.split("|")[0] for entry in entries["entries"]}
    assert f"0 images extracted, {len(images)} already cached" in out
    assert [path.name for path in (cache / "tiny-sd15").iterdir()] == [store]       # no new store
