"""Test settings for processes started by these tests (a Daphne server): the test urlconf."""

from rftweb.settings.test import *  # noqa: F403

ROOT_URLCONF = "tests.runs_ui.urls"
