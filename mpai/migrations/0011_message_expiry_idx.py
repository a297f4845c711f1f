"""The retention index becomes partial (``WHERE id > 0``), renamed ``mpai_msg_expiry_idx``.

Only the cleanup's queries repeat the predicate, so the planner can no longer read this
index backwards for a user's chat history (see ``Message.Meta.indexes``). The new index
is built before the old one goes, so the cleanup is never without one; building it
blocks writes to ``mpai_message`` meanwhile (about a second per million rows on
PostgreSQL 15 here).

Also ``mpai_msg_streaming_idx``, a partial index over the few replies still marked
``streaming``, which the daily sweep of replies left by a dead process reads instead
of the whole table.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("mpai", "0010_historycount"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddIndex(
            model_name="message",
            index=models.Index(
                condition=models.Q(("id__gt", 0)), fields=["created_at"], name="mpai_msg_expiry_idx"
            ),
        ),
        migrations.AddIndex(
            model_name="message",
            index=models.Index(
                condition=models.Q(("status", "streaming")),
                fields=["created_at"],
                name="mpai_msg_streaming_idx",
            ),
        ),
        migrations.RemoveIndex(
            model_name="message",
            name="mpai_msg_created_idx",
        ),
        # The foreign keys' own indexes duplicate the leading column of the two
        # composite indexes: one write and ~20 MB per million rows each, for nothing.
        migrations.AlterField(
            model_name="message",
            name="conversation",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="messages",
                to="mpai.conversation",
            ),
        ),
        migrations.AlterField(
            model_name="message",
            name="owner",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="mpai_messages",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
    ]
