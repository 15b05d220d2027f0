"""Charts drawn with PIL alone (no plotting library to install): line charts of training curves and a bar chart of
codebook usage, as PNG-ready images of a fixed size, readable at a glance and in a report.

    line_chart("PSNR (dB)", {"train": [(25, 7.0), (50, 8.8)], "held-out": [(50, 9.1)]})  # -> PIL.Image
    bar_chart("codebook usage", counts)                                                    # -> PIL.Image
"""

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 640, 400
LEFT, RIGHT, TOP, BOTTOM = 72, 24, 44, 52
# matplotlib's tab10 colours, so the charts read like the ones researchers are used to
COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
GRID, AXIS, TEXT = (228, 228, 228), (60, 60, 60), (20, 20, 20)

Series = Sequence[tuple[float, float]]


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # FreeType's built-in font (Pillow >= 10.1)
    except (TypeError, OSError):
        return ImageFont.load_default()


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round tick values (1, 2 or 5 times a power of ten apart) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        hi = lo + (abs(lo) * 0.1 or 1.0)
    raw = (hi - lo) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step) * step
    ticks, v = [], first
    while v <= hi + step * 1e-9:
        if v >= lo - step * 1e-9:
            ticks.append(round(v, 12))
        v += step
    return ticks


def _label(v: float) -> str:
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.1e}"
    return f"{v:,.4g}"


class _Frame:
    """The plotting area of a chart and the mapping from data to pixels."""

    def __init__(self, x_range: tuple[float, float], y_range: tuple[float, float], log_y: bool = False):
        self.log_y = log_y
        self.x0, self.x1 = x_range
        self.y0, self.y1 = (math.log10(v) for v in y_range) if log_y else y_range
        if self.x1 <= self.x0:
            self.x1 = self.x0 + 1
        if self.y1 <= self.y0:
            pad = abs(self.y0) * 0.1 or 1.0
            self.y0, self.y1 = self.y0 - pad, self.y1 + pad

    def px(self, x: float) -> float:
        return LEFT + (x - self.x0) / (self.x1 - self.x0) * (WIDTH - LEFT - RIGHT)

    def py(self, y: float) -> float:
        y = math.log10(y) if self.log_y else y
        return HEIGHT - BOTTOM - (y - self.y0) / (self.y1 - self.y0) * (HEIGHT - TOP - BOTTOM)


def _axes(draw: ImageDraw.ImageDraw, frame: _Frame, title: str, xlabel: str, x_ticks, y_ticks) -> None:
    small, big = _font(12), _font(15)
    for x in x_ticks:
        draw.line([frame.px(x), TOP, frame.px(x), HEIGHT - BOTTOM], fill=GRID)
        text = _label(x)
        draw.text(
            (frame.px(x) - draw.textlength(text, font=small) / 2, HEIGHT - BOTTOM + 6), text, TEXT, small
        )
    for y in y_ticks:
        draw.line([LEFT, frame.py(y), WIDTH - RIGHT, frame.py(y)], fill=GRID)
        text = _label(y)
        draw.text((LEFT - 6 - draw.textlength(text, font=small), frame.py(y) - 7), text, TEXT, small)
    draw.rectangle([LEFT, TOP, WIDTH - RIGHT, HEIGHT - BOTTOM], outline=AXIS)
    draw.text((LEFT, 12), title, TEXT, big)
    draw.text(
        ((LEFT + WIDTH - RIGHT - draw.textlength(xlabel, font=small)) / 2, HEIGHT - 22), xlabel, TEXT, small
    )


def _legend(draw: ImageDraw.ImageDraw, names: list[str]) -> None:
    font = _font(12)
    x = WIDTH - RIGHT
    for i, name in reversed(list(enumerate(names))):
        x -= draw.textlength(name, font=font) + 26
        draw.line([x, 21, x + 16, 21], fill=COLOURS[i % len(COLOURS)], width=3)
        draw.text((x + 20, 14), name, TEXT, font)


def line_chart(
    title: str, series: dict[str, Series], xlabel: str = "step", log_y: bool = False
) -> Image.Image:
    """Each series as a line (a dot where it has a single point) on shared axes, with a legend when there are
    several. Non-finite values are left out; a log-scale chart keeps only positive values."""
    clean = {
        name: [(float(x), float(y)) for x, y in points if math.isfinite(y) and (y > 0 or not log_y)]
        for name, points in series.items()
    }
    clean = {name: points for name, points in clean.items() if points}
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    if not clean:
        _axes(draw, _Frame((0, 1), (0, 1)), title, xlabel, [], [])
        draw.text((LEFT + 12, TOP + 12), "no values recorded", TEXT, _font(13))
        return image
    xs = [x for points in clean.values() for x, _ in points]
    ys = [y for points in clean.values() for _, y in points]
    frame = _Frame((min(xs), max(xs)), (min(ys), max(ys)), log_y)
    y_ticks = nice_ticks(min(ys), max(ys))
    if log_y:  # powers of ten when the range spans two of them, else round values on the log axis
        decades = [
            10**e for e in range(math.floor(frame.y0), math.ceil(frame.y1) + 1) if frame.y0 <= e <= frame.y1
        ]
        y_ticks = decades if len(decades) >= 2 else [v for v in y_ticks if v > 0]
    _axes(draw, frame, title, xlabel, nice_ticks(frame.x0, frame.x1), y_ticks)
    for i, points in enumerate(clean.values()):
        colour = COLOURS[i % len(COLOURS)]
        pixels = [(frame.px(x), frame.py(y)) for x, y in sorted(points)]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2, joint="curve")
        for cx, cy in pixels if len(pixels) <= 40 else pixels[-1:]:
            draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=colour)
    if len(clean) > 1:
        _legend(draw, list(clean))
    return image


def bar_chart(title: str, values: Sequence[float], xlabel: str) -> Image.Image:
    """One bar per value, in the order given (e.g. code counts sorted from the most used code down)."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    top = max(values, default=0) or 1.0
    frame = _Frame((0, max(len(values), 1)), (0, top * 1.05))
    _axes(draw, frame, title, xlabel, nice_ticks(0, len(values)), nice_ticks(0, top * 1.05))
    for i, v in enumerate(values):
        x0, x1 = frame.px(i), frame.px(i + 1)
        draw.rectangle([x0, frame.py(v), max(x1 - 1, x0), HEIGHT - BOTTOM], fill=COLOURS[0])
    return image
