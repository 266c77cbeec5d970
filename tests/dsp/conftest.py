import numpy as np
import pytest
import soundfile as sf

SR = 44100


@pytest.fixture(scope="module")
def songs(music_files) -> list[np.ndarray]:
    """Both real stereo songs, 6 s each, float32 ``(2, T)``."""
    out = []
    for path in music_files:
        if path.suffix != ".flac":
            continue
        y, sr = sf.read(path, dtype="float32", frames=6 * SR, always_2d=True)
        assert sr == SR
        out.append(np.ascontiguousarray(y.T))
    assert len(out) >= 2
    return out
