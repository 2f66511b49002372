"""horse21 (and the release's sibling sets): the ddpm-segmentation protocol, piece by piece and end to end.

References (yandex-research/ddpm-segmentation, the release; GDF = Darkbblue/generic-diffusion-feature):
``src/pixel_classifier.py:14-36`` (the MLP), ``:38-63`` (init), ``:70-109`` (``predict_labels``, mode
vote at line 106), ``:126-153`` (``compute_iou``, 1e-8 at line 147); ``train_interpreter.py:50`` (< 20
pixels → ignore), ``:109`` (shuffle, drop_last), ``:120`` (Adam 1e-3), ``:127`` (100 epochs), ``:144-151``
(early stop); ``src/feature_extractors.py:241`` (bilinear upsampling); ``src/datasets.py:90-95`` (labels
resized with cv2 INTER_NEAREST); GDF ``scarce_segmentation/segmentation/datasets.py:45-58``
(``shuffle_split``), ``scarce_segmentation/task-pixel.py:202`` (``setup_seed``), ``extract_feature.py:113-125``
(nearest resize to the largest map).
"""

import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from references import TextureBackbone

from dfbench.cli import main
from dfbench.errors import DfbenchInputError
from dfbench.heads.pixel_features import PixelFeatureBank
from dfbench.runner import RunSpec, run_one
from dfbench.tasks.horse21.dataset import (
    BEDROOM_28,
    DDPM_DATASETS,
    HORSE_21,
    DdpmSample,
    load_label,
    load_split,
    resize_nearest,
)
from dfbench.tasks.horse21.metrics import release_iou
from dfbench.tasks.horse21.pixel_classifier import (
    EnsembleOptions,
    PixelClassifierEnsemble,
    PixelSet,
    hidden_sizes,
    member_path,
    mode_vote,
    predict_pixels,
    train_ensemble,
)
from dfbench.tasks.horse21.protocols import drop_small_classes, gdf_resplit
from dfbench.tasks.horse21.task import Horse21Task


@pytest.fixture(autouse=True)
def mini_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DFBENCH_HOME", str(tmp_path_factory.getbasetemp() / "dfbench_home"))


def release_member(dim: int, num_classes: int) -> torch.nn.Module:
    """The release's pixel_classifier (src/pixel_classifier.py:14-36), written out with torch.nn."""
    first, second = hidden_sizes(num_classes)
    module = torch.nn.Module()
    module.layers = torch.nn.Sequential(
        torch.nn.Linear(dim, first), torch.nn.ReLU(), torch.nn.BatchNorm1d(first),
        torch.nn.Linear(first, second), torch.nn.ReLU(), torch.nn.BatchNorm1d(second),
        torch.nn.Linear(second, num_classes))
    return module


# ---------------------------------------------------------------------------------------------- metric
def test_release_iou_by_hand_with_an_absent_class_and_ignored_pixels():
    # classes 0, 1, 2, 3 (3 is never predicted nor present); 255 = ignore
    gt = np.array([[0, 0, 1, 255],
                   [2, 1, 1, 255]])
    pred = np.array([[0, 1, 1, 1],
                     [2, 2, 1, 0]])
    ious = release_iou([pred], [gt], num_classes=4, ignore_label=255)
    # class 0: pred {(0,0),(1,3)}, gt {(0,0),(0,1)} → I=1, U=3 (the ignored pixel (1,3) counts in the union)
    # class 1: pred {(0,1),(0,2),(0,3),(1,2)}, gt {(0,2),(1,1),(1,2)} → I=2, U=5
    # class 2: pred {(1,0),(1,1)}, gt {(1,0)} → I=1, U=2; class 3: absent → 0 / (1e-8 + 0) = 0
    assert ious == pytest.approx({0: 1 / 3, 1: 2 / 5, 2: 1 / 2, 3: 0.0}, abs=1e-7)
    assert ious[3] == 0.0


