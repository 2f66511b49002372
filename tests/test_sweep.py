"""dfbench sweep: one forward per image per timestep, a planted best candidate ranked first,
the heatmap and table written, a re-run computing nothing."""

import json
import math

import pytest
import torch

from dfbench.cli import main
from dfbench.errors import DfbenchInputError
from dfbench.registry import create_backbone
from dfbench.sweep import SweepEntry, expand_candidates, ranked, run_sweep, within_noise


@pytest.fixture(autouse=True)
def mini_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DFBENCH_HOME", str(tmp_path_factory.getbasetemp() / "dfbench_home"))


def positional(module, inputs, output):
    """A forward hook: the module's output replaced by a Fourier encoding of each cell's position, so its
    features match every point to the same relative place — far better than random tiny features."""
    n, c, h, w = output.shape
    y, x = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
    waves = [wave for k in range(1, c // 4 + 1) for wave in (torch.cos(math.pi * k * x), torch.sin(math.pi * k * x),
                                                             torch.cos(math.pi * k * y), torch.sin(math.pi * k * y))]
    planted = torch.stack(waves + [torch.zeros_like(x)] * (c - len(waves)))
    return planted[None].expand(n, -1, -1, -1).to(output)


@pytest.mark.slow
def test_planted_best_candidate_ranks_first_with_one_forward_per_image_per_timestep(tmp_path):
    backbone = create_backbone("tiny-sd15")
    dict(backbone.unet.named_modules())["up_blocks.3"].register_forward_hook(positional)
    candidates = ["up_blocks.1", "up_blocks.2.resnets.?", "up_blocks.3"]
    result = run_sweep(backbone, "spair", candidates, timesteps=[50, 261], settings={"resolution": 64},
                       results_dir=tmp_path / "results", cache_dir=str(tmp_path / "cache"), log=lambda message: None)
    assert result.forwards == 2 * result.images and result.images == 14    # mini SPair test: 14 distinct images
    assert len(result.singles) == 5 * 2
    best = ranked(result.singles, result.higher_is_better)[0]
    assert best.selection == ["up_blocks.3"] and result.metric == "pck@0.1_bbox"
    assert all(entry.value < best.value for entry in result.singles if entry.selection != ["up_blocks.3"])
    assert (result.folder / "heatmap.png").stat().st_size > 0
    table = json.loads((result.folder / "sweep.json").read_text())
    assert table["ranking"][0]["selection"] == "up_blocks.3" and table["forwards"] == 28
    # each evaluation is a run record; a re-run reuses records and cache: nothing is extracted again
    again = run_sweep(backbone, "spair", candidates, timesteps=[50, 261], settings={"resolution": 64},
                      results_dir=tmp_path / "results", cache_dir=str(tmp_path / "cache"), log=lambda message: None)
    assert again.forwards == 0 and [e.value for e in again.singles] == [e.value for e in result.singles]
    assert len(list((tmp_path / "results" / "runs").glob("*/record.json"))) == 10


@pytest.mark.slow
def test_greedy_combination_and_cli(tmp_path, capsys):
    assert main(["sweep", "--backbone", "tiny-sd15", "--task", "spair", "--candidates", "up_blocks.1",
                 "up_blocks.2", "up_blocks.2.resnets.0", "--combine-top", "3", "--resolution", "64",
                 "--results", str(tmp_path / "results"), "--cache-dir", str(tmp_path / "cache"),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "# sweep: tiny-sd15 × spair/dift-nn" in out
    assert "14 forwards for 14 images (1.00 per image" in out      # three candidates, one timestep: one forward
    rows = json.loads(next((tmp_path / "results" / "sweeps").glob("*/sweep.json")).read_text())["ranking"]
    combined = [row for row in rows if " + " in row["selection"]]
    assert combined and all(row["timestep"] == rows[0]["timestep"] for row in combined)


def test_candidates_expand_globs_and_refuse_unmatched():
    names = ["up_blocks.1", "up_blocks.1.resnets.0", "up_blocks.2", "mid_block"]
    assert expand_candidates(["up_blocks.?", "mid_*"], names) == ["up_blocks.1", "up_blocks.2", "mid_block"]
    with pytest.raises(DfbenchInputError, match="matches no activation"):
        expand_candidates(["down_blocks.9"], names)


def test_ties_within_noise():
    first = SweepEntry(["a"], 0, "", 60.0, 3.0, "r1")
    assert within_noise(first, SweepEntry(["b"], 0, "", 56.0, 4.0, "r2"))          # 4 ≤ √(9 + 16) = 5
    assert not within_noise(first, SweepEntry(["c"], 0, "", 54.0, 4.0, "r3"))      # 6 > 5


def test_bad_timesteps_are_one_line(capsys):
    assert main(["sweep", "--backbone", "tiny-sd15", "--task", "spair", "--candidates", "up_blocks.1",
                 "--timesteps", "50,x"]) == 2
    assert "expected comma-separated integers" in capsys.readouterr().err


@pytest.mark.slow
def test_two_ranks_split_the_extraction_and_rank_zero_ranks(tmp_path):
    """torchrun: each rank extracts its share of the images into the cache; rank 0 evaluates and ranks,
    with the numbers of a single-process sweep."""
    import os
    import subprocess
    import sys

    arguments = ["sweep", "--backbone", "tiny-sd15", "--task", "spair", "--candidates", "up_blocks.1", "up_blocks.2",
                 "--resolution", "64", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
               "dfbench", *arguments, "--results", str(tmp_path / "two"), "--cache-dir", str(tmp_path / "cache2")]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "7 forwards for 14 images" in done.stdout                   # rank 0 extracted its half
    shards = {path.name[:2] for path in (tmp_path / "cache2").glob("*/*/shards/*.safetensors")}
    assert shards == {"r0", "r1"}
    assert main([*arguments, "--results", str(tmp_path / "one"), "--cache-dir", str(tmp_path / "cache1")]) == 0

    def ranking(folder):
        rows = json.loads(next((folder / "sweeps").glob("*/sweep.json")).read_text())["ranking"]
        return [(row["selection"], row["pck@0.1_bbox"]) for row in rows]

    assert ranking(tmp_path / "two") == ranking(tmp_path / "one")
