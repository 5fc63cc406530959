"""Point labels that stay readable: a small deterministic repel (:func:`place_labels`) that puts each label
near its point, never over or against another label (:data:`LABEL_GAP_PT` apart), never outside the axes, off
drawn lines when there is room, with a leader line when moved away from its point.
"""

from __future__ import annotations


import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib.cbook import STEP_LOOKUP_MAP  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402


_DIRECTIONS = [(1, 0), (0.7071, 0.7071), (0.7071, -0.7071), (-1, 0), (-0.7071, 0.7071), (-0.7071, -0.7071),
               (0, 1), (0, -1)]

_RADII_PT = [2, 6, 11, 17, 24, 32, 42, 54, 68]

#: least clear space (points) between two placed labels, so two labels never read as one
LABEL_GAP_PT = 3.0

def _overlap(a: Bbox, b: Bbox) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0

_LINE_STEP_PX = 2.0

#: cost (display px^2) of one line sample (every ``_LINE_STEP_PX``) inside a label's box
LINE_COST_PX2 = 20.0

def _line_samples(ax) -> np.ndarray:
    """Points every ``_LINE_STEP_PX`` display pixels along the axes' drawn lines (``[n, 2]``, display
    coordinates; marker-only lines and non-finite points skipped)."""
    out = []
    for line in ax.get_lines():
        if not line.get_visible() or line.get_linestyle() in ("None", "none", "", " "):
            continue
        x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
        style = line.get_drawstyle()
        if style in STEP_LOOKUP_MAP and style != "default":  # a step line: its corners, as drawn
            x, y = STEP_LOOKUP_MAP[style](x, y)
        xy = np.column_stack([x, y])
        xy = xy[np.isfinite(xy).all(axis=1)]
        if len(xy) < 2:
            continue
        d = line.get_transform().transform(xy)
        for a, b in zip(d[:-1], d[1:]):
            n = max(2, int(np.hypot(*(b - a)) / _LINE_STEP_PX) + 1)
            t = np.linspace(0.0, 1.0, n)[:, None]
            out.append(a + t * (b - a))
    return np.concatenate(out) if out else np.empty((0, 2))

def place_labels(ax, items: list[tuple], fontsize: float = 6.5, color: str = "0.1",
                 obstacles: list[tuple[float, float, float]] = (),
                 segments: list[tuple[float, float, float, float]] = (),
                 gap_pt: float = LABEL_GAP_PT, avoid_lines: bool = True) -> list:
    """Label points without overlaps: a deterministic greedy repel.

    Each label tries offsets of growing radius (points) from its marker's edge in eight directions and
    takes the first whose text box lies inside the axes, keeps ``gap_pt`` points clear of every placed
    label (two labels side by side never read as one) and covers no marker and no drawn line; if none
    does, the inside position clear of labels that covers the least marker area and line length; if
    there is none either, the label is left out (never clipped at the frame, never over another label).
    A label moved away from its point gets a thin leader line. Call it last, after the axes' limits,
    scales and layout are final (it works in display coordinates).

    Args:
        items: ``(x, y, text, marker_radius_pt)`` in data coordinates, optionally with a fifth entry,
            that label's colour (else ``color``); non-finite points are skipped.
        obstacles: further markers ``(x, y, radius_pt)`` that labels must not cover.
        segments: error bars ``(x0, y0, x1, y1)`` (data coordinates) that labels should not cover.
        gap_pt: least clear space between two labels (points; a label's box padded by it must not
            touch another's).
        avoid_lines: count the axes' drawn lines (``ax.lines`` with a line style) as obstacles too, so
            a label sits beside a curve rather than across it when there is room.

    Returns:
        the created :class:`matplotlib.text.Annotation` objects.
    """
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axbox = ax.get_window_extent(renderer).padded(-2)
    px = fig.dpi / 72.0
    kept = [it for it in items if np.isfinite(it[0]) and np.isfinite(it[1]) and it[2]]
    pts = [tuple(it[:4]) for it in kept]
    colors = [it[4] if len(it) > 4 else color for it in kept]
    if not pts:
        return []
    disp = ax.transData.transform([(x, y) for x, y, _, _ in pts])
    markers = [Bbox.from_bounds(dx - r * px, dy - r * px, 2 * r * px, 2 * r * px)
               for (dx, dy), (_, _, _, r) in zip(disp, pts)]
    for x, y, r in obstacles:
        if np.isfinite(x) and np.isfinite(y):
            dx, dy = ax.transData.transform((x, y))
            markers.append(Bbox.from_bounds(dx - r * px, dy - r * px, 2 * r * px, 2 * r * px))
    for x0, y0, x1, y1 in segments:
        if all(np.isfinite(v) for v in (x0, y0, x1, y1)):
            (a, b), (c, d) = ax.transData.transform([(x0, y0), (x1, y1)])
            markers.append(Bbox.from_extents(min(a, c) - 2, min(b, d) - 2, max(a, c) + 2, max(b, d) + 2))
    line_pts = _line_samples(ax) if avoid_lines else np.empty((0, 2))
    placed: list[Bbox] = []
    gap = gap_pt * px
    out = []
    order = sorted(range(len(pts)), key=lambda i: (disp[i][0], disp[i][1]))
    for i in order:
        x, y, text, rad = pts[i]
        probe = ax.text(0, 0, text, fontsize=fontsize)
        ext = probe.get_window_extent(renderer)
        probe.remove()
        tw, th = ext.width, ext.height
        best = None
        for radius in _RADII_PT:
            for ux, uy in _DIRECTIONS:
                off = (rad + radius) * px
                ox, oy = ux * off, uy * off
                x0 = disp[i][0] + ox + (0 if ux > 0.1 else -tw if ux < -0.1 else -tw / 2)
                y0 = disp[i][1] + oy + (0 if uy > 0.1 else -th if uy < -0.1 else -th / 2)
                box = Bbox.from_bounds(x0, y0, tw, th)
                if not (axbox.x0 <= box.x0 and box.x1 <= axbox.x1 and axbox.y0 <= box.y0 and box.y1 <= axbox.y1):
                    continue
                padded = box.padded(gap)
                if any(_overlap(padded, b) > 0 for b in placed):
                    continue  # never over (or against) another label
                cost = sum(_overlap(box, m) for m in markers)
                if len(line_pts):  # a drawn line through the text: as bad as a small marker per 2 px of it
                    inside = ((line_pts[:, 0] >= box.x0) & (line_pts[:, 0] <= box.x1)
                              & (line_pts[:, 1] >= box.y0) & (line_pts[:, 1] <= box.y1))
                    cost += LINE_COST_PX2 * int(inside.sum())
                if best is None or cost < best[0] - 1e-9:
                    best = (cost, radius, ux, uy, box)
                if cost == 0:
                    break
            if best is not None and best[0] == 0:
                break
        if best is None:  # no free position inside the axes: left out rather than clipped or overlapping
            continue
        _, radius, ux, uy, box = best
        off = (rad + radius) / 1.0
        ha = "left" if ux > 0.1 else "right" if ux < -0.1 else "center"
        va = "bottom" if uy > 0.1 else "top" if uy < -0.1 else "center"
        arrow = {"arrowstyle": "-", "lw": 0.5, "color": "0.45", "shrinkA": 0, "shrinkB": rad} if radius > 6 else None
        out.append(ax.annotate(text, (x, y), xytext=(ux * off, uy * off), textcoords="offset points", ha=ha, va=va,
                               fontsize=fontsize, color=colors[i], arrowprops=arrow, zorder=6))
        placed.append(box)
    return out
