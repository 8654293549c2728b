"""Image loading and the reference's input convention (BGR, its mean/std, truncated box crop)."""
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from sglib.data.preprocess import CVNET, IMAGENET, ImageReadError, crop_to_box, load_image, load_network_input, to_network_input


def test_bgr_and_statistics_naive():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3)).astype(np.uint8)
    x = to_network_input(rgb, min_side=None)  # tiny on purpose: no upsampling, pixel-exact checks
    assert x.shape == (1, 3, 5, 7) and x.dtype == torch.float32
    mean_bgr, std_bgr = (0.406, 0.456, 0.485), (0.225, 0.224, 0.229)
    for c, src in enumerate((2, 1, 0)):                    # channel 0 of the input is blue
        expected = (rgb[:, :, src] / 255.0 - mean_bgr[c]) / std_bgr[c]
        assert np.allclose(x[0, c].numpy(), expected, atol=1e-6)
    y = to_network_input(rgb, norm=IMAGENET, min_side=None)
    assert np.allclose(y[0, 0].numpy(), (rgb[:, :, 0] / 255.0 - 0.485) / 0.229, atol=1e-6)
    # the two conventions normalise each physical colour identically, only the order differs
    assert torch.allclose(x.flip(1), y, atol=1e-6)
    assert CVNET.bgr and not IMAGENET.bgr


def test_query_crop_truncates_like_the_reference():
    img = np.arange(20 * 30 * 3).reshape(20, 30, 3).astype(np.uint8)
    crop = crop_to_box(img, (2.9, 3.7, 10.2, 15.99))
    assert np.array_equal(crop, img[3:15, 2:10])
    assert to_network_input(img, bbx=(2.9, 3.7, 10.2, 15.99), min_side=None).shape == (1, 3, 12, 8)
    with pytest.raises(ValueError, match="empty region"):
        crop_to_box(img, (5, 5, 5.5, 9))
    with pytest.raises(ValueError, match="x1, y1, x2, y2"):
        crop_to_box(img, (1, 2, 3))


def test_max_side_downscales_long_side():
    img = np.zeros((100, 300, 3), np.uint8)
    assert to_network_input(img, max_side=150).shape == (1, 3, 50, 150)


def test_file_errors(tmp_path):
    with pytest.raises(ImageReadError, match="not found"):
        load_image(tmp_path / "missing.jpg")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageReadError, match="could not decode"):
        load_network_input(tmp_path / "corrupt.jpg")
    good = tmp_path / "synthetic.png"
    Image.fromarray(np.full((4, 6, 3), 200, np.uint8)).save(good)
    assert load_image(good).shape == (4, 6, 3)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        to_network_input(np.zeros((4, 6)))


# ------------------------------------------------------------------ every PIL mode -> 8-bit RGB
# Each case: (file name, PIL image built from SYNTHETIC values, expected (H, W, 3) uint8 RGB).

def _grey(values):
    a = np.asarray(values, np.uint8)
    return np.repeat(a[:, :, None], 3, axis=2)


def _mode_cases():
    u16 = np.array([[0, 257 * 100], [65535, 1000]], np.uint16)
    yield "i16.png", Image.fromarray(u16), _grey([[0, 100], [255, 4]])           # PNG opens as I;16
    # 257 * 200 / 256 would round to 201: only a division by 257 gives 200
    yield "i16_200.png", Image.fromarray(np.array([[257 * 200, 0]], np.uint16)), _grey([[200, 0]])
    yield "i16b.tif", Image.fromarray(u16).convert("I").convert("I;16B"), _grey([[0, 100], [255, 4]])
    yield "i32_16bit.tif", Image.fromarray(u16.astype(np.int32), "I"), _grey([[0, 100], [255, 4]])
    big = np.array([[0, 1_000_000], [2_000_000, -5]], np.int32)                  # above 16 bits: by its max
    yield "i32_big.tif", Image.fromarray(big, "I"), _grey([[0, 128], [255, 0]])
    unit = np.array([[0.0, 0.5], [1.0, 0.2]], np.float32)                        # max <= 1: [0, 1] range
    yield "f_unit.tif", Image.fromarray(unit, "F"), _grey([[0, 128], [255, 51]])
    dim = np.array([[0.0, 0.5]], np.float32)                                      # max < 1: still the [0, 1] range
    yield "f_dim.tif", Image.fromarray(dim, "F"), _grey([[0, 128]])
    wide = np.array([[0.0, 2.0], [4.0, np.nan]], np.float32)                     # max > 1: scaled by max
    yield "f_wide.tif", Image.fromarray(wide, "F"), _grey([[0, 128], [255, 0]])
    pal = Image.new("P", (2, 1))
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.putdata([0, 1])
    yield "palette.png", pal, np.array([[[10, 20, 30], [200, 100, 50]]], np.uint8)
    rgba = np.array([[[10, 20, 30, 0], [40, 50, 60, 255]]], np.uint8)           # alpha dropped, colour kept
    yield "rgba.png", Image.fromarray(rgba, "RGBA"), rgba[:, :, :3]
    yield "la.png", Image.fromarray(np.array([[[70, 0], [90, 128]]], np.uint8), "LA"), _grey([[70, 90]])
    pa = pal.convert("PA")
    yield "pa.tif", pa, np.array([[[10, 20, 30], [200, 100, 50]]], np.uint8)
    cmyk = Image.fromarray(np.array([[[0, 0, 0, 0], [255, 0, 0, 0]]], np.uint8), "CMYK")
    yield "cmyk.tif", cmyk, np.array([[[255, 255, 255], [0, 255, 255]]], np.uint8)
    yield "bilevel.png", Image.fromarray(np.array([[0, 255]], np.uint8)).convert("1"), _grey([[0, 255]])
    yield "grey.png", Image.fromarray(np.array([[3, 250]], np.uint8)), _grey([[3, 250]])


