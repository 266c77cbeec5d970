"""Spectrogram pictures: a palette PNG of the colormap, tiles separated by white, with titles,
frequency and time ticks and a colour bar."""

from __future__ import annotations

import io

import numpy as np
import pytest
from matplotlib import colormaps
from PIL import Image

from automaster.plots import _BOTTOM, _LEFT, _RIGHT, _TOP, mel_pair_png, mel_strip_png

FRAME_S = 512 / 44100


def _plot_area(png: bytes, width: int) -> tuple[Image.Image, np.ndarray]:
    image = Image.open(io.BytesIO(png))
    rgb = np.asarray(image.convert("RGB"))
    return image, rgb[_TOP : _TOP + 256, _LEFT : _LEFT + width]


def test_pair_is_a_palette_png_with_the_colormap_and_a_white_gap():
    low = np.full((128, 100), -80.0, np.float32)  # below the range: the darkest colour
    high = np.full((128, 100), 50.0, np.float32)  # above it: the brightest
    image, rgb = _plot_area(mel_pair_png(low, high, frame_s=FRAME_S), 206)
    assert image.mode == "P" and image.size == (_LEFT + 206 + _RIGHT, _TOP + 256 + _BOTTOM)
    magma = colormaps["magma"]([0.0, 1.0], bytes=True)[:, :3]
    np.testing.assert_array_equal(rgb[:, :100].reshape(-1, 3), np.broadcast_to(magma[0], (256 * 100, 3)))
    np.testing.assert_array_equal(rgb[:, 100:106].reshape(-1, 3), 255)
    np.testing.assert_array_equal(rgb[:, 106:].reshape(-1, 3), np.broadcast_to(magma[1], (256 * 100, 3)))


def test_low_frequencies_at_the_bottom_and_long_strips_decimated():
    mel = np.full((128, 3000), -60.0, np.float32)
    mel[0] = 40.0  # lowest band loud
    png = mel_strip_png([mel, mel, mel], max_width=2400, titles=["a", "b", "c"], frame_s=FRAME_S)
    image, rgb = _plot_area(png, 10)
    assert image.size[0] <= _LEFT + 2400 + _RIGHT
    rgb = rgb.astype(int)
    assert rgb[-1, 0].sum() > rgb[0, 0].sum()  # bright bottom row, dark top


def test_the_margins_carry_ink_and_the_colour_bar_runs_dark_to_bright_upwards():
    mel = np.zeros((128, 400), np.float32)
    image = Image.open(io.BytesIO(mel_strip_png([mel, mel], titles=["input", "output"], frame_s=FRAME_S)))
    rgb = np.asarray(image.convert("RGB")).astype(int)
    width = 2 * 400 + 6
    assert (rgb[:_TOP, _LEFT:_LEFT + width].sum(axis=2) < 200).any()  # the titles
    assert (rgb[_TOP:_TOP + 256, :_LEFT].sum(axis=2) < 200).any()  # the frequency ticks
    assert (rgb[_TOP + 256:, _LEFT:_LEFT + width].sum(axis=2) < 200).any()  # the time ticks
    bar = rgb[_TOP:_TOP + 256, _LEFT + width + 15]
    assert bar[0].sum() > bar[-1].sum()  # bright at the top (loud), dark at the bottom


def test_every_tile_needs_a_title():
    with pytest.raises(ValueError, match="2 tiles but 1 titles"):
        mel_strip_png([np.zeros((128, 10)), np.zeros((128, 10))], titles=["only one"], frame_s=FRAME_S)