def test_release_iou_pools_over_images_and_skips_the_ignore_class():
    rng = np.random.default_rng(0)
    preds = [rng.integers(0, 5, (7, 9)) for _ in range(3)]
    gts = [rng.integers(0, 5, (7, 9)) for _ in range(3)]
    # a second implementation: per class, count pixels one by one over all images
    expected = {}
    for klass in range(5):
        if klass == 0:            # bedroom_28's ignore label is class 0 (experiments/bedroom_28/ddpm.json)
            continue
        pairs = [(p, g) for pr, gt in zip(preds, gts, strict=True) for p, g in zip(pr.flat, gt.flat, strict=True)]
        inter = sum(int(p == klass and g == klass) for p, g in pairs)
        union = sum(int(p == klass or g == klass) for p, g in pairs)
        expected[klass] = inter / (1e-8 + union)
    assert release_iou(preds, gts, 5, 0) == pytest.approx(expected, abs=1e-12)
    assert BEDROOM_28.ignore_label == 0 and BEDROOM_28.num_classes == 29


def test_mode_vote_breaks_ties_towards_the_smallest_class():
    votes = torch.tensor([[3, 1, 2, 7],
                          [3, 1, 0, 5],
                          [1, 2, 0, 6],
                          [1, 2, 2, 4]])
    # column 0: 3,3,1,1 → tie 1/3 → 1; column 1: 1,1,2,2 → 1; column 2: 2,0,0,2 → 0; all differ → 4
    assert mode_vote(votes).tolist() == [1, 1, 0, 4]
    assert mode_vote(torch.tensor([[5], [5], [2]])).tolist() == [5]


class _AcceleratorTensor(torch.Tensor):
    """A tensor standing for one on an accelerator (no CUDA needed): ``.cpu()`` gives a plain tensor back."""

    def cpu(self, *args, **kwargs):
        return torch.Tensor(self.as_subclass(torch.Tensor)).clone()


def test_the_vote_runs_on_cpu_tensors(monkeypatch):
    """The release moves each member's labels to the CPU before torch.mode (ddpm-segmentation
    src/pixel_classifier.py 94 and 106), so ties break as on a CPU whatever the device: the vote never sees the
    accelerator's tensor."""
    seen = []
    original = torch.mode

    def recording_mode(values, *args, **kwargs):
        seen.append(type(values))
        return original(values, *args, **kwargs)

    class Members(torch.nn.Module):
        members = 3
        weights = [torch.zeros(1)]

        def forward(self, features):
            logits = torch.tensor([[[0.0, 2.0]], [[3.0, 1.0]], [[0.0, 5.0]]])     # votes 1, 0, 1
            return logits.as_subclass(_AcceleratorTensor)

    monkeypatch.setattr(torch, "mode", recording_mode)
    assert predict_pixels(Members(), torch.zeros(1, 4)).tolist() == [1]
    assert seen == [torch.Tensor]


def test_small_annotations_become_ignore_in_training():
    label = np.zeros((10, 10), dtype=np.uint8)
    label.flat[:19] = 1          # 19 pixels: dropped
    label.flat[19:39] = 2        # 20 pixels: kept
    label.flat[39:40] = 255      # already ignored
    out, dropped = drop_small_classes(label, 21, 255)
    assert dropped == [1]
    assert (out.flat[:19] == 255).all() and (out.flat[19:39] == 2).all() and (out.flat[40:] == 0).all()
    assert (label.flat[:19] == 1).all()                         # the input is left alone
    # bedroom_28: the ignore label is 0, so small annotations become 0 and class 0 is never "dropped"
    small = np.full((5, 5), 3, dtype=np.uint8)
    small[0, 0] = 0
    small[0, 1:3] = 4
    out, dropped = drop_small_classes(small, 29, 0)
    assert dropped == [4] and out[0, 1] == 0 and out[0, 0] == 0 and out[1, 1] == 3   # class 3 has 22 pixels


