# The end-to-end run fixtures (tiny model, demo tool server, a user's setup) are shared with tests/runs.
from tests.runs.conftest import demo_server, run_setup, tiny_model_dir  # noqa: F401
