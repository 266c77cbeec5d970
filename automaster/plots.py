"""Fast spectrogram images (a colormap and PIL: no figure machinery on the hot path)."""

from __future__ import annotations

import functools
import io

import numpy as np

from automaster.dsp.constants import DB_MAX, DB_MIN


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


def mel_strip_png(
    mels_db: list[np.ndarray],
    db_min: float = DB_MIN,
    db_max: float = DB_MAX,
    gap: int = 6,
    max_width: int = 2400,
) -> bytes:
    """Mel spectrograms ``(n_mels, F)`` in dB side by side (e.g. degraded | restored | clean),
    as PNG bytes. Long clips are decimated in time to at most ``max_width`` pixels in all.

    A palette image (one byte a pixel, the colormap in the palette): a third of the bytes of RGB
    to filter and compress, the same picture.
    """
    from PIL import Image

    total = sum(m.shape[1] for m in mels_db) + gap * (len(mels_db) - 1)
    step = max(1, int(np.ceil(total / max_width)))
    tiles = []
    for i, mel in enumerate(mels_db):
        if i:
            tiles.append(np.full((mel.shape[0], gap), LEVELS, dtype=np.uint8))
        tiles.append(_levels(mel[:, ::step], db_min, db_max))
    image = Image.fromarray(np.repeat(np.concatenate(tiles, axis=1), 2, axis=0))  # 256 px tall: readable
    image.putpalette(_palette())  # "L" -> "P"
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def mel_pair_png(left_db: np.ndarray, right_db: np.ndarray, db_min: float = DB_MIN, db_max: float = DB_MAX) -> bytes:
    """Original | degraded, the demaster job's picture."""
    return mel_strip_png([left_db, right_db], db_min, db_max)


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
