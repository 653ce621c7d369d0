"""Test settings for the Daphne process these tests start: the test urlconf, and the test process's
encryption keys (rftweb.settings.test draws a fresh key per process, so stored secrets would not
decrypt in the server otherwise)."""

import os

from rftweb.settings.test import *  # noqa: F403

ROOT_URLCONF = "tests.runs_ui.urls"
if os.environ.get("RFTWEB_TEST_FIELD_ENCRYPTION_KEYS"):
    FIELD_ENCRYPTION_KEYS = os.environ["RFTWEB_TEST_FIELD_ENCRYPTION_KEYS"].split(",")