# ---------------------------------------------------------------------------------------------- splits
def test_gdf_resplit_is_gdfs_shuffle_per_seed():
    train = [DdpmSample(f"tr{i}", None, None, "train") for i in range(30)]
    test = [DdpmSample(f"te{i}", None, None, "test") for i in range(30)]
    for seed in range(5):
        # GDF: setup_seed(seed) seeds the global `random`, then shuffle_split shuffles the tagged list
        random.seed(seed)
        pool = [("train", i) for i in range(30)] + [("test", i) for i in range(30)]
        random.shuffle(pool)
        expected = [(train if origin == "train" else test)[index].stem for origin, index in pool]
        chosen_train, chosen_test = gdf_resplit(train, test, seed)
        assert [s.stem for s in chosen_train + chosen_test] == expected
        assert len(chosen_train) == 30 and len(chosen_test) == 30
        again = gdf_resplit(train, test, seed)
        assert [s.stem for s in again[0]] == [s.stem for s in chosen_train]     # deterministic per seed
    assert [s.stem for s in gdf_resplit(train, test, 0)[0]] != [s.stem for s in gdf_resplit(train, test, 1)[0]]


# ---------------------------------------------------------------------------------------------- features
def test_pixel_bank_equals_upsampling_the_maps():
    generator = torch.Generator().manual_seed(0)
    images = [{"a": torch.randn(5, 4, 4, generator=generator), "b": torch.randn(3, 8, 8, generator=generator),
               "c": torch.randn(2, 16, 16, generator=generator)} for _ in range(3)]
    images.append({"a": torch.randn(5, 3, 5, generator=generator), "b": torch.randn(3, 6, 10, generator=generator),
                   "c": torch.randn(2, 12, 20, generator=generator)})                # another size
    bank = PixelFeatureBank(images, (37, 29))
    assert bank.dim == 10
    for index, maps in enumerate(images):
        # the release's collect_features: each map bilinearly to the output size, concatenated
        full = torch.cat([F.interpolate(value[None], size=(37, 29), mode="bilinear")[0] for value in maps.values()])
        torch.testing.assert_close(bank.image_rows(index, 0, 37 * 29), full.reshape(10, -1).T, atol=1e-5, rtol=0)
    gdf = PixelFeatureBank(images[:3], (64, 64), mode="nearest-bilinear")
    for index, maps in enumerate(images[:3]):
        # GDF: nearest to the largest map (16), concatenated, then bilinear to 64
        largest = torch.cat([F.interpolate(value[None], 16)[0] for value in maps.values()])
        full = F.interpolate(largest[None], size=(64, 64), mode="bilinear")[0]
        torch.testing.assert_close(gdf.image_rows(index, 0, 64 * 64), full.reshape(10, -1).T, atol=1e-5, rtol=0)
    pixels = torch.tensor([0, 2, 1]), torch.tensor([36, 0, 5]), torch.tensor([0, 28, 17])
    rows = bank.gather(*pixels)
    for row, (image, y, x) in zip(rows, zip(*pixels, strict=True), strict=True):
        full = torch.cat([F.interpolate(v[None], size=(37, 29), mode="bilinear")[0] for v in images[image].values()])
        torch.testing.assert_close(row, full[:, y, x], atol=1e-5, rtol=0)


def test_labels_resize_with_opencvs_nearest_rule():
    import cv2

    rng = np.random.default_rng(1)
    for shape in [(512, 512), (300, 300), (100, 100), (256, 256), (37, 53)]:
        label = rng.integers(0, 21, shape).astype(np.uint8)
        ours = resize_nearest(label, 256)
        assert np.array_equal(ours, cv2.resize(label, (256, 256), interpolation=cv2.INTER_NEAREST)), shape
    # by hand: 4 → 6 takes source rows floor(i · 4 / 6) = 0, 0, 1, 2, 2, 3
    assert resize_nearest(np.arange(16).reshape(4, 4), 6)[:, 0].tolist() == [0, 0, 4, 8, 8, 12]


