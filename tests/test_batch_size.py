"""--batch-size auto: the rows that fit, from a probe of one and two rows (dfbench/batch_size.py)."""

import json

import pytest

from dfbench.batch_size import HEADROOM, fit_rows
from dfbench.cli import main


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("DFBENCH_HOME", str(tmp_path / "home"))


def test_fit_rows_by_hand():
    """One row peaks at 3 GB, two at 5 GB: a row costs 2 GB, the model 1 GB. With 40 GB free and 70 % of it
    usable (28 GB): (28 − 1) // 2 = 13 rows; capped at 8; a row of no measurable cost gives the cap; nothing fits:
    still 1."""
    gb = 1e9
    assert HEADROOM == 0.7
    assert fit_rows(40 * gb, 3 * gb, 5 * gb, cap=64) == 13
    assert fit_rows(40 * gb, 3 * gb, 5 * gb, cap=8) == 8
    assert fit_rows(40 * gb, 3 * gb, 3 * gb, cap=32) == 32
    assert fit_rows(1 * gb, 3 * gb, 5 * gb, cap=32) == 1


def test_auto_on_the_cpu_picks_records_and_caches_a_size(tmp_path, capsys):
    """A run with --batch-size auto completes (no out-of-memory), records the size it used, keeps it in
    $DFBENCH_HOME/batch_sizes.json with the probe's two peaks, and a second run reuses it; the identity is that of
    the same run with a fixed batch size (the batch size changes no number)."""
    command = ["run", "--backbone", "tiny-sd15", "--task", "spair", "--select", "up_blocks.1", "--resolution", "64",
               "--data-root", "mini", "--limit", "2", "--no-progress", "--no-figures"]
    assert main([*command, "--results", str(tmp_path / "auto"), "--batch-size", "auto"]) == 0
    (record,) = [json.loads(path.read_text()) for path in (tmp_path / "auto").glob("runs/*/record.json")]
    (entry,) = json.loads((tmp_path / "home" / "batch_sizes.json").read_text()).values()
    assert record["settings"]["batch_size"] == entry["batch_size"] >= 1
    assert entry["one_row_bytes"] >= 0 and entry["two_rows_bytes"] >= 0
    cached = (tmp_path / "home" / "batch_sizes.json").read_text()
    assert main([*command, "--results", str(tmp_path / "again"), "--batch-size", "auto"]) == 0
    assert (tmp_path / "home" / "batch_sizes.json").read_text() == cached
    assert main([*command, "--results", str(tmp_path / "fixed"), "--batch-size", "3"]) == 0
    (fixed,) = [json.loads(path.read_text()) for path in (tmp_path / "fixed").glob("runs/*/record.json")]
    assert fixed["metrics"] == record["metrics"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main([*command, "--results", str(tmp_path / "bad"), "--batch-size", "many"])
    assert exited.value.code == 2 and "'many' is not a number of rows or 'auto'" in capsys.readouterr().err


def test_proc_fields_are_read_in_kib(tmp_path):
    """The /proc reader the probe and the perf suites share, on a file in /proc/self/status's format."""
    from dfbench.environment import proc_kib

    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmPeak:\t  900 kB\nVmHWM:\t  1234 kB\nVmRSS:\t  1000 kB\n")
    assert proc_kib(str(status), "VmHWM") == 1234 and proc_kib(str(status), "MemAvailable") == 0
