from django.contrib import admin

from .models import Conversation, Message


class MessageInline(admin.TabularInline):
    model = Message
    extra = 0
    fields = ("role", "status", "content", "model", "prompt_tokens", "completion_tokens")
    readonly_fields = fields
    show_change_link = True


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ("id", "title", "owner", "created_at", "updated_at")
    list_select_related = ("owner",)
    search_fields = ("title", "owner__username", "owner__email")
    list_filter = ("created_at", "updated_at")
    date_hierarchy = "updated_at"
    raw_id_fields = ("owner",)
    inlines = [MessageInline]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ("id", "conversation", "owner", "role", "status", "model", "created_at")
    list_select_related = ("owner", "conversation")
    search_fields = ("content", "owner__username", "client_id")
    list_filter = ("role", "status", "cached", "model", "created_at")
    date_hierarchy = "created_at"
    raw_id_fields = ("owner", "conversation")
