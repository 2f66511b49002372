"""The SPair-71k loader on fixtures written in the exact SPair JSON layout; the mini set's truth."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dfbench.errors import DfbenchInputError
from dfbench.tasks.spair.dataset import SpairPair, load_spair, read_pair_list, sample_across_categories
from dfbench.tasks.spair.mini import _similarity, _warp, build_mini_spair

PAIR = {
    "pair_id": 1, "src_imname": "2008_000001.jpg", "trg_imname": "2008_000002.jpg",
    "src_imsize": [60, 40, 3], "trg_imsize": [50, 30, 3], "src_bndbox": [5, 5, 50, 35],
    "trg_bndbox": [2, 3, 40, 28], "category": "cat", "src_pose": 0, "trg_pose": 0, "src_truncation": 0,
    "trg_truncation": 0, "src_occlusion": 0, "trg_occlusion": 0, "mirror": 0, "viewpoint_variation": 1,
    "scale_variation": 0, "truncation": 0, "occlusion": 0,
    "src_kps": [[10, 12], [30, 20]], "trg_kps": [[8, 9], [25, 15]], "kps_ids": ["3", "7"],
}


def write_fixture(root, pairs=None, layout=True):
    for name, size in (("2008_000001", (60, 40)), ("2008_000002", (50, 30))):
        (root / "JPEGImages" / "cat").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (120, 60, 30)).save(root / "JPEGImages" / "cat" / f"{name}.jpg")
    folder = root / "PairAnnotation" / "test"
    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    for index, pair in enumerate(pairs or [PAIR]):
        pair_id = f"{index:06d}-2008_000001-2008_000002:{pair.get('category', 'cat')}"
        (folder / f"{pair_id}.json").write_text(json.dumps(pair))
        ids.append(pair_id)
    if layout:
        (root / "Layout" / "large").mkdir(parents=True, exist_ok=True)
        (root / "Layout" / "large" / "test.txt").write_text("\n".join(ids) + "\n")
    return ids


def test_reads_every_field(tmp_path):
    write_fixture(tmp_path)
    (pair,) = load_spair(tmp_path, "test")
    assert pair.category == "cat"
    assert pair.src_kps == ((10.0, 12.0), (30.0, 20.0)) and pair.trg_kps == ((8.0, 9.0), (25.0, 15.0))
    assert pair.trg_bbox == (2.0, 3.0, 40.0, 28.0) and pair.trg_size == (50, 30) and pair.src_size == (60, 40)
    assert pair.src_image == tmp_path / "JPEGImages" / "cat" / "2008_000001.jpg"
    assert pair.raw["viewpoint_variation"] == 1 and pair.raw["kps_ids"] == ["3", "7"]
    assert pair.src_key == "cat/2008_000001.jpg"


def test_limits_and_sampling(tmp_path):
    pairs = [dict(PAIR, pair_id=i) for i in range(6)]
    ids = write_fixture(tmp_path, pairs)
    assert len(load_spair(tmp_path, "test", limit_pairs=4)) == 4
    assert len(load_spair(tmp_path, "test", per_category=2)) == 2
    assert load_spair(tmp_path, "test", per_category=2, seed=1) == load_spair(tmp_path, "test", per_category=2, seed=1)
    subset = tmp_path / "subset.txt"
    subset.write_text(f"{ids[4]}\n{ids[1]}\n")
    assert [pair.pair_id for pair in load_spair(tmp_path, "test", pairs_file=subset)] == [ids[4], ids[1]]


def test_without_layout_files_globs_the_split(tmp_path):
    write_fixture(tmp_path, [PAIR, dict(PAIR, pair_id=2)], layout=False)
    assert len(load_spair(tmp_path, "test")) == 2


@pytest.mark.parametrize("mutate,fragment", [
    (lambda p: p.pop("trg_kps"), "missing field(s) trg_kps"),
    (lambda p: p.update(trg_kps=[[1, 2]]), "must be equally many"),
    (lambda p: p.update(src_kps="oops"), "field src_kps must be a list"),
    (lambda p: p.update(trg_imname="nope.jpg"), "nope.jpg does not exist"),
    (lambda p: p.update(trg_bndbox=[1, 2]), "trg_bndbox needs"),
])
def test_malformed_pair_files_name_the_file(tmp_path, mutate, fragment):
    pair = json.loads(json.dumps(PAIR))
    mutate(pair)
    write_fixture(tmp_path, [pair])
    with pytest.raises(DfbenchInputError, match="PairAnnotation/test/000000-2008_000001-2008_000002:cat.json") as info:
        load_spair(tmp_path, "test")
    assert fragment in str(info.value)


def test_bad_roots_and_json(tmp_path):
    with pytest.raises(DfbenchInputError, match="no such folder"):
        load_spair(tmp_path / "absent", "test")
    tmp_path.joinpath("JPEGImages").mkdir()
    with pytest.raises(DfbenchInputError, match=r"missing PairAnnotation/test/ .*SPair-71k"):
        load_spair(tmp_path, "test")
    with pytest.raises(DfbenchInputError, match="split 'testing'"):
        load_spair(tmp_path, "testing")
    write_fixture(tmp_path)
    next((tmp_path / "PairAnnotation" / "test").glob("*.json")).write_text("{not json")
    with pytest.raises(DfbenchInputError, match="not valid JSON"):
        load_spair(tmp_path, "test")


def test_warp_ground_truth_is_exact():
    """A bright dot at a source point lands, after the mini set's warp, where the transform says."""
    image = np.zeros((300, 400, 3), np.uint8)
    points = [(100, 80), (250, 200), (320, 60)]
    for x, y in points:
        image[y - 2 : y + 3, x - 2 : x + 3] = 255
    matrix = _similarity(1.1, 8.0, (-0.05, 0.02), (400, 300))
    warped = np.asarray(_warp(Image.fromarray(image), matrix)).astype(float)[..., 0]
    for x, y in points:
        tx, ty = matrix[:, :2] @ np.array([x, y]) + matrix[:, 2]
        ys, xs = np.mgrid[int(ty) - 8 : int(ty) + 9, int(tx) - 8 : int(tx) + 9]
        patch = warped[ys, xs]
        centroid = ((patch * xs).sum() / patch.sum(), (patch * ys).sum() / patch.sum())
        assert centroid == pytest.approx((tx, ty), abs=0.05)


