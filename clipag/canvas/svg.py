"""Strokes as an SVG document: the same picture the stroke renderer draws (round caps and
joins, straight alpha, painted in order over a background rectangle)."""

from __future__ import annotations

from xml.sax.saxutils import quoteattr

import torch


def _num(x: float) -> str:
    return f"{x:.3f}".rstrip("0").rstrip(".") if x == x else "0"


def _rgb(c: torch.Tensor) -> str:
    r, g, b = (int(round(float(v) * 255)) for v in c.clamp(0, 1))
    return f"#{r:02x}{g:02x}{b:02x}"


def strokes_svg(points: torch.Tensor, widths: torch.Tensor, colors: torch.Tensor,
                segments: torch.Tensor, background: torch.Tensor, height: int, width: int,
                title: str = "") -> str:
    """One image's strokes: points (N, 3K+1, 2) in pixels, widths (N,), colors (N, 4) RGBA,
    segments (N,), background (3,)."""
    points, widths, colors = points.detach().cpu().double(), widths.detach().cpu(), colors.detach().cpu()
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}">']
    if title:
        lines.append(f"<title>{_escape(title)}</title>")
    lines.append(f'<rect width="{width}" height="{height}" fill="{_rgb(background)}"/>')
    lines.append('<g fill="none" stroke-linecap="round" stroke-linejoin="round">')
    for p, w, c, k in zip(points, widths.tolist(), colors, segments.tolist()):
        used = p[:3 * int(k) + 1].tolist()
        d = [f"M{_num(used[0][0])} {_num(used[0][1])}"]
        for i in range(1, len(used), 3):
            d.append("C" + " ".join(f"{_num(x)} {_num(y)}" for x, y in used[i:i + 3]))
        lines.append(f'<path d="{"".join(d)}" stroke="{_rgb(c[:3])}" '
                     f'stroke-opacity="{_num(float(c[3].clamp(0, 1)))}" '
                     f'stroke-width="{_num(float(w))}"/>')
    lines.append("</g>")
    lines.append("</svg>")
    return "\n".join(lines) + "\n"


def _escape(text: str) -> str:
    return quoteattr(text)[1:-1]
