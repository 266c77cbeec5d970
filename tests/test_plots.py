"""Spectrogram pictures: a palette PNG of the colormap, tiles separated by white."""

from __future__ import annotations

import io

import numpy as np
from matplotlib import colormaps
from PIL import Image

from automaster.plots import mel_pair_png, mel_strip_png


def test_pair_is_a_palette_png_with_the_colormap_and_a_white_gap():
    low = np.full((128, 100), -80.0, np.float32)  # below the range: the darkest colour
    high = np.full((128, 100), 50.0, np.float32)  # above it: the brightest
    image = Image.open(io.BytesIO(mel_pair_png(low, high)))
    assert image.mode == "P" and image.size == (206, 256)
    rgb = np.asarray(image.convert("RGB"))
    magma = colormaps["magma"]([0.0, 1.0], bytes=True)[:, :3]
    np.testing.assert_array_equal(rgb[:, :100].reshape(-1, 3), np.broadcast_to(magma[0], (256 * 100, 3)))
    np.testing.assert_array_equal(rgb[:, 100:106].reshape(-1, 3), 255)
    np.testing.assert_array_equal(rgb[:, 106:].reshape(-1, 3), np.broadcast_to(magma[1], (256 * 100, 3)))


def test_low_frequencies_at_the_bottom_and_long_strips_decimated():
    mel = np.full((128, 3000), -60.0, np.float32)
    mel[0] = 40.0  # lowest band loud
    image = Image.open(io.BytesIO(mel_strip_png([mel, mel, mel], max_width=2400)))
    assert image.size[0] <= 2400
    rgb = np.asarray(image.convert("RGB")).astype(int)
    assert rgb[-1, 0].sum() > rgb[0, 0].sum()  # bright bottom row, dark top
