"""What keeps the chart pages' first load short (issue 17; measured by bench/bench_first_load.py):
Plotly compiled off the main thread, fetched from <head>, and evaluated after the page's own script,
which asks for the curves first and draws the charts in view as still first frames meanwhile
(tests/ui/test_first_frame.py shows them in Chromium)."""

from __future__ import annotations

import re

import pytest
from django.conf import settings
from django.test import Client

from tests.ui.seed import seed_site

PLOTLY = "vendor/plotly-basic.min.js"


def test_plotly_carries_the_compile_hint_on_its_first_line():
    # V8 compiles every function of a file with this comment at its top eagerly, on the thread
    # that streams the download, instead of each one on the main thread at its first call. An
    # update of the vendored file must keep it.
    first_line = (settings.STATICFILES_DIRS[0] / PLOTLY).read_text(encoding="utf-8").split("\n", 1)[0]
    assert first_line == "//# allFunctionsCalledOnLoad"


@pytest.mark.django_db
def test_the_chart_pages_preload_plotly_and_run_their_fetching_script_before_it():
    user, paths = seed_site()
    client = Client()
    client.force_login(user)
    for page, own_script in (
        ("run", "js/run_page.js"),
        ("compare", "js/compare.js"),
        ("readiness", "js/readiness.js"),
    ):
        html = client.get(paths[page]).content.decode()
        head = html.split("</head>", 1)[0]
        assert re.search(rf'<link rel="preload" href="[^"]*{re.escape(PLOTLY)}" as="script">', head), page
        scripts = re.findall(r'<script src="[^"]*/static/([^"]+)" defer></script>', html)
        assert PLOTLY in scripts and own_script in scripts and "js/first_frame.js" in scripts, page
        # The run page and the comparison ask for their curves, the readiness report has its data in
        # the page: all three draw their first frames before Plotly has been evaluated.
        assert scripts.index("js/first_frame.js") < scripts.index(own_script) < scripts.index(PLOTLY), page
