"""The label-scarce sets of the ddpm-segmentation release (DatasetDDPM), in their native layout.

::

    horse_21/real/train/<stem>.png   (or .jpg / .jpeg / .gif, any sub-folder)
    horse_21/real/train/<stem>.npy   uint8 class ids, same stem as the image
    horse_21/real/test/…

``--data-root`` names ``horse_21`` (or its ``real/`` folder). Images are listed recursively and
sorted (the release's ``_list_image_files_recursively`` + ``sorted``, ``src/datasets.py:69-70``),
and only the first ``training_number`` / ``testing_number`` are used (``experiments/<set>/ddpm.json``).
Labels are resized to the protocol's size with OpenCV's ``INTER_NEAREST`` rule, as
``ImageLabelDataset.__getitem__`` does (``src/datasets.py:90-95``). The sibling sets load through the
same code with their class counts and ignore labels (bedroom_28 ignores class 0). Every problem with
the layout or a file is one :class:`~dfbench.errors.DfbenchInputError` line naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dfbench.errors import DfbenchInputError
from dfbench.heads.pixel_features import nearest_indices

#: the release's image extensions (``_list_image_files_recursively``)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif")
DOWNLOAD_HINT = ("get datasets.tar.gz (~47 MB) from https://github.com/yandex-research/ddpm-segmentation "
                 "(datasets/download_datasets.sh) and unpack it (its <set>/ folder, e.g. datasets/horse_21, is the "
                 "data root)")


@dataclass(frozen=True)
class DdpmDataset:
    """One set of the release: its folder, class names, ignore label and image counts."""

    name: str
    folder: str
    class_names: tuple[str, ...]
    ignore_label: int
    training_number: int
    testing_number: int

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# Class names: the release's src/data_util.py; counts and ignore labels: experiments/<set>/ddpm.json.
HORSE_21 = DdpmDataset("horse21", "horse_21", (
    "background", "person", "back", "barrel", "bridle", "chest", "ear", "eye", "forelock", "head", "hoof", "leg",
    "mane", "muzzle", "neck", "nostril", "tail", "thigh", "saddle", "shoulder", "leg protection"), 255, 30, 30)
CAT_15 = DdpmDataset("cat15", "cat_15", (
    "background", "back", "belly", "chest", "leg", "paw", "head", "ear", "eye", "mouth", "tongue", "nose", "tail",
    "whiskers", "neck"), 255, 30, 20)
CELEBA_19 = DdpmDataset("celeba19", "celeba_19", (
    "background", "cloth", "ear_r", "eye_g", "hair", "hat", "l_brow", "l_ear", "l_eye", "l_lip", "mouth", "neck",
    "neck_l", "nose", "r_brow", "r_ear", "r_eye", "skin", "u_lip"), 255, 20, 500)
BEDROOM_28 = DdpmDataset("bedroom28", "bedroom_28", (
    "background", "bed", "bed***footboard", "bed***headboard", "bed***side rail", "carpet", "ceiling",
    "chandelier / ceiling fan blade", "curtain", "cushion", "floor", "table/nightstand/dresser",
    "table/nightstand/dresser***top", "picture / mirrow", "pillow", "lamp***column", "lamp***shade", "wall", "window",
    "curtain rod", "window***frame", "chair", "picture / mirror***frame", "plinth", "door / door frame", "pouf",
    "wardrobe", "plant", "table staff"), 0, 40, 20)
FFHQ_34 = DdpmDataset("ffhq34", "ffhq_34", (
    "background", "head", "head***cheek", "head***chin", "head***ear", "head***ear***helix", "head***ear***lobule",
    "head***eye***bottom lid", "head***eye***eyelashes", "head***eye***iris", "head***eye***pupil",
    "head***eye***sclera", "head***eye***tear duct", "head***eye***top lid", "head***eyebrow", "head***forehead",
    "head***frown", "head***hair", "head***hair***sideburns", "head***jaw", "head***moustache",
    "head***mouth***inferior lip", "head***mouth***oral commissure", "head***mouth***superior lip",
    "head***mouth***teeth", "head***neck", "head***nose", "head***nose***ala of nose", "head***nose***bridge",
    "head***nose***nose tip", "head***nose***nostril", "head***philtrum", "head***temple", "head***wrinkles"),
    255, 20, 20)
ADE_BEDROOM_30 = DdpmDataset("ade-bedroom30", "ade_bedroom_30", (
    "wall", "bed", "floor", "table", "lamp", "ceiling", "painting", "windowpane", "pillow", "curtain", "cushion",
    "door", "chair", "cabinet", "chest", "mirror", "rug", "armchair", "book", "sconce", "plant", "wardrobe", "clock",
    "light", "flower", "vase", "fan", "box", "shelf", "television"), 255, 50, 650)
DDPM_DATASETS = {spec.name: spec for spec in (HORSE_21, CAT_15, CELEBA_19, BEDROOM_28, FFHQ_34, ADE_BEDROOM_30)}
SPLITS = ("train", "test")


@dataclass(frozen=True)
class DdpmSample:
    """One image and its label; ``origin`` is the release folder it lies in (``train`` / ``test``)."""

    stem: str
    image: Path
    label: Path
    origin: str


def dataset_root(spec: DdpmDataset, data_root: str | Path) -> Path:
    """The ``real/`` folder holding ``train/`` and ``test/``: ``data_root`` itself, ``data_root/real``
    or ``data_root/<set>/real``."""
    root = Path(data_root)
    for candidate in (root, root / "real", root / spec.folder / "real"):
        if all((candidate / split).is_dir() for split in SPLITS):
            return candidate
    raise DfbenchInputError(f"{spec.name} root {root}: no real/train and real/test folders here (nor train/ and "
                            f"test/); {DOWNLOAD_HINT}")


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted by path as the release sorts them."""
    return sorted((path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()),
                  key=str)