def test_mini_set_is_valid_spair(tmp_path):
    import skimage.data

    root = build_mini_spair(tmp_path / "mini")
    counts = {split: len(load_spair(root, split)) for split in ("trn", "val", "test")}
    assert counts == {"trn": 9, "val": 9, "test": 9}
    identity = [pair for pair in load_spair(root, "val") if pair.src_image == pair.trg_image]
    assert len(identity) == 4 and all(pair.src_kps == pair.trg_kps for pair in identity)   # each photo with itself
    pairs = load_spair(root, "test")
    assert {pair.category for pair in pairs} == {"cat", "person", "cup", "rocket", "motorbike"}
    stereo = next(pair for pair in pairs if pair.category == "motorbike")
    _, _, disparity = skimage.data.stereo_motorcycle()
    for (sx, sy), (tx, ty) in zip(stereo.src_kps, stereo.trg_kps, strict=True):  # left → right: x − d
        assert ty == sy and tx == pytest.approx(sx - disparity[int(sy), int(sx)], abs=0.01)
    annotation = json.loads((root / "ImageAnnotation" / "cat" / "chelsea.json").read_text())
    assert annotation["image_width"] == 451 and len(annotation["kps"]) == 10


def _listing(counts: dict[str, int]) -> list[SpairPair]:
    """Pairs grouped by category, as SPair's lists are."""
    return [SpairPair(f"{category}{index}", category, Path("s.jpg"), Path("t.jpg"), ((0, 0),), ((0, 0),),
                      (0, 0, 1, 1), (0, 0, 1, 1), (1, 1), (1, 1))
            for category, count in counts.items() for index in range(count)]


def test_limit_is_a_seeded_sample_spread_over_categories():
    pairs = _listing({"aeroplane": 5, "bicycle": 3, "bird": 1})
    chosen = sample_across_categories(pairs, 5, seed=0)
    per_category = Counter(pair.category for pair in chosen)
    assert per_category == {"aeroplane": 2, "bicycle": 2, "bird": 1}  # round-robin over categories
    positions = [pairs.index(pair) for pair in chosen]
    assert positions == sorted(positions)  # listing order kept
    assert sample_across_categories(pairs, 5, seed=0) == chosen  # seeded
    assert len({tuple(p.pair_id for p in sample_across_categories(pairs, 5, seed=s)) for s in range(10)}) > 1
    assert Counter(p.category for p in sample_across_categories(pairs, 2, seed=3)).most_common(1)[0][1] == 1
    assert sample_across_categories(pairs, 50) == pairs
    with pytest.raises(DfbenchInputError, match="limit -3: the number of pairs must be ≥ 1"):
        sample_across_categories(pairs, -3)


def test_limit_pairs_on_the_mini_set_spans_categories(tmp_path):
    root = build_mini_spair(tmp_path / "mini")
    first_four = load_spair(root, "test")[:4]
    assert len({pair.category for pair in first_four}) == 2  # the listing is grouped by category
    limited = load_spair(root, "test", limit_pairs=4, seed=0)
    assert len(limited) == 4 and len({pair.category for pair in limited}) == 4
    with pytest.raises(DfbenchInputError, match="per-category 0"):
        load_spair(root, "test", per_category=0)


def test_gdf_json_pair_list_matches_by_image_names(tmp_path):
    root = build_mini_spair(tmp_path / "mini")
    val = load_spair(root, "val")
    entries = [{"source_path": f"{p.category}/{p.src_image.name}", "target_path": f"{p.category}/{p.trg_image.name}"}
               for p in val[::-1]]
    entries.insert(1, {"source_path": "cat/nowhere.jpg", "target_path": "cat/chelsea_val0.jpg"})
    listing = tmp_path / "val-360.json"
    listing.write_text(json.dumps(entries))
    pairs, unmatched = read_pair_list(root, "val", listing)
    assert [pair.pair_id for pair in pairs] == [pair.pair_id for pair in val[::-1]]  # in the list's order
    assert unmatched == ["cat/nowhere.jpg → cat/chelsea_val0.jpg"]
    with pytest.raises(DfbenchInputError, match="1 pairs not in"):
        load_spair(root, "val", pairs_file=listing)
    listing.write_text('[{"source": 1}]')
    with pytest.raises(DfbenchInputError, match="JSON list of objects with source_path and target_path"):
        read_pair_list(root, "val", listing)
