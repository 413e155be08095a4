"""Hostile input files: every bad one is named with its reason, every good one is kept, nothing crashes."""

import io
import json
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from cli import app
from shitu.errors import BadImage, ShituError
from shitu.gallery import read_gallery
from shitu.imageio import load_rgb
from shitu.index import Index
from shitu.index.database import Database
from tests.conftest import solid

runner = CliRunner()
FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
QUIET_PILLOW = pytest.mark.filterwarnings("ignore::UserWarning")  # "Corrupt EXIF data" and the like


def shitu(*args):
    return runner.invoke(app, [str(a) for a in args])


def png_header_only(width, height) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels and holds none: a decompression bomb's header."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b""))
            + chunk(b"IEND", b""))


def jpeg_bytes(image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **options)
    return buffer.getvalue()


def write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_corpus(root):
    """Good and bad files in the gallery layout; returns (good relpaths, {bad relpath: reason})."""
    solid(root / "plain" / "red.png", (220, 30, 30))
    Image.new("RGBA", (20, 10), (0, 200, 0, 90)).save(write(root / "alpha" / "rgba.png", b""))
    Image.fromarray(np.full((10, 20), 40000, dtype=np.uint16)).save(write(root / "deep" / "16bit.png", b""))
    write(root / "print" / "cmyk.jpg", jpeg_bytes(Image.new("CMYK", (20, 10), (0, 200, 200, 0))))
    write(root / "gray" / "gray.jpg", jpeg_bytes(Image.new("L", (20, 10), 128)))
    exif = Image.Exif()
    exif[0x0112] = 6
    write(root / "phone" / "rotated.jpg", jpeg_bytes(Image.new("RGB", (40, 20), (0, 0, 200)), exif=exif))
    solid(root / "Crème brûlée" / "café au lait 1.png", (200, 180, 120))
    solid(root / "dups" / "a.png", (10, 120, 240))
    write(root / "dups" / "b.png", (root / "dups" / "a.png").read_bytes())
    solid(root / "loop" / "x.png", (90, 90, 90))
    (root / "loop" / "again").symlink_to(root / "loop")  # a folder loop: walked once
    good = {"plain/red.png", "alpha/rgba.png", "deep/16bit.png", "print/cmyk.jpg", "gray/gray.jpg",
            "phone/rotated.jpg", "Crème brûlée/café au lait 1.png", "dups/a.png", "dups/b.png",
            "loop/x.png"}

    noise = jpeg_bytes(Image.effect_noise((120, 120), 60).convert("RGB"), quality=90)
    write(root / "plain" / "truncated.jpg", noise[:len(noise) // 3])
    write(root / "plain" / "empty.jpg", b"")
    write(root / "plain" / "notes.jpg", "shopping list: milk, eggs\n".encode())
    write(root / "plain" / "huge.png", png_header_only(30000, 30000))
    (root / "loop" / "self.jpg").symlink_to(root / "loop" / "self.jpg")  # a link to itself
    bad = {"plain/truncated.jpg": "damaged", "plain/empty.jpg": "not an image",
           "plain/notes.jpg": "not an image", "plain/huge.png": "pixels", "loop/self.jpg": "symbolic links"}
    return good, bad


def assert_each_bad_file_named(stderr, bad):
    lines = stderr.splitlines()
    for relpath, reason in bad.items():
        assert any(relpath in line and reason in line for line in lines), (relpath, stderr)


def test_build_add_and_query_survive_a_hostile_corpus(tmp_path, tiny_model):
    root, index = tmp_path / "gallery", tmp_path / "index"
    good, bad = make_corpus(root)
    result = shitu("build-index", root, "--index", index, "--model", tiny_model, "-q")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert_each_bad_file_named(result.stderr, bad)
    assert f"indexed {len(good)} images" in result.stderr and f"{len(bad)} unreadable skipped" in result.stderr
    assert {r.path for r in Database(index).all_rows()} == good

    more_bad = {"more/cut.jpg": "damaged", "more/zero.png": "not an image"}
    solid(root / "more" / "ok.png", (30, 30, 200))
    write(root / "more" / "cut.jpg", (root / "plain" / "truncated.jpg").read_bytes())
    write(root / "more" / "zero.png", b"")
    result = shitu("add", root / "more", "--index", index, "--model", tiny_model, "-q")
    assert result.exit_code == 0, result.output
    assert_each_bad_file_named(result.stderr, more_bad)
    assert "1 new images added" in result.stderr and "2 unreadable skipped" in result.stderr
    result = shitu("add", root / "more" / "cut.jpg", "--label", "more", "--index", index,
                   "--model", tiny_model)
    assert result.exit_code == 1 and "could be read" in result.stderr and "cut.jpg" in result.stderr
    assert Database(index).count() == len(good) + 1

    queries = [root / "phone" / "rotated.jpg", root / "plain" / "empty.jpg", root / "plain" / "huge.png",
               root / "Crème brûlée" / "café au lait 1.png", root / "loop" / "self.jpg"]
    result = shitu("query", *queries, "--index", index, "--model", tiny_model, "--json")
    assert result.exit_code == 1 and "Traceback" not in result.output
    answers = json.loads(result.stdout)
    assert [a["label"] for a in answers] == ["phone", None, None, "Crème brûlée", None]
    assert all(("error" in a) == (a["label"] is None) for a in answers)
    assert_each_bad_file_named(result.stderr, {"empty.jpg": "not an image", "huge.png": "pixels",
                                               "self.jpg": "symbolic links"})


def test_duplicates_are_kept_as_separate_rows(tmp_path, tiny_model):
    root, index = tmp_path / "gallery", tmp_path / "index"
    make_corpus(root)
    shitu("build-index", root, "--index", index, "--model", tiny_model, "-q")
    result = shitu("query", root / "dups" / "a.png", "--index", index, "--model", tiny_model, "--json",
                   "--topk", 2)
    top = json.loads(result.stdout)[0]["results"]
    assert {m["path"] for m in top} == {"dups/a.png", "dups/b.png"} and top[0]["score"] == top[1]["score"]


def test_list_file_naming_a_path_twice_is_refused(tmp_path, tiny_model):
    solid(tmp_path / "img" / "a.png", (1, 2, 3))
    listing = tmp_path / "list.txt"
    listing.write_text("img/a.png\tcola\nimg/./a.png\tfanta\n", encoding="utf-8")
    result = shitu("build-index", tmp_path, "--list", listing, "--index", tmp_path / "i",
                   "--model", tiny_model)
    assert result.exit_code == 1 and "line 2: 'img/a.png' is already listed on line 1" in result.stderr


# -- fuzzing -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def sample_images() -> dict[str, bytes]:
    """Small valid files of the formats galleries contain, to mutate."""
    picture = Image.effect_noise((24, 16), 50).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 8
    samples = {"jpeg": jpeg_bytes(picture, quality=80, exif=exif)}
    for fmt, mode in (("PNG", "RGBA"), ("GIF", "P"), ("BMP", "RGB"), ("TIFF", "CMYK"), ("WEBP", "RGB")):
        buffer = io.BytesIO()
        picture.convert(mode).save(buffer, fmt)
        samples[fmt.lower()] = buffer.getvalue()
    return samples


SAMPLES = sample_images()
MAGIC = [b"", b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*",
         b"RIFF\0\0\0\0WEBP"]


def assert_rgb_or_bad_image(path):
    try:
        image = load_rgb(path)
    except BadImage:
        return
    assert image.mode == "RGB" and min(image.size) >= 1


@QUIET_PILLOW
@FUZZ
@given(prefix=st.sampled_from(MAGIC), body=st.binary(max_size=1024))
def test_load_rgb_on_random_bytes(scratch, prefix, body):
    path = scratch / "random.jpg"
    path.write_bytes(prefix + body)
    assert_rgb_or_bad_image(path)


@QUIET_PILLOW
@FUZZ
@given(kind=st.sampled_from(sorted(SAMPLES)), cut=st.one_of(st.just(1.0), st.floats(0.05, 1.0)),
       flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=6))
def test_load_rgb_on_mutated_images(scratch, kind, cut, flips):
    data = bytearray(SAMPLES[kind])
    for where, value in flips:  # past the magic number, which the random-bytes test covers
        data[8 + int(where * (len(data) - 8))] = value
    path = scratch / f"mutated.{kind}"
    path.write_bytes(bytes(data[:max(1, int(cut * len(data)))]))
    assert_rgb_or_bad_image(path)


LINE_TEXT = st.lists(st.sampled_from(list("ab/\\. \t#\r\x00é字\u2028") + ["..", "../", "/etc", "C:\\"]),
                     max_size=12).map("".join)


def assert_items_or_shitu_error(root, list_file):
    try:
        items = read_gallery(root, list_file)
    except ShituError:
        return
    relpaths = [item.relpath for item in items]
    assert relpaths == sorted(relpaths) and len(set(relpaths)) == len(relpaths)
    for item in items:
        assert item.relpath and not item.relpath.startswith(("/", "../")) and item.relpath != ".."
        assert item.label and item.label == item.label.strip()


@FUZZ
@given(lines=st.lists(LINE_TEXT, max_size=8))
def test_list_file_parser_on_random_text(scratch, lines):
    list_file = scratch / "list.txt"
    list_file.write_text("\n".join(lines), encoding="utf-8")
    assert_items_or_shitu_error(scratch, list_file)


@FUZZ
@given(data=st.binary(max_size=300))
def test_list_file_parser_on_random_bytes(scratch, data):
    list_file = scratch / "list.txt"
    list_file.write_bytes(data)
    assert_items_or_shitu_error(scratch, list_file)


# -- models and index types that cannot work (issue #21) ---------------------------------------------
def variant_model(tiny_model, path, metadata=None, nan=False):
    """The mean-colour model with some metadata replaced, or with NaN output."""
    import onnx
    from onnx import helper

    from shitu.embed import set_shitu_metadata

    model = onnx.load(str(tiny_model))
    if nan:  # 0 / 0 before the normalisation: every embedding is NaN
        graph = model.graph
        graph.node[-1].input[0] = "nan"
        graph.node.insert(len(graph.node) - 1, helper.make_node("Sub", ["flat", "flat"], ["zero"]))
        graph.node.insert(len(graph.node) - 1, helper.make_node("Div", ["zero", "zero"], ["nan"]))
    meta = {e.key: e.value for e in model.metadata_props if e.key.startswith("shitu.")}
    set_shitu_metadata(model, {**meta, **(metadata or {})})
    onnx.save(model, str(path))
    return path


BAD_METADATA = {
    "embedding_size 128": ({"shitu.embedding_size": "128"}, "its output has shape"),
    "input_size 100": ({"shitu.input_size": "100"}, "its input has shape"),
    "input_size 0": ({"shitu.input_size": "0"}, "input_size 0 must be >= 1"),
    "one mean value": ({"shitu.mean": "[0.5]"}, "not three finite numbers"),
    "mean a string": ({"shitu.mean": '"abc"'}, "not three finite numbers"),
    "std zero": ({"shitu.std": "[0, 0, 0]"}, "must be positive"),
    "std NaN": ({"shitu.std": "[NaN, 1, 1]"}, "not three finite numbers"),
}


@pytest.mark.parametrize("case", sorted(BAD_METADATA))
def test_model_with_impossible_metadata_is_refused_as_not_a_shitu_model(tmp_path, tiny_model, case):
    metadata, message = BAD_METADATA[case]
    model = variant_model(tiny_model, tmp_path / "bad.onnx", metadata)
    solid(tmp_path / "g" / "red" / "a.png", (220, 30, 30))
    result = shitu("build-index", tmp_path / "g", "--index", tmp_path / "index", "--model", model, "-q")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.stderr.startswith("error: ") and "is not a shitu model" in result.stderr
    assert message in result.stderr, result.stderr
    assert not (tmp_path / "index" / "gallery.db").exists()


class ShapeShifter:
    """A session whose graph leaves its output size open and then makes vectors of another size."""

    def run(self, names, feeds):
        return [np.ones((len(next(iter(feeds.values()))), 5), dtype=np.float32)]


def test_model_whose_output_size_disagrees_at_run_time_is_refused(tiny_model):
    from shitu.embed import Embedder

    embedder = Embedder(tiny_model)
    batch = np.zeros((2, 3, 32, 32), dtype=np.float32)
    with pytest.raises(ShituError, match=r"makes vectors of shape \[5\], its metadata says 3"):
        embedder.embed_arrays(batch, ShapeShifter())


def test_model_that_emits_nan_is_refused_and_the_index_is_kept(tmp_path, tiny_model):
    gallery, index = tmp_path / "g", tmp_path / "index"
    solid(gallery / "red" / "a.png", (220, 30, 30))
    solid(gallery / "blue" / "b.png", (20, 40, 220))
    assert shitu("build-index", gallery, "--index", index, "--model", tiny_model, "-q").exit_code == 0
    before = {p.name: p.read_bytes() for p in index.iterdir()}
    model = variant_model(tiny_model, tmp_path / "nan.onnx", nan=True)
    for target in (index, tmp_path / "fresh"):
        result = shitu("build-index", gallery, "--index", target, "--model", model, "-q")
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert result.stderr.startswith("error: ") and "NaN, infinite or zero embeddings" in result.stderr
    assert {p.name: p.read_bytes() for p in index.iterdir()} == before
    assert not (tmp_path / "fresh" / "gallery.db").exists()
    result = shitu("query", gallery / "red" / "a.png", "--index", tmp_path / "fresh", "--model", model)
    assert result.exit_code == 1 and "Traceback" not in result.output


@pytest.mark.parametrize("factory", ["IDMap2,Flat", "IDMap,Flat", "IDMap2,HNSW32"])
def test_index_type_with_its_own_id_map_is_one_error(tmp_path, tiny_model, factory):
    solid(tmp_path / "g" / "red" / "a.png", (220, 30, 30))
    result = shitu("build-index", tmp_path / "g", "--index", tmp_path / "index", "--model", tiny_model,
                   "--index-type", factory, "-q")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.stderr.startswith(f"error: index type '{factory}' cannot hold shitu's ids")
    assert not (tmp_path / "index" / "gallery.db").exists()


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A 600 KB tmpfs: a real full disk (root only; skipped where mounting is not allowed)."""
    import os
    import subprocess

    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("a real full disk needs root and permission to mount a tmpfs")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_really_full_disk_is_one_error_and_keeps_the_index(tmp_path, tiny_model, tiny_filesystem):
    import os


    gallery, index = tmp_path / "g", tiny_filesystem / "index"
    for n in range(4):
        solid(gallery / f"label{n % 2}" / f"{n}.png", (40 * n, 200 - 30 * n, 90), size=(16, 12))
    assert shitu("build-index", gallery, "--index", index, "--model", tiny_model, "-q").exit_code == 0
    before = {p.name: p.read_bytes() for p in index.iterdir()}
    fill = os.open(tiny_filesystem / "fill", os.O_WRONLY | os.O_CREAT)  # every byte the tmpfs has left
    try:
        while os.write(fill, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fill)
    for n in range(40):  # enough new rows to need new database pages
        solid(gallery / "label0" / f"new{n}.png", (5 * n, 90, 200 - 4 * n), size=(16, 12))
    for args in (["build-index", gallery], ["add", gallery / "label0"]):
        result = shitu(*args, "--index", index, "--model", tiny_model, "-q")
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert result.stderr.startswith("error: index ") and len(result.stderr.splitlines()) == 1
        assert "No space left on device" in result.stderr or "disk is full" in result.stderr, result.stderr
        assert {p.name: p.read_bytes() for p in index.iterdir()} == before
    assert Index(index, tiny_model).check().ok


# -- files and folders that are not what they seem (adversarial pass of 2026-12-01) ------------------
REPO_ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def run_cli(*args, timeout=30, user=None):
    """The real CLI in a subprocess, bounded by ``timeout`` so a hang fails the test instead of hanging it;
    ``user`` runs it through ``setpriv`` as that uid."""
    import subprocess
    import sys

    command = [sys.executable, str(REPO_ROOT / "cli.py"), *map(str, args)]
    if user is not None:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)


def small_gallery(root):
    solid(root / "red" / "a.png", (220, 30, 30))
    solid(root / "blue" / "b.png", (20, 40, 220))
    return root


def test_build_never_hangs_on_a_fifo_or_a_device_or_reads_a_huge_sparse_file(tmp_path, tiny_model):
    import os

    root = small_gallery(tmp_path / "g")
    os.mkfifo(root / "red" / "fifo.jpg")
    (root / "red" / "zero.jpg").symlink_to("/dev/zero")
    with open(root / "blue" / "sparse.jpg", "wb") as handle:
        handle.truncate(64 << 30)  # 64 GB of nothing: reading it would take minutes
    result = run_cli("build-index", root, "--index", tmp_path / "i", "--model", tiny_model, "-q", timeout=20)
    assert result.returncode == 0, result.stderr
    assert "indexed 2 images" in result.stderr and "3 unreadable skipped" in result.stderr
    assert_each_bad_file_named(result.stderr, {"fifo.jpg": "a FIFO", "zero.jpg": "a character device",
                                               "sparse.jpg": "larger than any image file"})


def test_a_nul_byte_in_a_list_path_is_skipped_with_a_warning(tmp_path, tiny_model):
    root = small_gallery(tmp_path / "g")
    listing = tmp_path / "nul.list"
    listing.write_text("red/a.png\tred\nre\0d/x.png\tred\nblue/b.png\tblue\n", encoding="utf-8")
    result = shitu("build-index", root, "--list", listing, "--index", tmp_path / "i", "--model", tiny_model, "-q")
    assert result.exit_code == 0, result.output
    assert "NUL byte" in result.stderr and "indexed 2 images" in result.stderr and "1 unreadable" in result.stderr


def test_an_unlistable_label_folder_is_named_in_a_warning(tiny_model):
    import os
    import shutil
    import tempfile

    nobody = None
    if os.geteuid() == 0:  # root lists a chmod-000 folder anyway: run the CLI as nobody
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: cannot drop to a user that a chmod 000 stops")
        nobody = 65534
    scratch = tempfile.mkdtemp(prefix="shitu-perm-")  # pytest's own tmp folders are private to root
    try:
        top = __import__("pathlib").Path(scratch)
        top.chmod(0o777)
        model = top / "model.onnx"
        shutil.copy(tiny_model, model)
        root = small_gallery(top / "g")
        solid(root / "garlic" / "c.png", (240, 240, 235))
        if nobody is not None:
            for path in [top, *top.rglob("*")]:
                os.chown(path, nobody, nobody)
        (root / "garlic").chmod(0)
        result = run_cli("build-index", root, "--index", top / "i", "--model", model, "-q", user=nobody)
        (root / "garlic").chmod(0o755)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    assert result.returncode == 0, result.stderr
    assert "indexed 2 images" in result.stderr
    assert any(line.startswith("warning: cannot read folder") and "garlic" in line
               for line in result.stderr.splitlines()), result.stderr


def test_a_link_back_to_the_gallery_root_makes_no_label(tmp_path, tiny_model):
    root = small_gallery(tmp_path / "g")
    (root / "loop").symlink_to(".")
    (root / "red" / "up").symlink_to("..")
    result = shitu("build-index", root, "--index", tmp_path / "i", "--model", tiny_model, "-q")
    assert result.exit_code == 0, result.output
    assert {(r.path, r.label) for r in Database(tmp_path / "i").all_rows()} == {
        ("blue/b.png", "blue"), ("red/a.png", "red")}
    assert "links back to the gallery folder" in result.stderr


def test_non_utf8_file_names_are_skipped_by_name_and_json_stays_utf8(tmp_path, tiny_model):
    import os

    root = small_gallery(tmp_path / "g")
    odd = os.path.join(os.fsencode(root / "red"), b"caf\xe9.png")
    with open(odd, "wb") as handle:
        handle.write((root / "red" / "a.png").read_bytes())
    os.makedirs(os.path.join(os.fsencode(root), b"k\xff"))
    index = tmp_path / "i"
    result = run_cli("build-index", root, "--index", index, "--model", tiny_model, "-q")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "indexed 2 images" in result.stderr
    assert "caf\\xe9.png" in result.stderr and "k\\xff" in result.stderr and "not valid UTF-8" in result.stderr

    (root / "red" / "new.png").write_bytes((root / "red" / "a.png").read_bytes())
    result = run_cli("add", root / "red", "--index", index, "--model", tiny_model, "-q")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "1 new images added" in result.stderr and "caf\\xe9.png" in result.stderr

    import subprocess
    import sys
    out = subprocess.run([sys.executable, str(REPO_ROOT / "cli.py"), "query", os.fsdecode(odd), "--index", index,
                          "--model", str(tiny_model), "--json"], capture_output=True, timeout=30)
    answers = json.loads(out.stdout.decode("utf-8"))  # strict UTF-8: raises on a raw \xe9 byte
    assert out.returncode == 0 and answers[0]["image"].endswith("caf\\xe9.png") and answers[0]["label"] == "red"


def test_a_backslash_in_a_list_path_is_part_of_the_file_name(tmp_path, tiny_model):
    root = small_gallery(tmp_path / "g")
    (root / "red" / "x\\y.png").write_bytes((root / "red" / "a.png").read_bytes())
    listing = tmp_path / "bs.list"
    listing.write_text("red/x\\y.png\tred\nblue/b.png\tblue\n", encoding="utf-8")
    items = read_gallery(root, listing)
    assert [i.relpath for i in items] == ["blue/b.png", "red/x\\y.png"] and items[1].path.is_file()
    index = tmp_path / "i"
    assert shitu("build-index", root, "--list", listing, "--index", index, "--model", tiny_model, "-q").exit_code == 0
    result = shitu("add", root / "red" / "x\\y.png", "--label", "red", "--index", index, "--model", tiny_model, "-q")
    assert result.exit_code == 0 and "1 unchanged" in result.stderr, result.output
    assert Database(index).count() == 2


def test_adding_a_non_utf8_file_by_name_is_one_error_and_changes_nothing(tmp_path, tiny_model):
    import os

    root = small_gallery(tmp_path / "g")
    index = tmp_path / "i"
    assert shitu("build-index", root, "--index", index, "--model", tiny_model, "-q").exit_code == 0
    odd = os.path.join(os.fsencode(root / "red"), b"k\xff.png")
    with open(odd, "wb") as handle:
        handle.write((root / "red" / "a.png").read_bytes())
    result = shitu("add", os.fsdecode(odd), "--label", "red", "--index", index, "--model", tiny_model, "-q")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.splitlines() == [f"error: {root / 'red'}/k\\xff.png: the file name (or label) is not "
                                          f"valid UTF-8, which an index cannot store; rename it"]
    assert Database(index).count() == 2
