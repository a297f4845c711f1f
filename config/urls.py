"""The demo's URLs: its home page (the chat widget in the site's layout), its sign-in
pages (Django's auth views with the templates in ``templates/registration/``), the
admin, and mpai.

The account pages are those of ``django.contrib.auth.urls`` minus password change,
listed one by one so each has a template of the demo's own:

- ``accounts/login/`` (``login``) and ``accounts/logout/`` (``logout``, POST only; it
  shows ``registration/logged_out.html``: ``LOGOUT_REDIRECT_URL`` is None);
- ``accounts/password_reset/`` (``password_reset``): asks for the email address and
  sends the link (``EMAIL_HOST``…, see config/settings.py), then ``password_reset_done``;
- ``accounts/reset/<uidb64>/<token>/`` (``password_reset_confirm``): the new password,
  then ``password_reset_complete``.
"""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.urls import include, path
from django.views.generic import TemplateView

# The site's name in the reset email (Django's default is the request's host name).
EMAIL_CONTEXT = {"site_name": "Members' Club"}

urlpatterns = [
    # The home page: the site's layout with mpai's widget ({% mpai_chat %}) in it.
    path("", login_required(TemplateView.as_view(template_name="home.html")), name="home"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path(
        "accounts/password_reset/",
        auth_views.PasswordResetView.as_view(extra_email_context=EMAIL_CONTEXT),
        name="password_reset",
    ),
    path(
        "accounts/password_reset/done/",
        auth_views.PasswordResetDoneView.as_view(),
        name="password_reset_done",
    ),
    path(
        "accounts/reset/<uidb64>/<token>/",
        auth_views.PasswordResetConfirmView.as_view(),
        name="password_reset_confirm",
    ),
    path(
        "accounts/reset/done/",
        auth_views.PasswordResetCompleteView.as_view(),
        name="password_reset_complete",
    ),
    path("admin/", admin.site.urls),
    path("", include("mpai.urls")),
]
