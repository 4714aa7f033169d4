"""The web UI's drawings and code views (``gristmill.server.ui_draw``): what they mark, fold and escape."""

from __future__ import annotations

import re
from datetime import datetime

import pytest

from gristmill.jobs.intervals import DataStatus
from gristmill.server.ui_draw import Node, code_block, jobs_chart, lineage_graph, side_by_side, timeline


class _Interval:
    def __init__(self, start: datetime, end: datetime, status: str) -> None:
        self.start, self.end, self.status = start, end, DataStatus(status)


@pytest.mark.parametrize(("old", "new", "changed", "folded"), [
    ("a\nb\nc", "a\nb\nc", 0, False),
    ("a\nb\nc", "a\nB\nc", 2, False),                          # one line changed: marked on both sides
    ("a\nb", "a\nb\nc", 2, False),                              # an added line: blank on the left
    ("\n".join("xyzuvw") + "\nold", "\n".join("xyzuvw") + "\nnew", 2, False),  # 6 equal lines stay
    ("\n".join("xyzuvwt") + "\nold", "\n".join("xyzuvwt") + "\nnew", 2, True),  # 7 fold to 2 + 2
])
def test_side_by_side_marks_and_folds(old: str, new: str, changed: int, folded: bool) -> None:
    html = side_by_side(old, new, old_label="v1", new_label="v2")
    assert html.count("class='changed'") + html.count("class='blank'") == changed
    assert ("unchanged lines" in html) is folded


def test_code_and_diffs_escape_what_users_wrote() -> None:
    hostile = "SELECT '</pre><script>alert(1)</script>' AS x FROM source"
    for html in (code_block(hostile, language="sql"), code_block(hostile, language="python"),
                 side_by_side(hostile, hostile + " -- <img src=x onerror=alert(2)>", old_label="<b>", new_label="b")):
        assert "<script>" not in html and "<img" not in html and "<b>" not in html
        assert "&lt;script&gt;" in html or "&lt;" in html


def test_timeline_widths_follow_time_and_each_interval_links_to_its_row() -> None:
    svg = timeline({"offline": [_Interval(datetime(2024, 1, 1), datetime(2024, 1, 4), "Complete"),
                                _Interval(datetime(2024, 1, 4), datetime(2024, 1, 5), "Pending")],
                    "online": []}, label="intervals of <x>")
    widths = [float(w) for w in re.findall(r"<rect class='s-\w+' x='[\d.]+' y='\d+' width='([\d.]+)'", svg)]
    assert len(widths) == 2 and widths[0] == pytest.approx(3 * widths[1])
    assert "href='#interval-offline-1'" in svg and "online" not in svg      # an empty store draws no bar
    assert "intervals of &lt;x&gt;" in svg
    assert timeline({"offline": []}, label="none") == ""


def test_lineage_graph_links_every_node_and_draws_known_edges_only() -> None:
    nodes = [Node("e", "account:1", "/ui/entities/account/1", "entity", 0),
             Node("f", "fs1:1", "/ui/feature-sets/fs1/1", "featureset", 1),
             Node("m", "m<1>", "/ui/models#model-m-1", "model", 2)]
    svg = lineage_graph(nodes, [("e", "f"), ("f", "m"), ("f", "unknown")])
    assert svg.count("<a href=") == 3 and svg.count("<path class='edge'") == 2
    assert "m&lt;1&gt;" in svg and "m<1>" not in svg
    assert jobs_chart([]) == "" and lineage_graph([], []) == ""
