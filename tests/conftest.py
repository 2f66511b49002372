import numpy as np
import pytest
import torch
from PIL import Image

# On a busy 2-core machine tiny forwards with 2 threads can stall by 100×.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def photos() -> list[Image.Image]:
    """Real photos shipped in the scikit-image wheel (no download)."""
    import skimage.data

    return [Image.fromarray(skimage.data.chelsea()), Image.fromarray(skimage.data.astronaut()),
            Image.fromarray(skimage.data.coffee())]


@pytest.fixture(scope="session")
def tiny_sd15():
    from dfbench import create_backbone

    return create_backbone("tiny-sd15")


@pytest.fixture(scope="session")
def tiny_sd21():
    from dfbench import create_backbone

    return create_backbone("tiny-sd21")


@pytest.fixture(scope="session")
def tiny_sdxl():
    from dfbench import create_backbone

    return create_backbone("tiny-sdxl")


def random_image(seed: int, size=(80, 96)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))

