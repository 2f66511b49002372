"""SPair-71k (Min et al., 2019) in its native layout.

::

    SPair-71k/
      JPEGImages/<category>/<name>.jpg
      ImageAnnotation/<category>/<name>.json
      PairAnnotation/{trn,val,test}/<id>-<src>-<trg>:<category>.json
      Layout/large/{trn,val,test}.txt          # optional: the pair ids of each split

A pair file holds ``src_imname``, ``trg_imname``, ``src_imsize`` / ``trg_imsize`` ([W, H, C]),
``src_bndbox`` / ``trg_bndbox`` ([x1, y1, x2, y2]), ``src_kps`` / ``trg_kps`` ([[x, y], …] in
original pixels), ``kps_ids``, ``category``, ``viewpoint_variation`` and more; every field is
kept in :attr:`SpairPair.raw`.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfbench.errors import DfbenchInputError

SPLITS = ("trn", "val", "test")
REQUIRED_FIELDS = ("src_imname", "trg_imname", "src_kps", "trg_kps", "trg_bndbox", "trg_imsize", "category")
DOWNLOAD_HINT = ("get SPair-71k.tar.gz from https://cvlab.postech.ac.kr/research/SPair-71k/ and unpack it (its "
                 "SPair-71k/ folder is the data root)")


@dataclass(frozen=True)
class SpairPair:
    """One annotated image pair; coordinates in original pixels, keypoints as (x, y)."""

    pair_id: str
    category: str
    src_image: Path
    trg_image: Path
    src_kps: tuple[tuple[float, float], ...]
    trg_kps: tuple[tuple[float, float], ...]
    src_bbox: tuple[float, float, float, float]
    trg_bbox: tuple[float, float, float, float]
    src_size: tuple[int, int]  # (W, H)
    trg_size: tuple[int, int]  # (W, H)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def src_key(self) -> str:
        """The image id used to extract its features once: ``<category>/<name>``."""
        return f"{self.category}/{self.raw['src_imname']}"

    @property
    def trg_key(self) -> str:
        return f"{self.category}/{self.raw['trg_imname']}"


def check_image_sizes(pairs: Sequence[SpairPair]) -> None:
    """Every image of ``pairs`` has the size its pair file gives (``src_imsize`` / ``trg_imsize``, [W, H]):
    keypoints, boxes and PCK thresholds are in those pixels, so a resized copy would be scored wrongly
    without a sound. Reads image headers only; a mismatch is one line."""
    from PIL import Image

    checked: set[Path] = set()
    for pair in pairs:
        for path, size, field_name in ((pair.src_image, pair.src_size, "src_imsize"),
                                       (pair.trg_image, pair.trg_size, "trg_imsize")):
            if path in checked or not any(size):        # a pair file without src_imsize: nothing to check
                continue
            checked.add(path)
            try:
                with Image.open(path) as image:
                    actual = image.size
            except (OSError, ValueError) as error:
                raise DfbenchInputError(f"SPair image {path}: unreadable ({error})") from None
            if tuple(actual) != tuple(size):
                raise DfbenchInputError(
                    f"SPair image {path}: {actual[0]}×{actual[1]} px, but pair {pair.pair_id} gives {field_name} "
                    f"{size[0]}×{size[1]}; keypoints are in the original pixels: use SPair-71k's own JPEGImages, "
                    "not resized copies")


def _check_root(root: Path, split: str) -> Path:
    if split not in SPLITS:
        raise DfbenchInputError(f"SPair split {split!r}: choose one of {', '.join(SPLITS)}")
    if not root.is_dir():
        raise DfbenchInputError(f"SPair root {root}: no such folder; {DOWNLOAD_HINT}")
    for sub in ("JPEGImages", f"PairAnnotation/{split}"):
        if not (root / sub).is_dir():
            raise DfbenchInputError(
                f"SPair root {root}: missing {sub}/ (expected JPEGImages/<cat>/, PairAnnotation/{{trn,val,test}}/); "
                f"{DOWNLOAD_HINT}"
            )
    return root / "PairAnnotation" / split


def _pair_files(root: Path, split: str, folder: Path) -> list[Path]:
    layout = root / "Layout" / "large" / f"{split}.txt"
    if layout.is_file():
        ids = [line.strip() for line in layout.read_text().splitlines() if line.strip()]
        files = [folder / f"{pair_id}.json" for pair_id in ids]
        missing = [path for path in files if not path.is_file()]
        if missing:
            raise DfbenchInputError(
                f"{layout} lists {len(missing)} pairs with no file in {folder} (e.g. {missing[0].name})"
            )
        return files
    files = sorted(folder.glob("*.json"))
    if not files:
        raise DfbenchInputError(f"SPair {folder}: no pair annotation files (*.json)")
    return files


def _points(value: Any, path: Path, name: str) -> tuple[tuple[float, float], ...]:
    try:
        points = tuple((float(x), float(y)) for x, y in value)
    except (TypeError, ValueError):
        raise DfbenchInputError(f"SPair pair {path}: field {name} must be a list of [x, y] points") from None
    return points


def read_pair(path: Path, root: Path) -> SpairPair:
    """Parse one pair annotation file; a broken file is one line naming it and the problem."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DfbenchInputError(f"SPair pair {path}: not valid JSON ({error})") from None
    if not isinstance(raw, dict):
        raise DfbenchInputError(f"SPair pair {path}: expected a JSON object")
    missing = [name for name in REQUIRED_FIELDS if name not in raw]
    if missing:
        raise DfbenchInputError(f"SPair pair {path}: missing field(s) {', '.join(missing)}")
    src_kps, trg_kps = _points(raw["src_kps"], path, "src_kps"), _points(raw["trg_kps"], path, "trg_kps")
    if len(src_kps) != len(trg_kps) or not src_kps:
        raise DfbenchInputError(
            f"SPair pair {path}: src_kps ({len(src_kps)}) and trg_kps ({len(trg_kps)}) must be equally many (> 0)"
        )
    category = str(raw["category"])
    try:
        src_bbox = tuple(float(v) for v in raw.get("src_bndbox", (0, 0, 0, 0)))
        trg_bbox = tuple(float(v) for v in raw["trg_bndbox"])
        src_size = tuple(int(v) for v in raw.get("src_imsize", (0, 0))[:2])
        trg_size = tuple(int(v) for v in raw["trg_imsize"][:2])
    except (TypeError, ValueError):
        raise DfbenchInputError(f"SPair pair {path}: bndbox / imsize fields must be numbers") from None
    if len(trg_bbox) != 4 or len(trg_size) != 2:
        raise DfbenchInputError(f"SPair pair {path}: trg_bndbox needs [x1,y1,x2,y2] and trg_imsize [W,H,C]")
    images = root / "JPEGImages" / category
    src_image, trg_image = images / raw["src_imname"], images / raw["trg_imname"]
    for image in (src_image, trg_image):
        if not image.is_file():
            raise DfbenchInputError(f"SPair pair {path}: image {image} does not exist")
    return SpairPair(path.stem, category, src_image, trg_image, src_kps, trg_kps, src_bbox, trg_bbox,  # type: ignore[arg-type]
                     src_size, trg_size, raw)  # type: ignore[arg-type]


