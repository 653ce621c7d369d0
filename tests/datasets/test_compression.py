"""Large JSON values are stored with LZ4 on PostgreSQL (migration 0008): a dataset item and a
rollout's messages, the columns written by the thousand during uploads and training."""

from __future__ import annotations

import pytest
from django.db import connection

from experiments.models import DatasetItem, Trajectory


@pytest.mark.django_db
def test_large_json_columns_compress_with_lz4_on_postgresql():
    if connection.vendor != "postgresql":
        pytest.skip("column compression is PostgreSQL's")
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('server_version_num')::int")
        if cursor.fetchone()[0] < 140000:
            pytest.skip("PostgreSQL < 14 has no column compression")
        found = {}
        for model, field in ((DatasetItem, "data"), (Trajectory, "messages")):
            cursor.execute(
                "SELECT attcompression FROM pg_attribute WHERE attrelid = %s::regclass AND attname = %s",
                [model._meta.db_table, model._meta.get_field(field).column],
            )
            found[model.__name__] = cursor.fetchone()[0]
    assert found == {"DatasetItem": "l", "Trajectory": "l"}