# ---------------------------------------------------------------------------------------------- ensemble
def test_stacked_ensemble_trains_exactly_like_separate_release_members():
    ensemble = PixelClassifierEnsemble(3, 20, 5)
    ensemble.initialise(seed=0, member_ids=[0, 1, 2])
    members = []
    for slot in range(3):
        member = release_member(20, 5)
        member.load_state_dict(ensemble.member_state(slot))
        members.append(member.train())
    ensemble.train()
    optimizer = torch.optim.Adam(ensemble.parameters(), lr=1e-3)
    optimizers = [torch.optim.Adam(member.parameters(), lr=1e-3) for member in members]
    generator = torch.Generator().manual_seed(1)
    for _ in range(6):
        x, y = torch.randn(3, 64, 20, generator=generator), torch.randint(0, 5, (3, 64), generator=generator)
        logits = ensemble(x)
        losses = F.cross_entropy(logits.reshape(-1, 5), y.reshape(-1), reduction="none").view(3, -1).mean(1)
        optimizer.zero_grad()
        losses.sum().backward()
        optimizer.step()
        ensemble.batches_tracked += 1
        for slot, member in enumerate(members):
            out = member.layers(x[slot])
            torch.testing.assert_close(out, logits[slot].detach(), atol=1e-5, rtol=1e-5)
            optimizers[slot].zero_grad()
            F.cross_entropy(out, y[slot]).backward()
            optimizers[slot].step()
    for slot, member in enumerate(members):
        ours = ensemble.member_state(slot)
        for key, value in member.state_dict().items():
            torch.testing.assert_close(ours[key].to(value.dtype), value, atol=1e-5, rtol=1e-5)
    # eval mode uses each member's running statistics
    ensemble.eval()
    x = torch.randn(3, 10, 20)
    for slot, member in enumerate(members):
        torch.testing.assert_close(ensemble(x)[slot], member.eval().layers(x[slot]), atol=1e-5, rtol=1e-5)


