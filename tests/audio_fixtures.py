"""The bad-input zoo and a few good inputs, generated into a temporary folder.

Used by the I/O tests and by the pipeline tests (a batch job must turn every unreadable case into
an error row and process every readable one)::

    from tests.audio_fixtures import UNREADABLE, make_bad_inputs
    paths = make_bad_inputs(tmp_path)          # {case key: Path}
    for key in UNREADABLE: ...                 # read_audio(paths[key]) raises AudioError

Cases (key: what the file is; ``readable`` says whether ``read_audio`` must succeed):

Unreadable (``AudioError``):
    empty              0-byte ``.wav``
    text               a text file named ``.wav``
    header_only_mp3    an ID3v2.4 tag and no MPEG frame (like FMA 099134, 108925, 133297)
    garbage_mp3        random bytes named ``.mp3``
    wav_no_frames      a valid WAV header with zero frames
    nan_wav            float WAV, every sample NaN
    inf_wav            float WAV, 5 % of samples +/-Inf (over the 1 % tolerance)
    truncated_flac     a FLAC cut off in the middle (a broken download; opens, fails to decode)

Readable (short/silent/odd clips are the job's policy, not the reader's):
    one_second         1 s stereo 44.1 kHz 16-bit sine
    hundred_samples    100 samples
    silence            3 s of digital silence
    few_nan_wav        float WAV with 0.1 % NaN (replaced by 0)
    mono_8k            mono 8 kHz 16-bit
    hires_96k_24bit    96 kHz 24-bit stereo
    six_channels       5.1: six channels, 48 kHz
    float_overs        float WAV with peaks of +6 dBFS (must come back unclipped)
    name_spaces        ``my song  (live) .wav``
    name_unicode       ``Ærø – 音楽 é.flac``
    name_quotes        ``it's "quoted".ogg``
    name_leading_dash  ``-rf.wav``
    name_dots          ``a.b.c..v1.0.wav``
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf

UNREADABLE = (
    "empty",
    "text",
    "header_only_mp3",
    "garbage_mp3",
    "wav_no_frames",
    "nan_wav",
    "inf_wav",
    "truncated_flac",
)
READABLE = (
    "one_second",
    "hundred_samples",
    "silence",
    "few_nan_wav",
    "mono_8k",
    "hires_96k_24bit",
    "six_channels",
    "float_overs",
    "name_spaces",
    "name_unicode",
    "name_quotes",
    "name_leading_dash",
    "name_dots",
)
ODD_NAMES = {
    "name_spaces": "my song  (live) .wav",
    "name_unicode": "Ærø – 音楽 é.flac",
    "name_quotes": "it's \"quoted\".ogg",
    "name_leading_dash": "-rf.wav",
    "name_dots": "a.b.c..v1.0.wav",
}

MUSIC_DIR = Path(__file__).parent / "data" / "music"
D01 = MUSIC_DIR / "d01_librosa_brahms_hungarian_dance_5.flac"
D02 = MUSIC_DIR / "d02_librosa_kevin_macleod_sugar_plum_fairy.flac"
D01_MP3 = MUSIC_DIR / "d01_librosa_brahms_hungarian_dance_5.mp3"


def sine(
    freq_hz: float, sample_rate: int, duration_s: float, channels: int = 1, amp: float = 0.5
) -> np.ndarray:
    """``(T, C)`` float32 sine; channel c is detuned by c Hz so channels differ."""
    t = np.arange(int(round(duration_s * sample_rate))) / sample_rate
    cols = [amp * np.sin(2 * np.pi * (freq_hz + c) * t) for c in range(channels)]
    return np.stack(cols, axis=1).astype(np.float32)


def id3_tag(title: str = "no audio", pad: int = 256) -> bytes:
    """An ID3v2.4 tag with a TIT2 (title) frame and zero padding, and nothing after it."""
    text = b"\x03" + title.encode("utf-8")  # encoding byte 3 = UTF-8
    frame = b"TIT2" + _syncsafe(len(text)) + b"\x00\x00" + text
    body = frame + bytes(pad)
    return b"ID3\x04\x00\x00" + _syncsafe(len(body)) + body


def _syncsafe(n: int) -> bytes:
    return bytes(((n >> 21) & 0x7F, (n >> 14) & 0x7F, (n >> 7) & 0x7F, n & 0x7F))


def make_bad_inputs(folder: str | Path) -> dict[str, Path]:
    """Write every case listed in the module docstring into ``folder``; ``{key: path}``."""
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    p: dict[str, Path] = {}

    p["empty"] = d / "empty.wav"
    p["empty"].write_bytes(b"")
    p["text"] = d / "notes.wav"
    p["text"].write_text("This is not audio.\nIt is a text file with a .wav name.\n")
    p["header_only_mp3"] = d / "header_only.mp3"
    p["header_only_mp3"].write_bytes(id3_tag("header only"))
    p["garbage_mp3"] = d / "garbage.mp3"
    p["garbage_mp3"].write_bytes(rng.bytes(8192))
    p["wav_no_frames"] = d / "no_frames.wav"
    sf.write(p["wav_no_frames"], np.zeros((0, 2), np.float32), 44100, subtype="PCM_16")

    nan = sine(440, 44100, 0.5)
    nan[:] = np.nan
    p["nan_wav"] = d / "nan.wav"
    sf.write(p["nan_wav"], nan, 44100, subtype="FLOAT")
    inf = sine(440, 44100, 0.5, channels=2)
    inf.reshape(-1)[::20] = np.inf  # 5 % of samples
    p["inf_wav"] = d / "inf.wav"
    sf.write(p["inf_wav"], inf, 44100, subtype="FLOAT")

    flac = io.BytesIO()
    sf.write(flac, sine(440, 44100, 2.0, channels=2), 44100, format="FLAC", subtype="PCM_16")
    p["truncated_flac"] = d / "truncated.flac"
    p["truncated_flac"].write_bytes(flac.getvalue()[: len(flac.getvalue()) // 2])

    p["one_second"] = d / "one_second.wav"
    sf.write(p["one_second"], sine(440, 44100, 1.0, channels=2), 44100, subtype="PCM_16")
    p["hundred_samples"] = d / "hundred_samples.wav"
    sf.write(p["hundred_samples"], sine(440, 44100, 100 / 44100), 44100, subtype="PCM_16")
    p["silence"] = d / "silence.wav"
    sf.write(p["silence"], np.zeros((3 * 44100, 2), np.float32), 44100, subtype="PCM_16")
    few = sine(440, 44100, 1.0)
    few.reshape(-1)[::1000] = np.nan  # 0.1 %
    p["few_nan_wav"] = d / "few_nan.wav"
    sf.write(p["few_nan_wav"], few, 44100, subtype="FLOAT")
    p["mono_8k"] = d / "mono_8k.wav"
    sf.write(p["mono_8k"], sine(440, 8000, 2.0), 8000, subtype="PCM_16")
    p["hires_96k_24bit"] = d / "hires_96k_24bit.wav"
    sf.write(p["hires_96k_24bit"], sine(1000, 96000, 1.0, channels=2), 96000, subtype="PCM_24")
    p["six_channels"] = d / "six_channels.wav"
    sf.write(p["six_channels"], sine(300, 48000, 1.0, channels=6, amp=0.3), 48000, subtype="PCM_16")
    p["float_overs"] = d / "float_overs.wav"
    sf.write(p["float_overs"], sine(440, 44100, 1.0, channels=2, amp=2.0), 44100, subtype="FLOAT")

    clip = sine(660, 44100, 1.0, channels=2)
    for key, name in ODD_NAMES.items():
        p[key] = d / name
        fmt = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}[p[key].suffix]
        sf.write(p[key], clip, 44100, format=fmt)
    assert set(p) == set(UNREADABLE) | set(READABLE), "docstring, tuples and files out of step"
    return p


def make_good_inputs(folder: str | Path, duration_s: float = 2.0) -> dict[str, Path]:
    """Real music (the first ``duration_s`` of d01/d02 from tests/data/music) in every format.

    Keys: ``wav16`` (d01, 44.1 kHz stereo), ``wav24_48k`` (d02 resampled to 48 kHz, 24-bit),
    ``wav_float`` (d01, FLOAT), ``flac`` (d02), ``ogg`` (d01, Vorbis), ``mp3`` (d02),
    ``mono_22k`` (d01 downmixed, 22.05 kHz).
    """
    import soxr

    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    n = int(duration_s * 44100)
    a, sr_a = sf.read(D01, frames=n, dtype="float32", always_2d=True)
    b, sr_b = sf.read(D02, frames=n, dtype="float32", always_2d=True)
    assert sr_a == sr_b == 44100
    p = {
        "wav16": d / "d01_pcm16.wav",
        "wav24_48k": d / "d02_pcm24_48k.wav",
        "wav_float": d / "d01_float.wav",
        "flac": d / "d02.flac",
        "ogg": d / "d01.ogg",
        "mp3": d / "d02.mp3",
        "mono_22k": d / "d01_mono_22k.wav",
    }
    sf.write(p["wav16"], a, 44100, subtype="PCM_16")
    sf.write(p["wav24_48k"], soxr.resample(b, 44100, 48000), 48000, subtype="PCM_24")
    sf.write(p["wav_float"], a, 44100, subtype="FLOAT")
    sf.write(p["flac"], b, 44100, subtype="PCM_16")
    sf.write(p["ogg"], a, 44100, format="OGG")
    sf.write(p["mp3"], b, 44100, format="MP3")
    sf.write(p["mono_22k"], soxr.resample(a.mean(axis=1), 44100, 22050), 22050, subtype="PCM_16")
    return p
