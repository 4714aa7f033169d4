"""Drawings and code views of the web UI, as server-rendered HTML and SVG (no script, nothing fetched):
the data interval timeline, the jobs history chart, the lineage graph, highlighted code and the side-by-side
diff of two specs. Every text a user wrote goes through ``escape``; highlighted code through Pygments' own
escaping."""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from html import escape
from typing import Any

__all__ = ["CODE_STYLE", "Node", "code_block", "interval_id", "jobs_chart", "lineage_graph", "side_by_side",
           "timeline"]

#: data interval statuses, in legend order
STATUSES = ("Complete", "Incomplete", "Pending", "None")
_WIDTH = 800                    # SVG user units; drawings scale down to the page's width


def _stamp(value: datetime, *, span: timedelta) -> str:
    """A tick's label, as precise as the axis' span needs."""
    if span >= timedelta(days=3):
        return value.strftime("%Y-%m-%d")
    return value.strftime("%m-%d %H:%M" if span >= timedelta(hours=1) else "%H:%M:%S")


def _ticks(low: datetime, high: datetime, count: int = 4) -> list[datetime]:
    step = (high - low) / count
    return [low + step * i for i in range(count + 1)]


def _axis(low: datetime, high: datetime, *, left: float, right: float, y: float) -> str:
    """A time axis: a line at ``y`` and dated ticks from ``low`` (at ``left``) to ``high`` (at ``right``)."""
    span = high - low
    parts = [f"<line class='axis' x1='{left}' y1='{y}' x2='{right}' y2='{y}'/>"]
    for i, tick in enumerate(_ticks(low, high)):
        x = left + (right - left) * i / 4
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"
        parts.append(f"<line class='axis' x1='{x:.1f}' y1='{y}' x2='{x:.1f}' y2='{y + 4}'/>"
                     f"<text x='{x:.1f}' y='{y + 16}' text-anchor='{anchor}'>{escape(_stamp(tick, span=span))}</text>")
    return "".join(parts)


def interval_id(kind: str, index: int) -> str:
    """The id of an interval's row in the text table under the timeline."""
    return f"interval-{escape(kind, quote=True)}-{index}"


def timeline(rows: dict[str, Sequence[Any]], *, label: str) -> str:
    """The data intervals of each store (``{"offline": [DataInterval, ...], ...}``) as one SVG: a bar per store
    on a shared time axis, a rectangle per interval coloured by status, its window and status in a
    ``<title>`` (hover) and in an ``aria-label``; each is a link (Tab, tap) to its row in the text table."""
    shown = {kind: list(items) for kind, items in rows.items() if items}
    if not shown:
        return ""
    low = min(i.start for items in shown.values() for i in items)
    high = max(i.end for items in shown.values() for i in items)
    seconds = (high - low).total_seconds() or 1.0
    left, right, bar, gap = 64.0, _WIDTH - 8.0, 22, 10
    parts = []
    for row, (kind, items) in enumerate(shown.items()):
        y = row * (bar + gap)
        parts.append(f"<text x='0' y='{y + 15}'>{escape(kind)}</text>")
        for n, item in enumerate(items):
            x = left + (right - left) * (item.start - low).total_seconds() / seconds
            width = max(1.0, (right - left) * (item.end - item.start).total_seconds() / seconds)
            status = item.status.value
            text = f"{kind}: {item.start:%Y-%m-%d %H:%M} – {item.end:%Y-%m-%d %H:%M} {status}"
            # a link to the interval's row in the text table: a tap or Enter shows the window in words
            parts.append(f"<a href='#{interval_id(kind, n)}' aria-label='{escape(text, quote=True)}'>"
                         f"<rect class='s-{escape(status)}' x='{x:.2f}' y='{y}' width='{width:.2f}' height='{bar}'>"
                         f"<title>{escape(text)}</title></rect></a>")
    axis_y = len(shown) * (bar + gap)
    parts.append(_axis(low, high, left=left, right=right, y=axis_y))
    height = axis_y + 22
    legend = "".join(f"<span><i class='s-{s}'></i>{s}</span>" for s in STATUSES)
    return (f"<figure class='chart'><svg class='timeline' viewBox='0 0 {_WIDTH} {height}' width='{_WIDTH}' "
            "role='group' "
            f"aria-label='{escape(label, quote=True)}'>{''.join(parts)}</svg>"
            f"<figcaption class='legend'>{legend}</figcaption></figure>")


def jobs_chart(jobs: Sequence[Any]) -> str:
    """Duration and rows written per job over time (by start): two SVG panels of bars sharing a time axis,
    each bar's job, window and numbers in its ``<title>``."""
    ran = sorted((j for j in jobs if j.started_at is not None), key=lambda j: j.started_at)
    if not ran:
        return ""
    low, high = ran[0].started_at, ran[-1].started_at
    if high - low < timedelta(minutes=1):
        low, high = low - timedelta(seconds=30), high + timedelta(seconds=30)
    seconds = (high - low).total_seconds()
    left, right, panel = 64.0, _WIDTH - 12.0, 70
    bar = max(2.0, min(14.0, (right - left) / (len(ran) * 1.6)))

    def panel_of(top: float, title: str, value: Any, unit: str) -> str:
        values = [value(j) for j in ran]
        most = max((v for v in values if v is not None), default=0) or 1
        parts = [f"<text x='0' y='{top + 12}'>{escape(title)}</text>",
                 f"<text x='0' y='{top + 28}' class='muted'>max {_number(most)}{unit}</text>",
                 f"<line class='axis' x1='{left}' y1='{top + panel}' x2='{right}' y2='{top + panel}'/>"]
        for job, v in zip(ran, values, strict=True):
            if v is None:
                continue
            x = left + (right - left - bar) * (job.started_at - low).total_seconds() / seconds
            height = max(1.0, panel * v / most)
            text = (f"job {job.id} {job.ref} {job.status.value}: {_number(v)}{unit}; window "
                    f"{job.start:%Y-%m-%d %H:%M} – {job.end:%Y-%m-%d %H:%M}; "
                    f"started {job.started_at:%Y-%m-%d %H:%M:%S}")
            parts.append(f"<rect class='j-{escape(job.status.value)}' x='{x:.2f}' y='{top + panel - height:.2f}' "
                         f"width='{bar:.2f}' height='{height:.2f}'><title>{escape(text)}</title></rect>")
        return "".join(parts)

    body = (panel_of(0, "duration", lambda j: j.wall_seconds, " s")
            + panel_of(panel + 16, "rows written", lambda j: j.rows_written, "")
            + _axis(low, high, left=left, right=right, y=2 * panel + 16))
    height = 2 * panel + 16 + 22
    return (f"<figure class='chart'><svg viewBox='0 0 {_WIDTH} {height}' width='{_WIDTH}' role='img' "
            "aria-label='job history: "
            f"duration and rows written of the {len(ran)} jobs below, by start time'>{body}</svg>"
            f"<figcaption class='muted'>duration and rows written per job, by start time "
            f"(hover a bar for its job)</figcaption></figure>")


def _number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() or value >= 100 else f"{value:,.2f}"


@dataclass(frozen=True)
class Node:
    """A node of the lineage graph: ``key`` identifies it in edges, ``column`` places it (0: entities)."""

    key: str
    label: str
    href: str
    kind: str               # entity | featureset | derived | model
    column: int


