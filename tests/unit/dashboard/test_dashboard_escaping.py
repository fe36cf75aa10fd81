"""Names and values from other services (model names, aliases, statuses, metric and test names, event texts) are
shown as text on every page: a hostile value cannot add a script, an element or an attribute."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import pytest
from model_factory import make_pipeline

from driftloop.runtime.timeline import Step
from driftloop.services.dashboard import pages
from driftloop.services.dashboard.handlers import Cascade
from driftloop.services.dashboard.sources import Answer

# Closes a single- or double-quoted attribute and opens an element, whichever the value lands in.
HOSTILE = "<script>alert(1)</script>' onmouseover='alert(2)\" onfocus=\"alert(3)"
PIPELINE = make_pipeline(model="fraud-ui", stream="tx-ui")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Parsed(HTMLParser):
    """Tags, attribute names and the text of a page, as a browser would see them."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attributes: set[str] = set()
        self.attribute_values: list[str] = []
        self.text: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes.update(name for name, _ in attrs)
        self.attribute_values.extend(value or "" for _, value in attrs)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def hostile_model_page() -> str:
    versions = Answer(
        data={
            "aliases": {HOSTILE: 2},
            "versions": [
                {
                    "version": 2,
                    "aliases": [HOSTILE],
                    "status": HOSTILE,
                    "metrics": {HOSTILE: 0.5},
                    "gate": {"metric": HOSTILE, "challenger_score": 0.9},
                    "dataset_version_id": HOSTILE,
                    "run_id": HOSTILE,
                    "created_at": HOSTILE,
                }
            ],
        }
    )
    runs = Answer(
        data={
            "runs": [
                {
                    "run_id": HOSTILE,
                    "state": HOSTILE,
                    "trigger": HOSTILE,
                    "dataset_version_id": HOSTILE,
                    "metrics": {HOSTILE: 1.0},
                    "created_at": HOSTILE,
                    "ended_at": HOSTILE,
                }
            ]
        }
    )
    drift = Answer(
        data={
            "reports": [
                {
                    "window_index": w,
                    "drifted": w == 1,
                    "tests": [
                        {"feature": f, "test": HOSTILE, "statistic": 0.1 * w, "adjusted_p_value": 0.5, "psi": 0.1}
                        for f in PIPELINE.feature_names
                    ],
                }
                for w in range(2)
            ]
        }
    )
    performance = Answer(
        data={
            "reports": [
                {"window_index": w, "metric": HOSTILE, "value": 0.5, "threshold": 0.7, "metrics": {HOSTILE + "2": 0.1}}
                for w in range(2)
            ]
        }
    )
    steps = [
        Step(HOSTILE, HOSTILE, T0 + timedelta(seconds=i), HOSTILE if i else None, HOSTILE, HOSTILE, HOSTILE, {})
        for i in range(2)
    ]
    cascades = [Cascade(HOSTILE, steps, [HOSTILE], HOSTILE)]
    return pages.model_page(
        HOSTILE, PIPELINE, versions, Answer(error=HOSTILE), runs, drift, performance, cascades, refresh=5
    )


def hostile_overview() -> str:
    row = {"model": HOSTILE, "stream": HOSTILE, "champion": HOSTILE, "served": 1, "versions": 2}
    return pages.overview([{**row, "last_cascade": HOSTILE}], registry_error=HOSTILE)


@pytest.mark.parametrize("render", [hostile_overview, hostile_model_page], ids=["overview", "model"])
def test_hostile_values_are_shown_as_text_on_every_page(render) -> None:  # type: ignore[no-untyped-def]
    html = render()
    page = Parsed(html)
    assert "script" not in page.tags
    assert not page.attributes & {"onmouseover", "onfocus"}, page.attributes
    assert "<script>" not in html and "' onmouseover='" not in html and '" onfocus="' not in html
    # The value is still there for the reader, whole: in the text and in the attributes that carry it.
    assert sum(HOSTILE in text for text in page.text) >= 2
    assert HOSTILE in page.attribute_values


def test_hostile_values_inside_the_svg_charts_stay_text() -> None:
    html = hostile_model_page()
    charts = html.split("<div id='drift'>", 1)[1].split("<h2>Runs</h2>", 1)[0]
    page = Parsed(charts)
    assert page.tags.count("svg") >= 3 and "script" not in page.tags
    assert not page.attributes & {"onmouseover", "onfocus"}
    assert any(value == f"perf-{HOSTILE}" for value in page.attribute_values)  # the chart id is the metric's name
    assert any(f"{HOSTILE} @ 1: " in text for text in page.text)  # a point's tooltip names its series
