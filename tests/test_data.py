"""dfbench data: fetching, verifying and laying out datasets, against a loopback HTTP server (127.0.0.1, started and
stopped here) that serves fixture archives built in each real archive's layout from the mini sets. The real URLs
are only named in the packaged manifest; these tests point a manifest of their own (``$DFBENCH_DATA_MANIFEST``)
at the server.
"""

import hashlib
import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest

from dfbench.cli import main
from dfbench.data.manifest import load_manifest
from dfbench.registry import TASKS


class Server:
    """A loopback server of in-memory files: HTTP range requests (unless ``ranges`` is off), a one-time connection
    drop after ``drop_after`` bytes of a file, 404 for anything else; it keeps the Range headers it was sent."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.ranges, self.drop_after, self.seen_ranges = True, {}, []
        #: {name: bytes}: send that much of the file once, then hold the connection open until ``release`` is set
        self.stall_after: dict[str, int] = {}
        self.release = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                if name not in server.files:
                    self.send_error(404)
                    return
                body = server.files[name]
                start = 0
                requested = self.headers.get("Range")
                server.seen_ranges.append(requested)
                if requested and server.ranges:
                    start = int(requested.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                stall = server.stall_after.pop(name, None)
                if stall is not None:
                    self.wfile.write(body[start:stall])
                    self.wfile.flush()
                    server.release.wait(timeout=60)
                    self.close_connection = True
                    return
                cut = server.drop_after.pop(name, None)
                self.wfile.write(body[start:cut] if cut is not None else body[start:])
                if cut is not None:
                    self.wfile.flush()
                    self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def server():
    running = Server()
    running.thread.start()
    yield running
    running.release.set()
    running.httpd.shutdown()
    running.httpd.server_close()
    running.thread.join(timeout=10)


def tar_of(folder: Path, top: str) -> bytes:
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w:gz") as archive:
        archive.add(folder, arcname=top)
    return stream.getvalue()


def zip_of(folder: Path, top: str) -> bytes:
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as archive:
        for path in sorted(folder.rglob("*")):
            archive.write(path, f"{top}/{path.relative_to(folder)}")
    return stream.getvalue()


@pytest.fixture
def env(tmp_path, monkeypatch, server):
    """$DFBENCH_DATA, $DFBENCH_HOME, and a manifest whose files the loopback server holds (SPair in its tar layout,
    ADE20K as its zip, a Horse-21 release tar, GDF's list with its sha256 published)."""
    monkeypatch.setenv("DFBENCH_HOME", str(tmp_path / "home"))
    spair = tar_of(TASKS.get("spair")().mini_root(), "SPair-71k")
    ade = zip_of(TASKS.get("ade20k")().mini_root(), "ADEChallengeData2016")
    horse = tar_of(TASKS.get("horse21")().mini_root(), "horse_21")
    pairs = json.dumps([{"source_path": "cat/a.jpg", "target_path": "cat/b.jpg"}]).encode()
    server.files.update({"SPair-71k.tar.gz": spair, "ADEChallengeData2016.zip": ade, "datasets.tar.gz": horse,
                         "spair_71k_val-360.json": pairs})
    manifest = {"datasets": {
        "spair": {"folder": "SPair-71k", "unpack": "SPair-71k", "check": {"task": "spair", "split": "test"},
                  "files": [{"name": "SPair-71k.tar.gz", "url": f"{server.url}/SPair-71k.tar.gz",
                             "size": len(spair)}]},
        "ade20k": {"folder": "ADEChallengeData2016", "unpack": "ADEChallengeData2016",
                   "check": {"task": "ade20k", "split": "val"},
                   "files": [{"name": "ADEChallengeData2016.zip", "url": f"{server.url}/ADEChallengeData2016.zip",
                              "sha1": hashlib.sha1(ade).hexdigest()}]},
        "horse21": {"folder": "horse_21", "unpack": "horse_21", "check": {"task": "horse21", "split": "test"},
                    "files": [{"name": "datasets.tar.gz", "url": f"{server.url}/datasets.tar.gz"}]},
        "gdf-val-360": {"folder": "SPair-71k", "check": {"json_list": "spair_71k_val-360.json"},
                        "files": [{"name": "spair_71k_val-360.json", "url": f"{server.url}/spair_71k_val-360.json",
                                   "sha256": hashlib.sha256(pairs).hexdigest()}]},
    }}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    monkeypatch.setenv("DFBENCH_DATA_MANIFEST", str(path))
    monkeypatch.setenv("DFBENCH_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


def get(*names, extra=()):
    return main(["data", "get", *names, "--no-progress", *extra])


def listing(capsys):
    capsys.readouterr()
    assert main(["data", "ls", "--format", "json"]) == 0
    return {row["dataset"]: row for row in json.loads(capsys.readouterr().out)}


def test_a_full_get_lays_out_checks_and_records(env, capsys):
    """spair (no published checksum: its sha256 is recorded, trust on first use), ade20k (a published SHA1), and
    GDF's list into the SPair folder; each loads with its task's loader; ls says verified; a second get is a
    no-op; verify passes."""
    assert listing(capsys)["spair"]["status"] == "missing"
    assert get("spair", "ade20k", "gdf-val-360") == 0
    assert TASKS.get("spair")().split_images(env / "SPair-71k", "test")
    assert TASKS.get("ade20k")().split_images(env / "ADEChallengeData2016", "val")
    assert (env / "SPair-71k" / "spair_71k_val-360.json").is_file()
    lock = json.loads((env.parent / "home" / "data.lock.json").read_text())
    archive = (env / ".downloads" / "SPair-71k.tar.gz").read_bytes()
    assert lock["SPair-71k.tar.gz"]["sha256"] == hashlib.sha256(archive).hexdigest()
    assert "ADEChallengeData2016.zip" not in lock                  # its SHA1 is published: nothing to trust
    rows = listing(capsys)
    assert {name: rows[name]["status"] for name in ("spair", "ade20k", "gdf-val-360", "horse21")} == {
        "spair": "verified", "ade20k": "verified", "gdf-val-360": "verified", "horse21": "missing"}
    assert rows["spair"]["checksums"] == "recorded" and rows["horse21"]["checksums"] == "trust on first use"
    assert get("spair") == 0 and "already in" in capsys.readouterr().out
    assert main(["data", "verify"]) == 0
    assert not list(env.glob(".staging-*"))


def test_resume_after_the_server_drops_the_connection_halfway(env, server, capsys):
    half = len(server.files["SPair-71k.tar.gz"]) // 2
    server.drop_after["SPair-71k.tar.gz"] = half
    assert get("spair") == 2
    error = capsys.readouterr().err
    kept = (env / ".downloads" / "SPair-71k.tar.gz.part").stat().st_size     # whole blocks up to the break
    assert 0 < kept <= half and f"the connection ended after {kept:,} of" in error and "resumes" in error
    assert error.count("\n") == 1 and not (env / "SPair-71k").exists()
    assert get("spair") == 0
    assert server.seen_ranges[-1] == f"bytes={kept}-"              # asked for the rest only
    assert (env / ".downloads" / "SPair-71k.tar.gz").read_bytes() == server.files["SPair-71k.tar.gz"]


def test_a_server_without_range_support_is_read_again_from_the_start(env, server, capsys):
    server.ranges = False
    server.drop_after["SPair-71k.tar.gz"] = len(server.files["SPair-71k.tar.gz"]) // 2
    assert get("spair") == 2
    assert (env / ".downloads" / "SPair-71k.tar.gz.part").stat().st_size > 0
    capsys.readouterr()
    assert get("spair") == 0
    assert "does not resume downloads" in capsys.readouterr().out and server.seen_ranges[-1].startswith("bytes=")
    assert (env / ".downloads" / "SPair-71k.tar.gz").read_bytes() == server.files["SPair-71k.tar.gz"]
    assert TASKS.get("spair")().split_images(env / "SPair-71k", "test")


def test_a_corrupted_byte_is_kept_aside_and_nothing_is_put_in_place(env, server, capsys):
    good = server.files["ADEChallengeData2016.zip"]
    server.files["ADEChallengeData2016.zip"] = good[:100] + bytes([good[100] ^ 1]) + good[101:]
    assert get("ade20k") == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "checksum mismatch — sha1" in error and ".corrupt" in error
    assert (env / ".downloads" / "ADEChallengeData2016.zip.corrupt").is_file()
    assert not (env / "ADEChallengeData2016").exists()
    # trust on first use: the recorded sha256 of the first download is what a later download must match
    assert get("horse21") == 0
    shutil.rmtree(env / "horse_21")
    (env / ".downloads" / "datasets.tar.gz").unlink()
    first = server.files["datasets.tar.gz"]
    server.files["datasets.tar.gz"] = first[:50] + bytes([first[50] ^ 1]) + first[51:]
    assert get("horse21") == 2 and "recorded at its first download" in capsys.readouterr().err


def hostile(kind: str) -> bytes:
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w:gz") as archive:
        data = b"pwned"
        info = tarfile.TarInfo({"dotdot": "SPair-71k/../../evil.txt", "absolute": "/tmp/evil.txt",
                                "link": "SPair-71k/passwd"}[kind])
        if kind == "link":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            archive.addfile(info)
        else:
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return stream.getvalue()


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "link"])
def test_an_archive_entry_that_escapes_is_refused(env, server, capsys, kind):
    server.files["SPair-71k.tar.gz"] = hostile(kind)
    manifest = json.loads(Path(os.environ["DFBENCH_DATA_MANIFEST"]).read_text())
    manifest["datasets"]["spair"]["files"][0]["size"] = len(server.files["SPair-71k.tar.gz"])
    Path(os.environ["DFBENCH_DATA_MANIFEST"]).write_text(json.dumps(manifest))
    assert get("spair") == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "refused" in error
    assert not (env / "SPair-71k").exists() and not (env.parent / "evil.txt").exists()
    assert not list(env.glob(".staging-*"))


