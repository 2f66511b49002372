"""Reference formulas written out independently of dfbench, for tests to compare against."""

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dfbench.images import to_model_input
from dfbench.tasks.segmentation.dataset import ADE20K, load_label, load_samples


def per_image_generator(seed: int, model_input: torch.Tensor) -> torch.Generator:
    """The documented per-image seed of the extraction recipe: SHA-256 over b"<seed>:" followed by
    the image's float32 model input bytes (3×R×R); first 8 bytes big-endian, mod 2**63."""
    data = f"{seed}:".encode() + model_input.numpy().astype("<f4").tobytes()
    return torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(data).digest()[:8], "big") % 2**63)


def hand_miou(layout, root, folder):
    """mIoU from a confusion matrix over the saved PNGs and the label files, classes with a union only."""
    classes = layout.num_classes
    confusion = np.zeros((classes, classes), dtype=np.int64)
    for sample in load_samples(layout, root, "val"):
        label = load_label(layout, sample.label)
        predicted = np.asarray(Image.open(folder / f"{sample.stem}.png")).astype(np.int64)
        predicted = predicted - 1 if layout is ADE20K else predicted
        keep = label != 255
        confusion += np.bincount(label[keep] * classes + predicted[keep], minlength=classes**2).reshape(classes,
                                                                                                         classes)
    intersection = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - intersection
    return 100 * np.mean(intersection[union > 0] / union[union > 0])


class TextureBackbone:
    """Per 4×4 cell: mean colour and colour spread — enough for a linear probe to tell sky, brick,
    grass and gravel apart (the mini sets' labels are meaningful)."""

    name, default_resolution, default_settings, source = "texture", 64, {}, "none"
    setting_names = ("resolution", "resize_mode", "dtype", "batch_size")
    device = torch.device("cpu")
    recipe_version = 1

    def check_resolution(self, resolution):
        pass

    def activation_names(self):
        return ["texture"]

    def catalog(self, resolution=None):
        from dfbench.activations import ActivationInfo

        side = (resolution or self.default_resolution) // 4
        return [ActivationInfo("texture", 6, side, side)]

    def to(self, device, torch_dtype=None):
        return self

    def canonical_selection(self, selection):
        return list(selection)

    def weight_fingerprint(self):
        return "texture-v1"

    def extract(self, images, selection, settings=None, categories=None, progress=False):
        pixels = to_model_input(images, settings.resolution, settings.resize_mode)
        mean = F.avg_pool2d(pixels, 4)
        spread = (F.avg_pool2d(pixels**2, 4) - mean**2).clamp(min=0).sqrt()
        return {"texture": torch.cat([mean, spread], dim=1)}


HUB_SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache_entry(root: Path, repo_id: str) -> Path:
    """A hand-made Hugging Face cache entry for ``repo_id`` (``models--owner--name/refs/main`` naming one
    snapshot); returns its snapshot folder."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(HUB_SNAPSHOT)
    snapshot = repo / "snapshots" / HUB_SNAPSHOT
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot
