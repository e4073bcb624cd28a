"""A repo's version DAG as an SVG picture (`dvidfs dag REPO --svg OUT`).

Pure Python, no drawing library: the picture is a few dozen lines of SVG text,
so it diffs, greps and embeds in Markdown like any other text file.

Layout: time runs left to right.  A node's column is its depth (1 + the
deepest of its parents; the root is column 0), its row is its branch's lane
(lanes in the order branches first appear, oldest first, so `master` is on
top).  Each node is a circle coloured by its lane — filled when committed
(locked), hollow when open — labelled with its short UUID and, below, its
branch and state; its note is the circle's tooltip.  Each parent link is one
arrow from the parent to the child (a curve when it changes lane).

Element structure (what tests and other tools may rely on): one
`<g class="node" data-uuid="…">` per node and one `<path class="edge"
data-parent="…" data-child="…">` per parent link, in the document root.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol
from xml.sax.saxutils import escape, quoteattr

__all__ = ["dag_svg", "layout"]

DX, DY = 150, 86          # column and lane spacing (px)
MARGIN_X, MARGIN_Y = 70, 56
R = 13                    # node radius
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")


class DagNode(Protocol):
    """What is drawn of a node (`dvidfs.versions.model.Node` has it)."""
    uuid: str
    parents: list[str]
    locked: bool
    note: str
    tag: str

    @property
    def branch_name(self) -> str: ...


def layout(nodes: Iterable[DagNode]) -> dict[str, tuple[int, int]]:
    """uuid -> (column, lane) for `nodes`, given oldest first (parents before
    children, as `Dvid.repo_nodes` lists them).  Parents outside `nodes` are ignored."""
    depth: dict[str, int] = {}
    lanes: dict[str, int] = {}
    where: dict[str, tuple[int, int]] = {}
    for n in nodes:
        known = [depth[p] for p in n.parents if p in depth]
        depth[n.uuid] = 1 + max(known) if known else 0
        lane = lanes.setdefault(n.branch_name, len(lanes))
        where[n.uuid] = (depth[n.uuid], lane)
    return where


def _xy(col: int, lane: int) -> tuple[int, int]:
    return MARGIN_X + col * DX, MARGIN_Y + lane * DY


def _edge_path(a: tuple[int, int], b: tuple[int, int]) -> str:
    """From the rim of circle a to the rim of circle b (straight in one lane,
    an S-curve across lanes)."""
    (x0, y0), (x1, y1) = a, b
    if y0 == y1:
        return f"M{x0 + R},{y0} L{x1 - R - 3},{y1}"
    mid = (x0 + x1) / 2
    return f"M{x0 + R},{y0} C{mid:g},{y0} {mid:g},{y1} {x1 - R - 3},{y1}"


def dag_svg(nodes: Iterable[DagNode], title: str = "") -> str:
    """SVG text of the DAG of `nodes` (oldest first); `title` is drawn at the top."""
    nodes = list(nodes)
    where = layout(nodes)
    cols = max((c for c, _ in where.values()), default=0) + 1
    lanes = max((lane for _, lane in where.values()), default=0) + 1
    width = max(2 * MARGIN_X + (cols - 1) * DX, 520)    # at least the legend's width
    height = 2 * MARGIN_Y + (lanes - 1) * DY + 24
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
           'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/>'
           '</marker></defs>',
           f'<rect width="{width}" height="{height}" fill="white"/>']
    if title:
        out.append(f'<text class="title" x="12" y="20" font-size="14" fill="#222">{escape(title)}</text>')
    for n in nodes:
        for p in n.parents:
            if p in where:
                d = _edge_path(_xy(*where[p]), _xy(*where[n.uuid]))
                out.append(f'<path class="edge" data-parent="{p}" data-child="{n.uuid}" d="{d}" '
                           'fill="none" stroke="#555" stroke-width="1.6" marker-end="url(#arrow)"/>')
    for n in nodes:
        col, lane = where[n.uuid]
        x, y = _xy(col, lane)
        colour = PALETTE[lane % len(PALETTE)]
        state = "committed" if n.locked else "open"
        tag = f" [tag {n.tag}]" if n.tag else ""
        tooltip = f"{n.uuid} {n.branch_name} {state}{tag}" + (f": {n.note}" if n.note else "")
        out.append(f'<g class="node {state}" data-uuid="{n.uuid}">'
                   f'<title>{escape(tooltip)}</title>'
                   f'<circle cx="{x}" cy="{y}" r="{R}" fill="{colour if n.locked else "white"}" '
                   f'stroke="{colour}" stroke-width="2.5"/>'
                   f'<text class="uuid" x="{x}" y="{y - R - 6}" text-anchor="middle" font-size="12" '
                   f'font-family="DejaVu Sans Mono, Menlo, monospace" fill="#222">{n.uuid[:8]}</text>'
                   f'<text class="branch" x="{x}" y="{y + R + 15}" text-anchor="middle" font-size="11" '
                   f'fill={quoteattr(colour)}>{escape(n.branch_name)} · {state}{escape(tag)}</text>'
                   '</g>')
    ly = height - 14
    out.append(f'<g class="legend" font-size="11" fill="#444">'
               f'<circle cx="18" cy="{ly - 4}" r="5" fill="#777" stroke="#777"/>'
               f'<text x="28" y="{ly}">committed (read-only)</text>'
               f'<circle cx="168" cy="{ly - 4}" r="5" fill="white" stroke="#777" stroke-width="2"/>'
               f'<text x="178" y="{ly}">open</text>'
               f'<text x="220" y="{ly}">arrows: parent → child; columns: depth; rows: branches</text></g>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