def test_an_interrupted_unpack_leaves_nothing_and_a_killed_ones_staging_is_cleared(env, monkeypatch, capsys):
    original = tarfile.TarFile.extractall

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tarfile.TarFile, "extractall", interrupted)
    assert get("spair") == 130
    assert "run the same command again" in capsys.readouterr().err
    assert not (env / "SPair-71k").exists() and not list(env.glob(".staging-*"))
    monkeypatch.setattr(tarfile.TarFile, "extractall", original)
    (env / ".staging-spair-99999" / "unpacked").mkdir(parents=True)       # what kill -9 mid-unpack leaves
    assert get("spair") == 0
    assert not list(env.glob(".staging-*")) and (env / "SPair-71k" / "JPEGImages").is_dir()


def test_verify_finds_a_file_damaged_on_disk(env, capsys):
    assert get("spair", "gdf-val-360") == 0
    pairs = env / "SPair-71k" / "spair_71k_val-360.json"
    pairs.write_bytes(pairs.read_bytes().replace(b"cat", b"dog"))
    capsys.readouterr()
    assert main(["data", "verify", "gdf-val-360", "spair"]) == 1
    out = capsys.readouterr().out
    assert "gdf-val-360: FAILED — spair_71k_val-360.json: checksum mismatch" in out and "spair: ok" in out
    archive = env / ".downloads" / "SPair-71k.tar.gz"
    damaged = archive.read_bytes()
    archive.write_bytes(damaged[:50] + bytes([damaged[50] ^ 1]) + damaged[51:])
    assert main(["data", "verify", "spair"]) == 1 and "recorded at its first download" in capsys.readouterr().out