@pytest.mark.parametrize("name,image,expected", list(_mode_cases()), ids=[c[0] for c in _mode_cases()])
def test_every_mode_is_read_as_8bit_rgb(tmp_path, name, image, expected):
    path = tmp_path / name
    image.save(path)
    got = load_image(path)
    assert got.dtype == np.uint8 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


# ------------------------------------------------------------------ decompression bombs

def _png_claiming(path, width, height):
    """A valid 1x1 grey PNG whose IHDR chunk is patched to claim width x height (CRC recomputed)."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def test_decompression_bomb_header_is_refused_before_decoding(tmp_path):
    bomb = _png_claiming(tmp_path / "bomb.png", 12000, 10000)      # 120 M pixels: over sglib's 100 M
    with pytest.raises(ImageReadError, match=r"12000x10000 = 120000000 pixels, more than the limit of 100000000"):
        load_image(bomb)
    huge = _png_claiming(tmp_path / "huge.png", 20000, 10000)      # 200 M pixels: PIL's own refusal
    with pytest.raises(ImageReadError, match=r"200000000 pixels.*limit"):
        load_network_input(huge)


def test_pixel_budget_argument_and_environment(tmp_path, monkeypatch):
    path = tmp_path / "grey.png"
    Image.fromarray(np.full((100, 100), 7, np.uint8)).save(path)
    with pytest.raises(ImageReadError, match=r"10000 pixels, more than the limit of 5000 pixels"):
        load_image(path, max_pixels=5000)
    assert load_image(path, max_pixels=10000).shape == (100, 100, 3)
    monkeypatch.setenv("SGLIB_MAX_PIXELS", "9999")
    with pytest.raises(ImageReadError, match="limit of 9999 pixels"):
        load_network_input(path)
    assert load_network_input(path, max_pixels=10000).shape == (1, 3, 100, 100)
    monkeypatch.setenv("SGLIB_MAX_PIXELS", "lots")
    with pytest.raises(ValueError, match="SGLIB_MAX_PIXELS must be a positive integer"):
        load_image(path)


# ------------------------------------------------------------------ tiny images and boxes

def test_one_pixel_image_is_upsampled_to_min_side(tmp_path):
    path = tmp_path / "dot.png"
    Image.fromarray(np.array([[[200, 100, 50]]], np.uint8)).save(path)
    x = load_network_input(path)
    assert x.shape[:2] == (1, 3) and min(x.shape[2:]) == 32
    single = to_network_input(np.array([[[200, 100, 50]]], np.uint8), min_side=None)
    torch.testing.assert_close(x, single.expand_as(x))             # a constant image stays constant


def test_narrow_query_box_gives_a_valid_tensor():
    img = np.random.default_rng(1).integers(0, 256, (40, 40, 3)).astype(np.uint8)
    x = to_network_input(img, bbx=(3, 2, 4.5, 30))                  # 1.5 px wide -> 1 px after int()
    assert x.shape[:2] == (1, 3) and x.shape[3] == 32 and x.shape[2] >= 32
    assert torch.isfinite(x).all()
    with pytest.raises(ValueError, match="empty region"):          # 0 px after int(): still refused
        to_network_input(img, bbx=(5, 5, 5.9, 9))


def test_min_side_upsampling_bounds():
    assert to_network_input(np.zeros((2, 600, 3), np.uint8)).shape == (1, 3, 32, 600)   # long side capped
    assert to_network_input(np.zeros((10, 100, 3), np.uint8), max_side=64).shape == (1, 3, 32, 64)
    assert to_network_input(np.zeros((8, 12, 3), np.uint8), min_side=16).shape == (1, 3, 16, 24)
    photo = np.random.default_rng(2).integers(0, 256, (40, 50, 3)).astype(np.uint8)
    assert torch.equal(to_network_input(photo), to_network_input(photo, min_side=None))  # large enough: untouched
    with pytest.raises(ValueError, match="min_side"):
        to_network_input(photo, min_side=0)
    with pytest.raises(ValueError, match="at least 1x1 pixels"):
        to_network_input(np.zeros((0, 5, 3), np.uint8))
