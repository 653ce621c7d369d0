"""Large JSON values (a dataset item, a rollout's messages) compressed with LZ4 instead of pglz on
PostgreSQL.

PostgreSQL compresses values over ~2 KB (TOAST) with pglz by default; LZ4 does it in a fraction of
the CPU. Storing one 50 MB upload of 10 KB items (COPY, PostgreSQL 15 on the 2-core dev machine):
490-500 ms with pglz, 299 ms with LZ4, and 27 % less space. Rollouts are written by the hundred per
training step. Only new values are written with LZ4; old ones stay readable as they are. A server
built without LZ4 keeps pglz, and other databases are left alone.
"""

from django.db import migrations

COLUMNS = (("DatasetItem", "data"), ("Trajectory", "messages"))


def set_compression(apps, schema_editor, method):
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        return
    quote = schema_editor.quote_name
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('server_version_num')::int")
        if cursor.fetchone()[0] < 140000:  # column compression came with PostgreSQL 14
            return
        for model_name, field_name in COLUMNS:
            model = apps.get_model("experiments", model_name)
            column = model._meta.get_field(field_name).column
            try:
                cursor.execute("SAVEPOINT lz4")
                cursor.execute(
                    f"ALTER TABLE {quote(model._meta.db_table)} ALTER COLUMN {quote(column)} SET COMPRESSION {method}"
                )
                cursor.execute("RELEASE SAVEPOINT lz4")
            except Exception:  # built without LZ4: keep the default
                cursor.execute("ROLLBACK TO SAVEPOINT lz4")


def to_lz4(apps, schema_editor):
    set_compression(apps, schema_editor, "lz4")


def to_default(apps, schema_editor):
    set_compression(apps, schema_editor, "default")


class Migration(migrations.Migration):
    dependencies = [("experiments", "0007_playground_session")]

    operations = [migrations.RunPython(to_lz4, to_default)]