def test_bad_input_is_one_line(env, tmp_path, server, capsys):
    assert get("spiar") == 2 and "unknown dataset 'spiar': did you mean spair?" in capsys.readouterr().err
    (env).mkdir(parents=True, exist_ok=True)
    (env / "horse_21").write_text("a file")
    assert get("horse21") == 2
    assert "is a file; the dataset needs a folder there" in capsys.readouterr().err
    del server.files["ADEChallengeData2016.zip"]
    assert get("ade20k") == 2 and "HTTP 404" in capsys.readouterr().err
    assert get("spair", extra=["--mirror", "http://127.0.0.1:9"]) == 2
    assert "could not be reached" in capsys.readouterr().err
    assert get("spair", extra=["--dry-run", "--mirror", "http://mirror.example/data"]) == 0
    assert "http://mirror.example/data/SPair-71k.tar.gz" in capsys.readouterr().out
    os.environ["DFBENCH_DATA_MIRROR"] = "http://mirror.example/env/"      # the default of --mirror
    try:
        assert get("spair", extra=["--dry-run"]) == 0
        assert "http://mirror.example/env/SPair-71k.tar.gz" in capsys.readouterr().out
    finally:
        del os.environ["DFBENCH_DATA_MIRROR"]


def limited_get(limit: int) -> subprocess.CompletedProcess:
    """``dfbench data get spair`` with every write past ``limit`` bytes of a file failing (RLIMIT_FSIZE, its
    signal ignored): what a full disk does to a write."""
    script = ("import resource, signal, sys\n"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
              f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
              "from dfbench.cli import main\n"
              "sys.exit(main(['data', 'get', 'spair', '--no-progress']))\n")
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=dict(os.environ))


