"""Reading and writing audio: any format libsndfile knows, any rate, bit depth and channel count.

Real corpora are full of broken files (FMA has mp3s that are only an ID3 tag, clips of half a
second, files at 48 kHz, decodes with peaks above 0 dBFS). The rules here:

* every unreadable input raises :class:`AudioError`, which names the file and says why in words;
* a file that decodes is returned as it is: float32 ``(C, T)``, never clipped, at its own rate
  unless a rate is asked for (then resampled with soxr). Short or silent clips read fine: whether
  to use them is the calling job's policy;
* a few NaN/Inf samples are replaced by 0; more than :data:`MAX_NONFINITE_FRACTION` is an error;
* writes are atomic (temporary name, then rename) and refuse NaN and integer clipping.

Paths may be local paths or ``pyarrow.fs`` URIs (see :mod:`automaster.storage`).

The package's modules: :mod:`.common` (errors, the header's facts, repair counting),
:mod:`.opening` (opening a file, and saying in words why it cannot be), :mod:`.read` (decoding,
resampling, excerpts) and :mod:`.write` (atomic writes). Import from here.
"""

from automaster.audio.common import (
    AUDIO_EXTENSIONS,
    MAX_NONFINITE_FRACTION,
    AudioError,
    AudioInfo,
    FileError,
    is_audio_file,
    logger,
    note_repair,
    repairs,
)
from automaster.audio.read import audio_info, read_audio, read_excerpt
from automaster.audio.write import format_refusal, write_audio

__all__ = [
    "AUDIO_EXTENSIONS", "MAX_NONFINITE_FRACTION", "AudioError", "AudioInfo", "FileError", "audio_info", "format_refusal",
    "is_audio_file",
    "logger", "note_repair", "read_audio", "read_excerpt", "repairs", "write_audio",
]