def load_spair(root: str | Path, split: str = "test", limit_pairs: int | None = None,
               per_category: int | None = None, categories: list[str] | None = None,
               pairs_file: str | Path | None = None, seed: int = 0) -> list[SpairPair]:
    """The pairs of ``split``, optionally restricted.

    Args:
        root: the SPair-71k folder.
        split: ``trn``, ``val`` or ``test``.
        limit_pairs: keep N pairs (after the other filters), a seeded random sample spread evenly over
            the categories (:func:`sample_across_categories`), for quick runs.
        per_category: keep N pairs per category, sampled with ``seed`` (order kept).
        categories: keep only these categories.
        pairs_file: a list of pairs (:func:`read_pair_list`): pair ids one per line, or GDF's JSON list.
        seed: seed of the per-category and ``limit_pairs`` sampling.
    """
    root = Path(root)
    folder = _check_root(root, split)
    if pairs_file is not None:
        pairs, unmatched = read_pair_list(root, split, pairs_file)
        if unmatched:
            raise DfbenchInputError(f"--pairs-file {pairs_file}: {len(unmatched)} pairs not in {folder} "
                                    f"(e.g. {unmatched[0]})")
    else:
        pairs = [read_pair(path, root) for path in _pair_files(root, split, folder)]
    if categories:
        unknown = sorted(set(categories) - {pair.category for pair in pairs})
        if unknown:
            raise DfbenchInputError(f"SPair {split}: no pairs of categor(y/ies) {', '.join(unknown)}")
        pairs = [pair for pair in pairs if pair.category in set(categories)]
    if per_category is not None:
        if per_category < 1:
            raise DfbenchInputError(f"per-category {per_category}: the number of pairs must be ≥ 1")
        by_category: dict[str, list[int]] = defaultdict(list)
        for index, pair in enumerate(pairs):
            by_category[pair.category].append(index)
        rng = random.Random(seed)
        keep = set()
        for indices in by_category.values():
            keep.update(rng.sample(indices, min(per_category, len(indices))))
        pairs = [pair for index, pair in enumerate(pairs) if index in keep]
    if limit_pairs is not None:
        pairs = sample_across_categories(pairs, limit_pairs, seed)
    return pairs