def test_a_full_disk_leaves_nothing_in_place(env, server):
    """While downloading and, with the archive already there, while unpacking (a 1 kB limit is below every
    mini-set image): one line, exit 2, the dataset not in place, no staging left."""
    done = limited_get(4096)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "disk full while writing" in done.stderr
    assert not (env / "SPair-71k").exists()
    (env / ".downloads").mkdir(parents=True, exist_ok=True)
    (env / ".downloads" / "SPair-71k.tar.gz").write_bytes(server.files["SPair-71k.tar.gz"])
    done = limited_get(1024)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "disk full while writing" in done.stderr
    assert not (env / "SPair-71k").exists() and not list(env.glob(".staging-*"))


def test_kill_9_mid_download_then_the_same_command_resumes(env, server):
    """The server sends half the archive and holds the connection; the download is killed (SIGKILL) once the part
    file has bytes; the same command then asks for the rest and completes."""
    half = len(server.files["SPair-71k.tar.gz"]) // 2
    server.stall_after["SPair-71k.tar.gz"] = half
    process = subprocess.Popen([sys.executable, "-m", "dfbench", "data", "get", "spair", "--no-progress"],
                               env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    part = env / ".downloads" / "SPair-71k.tar.gz.part"
    deadline = time.monotonic() + 60
    while not (part.is_file() and part.stat().st_size >= half - (1 << 16)) and time.monotonic() < deadline:
        time.sleep(0.1)
    process.kill()
    process.wait(timeout=30)
    kept = part.stat().st_size
    assert kept > 0 and not (env / "SPair-71k").exists()
    server.release.set()
    assert get("spair") == 0 and server.seen_ranges[-1] == f"bytes={kept}-"
    assert (env / ".downloads" / "SPair-71k.tar.gz").read_bytes() == server.files["SPair-71k.tar.gz"]


def test_a_suite_names_the_get_line_and_fetches_with_get_data(env, tmp_path, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_text("runs:\n  - {backbone: tiny-sd15, task: spair, selection: [up_blocks.1], "
                     "data_root: \"${DFBENCH_DATA}/SPair-71k\", settings: {resolution: 64}, limit: 2}\n")
    assert main(["suite", str(suite), "--results", str(tmp_path / "r"), "--no-progress"]) == 1
    assert "get it: dfbench data get spair" in capsys.readouterr().err
    assert main(["data", "get", "--suite", str(suite), "--dry-run"]) == 0
    assert "SPair-71k.tar.gz" in capsys.readouterr().out and not (env / "SPair-71k").exists()
    assert main(["suite", str(suite), "--results", str(tmp_path / "r"), "--no-progress", "--get-data"]) == 0
    assert (env / "SPair-71k" / "JPEGImages").is_dir()


def test_the_packaged_manifest_names_the_reference_sources():
    """The official URLs and the checksums the references publish, as the packaged manifest holds them."""
    manifest = load_manifest(Path(__file__).resolve().parents[1] / "dfbench" / "data" / "manifest.json")
    spair, = manifest["spair"].files
    assert (spair.url, spair.size) == ("http://cvlab.postech.ac.kr/research/SPair-71k/data/SPair-71k.tar.gz",
                                       226961117)
    assert manifest["ade20k"].files[0].sha1 == "219e1696abb36c8ba3a3afe7fb2f4b4606a897c7"
    mat, splits = manifest["nyuv2"].files
    assert (mat.size, splits.size, splits.sha256) == (
        2972037809, 2626, "6e081404491a8bfba2f066beaa9713ef6046f9007aa5f799f2a350506a580cee")
    assert manifest["horse21"].files[0].url.endswith("yandex-research/ddpm-segmentation/datasets.tar.gz")
    assert [item.name for item in manifest["cityscapes"].files] == ["gtFine_trainvaltest.zip",
                                                                   "leftImg8bit_trainvaltest.zip"]


def test_nyuv2_files_are_fetched_checked_in_place_and_verified(env, server, tmp_path, capsys):
    """The official .mat (HDF5) and splits.mat, with a published sha256 for splits.mat as the manifest has it: put
    into $DFBENCH_DATA/nyuv2 after the nyuv2 task's check of the official files; the runs read them from there;
    a damaged .mat fails verify."""
    import numpy as np
    from test_depth import write_official_mat

    folder = tmp_path / "official"
    folder.mkdir()
    rng = np.random.default_rng(0)
    write_official_mat(folder, rng.integers(0, 256, (3, 6, 8, 3), dtype=np.uint8),
                       rng.uniform(0.5, 5.0, (3, 6, 8)).astype(np.float32), train=[1, 3], test=[2])
    mat, splits = ((folder / name).read_bytes() for name in ("nyu_depth_v2_labeled.mat", "splits.mat"))
    server.files.update({"nyu_depth_v2_labeled.mat": mat, "splits.mat": splits})
    manifest_path = Path(os.environ["DFBENCH_DATA_MANIFEST"])
    manifest = json.loads(manifest_path.read_text())
    manifest["datasets"]["nyuv2"] = {
        "folder": "nyuv2", "check": {"task": "nyuv2", "split": "test"},
        "files": [{"name": "nyu_depth_v2_labeled.mat", "url": f"{server.url}/nyu_depth_v2_labeled.mat",
                   "size": len(mat)},
                  {"name": "splits.mat", "url": f"{server.url}/splits.mat", "size": len(splits),
                   "sha256": hashlib.sha256(splits).hexdigest()}]}
    manifest_path.write_text(json.dumps(manifest))
    assert get("nyuv2") == 0
    assert [image.name for image, _ in TASKS.get("nyuv2")().split_images(
        TASKS.get("nyuv2")().data_folder(str(env / "nyuv2")), "test")] == ["0002.png"]
    assert not (env / ".downloads" / "splits.mat").exists()          # moved into place, not copied
    damaged = env / "nyuv2" / "nyu_depth_v2_labeled.mat"
    damaged.write_bytes(damaged.read_bytes()[:-5] + b"xxxxx")
    capsys.readouterr()
    assert main(["data", "verify", "nyuv2"]) == 1
    assert "nyu_depth_v2_labeled.mat: checksum mismatch" in capsys.readouterr().out


def test_cityscapes_from_the_two_zips_makes_the_train_id_labels(env, tmp_path, capsys):
    """gtFine_trainvaltest.zip and leftImg8bit_trainvaltest.zip as the site packs them (gtFine/<split>/<city>/ with
    the polygons JSON, leftImg8bit/<split>/<city>/), taken from --from DIR: cityscapesScripts' json2labelImg draws
    the *_labelTrainIds.png (here by hand: road = 0 left, car = 13 right, unlabeled = 255 elsewhere), then the
    cityscapes task's loader reads the folder."""
    import numpy as np
    from PIL import Image

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    annotation = {"imgHeight": 8, "imgWidth": 12, "objects": [
        {"label": "road", "polygon": [[0, 0], [5, 0], [5, 7], [0, 7]]},
        {"label": "car", "polygon": [[8, 2], [11, 2], [11, 5], [8, 5]]}]}
    with zipfile.ZipFile(downloads / "gtFine_trainvaltest.zip", "w") as archive:
        archive.writestr("README", "Cityscapes")
        for split in ("train", "val"):
            archive.writestr(f"gtFine/{split}/aachen/aachen_000000_000019_gtFine_polygons.json",
                             json.dumps(annotation))
    image = io.BytesIO()
    Image.fromarray(np.full((8, 12, 3), 90, np.uint8)).save(image, format="PNG")
    with zipfile.ZipFile(downloads / "leftImg8bit_trainvaltest.zip", "w") as archive:
        for split in ("train", "val"):
            archive.writestr(f"leftImg8bit/{split}/aachen/aachen_000000_000019_leftImg8bit.png", image.getvalue())
    manifest_path = Path(os.environ["DFBENCH_DATA_MANIFEST"])
    manifest = json.loads(manifest_path.read_text())
    manifest["datasets"]["cityscapes"] = load_manifest(
        Path(__file__).resolve().parents[1] / "dfbench" / "data" / "manifest.json")["cityscapes"].__dict__
    entry = manifest["datasets"]["cityscapes"]
    entry["files"] = [{"name": item.name, "url": item.url} for item in entry["files"]]
    entry.pop("name")
    manifest_path.write_text(json.dumps(manifest))
    assert get("cityscapes", extra=["--from", str(downloads)]) == 0
    label = np.asarray(Image.open(env / "cityscapes" / "gtFine" / "val" / "aachen" /
                                  "aachen_000000_000019_gtFine_labelTrainIds.png"))
    assert label[3, 2] == 0 and label[3, 9] == 13 and label[7, 7] == 255
    assert TASKS.get("cityscapes")().split_images(env / "cityscapes", "val")
    capsys.readouterr()
    assert get("cityscapes", extra=["--from", str(tmp_path)]) == 0 and "already in" in capsys.readouterr().out
    shutil.rmtree(env / "cityscapes")
    for name in ("gtFine_trainvaltest.zip", "leftImg8bit_trainvaltest.zip"):
        (env / ".downloads" / name).unlink()
    assert get("cityscapes", extra=["--from", str(tmp_path)]) == 2
    assert "no gtFine_trainvaltest.zip there" in capsys.readouterr().err
