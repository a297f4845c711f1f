"""The demo's home page: mpai's widget inside the site's own layout."""

from __future__ import annotations

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


def test_signed_out_visitors_are_sent_to_sign_in():
    response = Client().get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_the_home_page_embeds_the_widget_in_the_sites_layout(user):
    client = Client()
    client.force_login(user)
    response = client.get("/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "Members&#x27; Club" in html or "Members' Club" in html
    assert 'id="mpai-chat"' in html
    assert 'class="mpai-suggestion"' in html
    assert "/static/mpai/chat.js" in html
