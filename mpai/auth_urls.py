"""Sign-in and sign-out pages for a site that has none of its own.

Include them where Django's ``LOGIN_URL`` (default ``/accounts/login/``) points::

    path("accounts/", include("mpai.auth_urls")),

- ``accounts/login/`` (URL name ``login``): Django's ``LoginView`` with mpai's
  template ``mpai/login.html`` (the context of ``registration/login.html``: ``form``,
  ``next``). Without ``?next=`` it lands on ``LOGIN_REDIRECT_URL``; set it to
  ``"mpai:chat"`` to land on the chat page.
- ``accounts/logout/`` (URL name ``logout``, POST only as in Django): Django's
  ``LogoutView``, then a redirect to ``LOGOUT_REDIRECT_URL`` or, when that is unset,
  to ``LOGIN_URL`` (no ``registration/logged_out.html`` needed).

A site with its own sign-in (``django.contrib.auth.urls`` and its own
``registration/login.html``, allauth, …) does not include these.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.shortcuts import resolve_url
from django.urls import path


class LoginView(auth_views.LoginView):
    """Django's ``LoginView`` rendering ``mpai/login.html``."""

    template_name = "mpai/login.html"


class LogoutView(auth_views.LogoutView):
    """Django's ``LogoutView`` that redirects to ``LOGIN_URL`` when nothing else is set."""

    def get_default_redirect_url(self) -> str:
        if self.next_page or settings.LOGOUT_REDIRECT_URL:
            return str(super().get_default_redirect_url())
        return str(resolve_url(settings.LOGIN_URL))


urlpatterns = [
    path("login/", LoginView.as_view(), name="login"),
    path("logout/", LogoutView.as_view(), name="logout"),
]