def sample_across_categories(pairs: list[SpairPair], count: int, seed: int = 0) -> list[SpairPair]:
    """A seeded random sample of ``count`` pairs spread evenly over the categories, in listing order.

    SPair's lists are grouped by category, so the first N pairs would be one category. Each
    category's pairs are shuffled with ``random.Random(seed)`` (categories in sorted order), then
    taken round-robin — one per category per round, categories in a seeded random order each round
    — until ``count`` are chosen; the chosen pairs keep their order in the listing.
    """
    if count < 1:
        raise DfbenchInputError(f"limit {count}: the number of pairs must be ≥ 1")
    if count >= len(pairs):
        return list(pairs)
    rng = random.Random(seed)
    by_category: dict[str, list[int]] = defaultdict(list)
    for index, pair in enumerate(pairs):
        by_category[pair.category].append(index)
    queues = {category: rng.sample(indices, len(indices)) for category, indices in sorted(by_category.items())}
    chosen: list[int] = []
    while len(chosen) < count:
        categories = [category for category in sorted(queues) if queues[category]]
        rng.shuffle(categories)
        for category in categories[: count - len(chosen)]:
            chosen.append(queues[category].pop())
    return [pairs[index] for index in sorted(chosen)]


def read_pair_list(root: str | Path, split: str, path: str | Path) -> tuple[list[SpairPair], list[str]]:
    """The pairs of ``split`` named by a list file, in its order, and the entries not found.

    Two formats: a text file of pair ids (annotation file stems, one per line), or GDF's JSON list
    (e.g. ``correspondence/dataset/spair_71k_val-360.json`` of Darkbblue/generic-diffusion-feature:
    objects with ``source_path`` / ``target_path`` = ``<category>/<image file>``), matched to the
    split's pairs by category and source and target image file names.
    """
    root, path = Path(root), Path(path)
    folder = _check_root(root, split)
    if not path.is_file():
        raise DfbenchInputError(f"pair list {path}: no such file")
    text = path.read_text()
    if not text.lstrip().startswith("["):
        ids = [line.strip().removesuffix(".json") for line in text.splitlines() if line.strip()]
        found = [pair_id for pair_id in ids if (folder / f"{pair_id}.json").is_file()]
        return [read_pair(folder / f"{pair_id}.json", root) for pair_id in found], sorted(set(ids) - set(found))
    try:
        entries = json.loads(text)
        names = [(str(entry["source_path"]), str(entry["target_path"])) for entry in entries]
    except (json.JSONDecodeError, TypeError, KeyError):
        raise DfbenchInputError(f"pair list {path}: expected pair ids one per line, or a JSON list of objects "
                                "with source_path and target_path (GDF's format)") from None
    by_names = {(pair.category, pair.src_image.name, pair.trg_image.name): pair
                for pair in (read_pair(file, root) for file in _pair_files(root, split, folder))}
    pairs, unmatched = [], []
    for source, target in names:
        key = (Path(source).parent.name, Path(source).name, Path(target).name)
        if key in by_names:
            pairs.append(by_names[key])
        else:
            unmatched.append(f"{source} → {target}")
    return pairs, unmatched


def spair_images(root: str | Path, split: str = "test") -> list[tuple[Path, str]]:
    """The distinct images of a split with their categories, sorted by path (a fixed order)."""
    found: dict[Path, str] = {}
    for pair in load_spair(root, split):
        found.setdefault(pair.src_image, pair.category)
        found.setdefault(pair.trg_image, pair.category)
    return sorted(found.items())