def test_initialisation_and_sizes_are_the_releases():
    assert hidden_sizes(21) == (128, 32) and hidden_sizes(29) == (128, 32)
    assert hidden_sizes(30) == (256, 128) and hidden_sizes(34) == (256, 128)
    ensemble = PixelClassifierEnsemble(10, 3520, 21)
    ensemble.initialise(0, list(range(10)))
    weights = ensemble.weights[0].detach()
    assert weights.std().item() == pytest.approx(0.02, rel=0.01) and abs(weights.mean().item()) < 1e-4
    assert not torch.equal(weights[0], weights[1])                          # members differ
    assert all((bias == 0).all() for bias in ensemble.biases)
    assert all((weight == 1).all() for weight in ensemble.norm_weights)
    state = ensemble.member_state(0)
    assert state["layers.0.weight"].shape == (128, 3520) and state["layers.6.weight"].shape == (21, 128 // 4)


def toy_problem(images: int = 3, size: int = 32):
    """Two channels whose sign pattern decides one of four classes: separable by any MLP."""
    generator = torch.Generator().manual_seed(0)
    maps, labels = [], []
    for _ in range(images):
        classes = torch.randint(0, 4, (size // 4, size // 4), generator=generator)
        signs = torch.stack([(classes % 2) * 2 - 1, (classes // 2) * 2 - 1]).float()
        maps.append({"toy": signs.repeat_interleave(4, 1).repeat_interleave(4, 2)})   # native = output size
        labels.append(classes.repeat_interleave(4, 0).repeat_interleave(4, 1))
    bank = PixelFeatureBank(maps, (size, size))
    image = torch.arange(images).repeat_interleave(size * size)
    rows = torch.arange(size).repeat_interleave(size).repeat(images)
    cols = torch.arange(size).repeat(size * images)
    pixels = PixelSet(image, rows, cols, torch.cat([label.reshape(-1) for label in labels]).to(torch.uint8))
    return bank, pixels


def test_ensemble_learns_a_separable_toy_problem_to_100_percent(tmp_path):
    bank, pixels = toy_problem()
    options = EnsembleOptions(members=4, max_epochs=6)
    ensemble, records = train_ensemble(bank, pixels, 4, seed=0, folder=tmp_path, options=options)
    predicted = predict_pixels(ensemble, bank.gather(pixels.image, pixels.row, pixels.column))
    assert (predicted == pixels.label.long()).float().mean().item() == 1.0
    batches = len(pixels) // 64
    for record in records:
        # checks start in epoch index 4 (`epoch > 3`); the first sets the best loss, the stop needs > 50 more
        if record["stopped_early"]:
            assert record["iterations"] >= 4 * batches + 52 and record["epochs"] >= 5
        else:
            assert record["epochs"] == 6 and record["iterations"] == 6 * batches
    assert sorted(path.name for path in tmp_path.iterdir()) == [f"member-{m}.safetensors" for m in range(4)]


def test_a_killed_ensemble_training_resumes_keeping_finished_members(tmp_path):
    bank, pixels = toy_problem(images=2, size=16)
    options = EnsembleOptions(members=3, max_epochs=5, patience_after_epoch=0, patience=3)
    whole, records = train_ensemble(bank, pixels, 4, 0, tmp_path / "straight", options)

    class Killed(Exception):
        pass

    def kill(member):
        raise Killed(member)

    with pytest.raises(Killed) as killed:
        train_ensemble(bank, pixels, 4, 0, tmp_path / "resumed", options, on_saved=kill)
    first = killed.value.args[0]
    saved = member_path(tmp_path / "resumed", first)
    assert [p.name for p in (tmp_path / "resumed").iterdir()] == [saved.name]
    before = saved.read_bytes()
    trained = []
    resumed, resumed_records = train_ensemble(bank, pixels, 4, 0, tmp_path / "resumed", options,
                                              on_saved=trained.append)
    assert first not in trained and sorted(trained + [first]) == [0, 1, 2]   # only the unfinished ones trained
    assert saved.read_bytes() == before
    assert resumed_records == records
    for key, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value)          # the same ensemble as unbroken


# ---------------------------------------------------------------------------------------------- data
def write_release_set(root, train=2, test=2, size=16):
    for split, count in (("train", train), ("test", test)):
        folder = root / "horse_21" / "real" / split
        folder.mkdir(parents=True)
        for index in range(count):
            Image.fromarray(np.full((size, size, 3), 40 * index, np.uint8)).save(folder / f"{index}.png")
            np.save(folder / f"{index}.npy", np.full((size, size), index % 21, np.uint8))
    return root / "horse_21"


def test_release_layout_loads_from_the_set_or_its_real_folder(tmp_path):
    root = write_release_set(tmp_path)
    for data_root in (root, root / "real", tmp_path):
        samples = load_split(HORSE_21, data_root, "test")
        assert [(s.stem, s.origin) for s in samples] == [("0", "test"), ("1", "test")]
    label = load_label(HORSE_21, samples[1].label, 256, (16, 16))
    assert label.shape == (256, 256) and label.dtype == np.uint8 and (label == 1).all()
    assert [spec.num_classes for spec in DDPM_DATASETS.values()] == [21, 15, 19, 29, 34, 30]


@pytest.mark.parametrize("problem, message", [
    ("folder", "no real/train and real/test folders here"),
    ("label", "has no label 1.npy beside it"),
    ("class", "class id 21 at 256 pixels; horse21 has 21 classes (0…20), ignore label 255"),
    ("shape", "16×8, but its image is 16×16"),
])
def test_bad_release_layouts_are_one_line(tmp_path, capsys, problem, message):
    root = write_release_set(tmp_path)
    test = root / "real" / "test"
    if problem == "folder":
        import shutil

        shutil.rmtree(root / "real" / "train")
    elif problem == "label":
        (test / "1.npy").unlink()
    elif problem == "class":
        np.save(test / "1.npy", np.full((16, 16), 21, np.uint8))
    else:
        np.save(test / "1.npy", np.zeros((8, 16), np.uint8))
    with pytest.raises(DfbenchInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        task = Horse21Task()
        for sample in load_split(HORSE_21, root, "test"):
            task.sample_label(sample, 256)
    predictions = tmp_path / "pred"
    predictions.mkdir()
    assert main(["score", "--task", "horse21", "--data-root", str(root), "--predictions", str(predictions)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and message.split(";")[0] in err


def test_mini_set_is_the_release_layout_with_real_masks():
    from dfbench.tasks.horse21.mini import COUNTS

    root = Horse21Task().mini_root()
    assert root.name == "horse_21"
    eyes = []
    for split, count in COUNTS.items():
        samples = load_split(HORSE_21, root, split)
        assert len(samples) == count
        for sample in samples:
            image = np.asarray(Image.open(sample.image))
            label = np.load(sample.label)
            assert image.shape == (256, 256, 3) and label.shape == (256, 256) and label.dtype == np.uint8
            assert set(np.unique(label)) <= {0, 3, 7, 9, 11, 14, 16}
            eyes.append(int((label == 7).sum()))
            horse = label > 0
            assert 0.04 < horse.mean() < 0.4            # the silhouette covers part of the frame
    assert min(eyes) < 20 <= max(eyes)                  # some eyes are relabelled in training, some kept


# ---------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["ddpm", "gdf-resplit"])
def test_horse21_run_scores_and_saved_predictions_rescore_exactly(tmp_path, protocol):
    options = {"seeds": 2, "epochs": 5, "members": 3, "resolution": 64}
    spec = RunSpec(backbone="texture", task=f"horse21/{protocol}", selection=["texture"], data_root="mini",
                   options=options, save_predictions=True, settings={"resolution": 64})
    result, record_path = run_one(spec, tmp_path, progress=False, figures=True, backbone=TextureBackbone())
    per_seed = result.details["per_seed_mIoU"]
    assert list(per_seed) == ["0", "1"]
    values = np.array(list(per_seed.values()))
    assert result.metrics["mIoU"] == pytest.approx(values.mean()) and result.metrics["mIoU_std"] == pytest.approx(
        values.std())
    # colour features separate the horse from grass and sky: background and barrel are learnt
    assert result.per_category["background"]["IoU"] > 80 and result.per_category["barrel"]["IoU"] > 30
    assert result.per_category["person"]["IoU"] == 0                     # absent classes count as 0
    assert len(result.per_category) == 21 and result.metrics["images"] == 4
    assert {p.name for p in (record_path.parent / "figures").iterdir()} == {"per-class-iou.png", "overlays.png"}
    folder = record_path.parent / "predictions"
    members = record_path.parent / "pixel-classifiers" / "seed-1"
    assert sorted(p.name for p in members.iterdir()) == [f"member-{m}.safetensors" for m in range(3)]
    for seed, path in (("0", folder), ("1", folder / "seed-1")):
        args = ["score", "--task", f"horse21/{protocol}", "--data-root", "mini", "--predictions", str(path),
                "--option", "resolution=64", "--seed", seed, "--format", "json"]
        from contextlib import redirect_stdout
        from io import StringIO

        out = StringIO()
        with redirect_stdout(out):
            assert main(args) == 0
        assert json.loads(out.getvalue())["mIoU"] == pytest.approx(per_seed[seed], abs=1e-9)
    if protocol == "gdf-resplit":
        # files lie under their release folder: <origin>/<stem>.png, 4 test images per seed
        assert {p.parent.name for p in folder.glob("*/*.png")} <= {"train", "test"}
        assert len(list(folder.glob("*/*.png"))) == 4 and not list(folder.glob("*.png"))
        split0 = result.details["training"]["0"]["train_images"]
        expected, _ = gdf_resplit(load_split(HORSE_21, Horse21Task().mini_root(), "train", False),
                                  load_split(HORSE_21, Horse21Task().mini_root(), "test", False), 0)
        assert split0 == [f"{s.origin}/{s.stem}" for s in expected]


def test_perf_horse21_streamed_bank_holds_the_native_maps_only():
    from dfbench.perf.horse21 import measure_streamed

    measured = measure_streamed(images=1, steps=1)
    # 1280×32² + 1280×32² + 640×64² + 320×64² float32 values for one image
    assert measured["channels"] == 3520
    assert measured["bank_gib"] * 2**30 == (2 * 1280 * 32 * 32 + 640 * 64 * 64 + 320 * 64 * 64) * 4
    assert measured["s_per_step_10_members"] > 0
