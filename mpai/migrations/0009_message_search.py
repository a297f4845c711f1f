"""Full-text search indexes for the chat-history search (``mpai.chat.search``).

PostgreSQL only: GIN indexes over ``to_tsvector('simple', content)`` of messages and
``to_tsvector('simple', title)`` of conversations (PostgreSQL docs, "Text Search",
section 12.2.2 "Creating Indexes"). The expressions are exactly the ones
``mpai.chat.search`` queries with, which is what lets the planner use them. Other
databases (SQLite, the embedded default) get nothing: their search is a plain
``icontains`` scan.

Not a Django ``GinIndex`` in ``Meta.indexes``: the model state would then carry a
PostgreSQL-only index that ``migrate`` on SQLite tries to build (and fails on). Here the
state is untouched and the SQL runs only when ``connection.vendor == "postgresql"``.

Built ``CONCURRENTLY`` (the migration is not atomic) so a site with a large history
keeps writing while it builds; an invalid index left by an interrupted build is dropped
and built again. Each table is then ``ANALYZE``d: PostgreSQL keeps statistics of an
indexed expression only from its next ``ANALYZE`` (docs, ``ANALYZE``), and the planner's
choice between the GIN index and the owner's history index depends on them.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations

INDEXES = [
    # (index name, model name, column)
    ("mpai_msg_content_fts_idx", "message", "content"),
    ("mpai_conv_title_fts_idx", "conversation", "title"),
]


def _create(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    quote = schema_editor.quote_name
    for name, model_name, column in INDEXES:
        table = apps.get_model("mpai", model_name)._meta.db_table
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(
                "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                " WHERE c.relname = %s AND pg_table_is_visible(c.oid)",
                [name],
            )
            row = cursor.fetchone()
            if row is not None and row[0]:
                continue
            if row is not None:  # left invalid by an interrupted concurrent build
                cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {quote(name)}")
            cursor.execute(
                f"CREATE INDEX CONCURRENTLY {quote(name)} ON {quote(table)} "
                f"USING gin (to_tsvector('simple'::regconfig, {quote(column)}))"
            )
            # Statistics of the new expression: without them the planner guesses the
            # selectivity of every search (and picked plans 10-100x slower when measured).
            cursor.execute(f"ANALYZE {quote(table)}")


def _drop(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        for name, _model_name, _column in INDEXES:
            cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {schema_editor.quote_name(name)}")


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("mpai", "0008_feedback"),
    ]

    operations = [
        migrations.RunPython(_create, _drop, elidable=False),
    ]