def load_split(spec: DdpmDataset, data_root: str | Path, split: str, release_limit: bool = True) -> list[DdpmSample]:
    """The images of ``split`` (``train`` / ``test``) with their ``.npy`` labels, sorted; with
    ``release_limit`` only the first ``training_number`` / ``testing_number``, as the release."""
    if split not in SPLITS:
        raise DfbenchInputError(f"{spec.name} split {split!r}: choose train or test")
    folder = dataset_root(spec, data_root) / split
    images = list_images(folder)
    if not images:
        raise DfbenchInputError(f"{spec.name} {split}: no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}; "
                                f"{DOWNLOAD_HINT}")
    if release_limit:
        images = images[: spec.training_number if split == "train" else spec.testing_number]
    samples = []
    for image in images:
        label = image.with_suffix(".npy")
        if not label.is_file():
            raise DfbenchInputError(f"{spec.name} {split}: image {image} has no label {label.name} beside it")
        samples.append(DdpmSample(image.stem, image, label, split))
    return samples


def resize_nearest(label: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """``label`` resized to ``size`` (an int: square; or (H, W)) with OpenCV's ``INTER_NEAREST`` rule:
    source index ``floor(i · in / out)``, capped at ``in − 1`` (what the release's ``cv2.resize`` does)."""

    height, width = (size, size) if isinstance(size, int) else size
    if label.shape == (height, width):
        return label
    rows, cols = nearest_indices(label.shape[0], height), nearest_indices(label.shape[1], width)
    return label[rows[:, None], cols[None, :]]


def load_label(spec: DdpmDataset, path: str | Path, size: int = 256, image_shape: tuple[int, int] | None = None
               ) -> np.ndarray:
    """A label map size×size (uint8) from its ``.npy``: 2-D, the image's aspect ratio (``image_shape``
    = (H, W)), every value a class id < the class count or the ignore label; resized nearest."""
    path = Path(path)
    try:
        values = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DfbenchInputError(f"{spec.name} label {path}: not a readable .npy array ({error.__class__.__name__})"
                                ) from None
    if values.ndim != 2 or not np.issubdtype(values.dtype, np.integer):
        raise DfbenchInputError(f"{spec.name} label {path}: shape {values.shape}, dtype {values.dtype}; labels are "
                                "2-D integer class-id maps (H×W uint8)")
    if image_shape is not None and values.shape[0] * image_shape[1] != values.shape[1] * image_shape[0]:
        raise DfbenchInputError(f"{spec.name} label {path}: {values.shape[1]}×{values.shape[0]}, but its image is "
                                f"{image_shape[1]}×{image_shape[0]} (a label must cover its image)")
    bad = ((values >= spec.num_classes) & (values != spec.ignore_label)) | (values < 0)
    if bad.any():
        raise DfbenchInputError(f"{spec.name} label {path}: class id {int(values[bad].flat[0])} at {int(bad.sum())} "
                                f"pixels; {spec.name} has {spec.num_classes} classes (0…{spec.num_classes - 1}), "
                                f"ignore label {spec.ignore_label}")
    # the release casts with astype('uint8') before resizing
    return resize_nearest(values.astype(np.uint8), size)
