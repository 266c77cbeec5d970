"""Training's clip bank names every file it leaves out, with why (issue 22: it named 2 of 7)."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import soundfile as sf

from automaster.training.bank import bank_from_corpus


def test_every_dropped_file_is_named_with_its_reason(tmp_path, music_files, caplog):
    root = tmp_path / "corpus"
    root.mkdir()
    wav = next(p for p in music_files if p.suffix == ".flac")
    for i in range(3):
        shutil.copy(wav, root / f"good{i}.flac")
    sr = 44100
    sf.write(root / "silent.wav", np.zeros((3 * sr, 2), np.float32), sr)
    sf.write(root / "short.wav", 0.3 * np.sin(np.linspace(0, 2000, sr // 2, dtype=np.float32))[:, None], sr)
    (root / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 10)
    with caplog.at_level(logging.WARNING, logger="automaster.training.bank"):
        bank = bank_from_corpus([str(root)], ("training", "validation", "test"), max_track_seconds=3.0)
    named = {r.getMessage().split(": ", 1)[0].removeprefix("skipping ").rsplit("/", 1)[-1]: r.getMessage()
             for r in caplog.records if r.getMessage().startswith("skipping ")}
    assert len(bank) == 3
    assert set(named) == {"silent.wav", "short.wav", "broken.wav"}
    assert "silent" in named["silent.wav"].split(": ", 1)[1] and "shorter than 1 s" in named["short.wav"]
