"""ODISE's sliding-window extraction: the squares' grid, the stitching of hand-made maps, and a tiled extraction
against the squares extracted one by one and averaged by hand.

Reference: ODISE as GeoAware-SC ships it (CompVis/cleandift branch geoaware-sc-eval,
third_party/ODISE/odise/modeling/backbone/feature_extractor.py 189-259: ``slide_forward`` — side
``min(backbone_in_size, short side)`` (207), step = side (216), grid ``max(H − side + step − 1, 0) // step + 1``
(218-219), the last square moved back to the edge (229-232), placed at ``y // stride`` (238-241), summed and
divided by the count (252-257)).
"""

import pytest
import torch

from dfbench import ExtractSettings, create_backbone
from dfbench.backbones.tiling import stitch, tile_offsets
from dfbench.errors import DfbenchInputError
from dfbench.images import to_model_input


def test_the_grid_of_a_960_input_in_512_squares_is_odises():
    """(960 − 512 + 512 − 1) // 512 + 1 = 2 squares per axis: at 0 and, moved back to end at 960, 448."""
    assert tile_offsets(960, 512, 512) == [0, 448]
    assert tile_offsets(512, 512, 512) == [0]
    assert tile_offsets(1024, 512, 256) == [0, 256, 512]
    assert tile_offsets(100, 64, 16) == [0, 16, 32, 36]      # (100 − 64 + 15) // 16 + 1 = 4; the last ends at 100


def test_stitching_hand_made_maps_averages_the_overlap():
    """A 6-px input in 4-px squares at 0 and 2 (stride 2: 2×2 maps): the whole map is 3×3; the middle row and
    column are covered twice (cells at 1), the centre four times."""
    offsets = [(0, 0), (0, 2), (2, 0), (2, 2)]
    tiles = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(4, 1, 1, 1).expand(4, 1, 2, 2)
    stitched = stitch(tiles, offsets, side=4, size=6, name="m")
    expected = torch.tensor([[1.0, 1.5, 2.0], [2.0, 2.5, 3.0], [3.0, 3.5, 4.0]])[None]
    torch.testing.assert_close(stitched, expected)
    with pytest.raises(DfbenchInputError, match="not a spatial map"):
        stitch(torch.ones(4, 3), offsets, side=4, size=6, name="vector")


def test_a_tiled_extraction_equals_the_squares_one_by_one(photos):
    """tiny-sd15 at 96 px in 64-px squares (offsets 0 and 32): each square extracted on its own as a tensor
    input, placed at offset // stride and averaged by hand, equals the tiled extraction; the settings record it."""
    backbone = create_backbone("tiny-sd15")
    settings = ExtractSettings(resolution=96, timestep=100, tile=64, seed=3)
    tiled = backbone.extract(photos[:2], ["up_blocks.1", "up_blocks.2"], settings, categories=["cat", "dog"])
    pixels = to_model_input(photos[:2], 96, "squash")
    plain = settings.replace(tile=0, resolution=64)
    for name, stride in (("up_blocks.1", 16), ("up_blocks.2", 8)):   # 4×4 and 8×8 maps of a 64-px square
        total, count = torch.zeros(2, tiled[name].shape[1], 96 // stride, 96 // stride), torch.zeros(96 // stride,
                                                                                                   96 // stride)
        for top in (0, 32):
            for left in (0, 32):
                square = backbone.extract(pixels[:, :, top : top + 64, left : left + 64], [name], plain,
                                          categories=["cat", "dog"])[name]
                rows, columns = slice(top // stride, top // stride + 64 // stride), slice(
                    left // stride, left // stride + 64 // stride)
                total[:, :, rows, columns] += square
                count[rows, columns] += 1
        torch.testing.assert_close(tiled[name], total / count)
    assert settings.value_dict()["tile"] == 64 and "tile" not in ExtractSettings().value_dict()
    with pytest.raises(DfbenchInputError, match="tile_stride only with a tile"):
        ExtractSettings(tile_stride=32)
