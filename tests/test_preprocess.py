"""Image loading and the reference's input convention (BGR, its mean/std, truncated box crop)."""
import numpy as np
import pytest
import torch
from PIL import Image

from sglib.data.preprocess import CVNET, IMAGENET, ImageReadError, crop_to_box, load_image, load_network_input, to_network_input


def test_bgr_and_statistics_naive():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3)).astype(np.uint8)
    x = to_network_input(rgb)
    assert x.shape == (1, 3, 5, 7) and x.dtype == torch.float32
    mean_bgr, std_bgr = (0.406, 0.456, 0.485), (0.225, 0.224, 0.229)
    for c, src in enumerate((2, 1, 0)):                    # channel 0 of the input is blue
        expected = (rgb[:, :, src] / 255.0 - mean_bgr[c]) / std_bgr[c]
        assert np.allclose(x[0, c].numpy(), expected, atol=1e-6)
    y = to_network_input(rgb, norm=IMAGENET)
    assert np.allclose(y[0, 0].numpy(), (rgb[:, :, 0] / 255.0 - 0.485) / 0.229, atol=1e-6)
    # the two conventions normalise each physical colour identically, only the order differs
    assert torch.allclose(x.flip(1), y, atol=1e-6)
    assert CVNET.bgr and not IMAGENET.bgr


def test_query_crop_truncates_like_the_reference():
    img = np.arange(20 * 30 * 3).reshape(20, 30, 3).astype(np.uint8)
    crop = crop_to_box(img, (2.9, 3.7, 10.2, 15.99))
    assert np.array_equal(crop, img[3:15, 2:10])
    assert to_network_input(img, bbx=(2.9, 3.7, 10.2, 15.99)).shape == (1, 3, 12, 8)
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
