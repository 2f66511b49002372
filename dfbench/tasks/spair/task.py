"""SPair-71k semantic correspondence: protocols ``spair/dift-nn`` (v1), ``spair/patch-nn`` (v1),
``spair/geoaware`` (v1, see :mod:`dfbench.tasks.spair.geoaware`) and ``spair/gdf-conv`` (v1, see
:mod:`dfbench.tasks.spair.gdf_conv`).

Each image's features are extracted once (not once per pair), with the prompt filled by the
image's category. For every pair, each source keypoint is matched to the target pixel of highest
cosine similarity between the features bilinearly upsampled to the images' original sizes
(:mod:`dfbench.heads.nn_matcher`). A prediction is correct when its distance to the true target
keypoint is ≤ α·max(bbox w, h) of the target object (``bbox``) or ≤ α·max(W, H) of the target
image (``img``), in original pixels.

Reported (in percent): PCK@{0.05, 0.1, 0.15} × {bbox, img}, pooled over all keypoints (primary:
``pck@0.1_bbox``), averaged per image pair (``…_per_image``), per category, and the mean over
categories; and ``aepe``, the average end-point error (px, lower is better) over all keypoints — a
continuous diagnostic that moves with any change of the predictions (the CI gate uses it).
With several activations selected, each is resized to the largest map, L2-normalised
per location, and concatenated along channels; a single activation is used as it is (DIFT). A backbone
that defines its own descriptor (``combine``: a fusion, :mod:`dfbench.backbones.fusion`) gets it
instead, and one whose descriptor depends on the pair (``pair_fitted``: Tale of Two Features' PCA fitted
on each pair's tokens) is combined pair by pair at matching time (``combine_pair``; not cached).

``spair/patch-nn`` is Tale of Two Features' matching (Junyi42/sd-dino ``pck_spair_pascal.py``): the
descriptor maps of the whole model input (the letterbox included: nothing is cropped, and a pair-fitted
PCA sees every token), a source keypoint mapped into the input as Tale maps it (``preprocess_kps_pad``,
lines 23-45: × res / max(W, H) plus the letterbox offset; ``squash``: per axis) takes the vector of the
grid cell it falls in (lines 184-187), the target cell of highest cosine wins, and the prediction is that
cell's centre less half a pixel (``(i - 1)·stride + stride + patch // 2 - 0.5``, line 377; option
``cell_offset=0``: the centre, as CleanDIFT's GeoAware-SC evaluation), mapped back to the original
pixels. It may lie in the letterbox, as in Tale. Scored like dift-nn.

Saved predictions (``run --save-predictions``, ``dfbench score``): ``predictions.json`` maps each
pair's annotation file stem (``000001-2008_006481-2008_007698:aeroplane``) to its predicted target
keypoints ``[[x, y], …]`` in original target-image pixels, in the order of the source keypoints.
"""

from __future__ import annotations

import json
from pathlib import Path

from dfbench.atomic import atomic_write_text
from dfbench.plots import plot_per_category
from dfbench.tasks.base import Task, TaskOutput
from dfbench.tasks.spair.dataset import DOWNLOAD_HINT, spair_images
from dfbench.tasks.spair.gdf_conv import GdfConvOptions, SpairSubsetOptions
from dfbench.tasks.spair.geoaware import GeoAware, GeoAwareOptions
from dfbench.tasks.spair.mini import mini_spair_root
from dfbench.tasks.spair.plots import plot_matches
from dfbench.tasks.spair.protocols import DiftNn, GdfConv, PatchNn, PatchNnOptions
from dfbench.tasks.spair.scoring import PREDICTIONS_FILE, PRIMARY, metric_specs


class SpairTask(Task):
    """SPair-71k semantic correspondence (18 categories, 12,234 test pairs): PCK@α of transferred keypoints."""

    name = "spair"
    download_hint = DOWNLOAD_HINT
    sweep_protocol = "dift-nn"
    protocols = {
        "dift-nn": DiftNn("dift-nn", 1, SpairSubsetOptions, "DIFT's zero-shot nearest neighbour, PCK"),
        "patch-nn": PatchNn("patch-nn", 1, PatchNnOptions,
                            "Tale of Two Features' zero-shot nearest patch on the whole (letterboxed) grid"),
        "geoaware": GeoAware("geoaware", 1, GeoAwareOptions,
                             "GeoAware-SC's zero-shot evaluation: patch matching, windowed soft-argmax, adaptive flip"),
        "gdf-conv": GdfConv("gdf-conv", 1, GdfConvOptions, "Meng et al.'s trained 3×3-conv readout"),
    }
    default_protocol = "dift-nn"
    metrics = metric_specs()
    leaderboard_metrics = (PRIMARY, "pck@0.1_img", "pck@0.1_bbox_per_image")

    def mini_root(self) -> Path:

        return mini_spair_root()

    def split_images(self, data_root: str | Path, split: str) -> list[tuple[Path, str]]:
        return spair_images(data_root, split)

    # ------------------------------------------------------------------ figures, saved predictions, scoring
    def figures(self, output: TaskOutput, title: str, folder: Path) -> list[Path]:

        return [plot_per_category(output.per_category, PRIMARY, title, folder / "per-category.png",
                                  pooled=output.metrics.get(PRIMARY)),
                plot_matches(output.predictions, folder / "matches.png")]

    def save_predictions(self, output: TaskOutput, folder: Path) -> Path:
        table = {prediction.pair.pair_id: prediction.predicted.tolist() for prediction in output.predictions}
        return atomic_write_text(Path(folder) / PREDICTIONS_FILE, json.dumps(table, indent=0) + "\n")
