"""Every kind of image a user may hand us becomes upright 8-bit RGB, or a clear BadImage."""

import numpy as np
import pytest
from PIL import Image

from shitu.errors import BadImage
from shitu.imageio import load_rgb, resize_square


@pytest.mark.parametrize("mode", ["RGB", "L", "1", "P", "CMYK", "RGBA", "LA", "I", "F", "I;16"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    source = Image.new("RGB", (20, 10), (200, 120, 40)).convert(mode)
    path = tmp_path / f"img_{mode.replace(';', '')}.{'tif' if mode in ('I', 'F', 'CMYK', 'I;16') else 'png'}"
    source.save(path)
    image = load_rgb(path)
    assert image.mode == "RGB" and image.size == (20, 10)


def test_sixteen_bit_png_keeps_its_brightness(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(path)
    assert abs(int(np.asarray(load_rgb(path))[0, 0, 0]) - 128) <= 1


def test_transparency_is_composited_over_white(tmp_path):
    path = tmp_path / "alpha.png"
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(path)
    assert np.asarray(load_rgb(path)).min() == 255


def test_palette_with_transparency(tmp_path):
    path = tmp_path / "palette.gif"
    image = Image.new("P", (4, 4), 0)
    image.putpalette([10, 20, 30] * 256)
    image.info["transparency"] = 0
    image.save(path, transparency=0)
    assert np.asarray(load_rgb(path)).min() == 255


def test_exif_rotation_is_applied(tmp_path):
    # A 40x20 picture, left half red, stored with "rotate 90 CW to display" (orientation 6).
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    upright = np.asarray(load_rgb(path))
    assert upright.shape == (40, 20, 3)
    assert upright[5, 10, 0] > 200 and upright[35, 10, 0] < 60  # red now on top


def test_draft_mode_downscales_large_jpegs_but_not_below_the_input(tmp_path):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (2000, 1500), (10, 200, 10)).save(path, quality=90)
    image = load_rgb(path, min_side=224)
    assert 224 <= min(image.size) < 1500
    assert resize_square(image, 224).shape == (224, 224, 3)


@pytest.mark.parametrize("content,reason", [
    (b"", "not an image"),
    (b"hello, I am text pretending to be a photo", "not an image"),
])
def test_not_images_are_refused(tmp_path, content, reason):
    path = tmp_path / "fake.jpg"
    path.write_bytes(content)
    with pytest.raises(BadImage, match=reason):
        load_rgb(path)


def test_truncated_jpeg_is_refused(tmp_path):
    good = tmp_path / "good.jpg"
    Image.effect_noise((200, 200), 60).convert("RGB").save(good, quality=90)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[:1500])
    with pytest.raises(BadImage, match="damaged"):
        load_rgb(cut)


def test_decompression_bomb_is_refused(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("1", (12000, 12000)).save(path)  # tiny file, 144 MP declared
    with pytest.raises(BadImage, match="pixels"):
        load_rgb(path)


def test_missing_file(tmp_path):
    with pytest.raises(BadImage, match="no such file"):
        load_rgb(tmp_path / "nope.jpg")


def test_a_108_megapixel_jpeg_fits_after_draft_decoding(tmp_path):
    path = tmp_path / "phone.jpg"
    Image.new("L", (12000, 9000), 128).save(path, quality=50)  # a 108 MP phone photo, in gray to be quick
    image = load_rgb(path, 160)
    assert image.mode == "RGB" and image.size == (1500, 1125)  # decoded at 1/8 scale, as the limit assumes
    with pytest.raises(BadImage, match="80 MP limit"):
        load_rgb(path)  # decoded in full it would be too large


def test_a_float_tiff_in_zero_to_one_keeps_its_brightness(tmp_path):
    path = tmp_path / "float01.tif"
    Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32), "F").save(path)
    assert abs(int(np.asarray(load_rgb(path))[0, 0, 0]) - 128) <= 1
    path = tmp_path / "float255.tif"
    Image.fromarray(np.full((8, 8), 200.0, dtype=np.float32), "F").save(path)
    assert int(np.asarray(load_rgb(path))[0, 0, 0]) == 200
