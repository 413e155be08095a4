"""`shitu shrink`: a smaller copy with the same layout, originals never touched."""

import hashlib
import io

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from cli import app
from shitu.gallery import read_gallery
from shitu.imageio import load_rgb

runner = CliRunner()


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_collection(root):
    """A large landscape JPEG stored sideways (EXIF orientation 6), a large PNG, a small JPEG, junk."""
    (root / "tea").mkdir(parents=True)
    (root / "jam" / "deeper").mkdir(parents=True)
    left_red = np.zeros((300, 600, 3), np.uint8)
    left_red[:, :300] = (220, 20, 20)
    left_red[:, 300:] = (20, 20, 220)
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    buffer = io.BytesIO()
    Image.fromarray(left_red).save(buffer, "JPEG", quality=95, exif=exif)
    (root / "tea" / "sideways.jpg").write_bytes(buffer.getvalue())
    Image.new("RGB", (500, 400), (10, 200, 10)).save(root / "jam" / "deeper" / "big.png")
    Image.new("RGB", (60, 40), (200, 200, 10)).save(root / "jam" / "small.jpg")
    (root / "jam" / "broken.jpg").write_bytes(b"not a jpeg")


def test_copies_shrink_upright_keep_paths_and_leave_originals(tmp_path):
    root, out = tmp_path / "catalogue", tmp_path / "copy"
    make_collection(root)
    before = {p: digest(p) for p in root.rglob("*") if p.is_file()}
    result = runner.invoke(app, ["shrink", str(root), "--out", str(out), "--side", "100", "-q"])
    assert result.exit_code == 0, result.output
    assert "2 shrunk, 1 copied unchanged, 1 unreadable skipped" in result.output
    assert "broken.jpg" in result.output
    assert {p: digest(p) for p in root.rglob("*") if p.is_file()} == before
    assert [(i.relpath, i.label) for i in read_gallery(out)] == [
        ("jam/deeper/big.png", "jam"), ("jam/small.jpg", "jam"), ("tea/sideways.jpg", "tea")]
    upright = load_rgb(out / "tea" / "sideways.jpg")
    assert upright.size == (100, 200)  # rotated upright, shorter side 100, aspect kept
    pixels = np.asarray(upright).astype(int)
    assert pixels[20, 50, 0] > 150 and pixels[180, 50, 2] > 150  # red on top after the rotation
    with Image.open(out / "jam" / "deeper" / "big.png") as png:
        assert (png.format, png.size) == ("PNG", (125, 100))
    assert digest(out / "jam" / "small.jpg") == before[root / "jam" / "small.jpg"]


def test_list_files_stay_valid_with_the_copy_as_root(tmp_path):
    root, out = tmp_path / "catalogue", tmp_path / "copy"
    make_collection(root)
    listing = tmp_path / "train.txt"
    listing.write_text("tea/sideways.jpg\tgreen tea\njam/small.jpg\tapricot jam\n", encoding="utf-8")
    result = runner.invoke(app, ["shrink", str(root), "--out", str(out), "--list", str(listing),
                                 "--list", str(listing), "-q"])
    assert result.exit_code == 0, result.output
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "jam/small.jpg", "tea/sideways.jpg"]
    assert [(i.relpath, i.label) for i in read_gallery(out, listing)] == [
        ("jam/small.jpg", "apricot jam"), ("tea/sideways.jpg", "green tea")]


def test_refuses_to_write_inside_the_collection(tmp_path):
    root = tmp_path / "catalogue"
    make_collection(root)
    before = {p: digest(p) for p in root.rglob("*") if p.is_file()}
    for out in (root, root / "small"):
        result = runner.invoke(app, ["shrink", str(root), "--out", str(out), "-q"])
        assert result.exit_code == 1
        assert "inside" in result.output and "Traceback" not in result.output
    assert {p: digest(p) for p in root.rglob("*") if p.is_file()} == before


def test_an_unwritable_destination_is_one_clear_error(tmp_path):
    root = tmp_path / "catalogue"
    make_collection(root)
    blocker = tmp_path / "copy"
    blocker.write_text("a file where the copy should go")
    result = runner.invoke(app, ["shrink", str(root), "--out", str(blocker), "-q"])
    assert result.exit_code == 1
    assert "error: cannot write" in result.output and "Traceback" not in result.output
    assert blocker.read_text() == "a file where the copy should go"


def test_lower_quality_gives_smaller_copies(tmp_path):
    from shitu.shrink import shrink_file

    rng = np.random.default_rng(0)
    source = tmp_path / "noisy.jpg"
    Image.fromarray(rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)).save(source, quality=95)
    sizes = []
    for quality in (40, 90):
        target = tmp_path / f"q{quality}" / "noisy.jpg"
        assert shrink_file(source, target, 150, quality)  # even when the decoder already halves it
        assert Image.open(target).size == (150, 150)
        sizes.append(target.stat().st_size)
    assert sizes[0] < 0.7 * sizes[1]


def test_shrink_never_writes_through_a_symlink_into_the_source(tmp_path):
    root, out = tmp_path / "catalogue", tmp_path / "copy"
    make_collection(root)
    out.mkdir()
    (out / "jam").symlink_to(root / "jam")  # a sub-folder of --out that is the collection's own
    before = {p: digest(p) for p in root.rglob("*") if p.is_file()}
    result = runner.invoke(app, ["shrink", str(root), "--out", str(out), "--side", "32", "-q"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "error:" in result.output and "inside the collection" in result.output
    assert {p: digest(p) for p in root.rglob("*") if p.is_file()} == before
    assert not (out / "tea").exists()  # every target is checked before the first is written


def test_shrink_refuses_an_out_folder_that_contains_the_source(tmp_path):
    parent = tmp_path / "shop"
    root = parent / "Milk"
    (root / "Milk" / "Milk").mkdir(parents=True)
    Image.new("RGB", (300, 200), (200, 10, 10)).save(root / "Milk" / "Banana_001.jpg")
    Image.new("RGB", (300, 200), (10, 200, 10)).save(root / "Milk" / "Milk" / "Banana_001.jpg")
    before = {p: digest(p) for p in parent.rglob("*") if p.is_file()}
    result = runner.invoke(app, ["shrink", str(root), "--out", str(parent), "--side", "32", "-q"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "contains the collection" in result.output
    assert {p: digest(p) for p in parent.rglob("*") if p.is_file()} == before
