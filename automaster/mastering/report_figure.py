"""The report's figure (:func:`draw_report`), drawn with PIL: line charts, no figure machinery.

matplotlib spent 0.33 s on this figure (most of it laying out tick labels and text); these
panels are lines, a few ticks and labels on one image, about 0.04 s drawn and encoded. The rules
are the report's: one unit per axis (its label says which), the input in blue and the output in
orange with a key above each panel saying which is which, and the restoration's estimates in the
caption. No panel uses a colour map, so none needs a colour bar.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from automaster.plots import _font

BLUE, ORANGE, GREEN, RED = (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)
PURPLE, GRAY, BLACK, GRID = (148, 103, 189), (127, 127, 127), (0, 0, 0), (225, 225, 225)
INK = (30, 30, 30)
PANEL_W, PANEL_H, HEADER_H = 400, 340, 56  # pixels: a panel and the caption above them all
_LEFT, _RIGHT, _BOTTOM = 62, 14, 42  # a panel's margins around its plot area
_DASHES = {"-": None, "--": (7, 4), ":": (2, 3)}
FLOOR_LUFS = -70.0  # short-term values below the absolute gate are drawn at this level
_FREQ_TICKS_HZ = (20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000)

Line = tuple[str, tuple[int, int, int], str]  # a key entry: label, colour, dash style


def nice_ticks(lo: float, hi: float, count: int = 5) -> tuple[np.ndarray, int]:
    """``(ticks, decimals)``: about ``count`` round values (1, 2, 2.5 or 5 times a power of ten
    apart) within ``[lo, hi]`` and the decimals their labels need."""
    raw = (hi - lo) / max(count, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * mag >= raw * (1 - 1e-9))
    ticks = np.arange(math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9) + 1) * step
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if abs(step / mag - 2.5) < 1e-9 and step < 10:  # 0.25, 2.5: one digit more than the power of ten
        decimals += 1
    return ticks, decimals


def _limits(values: list[np.ndarray], min_span: float, pad: float = 0.06) -> tuple[float, float]:
    """The finite values' range, padded, at least ``min_span`` wide (a flat curve shows as flat,
    not as noise magnified to fill the axis)."""
    finite = np.concatenate([v[np.isfinite(v)] for v in values] + [np.zeros(0)])
    if finite.size == 0:
        return -min_span / 2, min_span / 2
    lo, hi = float(finite.min()), float(finite.max())
    if hi - lo < min_span:
        mid = (lo + hi) / 2
        lo, hi = mid - min_span / 2, mid + min_span / 2
    span = hi - lo
    return lo - pad * span, hi + pad * span


class Panel:
    """One chart at ``(x0, y0)`` on ``image``: a title, a key of its lines, a plot area with
    ticks and grid, and axis labels (the y label names the axis's one unit)."""

    def __init__(self, image: Image.Image, x0: int, y0: int, title: str, key: list[Line], bottom: int = _BOTTOM):
        self.image, self.draw = image, ImageDraw.Draw(image)
        self.x0, self.y0 = x0, y0
        self.draw.text((x0 + PANEL_W // 2, y0 + 4), title, fill=INK, font=_font(13), anchor="mt")
        rows = self._key(key, y0 + 22)
        self.left, self.right = x0 + _LEFT, x0 + PANEL_W - _RIGHT
        self.top, self.bottom = y0 + 26 + 13 * rows, y0 + PANEL_H - bottom
        self.xlim = self.ylim = (0.0, 1.0)
        self.xlog = False

    def _key(self, key: list[Line], y: int) -> int:
        """The key's entries (a line sample and its label), wrapped into rows; the rows used."""
        x, rows = self.x0 + 10, 1 if key else 0
        for label, colour, style in key:
            width = 22 + int(_font(10).getlength(label)) + 12
            if x + width > self.x0 + PANEL_W - 6 and x > self.x0 + 10:
                x, y, rows = self.x0 + 10, y + 13, rows + 1
            self._dashed([(x, y + 6), (x + 16, y + 6)], colour, style, 2)
            self.draw.text((x + 20, y + 6), label, fill=INK, font=_font(10), anchor="lm")
            x += width
        return rows

    def axes(self, xlim: tuple[float, float], ylim: tuple[float, float], xlabel: str, ylabel: str,
             xticks: list[tuple[float, str]] | None = None, xlog: bool = False) -> None:
        """Limits, grid, frame, ticks (round values, or ``xticks``) and the axis labels."""
        self.xlim, self.ylim, self.xlog = xlim, ylim, xlog
        if xticks is None:
            ticks, decimals = nice_ticks(*xlim, 6)
            xticks = [(t, f"{t:.{decimals}f}") for t in ticks]
        yticks, decimals = nice_ticks(*ylim, 5)
        for value, label in xticks:
            x = self.px(np.array([value]), np.array([ylim[0]]))[0][0]
            self.draw.line([(x, self.top), (x, self.bottom)], fill=GRID)
            if label:
                self.draw.text((x, self.bottom + 4), label, fill=INK, font=_font(10), anchor="mt")
        for value in yticks:
            y = self.px(np.array([xlim[0]]), np.array([value]))[1][0]
            self.draw.line([(self.left, y), (self.right, y)], fill=GRID)
            self.draw.text((self.left - 4, y), f"{value:.{decimals}f}", fill=INK, font=_font(10), anchor="rm")
        self.draw.rectangle([self.left, self.top, self.right, self.bottom], outline=GRAY)
        self.draw.text(((self.left + self.right) // 2, self.y0 + PANEL_H - 14), xlabel, fill=INK, font=_font(11), anchor="mm")
        self._vertical_text(ylabel, self.x0 + 4, (self.top + self.bottom) // 2)

    def _vertical_text(self, text: str, x: int, y_centre: int) -> None:
        box = _font(11).getbbox(text)
        mask = Image.new("L", (box[2] + 2, 16), 0)
        ImageDraw.Draw(mask).text((1, 1), text, fill=255, font=_font(11))
        mask = mask.rotate(90, expand=True)
        self.image.paste(INK, (x, y_centre - mask.size[1] // 2), mask)

    def px(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Data to pixels (y clipped to the plot area: an off-scale value sits on its edge)."""
        x = np.log10(np.maximum(x, 1e-12)) if self.xlog else np.asarray(x, dtype=np.float64)
        x_lo, x_hi = (math.log10(v) for v in self.xlim) if self.xlog else self.xlim
        px = self.left + (x - x_lo) / (x_hi - x_lo) * (self.right - self.left)
        py = self.bottom - (np.clip(y, *self.ylim) - self.ylim[0]) / (self.ylim[1] - self.ylim[0]) * (self.bottom - self.top)
        return px, py

    def line(self, x: np.ndarray, y: np.ndarray, colour: tuple[int, int, int], style: str = "-",
             width: int = 2, markers: bool = False) -> None:
        """A polyline through the finite points within the x limits (broken where a value is missing)."""
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        inside = np.isfinite(y) & (x >= self.xlim[0]) & (x <= self.xlim[1])
        px, py = self.px(x, y)
        for run in np.split(np.arange(x.size), np.flatnonzero(np.diff(inside.astype(np.int8))) + 1):
            if run.size and inside[run[0]]:
                points = list(zip(px[run].tolist(), py[run].tolist()))
                if len(points) > 1:
                    self._dashed(points, colour, style, width)
                if markers or len(points) == 1:
                    for u, v in points:
                        self.draw.ellipse([u - 3, v - 3, u + 3, v + 3], fill=colour)

    def hline(self, y: float, colour: tuple[int, int, int], style: str = "--") -> None:
        self.line(np.array(self.xlim), np.array([y, y]), colour, style, width=1 if style == ":" else 2)

    def _dashed(self, points: list[tuple[float, float]], colour: tuple[int, int, int], style: str, width: int) -> None:
        pattern = _DASHES[style]
        if pattern is None:
            self.draw.line(points, fill=colour, width=width, joint="curve" if width > 1 else None)
            return
        on, off = pattern
        phase = 0.0  # distance along the line into the current on+off period
        for (ax, ay), (bx, by) in zip(points, points[1:]):
            length = math.hypot(bx - ax, by - ay)
            s = 0.0
            while s < length:
                in_on = phase < on
                step = min(length - s, (on - phase) if in_on else (on + off - phase))
                if in_on:
                    u0, u1 = s / length, (s + step) / length
                    self.draw.line([(ax + (bx - ax) * u0, ay + (by - ay) * u0), (ax + (bx - ax) * u1, ay + (by - ay) * u1)],
                                   fill=colour, width=width)
                s += step
                phase = (phase + step) % (on + off)

    def note(self, text: str) -> None:
        self.draw.text(((self.left + self.right) // 2, (self.top + self.bottom) // 2), text, fill=INK, font=_font(11), anchor="mm")


def _arr(values: list[float | None] | None, floor: float = float("nan")) -> np.ndarray:
    return np.array([floor if v is None else v for v in values or []], dtype=np.float64)


def _log_ticks(lo: float, hi: float) -> list[tuple[float, str]]:
    return [(f, f"{f / 1000:g}k" if f >= 1000 else f"{f:g}") for f in _FREQ_TICKS_HZ if lo <= f <= hi]


def _time_limits(r: dict[str, Any]) -> tuple[float, float]:
    """Every time axis spans the whole file: the panels line up."""
    return 0.0, max(float(r.get("duration_s") or 0.0), 0.1)


def _spectrum(image: Image.Image, x0: int, y0: int, r: dict[str, Any]) -> None:
    s = r["spectrum"]
    f = np.asarray(s["grid_hz"], dtype=np.float64)
    curves = [(_arr(s["input_db"]), "input", BLUE, "-"), (_arr(s["output_db"]), "output", ORANGE, "-")]
    if "reference_db" in s:
        curves.append((_arr(s["reference_db"]), "reference (at the output's loudness)", GREEN, "--"))
    p = Panel(image, x0, y0, "Long-term spectrum (mid, 1/3-octave smoothed)", [(n, c, st) for _, n, c, st in curves])
    p.axes((20.0, 20000.0), _limits([v for v, *_ in curves], 6.0), "frequency (Hz)", "power density (dBFS/Hz)",
           _log_ticks(20.0, 20000.0), xlog=True)
    for values, _, colour, style in curves:
        p.line(f, values, colour, style)


def _loudness(image: Image.Image, x0: int, y0: int, r: dict[str, Any]) -> None:
    c = r["short_term_lufs"]
    t, st_in, st_out = _arr(c["time_s"]), _arr(c["input"], FLOOR_LUFS), _arr(c["output"], FLOOR_LUFS)
    key: list[Line] = [("input, short-term", BLUE, "-"), ("output, short-term", ORANGE, "-")]
    levels = []
    for name, colour, label in (("lufs_in", BLUE, "input, integrated"), ("lufs_out", ORANGE, "output, integrated")):
        if r.get(name) is not None:
            key.append((f"{label} {r[name]:.1f} LUFS", colour, ":"))
            levels.append((r[name], colour, ":"))
    if r.get("target_lufs") is not None:
        key.append((f"target {r['target_lufs']:.1f} LUFS", BLACK, "--"))
        levels.append((r["target_lufs"], BLACK, "--"))
    p = Panel(image, x0, y0, "Loudness (3 s short-term, BS.1770)", key)
    p.axes(_time_limits(r), _limits([st_in, st_out, _arr([v for v, *_ in levels])], 2.0), "time (s)", "loudness (LUFS)")
    p.line(t, st_in, BLUE)
    p.line(t, st_out, ORANGE)
    for value, colour, style in levels:
        p.hline(value, colour, style)


def _peaks(image: Image.Image, x0: int, y0: int, r: dict[str, Any]) -> None:
    c = r["true_peak_curve_dbtp"]
    t, tp_in, tp_out = _arr(c["time_s"]), _arr(c["input"]), _arr(c["output"])
    key: list[Line] = [("input", BLUE, "-"), ("output", ORANGE, "-")]
    ceiling = r.get("ceiling_dbtp")
    if ceiling is not None:
        key.append((f"ceiling {ceiling:.1f} dBTP", RED, "--"))
    p = Panel(image, x0, y0, "True peak per 100 ms (8x oversampled)", key)
    p.axes(_time_limits(r), _limits([tp_in, tp_out, _arr([ceiling])], 2.0), "time (s)", "true peak (dBTP)")
    p.line(t, tp_in, BLUE)
    p.line(t, tp_out, ORANGE)
    if ceiling is not None:
        p.hline(ceiling, RED)


def _gain_reduction(image: Image.Image, x0: int, y0: int, r: dict[str, Any]) -> None:
    c = r["gain_reduction_curve_db"]
    gr = _arr(c["values"], 0.0)
    t = np.arange(gr.size) * c["hop_s"]
    p = Panel(image, x0, y0, f"Limiter gain reduction (max {r.get('limiter_max_reduction_db') or 0.0:.2f} dB)",
              [("output: limiter gain", RED, "-")])
    p.axes(_time_limits(r), (min(-1.0, float(gr.min(initial=0.0)) - 0.5), 0.5), "time (s)", "gain (dB)")
    p.line(t, gr, RED, width=1)


def _stages(image: Image.Image, x0: int, y0: int, r: dict[str, Any], key: str, unit: str, line: float | None) -> None:
    stages = r.get("stages", [])
    names = [("* " if s["applied"] else "") + s["stage"] for s in stages]
    values = _arr([s.get(key) for s in stages])
    colour = GREEN if unit == "LUFS" else GRAY
    what = "Loudness" if unit == "LUFS" else "True peak"
    entries: list[Line] = [(f"{what.lower()} after the stage", colour, "-")]
    if line is not None:
        entries.append((f"{'target' if unit == 'LUFS' else 'ceiling'} {line:.1f} {unit}", BLACK if unit == "LUFS" else RED, "--"))
    p = Panel(image, x0, y0, f"{what} after each stage", entries, bottom=_BOTTOM + 12)
    ticks = [(float(i), "") for i in range(len(names))]
    p.axes((-0.5, len(names) - 0.5), _limits([values, _arr([line])], 1.0),
           "stage, input -> output (* = applied)", f"{what.lower()} ({unit})", ticks)
    for i, name in enumerate(names):  # staggered in two rows: the names never run into each other
        x = p.px(np.array([float(i)]), np.array([0.0]))[0][0]
        p.draw.text((x, p.bottom + 4 + 12 * (i % 2)), name, fill=INK, font=_font(10), anchor="mt")
    p.line(np.arange(len(names), dtype=np.float64), values, colour, markers=True)
    if line is not None:
        p.hline(line, BLACK if unit == "LUFS" else RED)


def _eq(image: Image.Image, x0: int, y0: int, r: dict[str, Any]) -> None:
    tone = r.get("tone") or {}
    f = _arr(tone.get("eq_hz"))
    mid, side = _arr(tone.get("eq_mid_db")), _arr(tone.get("eq_side_db"))
    key: list[Line] = [("mid", BLUE, "-"), ("side", PURPLE, "-")] if f.size else []
    p = Panel(image, x0, y0, "Reference EQ applied to the input (mid, side)", key)
    p.axes((20.0, 20000.0), _limits([mid, side, np.zeros(1)], 2.0), "frequency (Hz)", "gain (dB)",
           _log_ticks(20.0, 20000.0), xlog=True)
    if f.size == 0:
        p.note("no reference: no tone-matching EQ")
        return
    p.hline(0.0, GRAY, ":")
    p.line(f, mid, BLUE)
    p.line(f, side, PURPLE)


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def draw_report(report: dict[str, Any], estimates_line: str = "") -> bytes:
    """The report's figure as PNG bytes: spectrum, short-term loudness, true peak, the limiter's
    gain reduction, loudness and true peak after each stage, and with a reference the EQ it
    applied; every axis in one unit, the input in blue and the output in orange; the header says
    the levels in and out and ``estimates_line`` (the restoration's estimates, in words)."""
    r = report
    draws = [_spectrum, _loudness, _peaks, _gain_reduction,
             lambda im, x, y, r: _stages(im, x, y, r, "lufs", "LUFS", r.get("target_lufs")),
             lambda im, x, y, r: _stages(im, x, y, r, "true_peak_dbtp", "dBTP", r.get("ceiling_dbtp"))]
    if r.get("tone"):
        draws.insert(3, _eq)
    cols = -(-len(draws) // 2)
    image = Image.new("RGB", (cols * PANEL_W, HEADER_H + 2 * PANEL_H), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    head = (f"{r['file']}: {_fmt(r.get('lufs_in'))} -> {_fmt(r.get('lufs_out'))} LUFS, true peak "
            f"{_fmt(r.get('true_peak_in_dbtp'))} -> {_fmt(r.get('true_peak_out_dbtp'))} dBTP; {r.get('applied') or ''}")
    draw.text((image.size[0] // 2, 8), head, fill=INK, font=_font(14), anchor="mt")
    draw.text((image.size[0] // 2, 30), estimates_line, fill=INK, font=_font(12), anchor="mt")
    for i, panel in enumerate(draws):
        panel(image, (i % cols) * PANEL_W, HEADER_H + (i // cols) * PANEL_H, r)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)  # level 6 takes four times as long for 20 % fewer bytes
    return buf.getvalue()
