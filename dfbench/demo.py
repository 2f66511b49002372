"""The offline demo (``python run_bench.py`` with no arguments): tiny backbones on real photos.

Needs no download: the backbones are the tiny random-weight models and the photos ship with
scikit-image. It runs the published recipes' selections through every tiny backbone and prints
what was extracted and how long it took.
"""

from __future__ import annotations

import time

from PIL import Image

DEMO_RUNS = (  # backbone, preset whose selection is extracted
    ("tiny-sd15", "gdf-ours-sd15"),
    ("tiny-sd15", "gdf-legacy-sd15"),
    ("tiny-sd21", "dift"),
    ("tiny-sdxl", "gdf-ours-sdxl"),
)


def demo_photos() -> list[Image.Image]:
    """Four real photos from the scikit-image wheel."""
    import skimage.data

    return [Image.fromarray(getattr(skimage.data, name)()) for name in ("chelsea", "astronaut", "coffee", "rocket")]


def run_demo() -> list[list[object]]:
    """Extract every demo selection; one table row per (backbone, preset)."""
    from dfbench.registry import create_backbone, get_preset

    photos = demo_photos()
    rows: list[list[object]] = []
    for backbone_name, preset_name in DEMO_RUNS:
        backbone = create_backbone(backbone_name)
        preset = get_preset(preset_name)
        settings = preset.extract_settings(resolution=64, prompt="a photo")
        start = time.perf_counter()
        features = backbone.extract(photos, preset.selection, settings)
        milliseconds = 1000 * (time.perf_counter() - start) / len(photos)
        shapes = "\n".join(f"{name} {tuple(value.shape[1:])}" for name, value in features.items())
        rows.append([backbone_name, preset_name, settings.ensemble_size, shapes, f"{milliseconds:.0f}"])
    return rows


def main() -> int:
    """Print the demo table."""
    from tabulate import tabulate

    rows = run_demo()
    print(tabulate(rows, headers=["backbone", "preset", "ensemble", "activations (C, h, w)", "ms/image"]))
    print("\nTiny backbones have random weights: these are shapes and timings, not benchmark scores.")
    return 0
