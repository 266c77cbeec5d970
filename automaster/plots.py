"""Fast spectrogram images (a colormap and PIL: no figure machinery on the hot path)."""

from __future__ import annotations

import functools
import io

import numpy as np

from automaster.dsp.constants import DB_MAX, DB_MIN, MODEL_RATE


LEVELS = 255  # colour levels of a spectrogram; palette entry 255 is the white gap between tiles


@functools.lru_cache(maxsize=4)
def _palette(name: str = "magma") -> bytes:
    """``LEVELS`` colours of the colormap, then white: a 256-entry PNG palette."""
    from matplotlib import colormaps

    colours = colormaps[name](np.linspace(0.0, 1.0, LEVELS), bytes=True)[:, :3]
    return np.concatenate([colours, [[255, 255, 255]]]).astype(np.uint8).tobytes()


def _levels(db: np.ndarray, db_min: float, db_max: float) -> np.ndarray:
    """dB -> palette index in ``0 .. LEVELS - 1`` (low frequencies at the bottom)."""
    return np.clip((db[::-1] - db_min) * ((LEVELS - 1) / (db_max - db_min)), 0, LEVELS - 1).astype(np.uint8)


# Margins of a labelled strip (pixels): frequency ticks, titles, time ticks, the colour bar.
_LEFT, _TOP, _BOTTOM, _RIGHT = 96, 24, 36, 78
_FREQ_TICKS_HZ = (100, 500, 1000, 2000, 5000, 10000, 20000)  # spread on the mel scale
_TIME_STEPS_S = (0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600)
_INK = 0  # palette index of the colormap's darkest colour (near black): text and ticks


def _strip(mels_db: list[np.ndarray], db_min: float, db_max: float, gap: int, step: int) -> np.ndarray:
    """The tiles as palette indices ``(2 * n_mels, width)``: low frequencies at the bottom,
    white gaps between tiles, every ``step``-th frame."""
    tiles = []
    for i, mel in enumerate(mels_db):
        if i:
            tiles.append(np.full((mel.shape[0], gap), LEVELS, dtype=np.uint8))
        tiles.append(_levels(mel[:, ::step], db_min, db_max))
    return np.repeat(np.concatenate(tiles, axis=1), 2, axis=0)  # 256 px tall: readable


def _hz_label(hz: float) -> str:
    return f"{hz / 1000:g}k" if hz >= 1000 else f"{hz:g}"


@functools.lru_cache(maxsize=4)
def _mel_centres_hz(n_mels: int, sample_rate: int) -> np.ndarray:
    import librosa

    return librosa.mel_frequencies(n_mels + 2, fmin=0.0, fmax=sample_rate / 2.0)[1:-1]


@functools.lru_cache(maxsize=2)
def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _row_names(draw, rows: list[str], height: int) -> None:
    """Names of equal stripes, top down, left of the tiles."""
    for i, name in enumerate(rows):
        draw.text((_LEFT - 4, _TOP + int((i + 0.5) * height / len(rows))), name, fill=_INK, font=_font(8), anchor="rm")


def _frequency_axis(draw, n_mels: int, sample_rate: int, height: int) -> None:
    """Ticks in Hz at their mel bands, left of the tiles."""
    centres = _mel_centres_hz(n_mels, sample_rate)
    for hz in (f for f in _FREQ_TICKS_HZ if centres[0] <= f <= centres[-1]):
        y = _TOP + height - 1 - int(round(2 * np.interp(hz, centres, np.arange(n_mels))))
        draw.line([(_LEFT - 4, y), (_LEFT - 1, y)], fill=_INK)
        draw.text((_LEFT - 6, y), _hz_label(hz), fill=_INK, font=_font(11), anchor="rm")
    draw.text((4, _TOP - 12), "Hz (mel)", fill=_INK, font=_font(11), anchor="lm")


