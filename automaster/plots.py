"""Fast spectrogram images (a colormap and PIL: no figure machinery on the hot path)."""

from __future__ import annotations

import io

import numpy as np


def _colorize(db: np.ndarray, db_min: float, db_max: float) -> np.ndarray:
    from matplotlib import colormaps

    u = np.clip((db - db_min) / (db_max - db_min), 0.0, 1.0)
    rgba = colormaps["magma"](u[::-1], bytes=True)  # low frequencies at the bottom
    return rgba[..., :3]


def mel_pair_png(
    left_db: np.ndarray,
    right_db: np.ndarray,
    db_min: float = -60.0,
    db_max: float = 40.0,
    gap: int = 6,
    max_width: int = 1600,
) -> bytes:
    """Two mel spectrograms ``(n_mels, F)`` in dB side by side, as PNG bytes.

    Long clips are decimated in time to at most ``max_width`` pixels in all.
    """
    from PIL import Image

    step = max(1, int(np.ceil((left_db.shape[1] + right_db.shape[1] + gap) / max_width)))
    left = _colorize(left_db[:, ::step], db_min, db_max)
    right = _colorize(right_db[:, ::step], db_min, db_max)
    sep = np.full((left.shape[0], gap, 3), 255, dtype=np.uint8)
    image = np.concatenate([left, sep, right], axis=1)
    image = np.repeat(image, 2, axis=0)  # 256 px tall: readable
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
