"""``Message.tool_calls``: an assistant reply's tool calls and their results (nullable
JSON, so adding it rewrites no row)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("mpai", "0011_message_expiry_idx"),
    ]

    operations = [
        migrations.AddField(
            model_name="message",
            name="tool_calls",
            field=models.JSONField(blank=True, null=True),
        ),
    ]
