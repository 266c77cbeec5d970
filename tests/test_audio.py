"""automaster.audio: formats, rates, windows, the bad-input zoo and safe writes."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.audio_fixtures import (
    D01,
    D01_MP3,
    D02,
    ODD_NAMES,
    READABLE,
    UNREADABLE,
    make_bad_inputs,
    make_good_inputs,
    sine,
)
from automaster import audio, storage
from automaster.audio import AudioError, audio_info, is_audio_file, read_audio, write_audio

FMA_FIXTURE = Path(__file__).parent / "data" / "fma" / "fma_small"
FMA_MINI = Path("/work/shared/data/fma_mini/fma_small")


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    return make_bad_inputs(tmp_path_factory.mktemp("bad"))


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return make_good_inputs(tmp_path_factory.mktemp("good"))


def _dominant_hz(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spec)])


# ------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "ext, subtype, tol",
    [
        (".wav", "PCM_16", 1 / 2**15),
        (".wav", "PCM_24", 1 / 2**23),
        (".wav", "FLOAT", 0.0),
        (".flac", "PCM_16", 1 / 2**15),
        (".flac", "PCM_24", 1 / 2**23),
    ],
)
def test_lossless_round_trip(tmp_path, ext, subtype, tol):
    x = sine(440, 32000, 0.5, channels=3).T  # (C, T), a non-standard rate and channel count
    path = tmp_path / f"x{ext}"
    write_audio(path, x, 32000, subtype=subtype)
    y, sr = read_audio(path)
    assert sr == 32000
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.max(np.abs(y - x)) <= tol
    info = audio_info(path)
    assert (info.sample_rate, info.channels, info.frames, info.subtype) == (32000, 3, x.shape[1], subtype)
    assert info.duration_s == pytest.approx(0.5)


@pytest.mark.parametrize("ext, fmt", [(".ogg", "OGG"), (".mp3", "MP3")])
def test_lossy_round_trip(tmp_path, ext, fmt):
    x, _ = read_audio(D01, duration_s=2.0)
    path = tmp_path / f"x{ext}"
    write_audio(path, x, 44100)
    y, sr = read_audio(path)
    assert sr == 44100 and y.shape[0] == 2
    assert abs(y.shape[1] - x.shape[1]) <= 2048  # lossy codecs may pad a frame
    n = min(x.shape[1], y.shape[1])
    snr_db = 10 * np.log10(np.sum(x[:, :n] ** 2) / np.sum((x[:, :n] - y[:, :n]) ** 2))
    assert snr_db > 10, f"{fmt} decode does not resemble the input (SNR {snr_db:.1f} dB)"
    assert audio_info(path).format == fmt


def test_good_inputs_all_formats(good):
    ref, _ = read_audio(D01, duration_s=2.0)
    for key, path in good.items():
        y, sr = read_audio(path)
        info = audio_info(path)
        assert (sr, y.shape[0]) == (info.sample_rate, info.channels), key
        assert abs(y.shape[1] / sr - 2.0) < 0.06, key
    y, _ = read_audio(good["wav16"])
    np.testing.assert_allclose(y, ref, atol=1 / 2**15)
    y, sr = read_audio(good["wav24_48k"], sample_rate=44100)
    assert sr == 44100 and y.shape == (2, 88200)


def test_committed_music_decodes():
    flac, sr = read_audio(D01)
    mp3, sr_mp3 = read_audio(D01_MP3)
    assert sr == sr_mp3 == 44100 and flac.shape == mp3.shape == (2, 441000)
    assert np.corrcoef(flac[0], mp3[0])[0, 1] > 0.99  # the MP3 is the same audio as the FLAC
    assert read_audio(D02)[0].shape == (2, 441000)


# -------------------------------------------------------------------- resampling, mono, windows


def test_resampling_keeps_frequency_and_length(tmp_path):
    path = tmp_path / "sine48k.wav"
    x = sine(1000, 48000, 1.0, amp=0.5)
    write_audio(path, x.T, 48000, subtype="FLOAT")
    y, sr = read_audio(path, sample_rate=44100)
    assert sr == 44100 and y.shape == (1, 44100)
    assert _dominant_hz(y[0], sr) == pytest.approx(1000, abs=1.5)
    t = np.arange(44100) / 44100
    expected = 0.5 * np.sin(2 * np.pi * 1000 * t)
    inner = slice(500, -500)  # edges: the resampler sees zeros outside the file
    assert np.max(np.abs(y[0, inner] - expected[inner])) < 1e-3


def test_resampled_window_matches_resampled_whole(tmp_path):
    path = tmp_path / "long.wav"
    write_audio(path, sine(1000, 48000, 3.0, channels=2).T, 48000, subtype="FLOAT")
    whole, _ = read_audio(path, sample_rate=44100)
    part, sr = read_audio(path, sample_rate=44100, offset_s=1.0, duration_s=0.5)
    assert sr == 44100 and part.shape == (2, 22050)
    # context around the window: no edge effects, same samples as resampling the whole file
    np.testing.assert_allclose(part, whole[:, 44100 : 44100 + 22050], atol=1e-4)


def test_mono_downmix_averages_channels(tmp_path):
    path = tmp_path / "lr.wav"
    left, right = sine(300, 44100, 0.5)[:, 0], sine(500, 44100, 0.5)[:, 0]
    write_audio(path, np.stack([left, right]), 44100, subtype="FLOAT")
    y, _ = read_audio(path, mono=True)
    assert y.shape == (1, left.size)
    np.testing.assert_allclose(y[0], (left + right) / 2, atol=1e-7)
    mono, _ = read_audio(path, mono=True, sample_rate=22050)
    assert mono.shape == (1, left.size // 2)


@pytest.mark.parametrize("path", [D01, D01_MP3], ids=["flac", "mp3"])
def test_offset_duration_reads_only_that_part(path, monkeypatch):
    whole, _ = read_audio(path)
    frames_decoded = []
    real_read = sf.SoundFile.read

    def counting_read(self, frames=-1, *args, **kwargs):
        out = real_read(self, frames, *args, **kwargs)
        frames_decoded.append(len(out))
        return out

    monkeypatch.setattr(sf.SoundFile, "read", counting_read)
    part, sr = read_audio(path, offset_s=2.0, duration_s=1.5)
    assert part.shape == (2, 66150)
    np.testing.assert_array_equal(part, whole[:, 88200 : 88200 + 66150])  # sample-accurate seek
    assert sum(frames_decoded) == 66150  # not the whole 10 s file


def test_window_past_end_is_shortened_or_refused():
    part, _ = read_audio(D02, offset_s=9.5, duration_s=5.0)
    assert part.shape == (2, 22050)  # only what is there
    with pytest.raises(AudioError, match="past the end"):
        read_audio(D02, offset_s=11.0)


@pytest.mark.parametrize(
    "kwargs", [dict(offset_s=-1.0), dict(duration_s=0.0), dict(sample_rate=0), dict(sample_rate=44100.5)]
)
def test_bad_arguments_are_value_errors(kwargs):
    with pytest.raises(ValueError):
        read_audio(D01, **kwargs)


# ------------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize("key", UNREADABLE)
def test_unreadable_inputs_raise_audio_error_naming_the_file(bad, key):
    path = bad[key]
    with pytest.raises(AudioError) as info:
        read_audio(path)
    err = info.value
    assert type(err) is AudioError
    assert err.path == str(path)
    assert str(err).startswith(f"cannot read {str(path)!r}: ")
    assert err.reason and err.reason in str(err)
    if key not in ("nan_wav", "inf_wav", "truncated_flac"):  # header-level: audio_info agrees
        with pytest.raises(AudioError):
            audio_info(path)


def test_unreadable_reasons_are_specific(bad):
    def reason(key):
        with pytest.raises(AudioError) as info:
            read_audio(bad[key])
        return info.value.reason

    assert reason("empty") == "empty file (0 bytes)"
    assert reason("text") == "not an audio file (looks like text)"
    assert reason("header_only_mp3") == "no audio frames (header only)"
    assert reason("wav_no_frames") == "no audio frames (header only)"
    assert reason("garbage_mp3").startswith("not a readable audio file")
    assert reason("nan_wav") == "100% of samples are NaN/Inf"
    assert reason("inf_wav") == "5% of samples are NaN/Inf"
    assert reason("truncated_flac").startswith("decoding failed, file corrupt or truncated")


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(AudioError, match="file not found"):
        read_audio(tmp_path / "nope.wav")
    with pytest.raises(AudioError, match="is a folder"):
        audio_info(tmp_path)


@pytest.mark.parametrize("key", READABLE)
def test_readable_odd_inputs_read(bad, key):
    y, sr = read_audio(bad[key])
    info = audio_info(bad[key])
    assert y.dtype == np.float32 and y.ndim == 2
    assert y.shape[0] == info.channels and sr == info.sample_rate
    assert np.isfinite(y).all()


def test_readable_odd_inputs_are_what_they_say(bad):
    assert read_audio(bad["hundred_samples"])[0].shape == (1, 100)
    assert read_audio(bad["one_second"])[0].shape == (2, 44100)
    silence, _ = read_audio(bad["silence"])
    assert silence.shape == (2, 3 * 44100) and not silence.any()
    assert read_audio(bad["mono_8k"]) [1] == 8000
    hires, sr = read_audio(bad["hires_96k_24bit"])
    assert sr == 96000 and audio_info(bad["hires_96k_24bit"]).subtype == "PCM_24"
    assert read_audio(bad["hires_96k_24bit"], sample_rate=44100)[0].shape == (2, 44100)
    six, sr = read_audio(bad["six_channels"])
    assert six.shape == (6, 48000)
    assert read_audio(bad["six_channels"], mono=True)[0].shape == (1, 48000)
    overs, _ = read_audio(bad["float_overs"])
    assert np.max(np.abs(overs)) == pytest.approx(2.0, rel=1e-3)  # not clipped
    few, _ = read_audio(bad["few_nan_wav"])
    assert np.isfinite(few).all() and few[0, 0] == 0.0 and few[0, 1000] == 0.0 and few[0, 1] != 0.0
    for key, name in ODD_NAMES.items():
        assert bad[key].name == name and read_audio(bad[key])[0].shape == (2, 44100)


def test_fma_fixture_broken_and_short_clips():
    with pytest.raises(AudioError, match="no audio frames"):
        read_audio(FMA_FIXTURE / "001" / "001666.mp3")
    short, sr = read_audio(FMA_FIXTURE / "001" / "001888.mp3")
    assert short.shape == (2, 66150) and sr == 44100
    silent, _ = read_audio(FMA_FIXTURE / "001" / "001777.mp3")
    assert np.max(np.abs(silent)) < 1e-4
    y, sr = read_audio(FMA_FIXTURE / "000" / "000010.mp3")
    assert sr == 48000 and y.shape == (2, 240000)
    y, sr = read_audio(FMA_FIXTURE / "000" / "000010.mp3", sample_rate=44100, mono=True)
    assert sr == 44100 and y.shape == (1, 220500)


@pytest.mark.skipif(not FMA_MINI.exists(), reason="shared fma_mini not available")
def test_fma_mini_broken_ids():
    with pytest.raises(AudioError, match="099134.mp3.*no audio frames"):
        read_audio(FMA_MINI / "099" / "099134.mp3")
    short, _ = read_audio(FMA_MINI / "098" / "098565.mp3")
    assert short.shape == (2, 70560)


def test_audio_error_pickles():
    err = pickle.loads(pickle.dumps(AudioError("a/b.mp3", "no audio frames (header only)")))
    assert (err.path, err.reason, str(err)) == ("a/b.mp3", "no audio frames (header only)",
                                                "cannot read 'a/b.mp3': no audio frames (header only)")


# ------------------------------------------------------------------------------------- URIs


def test_read_and_write_through_uris(tmp_path, monkeypatch):
    x = sine(440, 22050, 0.5, channels=2).T
    uri = (tmp_path / "odd name %.flac").as_uri()
    write_audio(uri, x, 22050, subtype="PCM_24")
    assert (tmp_path / "odd name %.flac").exists()
    y, sr = read_audio(uri, offset_s=0.1, duration_s=0.2)
    assert sr == 22050 and y.shape == (2, 4410)

    # The remote code path (file objects through pyarrow.fs, one put for writes), on file://.
    monkeypatch.setattr(storage, "is_local", lambda uri: False)
    remote = (tmp_path / "remote.wav").as_uri()
    write_audio(remote, x, 22050, subtype="FLOAT")
    z, sr = read_audio(remote, offset_s=0.1, duration_s=0.2)
    np.testing.assert_allclose(z, x[:, 2205 : 2205 + 4410], atol=1e-7)
    assert audio_info(remote).frames == x.shape[1]
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioError, match="empty file"):
        read_audio(empty.as_uri())


# ----------------------------------------------------------------------------------- writing


def test_write_refuses_overs_for_pcm_and_names_the_peak(tmp_path):
    x = sine(440, 44100, 0.1, amp=1.5).T
    for ext, subtype in [(".wav", "PCM_16"), (".wav", "PCM_24"), (".flac", "PCM_16"), (".mp3", "PCM_16")]:
        with pytest.raises(ValueError, match=r"peak 1\.5000 \(\+3\.52 dBFS\)"):
            write_audio(tmp_path / f"x{ext}", x, 44100, subtype=subtype)
    assert os.listdir(tmp_path) == []
    write_audio(tmp_path / "ok.wav", x, 44100, subtype="FLOAT")  # float keeps overs
    assert np.max(np.abs(read_audio(tmp_path / "ok.wav")[0])) == pytest.approx(1.5, rel=1e-6)
    write_audio(tmp_path / "full.wav", sine(440, 44100, 0.1, amp=1.0).T, 44100)  # exactly 1 is fine


def test_write_refuses_nan_bad_shapes_and_formats(tmp_path):
    x = sine(440, 44100, 0.1).T.copy()
    x[0, 10] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        write_audio(tmp_path / "x.wav", x, 44100)
    with pytest.raises(ValueError, match=r"did you pass \(T, C\)"):
        write_audio(tmp_path / "x.wav", sine(440, 44100, 0.1, channels=2), 44100)
    with pytest.raises(ValueError, match="extension"):
        write_audio(tmp_path / "x.m4a", sine(440, 44100, 0.1).T, 44100)
    with pytest.raises(ValueError, match="subtype"):
        write_audio(tmp_path / "x.flac", sine(440, 44100, 0.1).T, 44100, subtype="FLOAT")
    assert os.listdir(tmp_path) == []


def test_write_mono_vector(tmp_path):
    v = sine(440, 16000, 0.25)[:, 0]
    write_audio(tmp_path / "v.wav", v, 16000, subtype="FLOAT")
    y, _ = read_audio(tmp_path / "v.wav")
    np.testing.assert_array_equal(y, v[None, :])


@pytest.mark.parametrize("ext", [".wav", ".flac"])
def test_int16_samples_are_written_as_they_are(tmp_path, ext):
    # The same file as the floats they stand for (x / 32768), without the conversion and checks.
    pcm = (sine(440, 44100, 0.5).T * 32767).astype(np.int16)  # (2, T)
    pcm[0, :3] = (-32768, 32767, 0)
    write_audio(tmp_path / f"i{ext}", pcm, 44100, subtype="PCM_16")
    write_audio(tmp_path / f"f{ext}", pcm.astype(np.float32) / 32768.0, 44100, subtype="PCM_16")
    assert (tmp_path / f"i{ext}").read_bytes() == (tmp_path / f"f{ext}").read_bytes()
    data, _ = sf.read(tmp_path / f"i{ext}", dtype="int16", always_2d=True)
    np.testing.assert_array_equal(data.T, pcm)
    with pytest.raises(ValueError, match="int16"):
        write_audio(tmp_path / "x.wav", pcm, 44100, subtype="PCM_24")


def test_ogg_long_write_in_blocks(tmp_path):
    # Long enough to need many blocks; one huge Vorbis write crashed libsndfile (PLATFORM.md).
    x = np.tile(read_audio(D02)[0], 3) * 0.9  # 30 s stereo
    write_audio(tmp_path / "long.ogg", x, 44100)
    assert audio_info(tmp_path / "long.ogg").duration_s == pytest.approx(30.0, abs=0.05)


def test_atomic_write_leaves_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "out.wav"
    write_audio(target, sine(440, 44100, 0.2).T, 44100)
    assert os.listdir(tmp_path) == ["out.wav"]
    before = target.read_bytes()

    calls = []
    real_write = sf.SoundFile.write

    def failing_write(self, data):
        calls.append(len(data))
        if len(calls) > 1:
            raise OSError(28, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(sf.SoundFile, "write", failing_write)
    with pytest.raises(OSError, match="No space left"):
        write_audio(target, sine(440, 44100, 5.0).T, 44100)  # several blocks: fails midway
    assert len(calls) == 2
    assert os.listdir(tmp_path) == ["out.wav"]  # no temporary file left behind
    assert target.read_bytes() == before  # the old file is intact


def test_is_audio_file():
    assert is_audio_file("a/B.MP3") and is_audio_file("x.flac") and is_audio_file("a.b.c.aiff")
    assert not is_audio_file("notes.txt") and not is_audio_file("mp3") and not is_audio_file("x.mp3.part")
    assert audio.AUDIO_EXTENSIONS >= {".wav", ".flac", ".ogg", ".mp3"}


def test_a_damaged_mp3s_decoder_notes_go_to_the_log_not_the_console(tmp_path, capfd):
    """mpg123 prints 'Illegal Audio-MPEG-Header ... Trying to resync' on the process's stderr; a
    job's console shows its progress bar and summary, so the note goes to the log, named."""
    import logging

    bad = tmp_path / "garbage.mp3"
    bad.write_bytes(np.random.default_rng(0).bytes(8192))
    # a handler on the module's logger itself (an earlier test's logging setup may have disabled
    # or detached it from the root, where caplog listens)
    logger, records = logging.getLogger("automaster.audio"), []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    saved = logger.disabled, logger.level
    logger.disabled = False
    logger.setLevel(logging.INFO)  # setLevel, not .level =: it clears the logger's isEnabledFor cache
    logger.addHandler(handler)
    try:
        with pytest.raises(AudioError, match="garbage.mp3"):
            read_audio(bad)
    finally:
        logger.removeHandler(handler)
        logger.disabled = saved[0]
        logger.setLevel(saved[1])
    assert capfd.readouterr().err == ""
    assert any("garbage.mp3: the decoder said: Note: Illegal Audio-MPEG-Header" in r.getMessage() for r in records)
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"  # the process's stderr is the console's again
