"""ADE20K from Hugging Face ``datasets``: a hub id (``hf:<id>``, any id or folder of data files that
``datasets.load_dataset`` reads — not ``scene_parse_150``, a loading script that datasets ≥ 4 refuses) or a
``save_to_disk`` folder, written once into mmseg's
``ADEChallengeData2016`` layout so every protocol (and mmseg's own dataset class) reads it as files.

Rows need an ``image`` column and an ``annotation`` (or ``label``) column, both ``Image`` features
holding the ADE20K files — 0 = other, 1…150 = classes, as ``scene_parse_150`` does. The files are
written with their original bytes (read with ``decode=False``), so nothing is re-encoded and the
samples are exactly those of the folder layout. Splits: ``train`` and ``validation`` (``val`` too).
The copy lives under ``$DFBENCH_HOME/hf/`` (default ``~/.cache/dfbench``), keyed by the source and
the datasets' fingerprints.
"""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path
from typing import Any

from PIL import Image

from dfbench.atomic import atomic_build_dir
from dfbench.errors import DfbenchInputError
from dfbench.home import dfbench_home
from dfbench.hub import hub_dataset_reachable
from dfbench.tasks.segmentation.dataset import ADE20K

HUB_PREFIX = "hf:"
#: what the error lines point to: sources that load with the installed stack
WORKING_SOURCES = ("use the ADEChallengeData2016/ folder of ADEChallengeData2016.zip (the MIT Scene Parsing release, "
                   "as mmseg reads it), or a save_to_disk folder made where datasets<4 is installed: "
                   "load_dataset('scene_parse_150', trust_remote_code=True).save_to_disk(DIR), then --data-root DIR")
SPLITS = {"train": ("train",), "val": ("validation", "val")}
LABEL_COLUMNS = ("annotation", "label")


def is_hf_source(data_root: str | Path) -> bool:
    """``hf:<id>``, or a folder written by ``Dataset(Dict).save_to_disk``."""
    root = Path(data_root)
    return str(data_root).startswith(HUB_PREFIX) or (root / "dataset_dict.json").is_file() or (
        root / "state.json").is_file()


def load_hf(data_root: str | Path) -> dict[str, Any]:
    """The source's splits as ``datasets.Dataset`` objects by dfbench split name."""
    import datasets


    source = str(data_root)
    try:
        if source.startswith(HUB_PREFIX):
            name = source.removeprefix(HUB_PREFIX)
            if not Path(name).exists() and not name.startswith(("/", ".", "~")):   # a hub id, not a local folder
                hub_dataset_reachable(source, f"ade20k --data-root {source}")
            loaded = datasets.load_dataset(name)
        else:
            loaded = datasets.load_from_disk(source)
    except DfbenchInputError:
        raise
    except Exception as error:  # datasets raises many types (RuntimeError for loading scripts, since 4.0)
        message = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        if "scripts are no longer supported" in message:
            raise DfbenchInputError(
                f"ade20k --data-root {source}: that hub dataset is a loading script, which datasets "
                f"{datasets.__version__} refuses (≥ 4.0); {WORKING_SOURCES}") from None
        raise DfbenchInputError(f"ade20k --data-root {source}: cannot load it with datasets "
                                f"({error.__class__.__name__}: {message}); {WORKING_SOURCES}") from None
    if isinstance(loaded, datasets.Dataset):
        raise DfbenchInputError(f"ade20k --data-root {source}: one split without a name; save a DatasetDict with "
                                "'train' and 'validation' splits")
    found = {}
    for split, names in SPLITS.items():
        for name in names:
            if name in loaded:
                found[split] = loaded[name]
                break
    if not found:
        raise DfbenchInputError(f"ade20k --data-root {source}: splits {', '.join(loaded)}; expected train and/or "
                                "validation")
    return found


def label_column(dataset: Any, source: str) -> str:
    """The annotation column's name; a missing ``image`` or annotation column is one line."""
    columns = list(dataset.column_names)
    label = next((name for name in LABEL_COLUMNS if name in columns), None)
    if "image" not in columns or label is None:
        raise DfbenchInputError(f"ade20k --data-root {source}: columns {', '.join(columns)}; need 'image' and "
                                "'annotation' (Image features, the ADE20K files: 0 = other, 1…150 = classes)")
    return label


def file_stem(cell: dict[str, Any], split: str, index: int) -> str:
    """The original file's stem when the row kept its path, else ``<split>_<index>``."""
    path = cell.get("path")
    stem = Path(path).stem if path else ""
    return stem if re.fullmatch(r"[\w.-]+", stem) else f"{split}_{index:06d}"


def write_layout(splits: dict[str, Any], source: str, staging: Path) -> None:
    """Every row's image and annotation bytes into ``staging/ADEChallengeData2016``."""
    import datasets
    from tqdm.auto import tqdm

    for split, dataset in splits.items():
        label = label_column(dataset, source)
        raw = dataset.cast_column("image", datasets.Image(decode=False)).cast_column(label,
                                                                                    datasets.Image(decode=False))
        folder = ADE20K.splits[split]
        images = staging / ADE20K.folder / ADE20K.images.format(split=folder)
        labels = staging / ADE20K.folder / ADE20K.labels.format(split=folder)
        images.mkdir(parents=True)
        labels.mkdir(parents=True)
        seen: set[str] = set()
        for index, row in enumerate(tqdm(raw, desc=f"ade20k {split} from {source}", unit="image")):
            stem = file_stem(row["image"], split, index)
            if stem in seen:
                stem = f"{split}_{index:06d}"
            seen.add(stem)
            image_bytes, label_bytes = row["image"]["bytes"], row[label]["bytes"]
            if image_bytes is None or label_bytes is None:
                raise DfbenchInputError(f"ade20k --data-root {source}: {split} row {index} has no image or "
                                        "annotation bytes")
            (images / f"{stem}.jpg").write_bytes(jpeg_bytes(image_bytes))
            (labels / f"{stem}.png").write_bytes(png_bytes(label_bytes))


def jpeg_bytes(data: bytes) -> bytes:
    """The image file as JPEG (mmseg's ADE20K suffix): its own bytes when it is one (ADE20K's are), else
    re-saved at quality 100."""
    if data[:3] == b"\xff\xd8\xff":
        return data
    buffer = io.BytesIO()
    with Image.open(io.BytesIO(data)) as image:
        image.convert("RGB").save(buffer, format="JPEG", quality=100)
    return buffer.getvalue()


def png_bytes(data: bytes) -> bytes:
    """The annotation file as PNG: its own bytes when it is one, else re-saved losslessly."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return data
    buffer = io.BytesIO()
    with Image.open(io.BytesIO(data)) as label:
        label.save(buffer, format="PNG")
    return buffer.getvalue()


def hf_ade20k_root(data_root: str | Path, home: str | Path | None = None) -> Path:
    """The ``ADEChallengeData2016`` folder written from the Hugging Face source (once, atomically)."""
    splits = load_hf(data_root)
    key = hashlib.sha1(f"{data_root}|{sorted((s, d._fingerprint) for s, d in splits.items())}".encode()).hexdigest()
    home = dfbench_home(home)
    name = re.sub(r"[^\w.-]+", "_", str(data_root).removeprefix(HUB_PREFIX)).strip("_")[-40:]
    target = home / "hf" / f"{name}-{key[:12]}"
    if not (target / ADE20K.folder).is_dir():
        atomic_build_dir(target, lambda staging: write_layout(splits, str(data_root), staging))
    return target / ADE20K.folder