def lineage_graph(nodes: Sequence[Node], edges: Iterable[tuple[str, str]]) -> str:
    """Nodes in columns (entities → feature sets → derived feature sets → models), each a link, with
    edges drawn between them; as wide as it needs, scaled down on narrow screens."""
    if not nodes:
        return ""
    box_w, box_h, col_gap, row_gap = 150, 30, 60, 14
    columns: dict[int, list[Node]] = {}
    for node in nodes:
        columns.setdefault(node.column, []).append(node)
    order = sorted(columns)
    edges = list(edges)
    sources: dict[str, list[str]] = {}
    for source, target in edges:
        sources.setdefault(target, []).append(source)
    place: dict[str, tuple[float, float]] = {}
    for c, column in enumerate(order):
        def rank(node: Node) -> float:
            """The mean height of the node's sources already placed: fewer edges cross."""
            ys = [place[s][1] for s in sources.get(node.key, ()) if s in place]
            return sum(ys) / len(ys) if ys else float("inf")

        for r, node in enumerate(sorted(columns[column], key=rank) if c else columns[column]):
            place[node.key] = (c * (box_w + col_gap) + 2, r * (box_h + row_gap) + 2)
    width = len(order) * (box_w + col_gap) - col_gap + 4
    height = max(len(v) for v in columns.values()) * (box_h + row_gap) - row_gap + 4
    lines = []
    for source, target in edges:
        if source in place and target in place:
            (x1, y1), (x2, y2) = place[source], place[target]
            x1, y1, y2 = x1 + box_w, y1 + box_h / 2, y2 + box_h / 2
            middle = (x1 + x2) / 2
            lines.append(f"<path class='edge' d='M{x1:.0f},{y1:.0f} C{middle:.0f},{y1:.0f} {middle:.0f},{y2:.0f} "
                         f"{x2:.0f},{y2:.0f}'/>")
    boxes = []
    for node in nodes:
        x, y = place[node.key]
        text = node.label if len(node.label) <= 20 else node.label[:19] + "…"
        boxes.append(f"<a href='{escape(node.href, quote=True)}'><title>{escape(node.kind)} {escape(node.label)}"
                     f"</title><rect class='n-{node.kind}' x='{x}' y='{y}' width='{box_w}' height='{box_h}' rx='5'/>"
                     f"<text x='{x + 8}' y='{y + 19}'>{escape(text)}</text></a>")
    return (f"<figure class='chart'><svg class='lineage' viewBox='0 0 {width} {height}' width='{width}' "
            f"role='group' aria-label='lineage graph'>{''.join(lines)}{''.join(boxes)}</svg></figure>")


# -- code ---------------------------------------------------------------------------------------------------
@functools.cache
def _pygments() -> tuple[Any, Any] | None:
    try:
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
    except ModuleNotFoundError:                   # the server extra brings it; plain text without it
        return None
    return highlight, HtmlFormatter(cssclass="code", wrapcode=True)


def _code_style() -> str:
    found = _pygments()
    return found[1].get_style_defs(".code") if found else ""


CODE_STYLE = _code_style()


def code_block(code: str, *, language: str) -> str:
    """``code`` (``python`` or ``sql``) highlighted on the server: HTML-escaped text in coloured spans."""
    found = _pygments()
    if found is None:
        return f"<div class='code'><pre><code>{escape(code)}</code></pre></div>"
    from pygments.lexers import PythonLexer, SqlLexer

    highlight, formatter = found
    return str(highlight(code, PythonLexer() if language == "python" else SqlLexer(), formatter))


def side_by_side(old: str, new: str, *, old_label: str, new_label: str) -> str:
    """Two texts side by side, line against line, changed lines marked (removed on the left, added on the
    right); unchanged runs longer than 6 lines are folded to their first and last 2."""
    a, b = old.splitlines(), new.splitlines()
    rows: list[str] = []

    def row(left: str | None, right: str | None, kind: str) -> None:
        cells = [f"<td class='{kind if side is not None else 'blank'}'>{escape(side or '')}</td>"
                 for side in (left, right)]
        rows.append(f"<tr>{''.join(cells)}</tr>")

    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            same = a[i1:i2]
            if len(same) > 6:
                for line in same[:2]:
                    row(line, line, "same")
                rows.append(f"<tr><td colspan='2' class='fold'>… {len(same) - 4} unchanged lines …</td></tr>")
                same = same[-2:]
            for line in same:
                row(line, line, "same")
        else:
            left, right = a[i1:i2], b[j1:j2]
            for k in range(max(len(left), len(right))):
                row(left[k] if k < len(left) else None, right[k] if k < len(right) else None,
                    "changed")
    changed = sum(1 for tag, *_ in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()
                  if tag != "equal")
    summary = "no differences" if not changed else f"{changed} changed block(s)"
    return (f"<p class='muted'>{summary}</p><div class='scroll'><table class='diff'><thead><tr>"
            f"<th scope='col'>{escape(old_label)}</th><th scope='col'>{escape(new_label)}</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>")
