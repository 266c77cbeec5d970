"""How the level options combine: ``--preset`` (the table, :data:`automaster.config.PRESETS`),
``--target-lufs``, ``--true-peak`` and a reference's loudness.

| preset | loudness | true-peak ceiling |
|---|---|---|
| ``restore`` (default) | the restoration's level (the model's predicted gain when it has one) | -1 dBTP |
| ``streaming`` | -14 LUFS | -1 dBTP |
| ``apple`` | -16 LUFS | -1 dBTP |
| ``club`` | -9 LUFS | -2 dBTP (Spotify asks for that much headroom above -14 LUFS) |
| ``broadcast`` | -23 LUFS (EBU R128) | -1 dBTP |
| ``none`` | no loudness stage | none |

Precedence (:func:`resolve_levels`): ``--target-lufs`` and ``--true-peak`` override the preset;
with ``--reference`` and no preset named, the loudness is the reference's.
"""

from __future__ import annotations

from dataclasses import dataclass

from automaster.config import DEFAULT_PRESET, PRESETS, Preset

__all__ = ["DEFAULT_PRESET", "PRESETS", "Levels", "Preset", "check_preset", "resolve_levels"]


@dataclass(frozen=True)
class Levels:
    """What the loudness stage does: ``target_lufs`` (None: keep the level, ``level_gain_db``
    aside), ``ceiling_dbtp`` (None: no limiter) and where each came from (for the report)."""

    target_lufs: float | None
    ceiling_dbtp: float | None
    loudness_from: str
    ceiling_from: str
    use_level_gain: bool  # restore: apply the model's predicted level gain when it gives one


def check_preset(name: str) -> Preset:
    """The preset called ``name``; ``ValueError`` naming the choices otherwise."""
    if name not in PRESETS:
        raise ValueError(f"--preset must be one of {', '.join(PRESETS)}, got {name!r}")
    return PRESETS[name]


def resolve_levels(
    preset: str | None,
    target_lufs: float | None = None,
    true_peak_dbtp: float | None = None,
    reference_lufs: float | None = None,
) -> Levels:
    """Combine ``--preset`` (None: not given, the default applies), ``--target-lufs``,
    ``--true-peak`` and a reference's loudness into one :class:`Levels`."""
    chosen = check_preset(preset or DEFAULT_PRESET)
    if target_lufs is not None:
        target, source = float(target_lufs), "--target-lufs"
    elif preset is None and reference_lufs is not None:
        target, source = float(reference_lufs), "reference"
    else:
        target, source = chosen.target_lufs, f"preset {chosen.name}"
    if true_peak_dbtp is not None:
        ceiling, ceiling_source = float(true_peak_dbtp), "--true-peak"
    else:
        ceiling, ceiling_source = chosen.ceiling_dbtp, f"preset {chosen.name}"
    use_gain = target is None and chosen.name == "restore"
    return Levels(target, ceiling, source, ceiling_source, use_gain)
