"""A model admin that is one page of its own (the health dashboard, the usage report).

Its model is a proxy used only for the admin index entry and the permissions; the
admin has no add, change or delete, and its one URL, the changelist's, is whatever
``changelist_view`` renders.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.urls import URLPattern, path


class SinglePageAdmin(admin.ModelAdmin):
    """Subclass and define ``changelist_view(request, extra_context=None)``."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list[URLPattern]:
        name = f"{self.opts.app_label}_{self.opts.model_name}_changelist"
        return [path("", self.admin_site.admin_view(self.changelist_view), name=name)]