def _time_axes(draw, mels_db: list[np.ndarray], titles: list[str], frame_s: float, step: int, gap: int,
               height: int, width: int) -> None:  # fmt: skip
    """Each tile's title above it and its time ticks (seconds from 0) below it."""
    x0 = _LEFT
    for mel, title in zip(mels_db, titles):
        tile_w = -(-mel.shape[1] // step)
        seconds = mel.shape[1] * frame_s
        tick = next((t for t in _TIME_STEPS_S if seconds / t <= 6), _TIME_STEPS_S[-1])
        for k in range(int(seconds // tick) + 1):
            x = x0 + int(round(k * tick / (frame_s * step)))
            if x < x0 + tile_w - 10:  # the tile's last tick would meet the next tile's 0
                draw.line([(x, _TOP + height), (x, _TOP + height + 3)], fill=_INK)
                draw.text((x, _TOP + height + 5), f"{k * tick:g}", fill=_INK, font=_font(11), anchor="mt")
        draw.text((x0 + tile_w // 2, _TOP - 12), title, fill=_INK, font=_font(11), anchor="mm")
        x0 += tile_w + gap
    draw.text((_LEFT + width // 2, _TOP + height + 26), "time (s)", fill=_INK, font=_font(11), anchor="mm")


def _colour_bar(draw, scale: tuple[float, float, str], decibels: bool, bar_x: int, height: int) -> None:
    """Ticks and unit of the colour bar drawn at ``bar_x``: every 20 dB, or five over ``scale``."""
    low, high, unit = scale
    ticks = np.arange(np.ceil(low / 20) * 20, high + 1, 20) if decibels else np.linspace(low, high, 5)
    for value in ticks:
        y = _TOP + height - 1 - int(round((value - low) / (high - low) * (height - 1)))
        draw.line([(bar_x + 12, y), (bar_x + 15, y)], fill=_INK)
        draw.text((bar_x + 18, y), f"{value:g}", fill=_INK, font=_font(11), anchor="lm")
    draw.text((bar_x, _TOP - 12), unit, fill=_INK, font=_font(11), anchor="lm")


def mel_strip_png(
    mels_db: list[np.ndarray],
    db_min: float = DB_MIN,
    db_max: float = DB_MAX,
    *,
    titles: list[str],
    frame_s: float,
    sample_rate: int = MODEL_RATE,
    rows: list[str] | None = None,
    bar: tuple[float, float, str] | None = None,
    gap: int = 6,
    max_width: int = 2400,
) -> bytes:
    """Mel spectrograms ``(n_mels, F)`` in dB side by side (e.g. input | output), as a PNG with a
    title over each tile (which side is which), frequency ticks in Hz (mel scale), time ticks in
    seconds (``frame_s`` per frame, each tile from 0) and a colour bar in dB. Long clips are
    decimated in time to at most ``max_width`` pixels of tiles in all. ``rows`` (names of equal
    stripes, top down) replaces the frequency axis and ``bar`` (low, high, unit) the colour bar's
    dB scale, for tiles that are not spectrograms (effect parameters over time).

    A palette image (one byte a pixel, the colormap in the palette; text in its darkest colour): a
    third of the bytes of RGB to filter and compress, the same picture.
    """
    from PIL import Image, ImageDraw

    if len(titles) != len(mels_db):
        raise ValueError(f"{len(mels_db)} tiles but {len(titles)} titles")
    total = sum(m.shape[1] for m in mels_db) + gap * (len(mels_db) - 1)
    step = max(1, int(np.ceil(total / max_width)))
    strip = _strip(mels_db, db_min, db_max, gap, step)
    height, width = strip.shape
    canvas = np.full((_TOP + height + _BOTTOM, _LEFT + width + _RIGHT), LEVELS, np.uint8)
    canvas[_TOP : _TOP + height, _LEFT : _LEFT + width] = strip
    bar_x = _LEFT + width + 10
    canvas[_TOP : _TOP + height, bar_x : bar_x + 12] = np.linspace(LEVELS - 1, 0, height).astype(np.uint8)[:, None]
    image = Image.fromarray(canvas)
    image.putpalette(_palette())  # "L" -> "P"
    draw = ImageDraw.Draw(image)
    if rows:
        _row_names(draw, rows, height)
    else:
        _frequency_axis(draw, mels_db[0].shape[0], sample_rate, height)
    _time_axes(draw, mels_db, titles, frame_s, step, gap, height, width)
    _colour_bar(draw, bar or (db_min, db_max, "dB"), bar is None, bar_x, height)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def mel_pair_png(
    left_db: np.ndarray, right_db: np.ndarray, db_min: float = DB_MIN, db_max: float = DB_MAX, *, frame_s: float
) -> bytes:
    """Original | degraded, the demaster job's picture."""
    return mel_strip_png([left_db, right_db], db_min, db_max, titles=["original (clean input)", "degraded (output)"], frame_s=frame_s)


def loss_curve_png(history: list[dict[str, float]]) -> bytes:
    """Every ``train/*`` and ``val/*`` series of ``history`` (one dict per epoch) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for h in history for k in h if k.startswith(("train/", "val/mel_l1_db", "val/mrstft"))})
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for key in keys:
        ax = axes[0] if key.startswith("train/") else axes[1]
        ax.plot([h.get(key, np.nan) for h in history], marker="o", label=key)
    for ax, title in zip(axes, ("training losses", "validation (dB / MR-STFT)")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()
