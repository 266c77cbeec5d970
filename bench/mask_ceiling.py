"""How far a magnitude mask on the damaged input's STFT can go: oracle masks built from the clean audio.

    python bench/mask_ceiling.py [--split test] [--clips 9] [--seconds 10] [--damages reverb all]

What a spectral restorer that keeps the input's phase could reach at best, next to the damaged
input and the oracle gain. Clean clips (a corpus split, centred excerpts at 44.1 kHz) are damaged
as in :mod:`bench.diagnose` (one effect, the rest of the chain neutral) or by the whole chain
(``all``, as ``automaster evaluate`` does, seed ``--seed``). Oracle masks, each applied to the
damaged STFT (n_fft 2048, hop 512, Hann) and inverted with the damaged phase:

* ``ideal_12dB`` / ``ideal_24dB``: the ideal ratio ``|clean| / |damaged|`` per bin and frame,
  bounded to ±12 / ±24 dB (the spectral restorer's gain is bounded to ±12 dB);
* ``attenuate_only``: the same, never above 0 dB (a suppressor: what dereverberation by
  attenuation can do);
* ``static_bins`` / ``static_32band``: one gain per bin (or per log-spaced band, interpolated)
  for the whole clip, from the clean and damaged long-term spectra: a perfect static EQ;
* ``static_32band_frames``: that EQ plus one broadband gain per frame (smoothed over 5 frames):
  a perfect EQ and gain-riding.

Measures as ``automaster evaluate`` does (SI-SDR dB, MR-STFT, mel L1 dB against the clean clip);
prints a Markdown table of the means and writes the rows to ``--out``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from diagnose import DAMAGES, clean_clips, clip_parser, damage_one, measure_rows, report  # noqa: E402

from automaster.config import AudioConfig  # noqa: E402
from automaster.degrade import degrade_clip  # noqa: E402
from automaster.dsp.constants import MODEL_RATE  # noqa: E402
from automaster.evaluation.baselines import identity_loudness  # noqa: E402

N_FFT, HOP = 2048, 512
DB = 20.0 / np.log(10.0)  # dB per neper of amplitude


def _stft(x: np.ndarray) -> torch.Tensor:
    return torch.stft(torch.from_numpy(x), N_FFT, HOP, window=torch.hann_window(N_FFT), return_complex=True)


def _band_smooth(log_gain: np.ndarray, bands: int = 32) -> np.ndarray:
    """A per-bin log gain averaged over log-spaced bands, interpolated back to the bins."""
    edges = np.unique(np.round(np.geomspace(1, len(log_gain), bands + 1)).astype(int))
    values = np.array([log_gain[a:b].mean() for a, b in zip(edges[:-1], edges[1:])])
    centres = np.array([(a + b - 1) / 2 for a, b in zip(edges[:-1], edges[1:])])
    return np.interp(np.arange(len(log_gain)), centres, values)


def oracle_masks(clean: np.ndarray, damaged: np.ndarray) -> dict[str, np.ndarray]:
    """Every oracle mask's output ``(C, T)`` for one clip."""
    C, D = _stft(clean), _stft(damaged)
    n = damaged.shape[-1]

    def apply(log_gain: np.ndarray | torch.Tensor, bound_db: float = 24.0) -> np.ndarray:
        g = torch.exp(torch.as_tensor(log_gain, dtype=torch.float32).clamp(-bound_db / DB, bound_db / DB))
        g = g[:, None] if g.dim() == 1 else g  # a static (F,) gain holds for every frame
        return torch.istft(D * g, N_FFT, HOP, window=torch.hann_window(N_FFT), length=n).numpy()

    ratio = torch.log(C.abs() + 1e-7) - torch.log(D.abs() + 1e-7)  # (C, F, T) log amplitude gain
    pc, pd = (C.abs() ** 2).mean(0).numpy(), (D.abs() ** 2).mean(0).numpy()  # (F, T) power, channels averaged
    static = 0.5 * (np.log(pc.mean(1) + 1e-12) - np.log(pd.mean(1) + 1e-12))
    banded = _band_smooth(static)
    frames = 0.5 * (np.log(pc.sum(0) + 1e-9) - np.log((pd * np.exp(2 * banded)[:, None]).sum(0) + 1e-9))
    frames = np.convolve(frames, np.ones(5) / 5, mode="same")
    return {
        "ideal_12dB": apply(ratio, 12.0),
        "ideal_24dB": apply(ratio, 24.0),
        "attenuate_only": apply(ratio.clamp(max=0.0)),
        "static_bins": apply(static),
        "static_32band": apply(banded),
        "static_32band_frames": apply(banded[:, None] + frames[None, :]),
    }


def main() -> None:
    parser = clip_parser(__doc__, "mask-ceiling", clips=9)
    parser.add_argument("--damages", nargs="+", default=["reverb", "all"], choices=[*DAMAGES, "all"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    audio_cfg = AudioConfig()
    results = []
    for row, clean, reference in clean_clips(args, audio_cfg):
        for damage in args.damages:
            if damage == "all":
                damaged = degrade_clip(clean, MODEL_RATE, args.seed, row["track_id"]).audio[0].numpy()
            else:
                damaged = damage_one(clean, row["track_id"], args.seed, damage, audio_cfg.hop_length)[0]
            outputs = {"identity": damaged, "oracle_gain": identity_loudness(damaged, reference.lufs), **oracle_masks(clean, damaged)}
            results += measure_rows(reference, outputs, row["track_id"], damage)
    report(args, results)


if __name__ == "__main__":
    main()
