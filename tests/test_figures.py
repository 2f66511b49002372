"""Figures a person can read: class legends on overlays, 'classes' on class charts, a legend beside (never
over) the bars, heatmap numbers black on light cells and white on dark ones."""

import numpy as np
import pytest
from PIL import Image

from dfbench import plots
from dfbench.sweep import text_colour
from dfbench.tasks.segmentation import plots as segmentation_plots
from dfbench.tasks.segmentation.plots import classes_shown, plot_overlays


@pytest.fixture
def kept(monkeypatch):
    """The figures the plotting functions save, kept open for inspection."""
    figures = []

    def keep(figure, path):
        figures.append(figure)
        return path

    monkeypatch.setattr(plots, "save_figure", keep)
    monkeypatch.setattr(segmentation_plots, "save_figure", keep)
    monkeypatch.setattr(plots.pyplot(), "close", lambda figure: None)
    return figures


def test_overlays_have_a_legend_of_the_classes_present(tmp_path, kept):
    Image.new("RGB", (6, 4), (90, 90, 90)).save(tmp_path / "a.png")
    label = np.array([[0, 0, 2, 2, 255, 255]] * 4, dtype=np.uint8)
    prediction = np.array([[0, 3, 3, 2, 2, 2]] * 4, dtype=np.uint8)
    rows = [("a", tmp_path / "a.png", label, prediction)]
    assert classes_shown(rows) == [0, 2, 3]                          # ignore (255) is no class
    palette = [[10, 20, 30], [0, 0, 0], [200, 0, 0], [0, 200, 0]]
    plot_overlays(rows, palette, "t", tmp_path / "o.png", ["wall", "building", "sky", "floor"])
    (legend,) = kept[0].legends
    assert [text.get_text() for text in legend.get_texts()] == ["wall", "sky", "floor"]
    colours = [tuple(np.round(np.array(handle.get_facecolor()[:3]) * 255).astype(int)) for handle in
               legend.legend_handles]
    assert colours == [(10, 20, 30), (200, 0, 0), (0, 200, 0)]


def test_class_charts_say_classes_and_their_legend_covers_no_bar(tmp_path, kept):
    table = {name: {"IoU": value} for name, value in (("wall", 100.0), ("sky", 90.0), ("road", 5.0))}
    plots.plot_per_category(table, "IoU", "t", tmp_path / "c.png", items="classes")
    figure = kept[0]
    (axis,) = figure.axes
    (legend,) = [axis.get_legend()]
    assert [text.get_text() for text in legend.get_texts()] == ["mean over classes 65.0"]
    assert axis.get_xlabel() == "classes"
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    assert legend.get_window_extent(renderer).x0 >= axis.get_window_extent(renderer).x1   # right of the axes


@pytest.mark.parametrize("rgb,expected", [((1.0, 1.0, 1.0), "black"), ((0.0, 0.0, 0.0), "white"),
                                          ((0.993, 0.906, 0.144), "black"),     # viridis' yellow end
                                          ((0.267, 0.005, 0.329), "white")])    # viridis' purple end
def test_heatmap_numbers_contrast_with_their_cell(rgb, expected):
    # relative luminance 0.2126 R + 0.7152 G + 0.0722 B: 1, 0, 0.869, 0.063
    assert text_colour((*rgb, 1.0)) == expected
