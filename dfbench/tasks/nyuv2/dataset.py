"""NYU Depth v2, labeled set (1,449 RGB-D images of indoor scenes; the official 795 train / 654 test split).

Two sources, one layout downstream:

* the folder layout (``--data-root`` names ``ROOT``)::

      ROOT/train/rgb/<stem>.png      (or .jpg / .jpeg)
      ROOT/train/depth/<stem>.png    the raw depths: uint16 millimetres (0 = no measurement)
      ROOT/train/depth/<stem>.npy    or float metres (0 or NaN = no measurement)
      ROOT/train/depth_filled/…      optional: the in-painted depths, the same formats (option depth=filled)
      ROOT/test/…

* the official ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3 = HDF5, read with h5py: ``images``
  N×3×W×H uint8, ``rawDepths`` and the in-painted ``depths`` N×W×H float metres, MATLAB's column-major order
  seen transposed) with ``splits.mat`` beside it (``trainNdxs`` / ``testNdxs``, 1-based). ``--data-root`` names
  the ``.mat`` file or its folder; it is written once into the folder layout under ``$DFBENCH_HOME/nyuv2/``
  (stems ``0001``…``1449``, the NYU index; ``rawDepths`` into ``depth/`` and ``depths`` into ``depth_filled/``,
  float32 ``.npy``, so nothing is rounded).

The depths scored by default are the raw ones, holes and all, as probe3d's
(``data_processing/create_nyu_pkl.py`` 37, 50 read ``rawDepths``); option ``depth=filled`` scores the in-painted
ones instead.

A ground-truth pixel is valid when its depth is > 0 (probe3d's rule); depths above 10 m are set to
0 (invalid), as probe3d's loaders do (``evals/datasets/nyu.py:106``). Every problem — a wrong file,
an image without its depth or a depth without its image, an RGB/depth size mismatch — is one
:class:`~dfbench.errors.DfbenchInputError` line naming the file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dfbench.atomic import atomic_build_dir
from dfbench.errors import DfbenchInputError
from dfbench.home import dfbench_home
from dfbench.images import image_size, load_image

SPLITS = ("train", "test")
#: the folder each kind of ground truth lives in (option ``depth``)
DEPTH_FOLDERS = {"raw": "depth", "filled": "depth_filled"}
#: the version of the layout written from the .mat (2: raw depths in depth/, in-painted ones in depth_filled/)
LAYOUT_VERSION = 2
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
DEPTH_EXTENSIONS = (".png", ".npy")
#: probe3d's cap (evals/datasets/nyu.py: ``self.max_depth = 10.0``, ``depth[depth > 10] = 0``)
MAX_DEPTH = 10.0
LABELED_MAT = "nyu_depth_v2_labeled.mat"
SPLITS_MAT = "splits.mat"
#: the positions probe3d removes from the sorted GeoNet listing, in the order it removes them
GEONET_BAD_POSITIONS = (21181, 6919)
#: the channel means GeoNet's ``img`` is stored less twice of (probe3d adds them back)
GEONET_MEANS = (122.175, 116.169, 103.508)
GEONET_HINT = ("download data1.zip and data2.zip following https://github.com/xjqi/GeoNet and move both folders' "
               "files into one, as probe3d's data_processing/README.md does")
DOWNLOAD_HINT = ("get nyu_depth_v2_labeled.mat (2.8 GB) from http://horatio.cs.nyu.edu/mit/silberman/nyu_depth_v2/"
                 f"{LABELED_MAT} and splits.mat from http://horatio.cs.nyu.edu/mit/silberman/indoor_seg_sup/splits.mat")


@dataclass(frozen=True)
class DepthSample:
    """One RGB image and its depth file."""

    stem: str
    image: Path
    depth: Path

    def load(self) -> tuple[Image.Image, np.ndarray]:
        """The image and its depth (metres, 0 = invalid)."""
        return load_image(self.image), ground_truth(self)


@dataclass(frozen=True)
class GeoNetSample:
    """One frame of the GeoNet NYU release (probe3d's training set): a ``.mat`` file holding ``img``, ``depth`` and
    ``norm``."""

    stem: str
    path: Path

    def load(self) -> tuple[Image.Image, np.ndarray]:
        """The frame as probe3d's ``NYU_geonet.__getitem__`` reads it (``evals/datasets/nyu.py`` 181-195): the
        top-left 480×640 of ``img`` and ``depth``; ``img`` holds the pixels less twice the ImageNet-style channel
        means (122.175, 116.169, 103.508), which are added back before the ``uint8`` cast; depths above 10 m (and
        NaN) are no measurement."""
        import scipy.io

        try:
            instance = scipy.io.loadmat(str(self.path), variable_names=["img", "depth"])
        except (OSError, ValueError, NotImplementedError) as error:
            raise DfbenchInputError(f"nyuv2 GeoNet frame {self.path}: not a readable MATLAB file "
                                    f"({error.__class__.__name__})") from None
        if "img" not in instance or "depth" not in instance:
            raise DfbenchInputError(f"nyuv2 GeoNet frame {self.path}: no 'img' and 'depth' variables (expected a "
                                    "file of the GeoNet NYU release)")
        image = np.array(instance["img"][:480, :640], dtype=np.float64)
        if image.ndim != 3 or image.shape[2] != 3:
            raise DfbenchInputError(f"nyuv2 GeoNet frame {self.path}: img has shape {image.shape}; expected H×W×3")
        image = (image + 2 * np.asarray(GEONET_MEANS)).astype(np.uint8)
        depth = np.array(instance["depth"][:480, :640], dtype=np.float64)
        if depth.shape != image.shape[:2]:
            raise DfbenchInputError(f"nyuv2 GeoNet frame {self.path}: depth {depth.shape} and img {image.shape[:2]} "
                                    "differ in size")
        depth = np.where(np.isfinite(depth) & (depth <= MAX_DEPTH), np.maximum(depth, 0.0), 0.0)
        return Image.fromarray(image), depth.astype(np.float32)


def geonet_samples(folder: str | Path) -> list[GeoNetSample]:
    """probe3d's training set (``NYU_geonet`` split ``trainval``, what ``train_depth.py`` 175 trains on): the
    release's ``.mat`` files sorted by name, less the two it drops as bad (positions 21181 and 6919 of the full
    release's listing, ``evals/datasets/nyu.py`` 158-160; a smaller folder — a subset, a fixture — keeps all)."""
    root = Path(folder)
    if not root.is_dir():
        raise DfbenchInputError(f"nyuv2 option train_data={folder}: no such folder (the GeoNet NYU release: "
                                f"{GEONET_HINT})")
    names = sorted(path.name for path in root.iterdir() if path.suffix == ".mat" and path.is_file())
    if not names:
        raise DfbenchInputError(f"nyuv2 option train_data={folder}: no .mat files ({GEONET_HINT})")
    if len(names) > max(GEONET_BAD_POSITIONS):
        for position in GEONET_BAD_POSITIONS:          # the larger first, so the smaller keeps its place
            del names[position]
    return [GeoNetSample(Path(name).stem, root / name) for name in names]


def _files(folder: Path, extensions: tuple[str, ...]) -> dict[str, Path]:
    """``{stem: path}`` of the files in ``folder`` with one of ``extensions`` (a stem twice is an error)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in extensions and not path.name.startswith("."):
            if path.stem in found:
                raise DfbenchInputError(f"nyuv2 {folder}: both {found[path.stem].name} and {path.name}; keep one")
            found[path.stem] = path
    return found


def load_samples(root: str | Path, split: str, kind: str = "raw") -> list[DepthSample]:
    """The (image, depth) pairs of ``split`` in ``root`` (the folder layout), sorted by stem; ``kind``: the raw
    depths (``depth/``) or the in-painted ones (``depth_filled/``)."""
    if split not in SPLITS:
        raise DfbenchInputError(f"nyuv2 split {split!r}: choose one of {', '.join(SPLITS)}")
    root = Path(root)
    rgb, depth = root / split / "rgb", root / split / DEPTH_FOLDERS[kind]
    if kind == "filled" and not depth.is_dir():
        raise DfbenchInputError(f"nyuv2 option depth=filled: no folder {depth} (the in-painted depths; dfbench writes "
                                f"it from the official {LABELED_MAT}), or use depth=raw")
    for folder in (rgb, depth):
        if not folder.is_dir():
            raise DfbenchInputError(f"nyuv2 --data-root {root}: no folder {folder} (expected {{train,test}}/rgb and "
                                    f"{{train,test}}/depth, or the official {LABELED_MAT}; {DOWNLOAD_HINT})")
    images, depths = _files(rgb, IMAGE_EXTENSIONS), _files(depth, DEPTH_EXTENSIONS)
    if not images:
        raise DfbenchInputError(f"nyuv2 {rgb}: no images (.png, .jpg)")
    for stem in sorted(images):
        if stem not in depths:
            raise DfbenchInputError(f"nyuv2 {images[stem]}: no depth {depth / stem}.png (uint16 mm) or .npy (metres)")
    for stem in sorted(depths):
        if stem not in images:
            raise DfbenchInputError(f"nyuv2 {depths[stem]}: no image {rgb / stem}.png or .jpg")
    return [DepthSample(stem, images[stem], depths[stem]) for stem in sorted(images)]


def load_depth(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """A depth map H×W float32 in metres: 0 where there is no measurement or the depth is above 10 m.

    ``.png``: 16-bit millimetres; ``.npy``: float metres (NaN / ±inf count as no measurement).
    ``size`` (H, W), when given, is the RGB image's: another size is an error."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".png":
            with Image.open(path) as opened:
                if opened.mode not in ("I;16", "I;16B", "I", "I;16L"):
                    raise DfbenchInputError(f"nyuv2 depth {path}: PNG mode {opened.mode}; expected one 16-bit channel "
                                            "of millimetres")
                values = np.asarray(opened).astype(np.float64) / 1000.0
        else:
            values = np.load(path, allow_pickle=False)
            if values.ndim != 2 or not np.issubdtype(values.dtype, np.floating):
                raise DfbenchInputError(f"nyuv2 depth {path}: shape {values.shape}, dtype {values.dtype}; expected "
                                        "a 2-D float array of metres")
            values = np.where(np.isfinite(values), values, 0.0)
    except DfbenchInputError:
        raise
    except (OSError, ValueError) as error:
        raise DfbenchInputError(f"nyuv2 depth {path}: not readable ({error.__class__.__name__})") from None
    if size is not None and tuple(values.shape) != tuple(size):
        raise DfbenchInputError(f"nyuv2 depth {path}: {values.shape[0]}×{values.shape[1]} but its image is "
                                f"{size[0]}×{size[1]} (H×W); depth and RGB must be the same size")
    values = np.where(values > MAX_DEPTH, 0.0, np.maximum(values, 0.0))
    return values.astype(np.float32)


# ---------------------------------------------------------------------------------------- the official .mat
def labeled_mat(data_root: str | Path) -> Path | None:
    """The official ``.mat`` that ``data_root`` names (the file, or a folder holding it and no layout), else None."""
    root = Path(data_root)
    if root.is_file() and root.suffix.lower() == ".mat":
        return root
    if root.is_dir() and (root / LABELED_MAT).is_file() and not (root / "train").is_dir():
        return root / LABELED_MAT
    return None


def read_official_split(splits_path: Path, count: int) -> dict[str, list[int]]:
    """``{"train": […], "test": […]}``: the 1-based indices of ``splits.mat`` (``trainNdxs``, ``testNdxs``)."""
    import scipy.io

    if not splits_path.is_file():
        raise DfbenchInputError(f"nyuv2: no {splits_path} beside {LABELED_MAT}; {DOWNLOAD_HINT}")
    try:
        mat = scipy.io.loadmat(str(splits_path))
    except (OSError, ValueError, NotImplementedError) as error:
        raise DfbenchInputError(f"nyuv2 {splits_path}: not a readable MATLAB file ({error.__class__.__name__})") \
            from None
    split = {}
    for name, key in (("train", "trainNdxs"), ("test", "testNdxs")):
        if key not in mat:
            raise DfbenchInputError(f"nyuv2 {splits_path}: no variable {key!r} (the official splits.mat has trainNdxs "
                                    "and testNdxs)")
        indices = [int(value) for value in np.asarray(mat[key]).ravel()]
        if any(not 1 <= index <= count for index in indices):
            raise DfbenchInputError(f"nyuv2 {splits_path}: {key} holds indices outside 1…{count} (the .mat's images)")
        split[name] = indices
    return split


def open_official_mat(mat_path: Path) -> Any:
    """The official ``.mat`` opened with h5py, its ``images``, ``rawDepths`` and ``depths`` checked."""
    import h5py

    try:
        handle = h5py.File(mat_path, "r")
    except OSError:
        raise DfbenchInputError(f"nyuv2 {mat_path}: not an HDF5 file (the official {LABELED_MAT} is MATLAB v7.3 = "
                                "HDF5)") from None
    for key in ("images", "rawDepths", "depths"):
        if key not in handle:
            handle.close()
            raise DfbenchInputError(f"nyuv2 {mat_path}: no dataset {key!r} (expected the official {LABELED_MAT})")
    images = handle["images"]
    for depths in (handle["rawDepths"], handle["depths"]):
        if images.ndim != 4 or images.shape[1] != 3 or depths.shape != (images.shape[0], *images.shape[2:]):
            handle.close()
            raise DfbenchInputError(f"nyuv2 {mat_path}: images {images.shape} and depths {depths.shape}; expected "
                                    "N×3×W×H and N×W×H")
    return handle


def check_official_files(folder: Path) -> None:
    """``nyu_depth_v2_labeled.mat`` and ``splits.mat`` in ``folder``: readable and consistent."""
    with open_official_mat(folder / LABELED_MAT) as handle:
        read_official_split(folder / SPLITS_MAT, handle["images"].shape[0])


def write_layout_from_mat(mat_path: Path, target: Path) -> None:
    """Write the folder layout of ``mat_path`` (+ ``splits.mat`` beside it) into ``target``."""
    with open_official_mat(mat_path) as handle:
        images = handle["images"]
        sources = {"raw": handle["rawDepths"], "filled": handle["depths"]}
        split = read_official_split(mat_path.parent / SPLITS_MAT, images.shape[0])
        for name, indices in split.items():
            (target / name / "rgb").mkdir(parents=True)
            for folder in DEPTH_FOLDERS.values():
                (target / name / folder).mkdir(parents=True)
            for index in indices:
                image = np.ascontiguousarray(np.transpose(images[index - 1], (2, 1, 0)))   # 3×W×H → H×W×3
                Image.fromarray(image.astype(np.uint8)).save(target / name / "rgb" / f"{index:04d}.png")
                for kind, depths in sources.items():
                    depth = np.ascontiguousarray(np.asarray(depths[index - 1], dtype=np.float32).T)  # W×H → H×W
                    np.save(target / name / DEPTH_FOLDERS[kind] / f"{index:04d}.npy", depth)


def nyuv2_root(data_root: str | Path, home: str | Path | None = None) -> Path:
    """The folder layout for ``data_root``: itself, or the official ``.mat`` written once under
    ``$DFBENCH_HOME/nyuv2/<key>`` (key: the file's path, size and modification time)."""
    mat_path = labeled_mat(data_root)
    if mat_path is None:
        return Path(data_root)
    stat = mat_path.stat()
    source = f"{mat_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:layout{LAYOUT_VERSION}"
    key = hashlib.sha256(source.encode()).hexdigest()[:16]
    home = dfbench_home(home)
    target = home / "nyuv2" / key
    if not (target / "test").is_dir():
        atomic_build_dir(target, lambda staging: write_layout_from_mat(mat_path, staging))
    return target


def ground_truth(sample: DepthSample) -> np.ndarray:
    """A sample's depth (metres, 0 = invalid), checked against its image's size."""
    return load_depth(sample.depth, image_size(sample.image))
