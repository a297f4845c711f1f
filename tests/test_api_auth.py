"""mpai's API views tell an anonymous client to authenticate: 401 with ``WWW-Authenticate``.

tests/settings.py lists SessionAuthentication first (it offers no header), as the demo
does, so these fail if the views use DRF's first-authenticator rule.
"""

from __future__ import annotations

import pytest
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.test import APIClient, APIRequestFactory
from rest_framework.views import APIView

from mpai.api.auth import AuthenticateHeaderMixin

HISTORY_URL = "/api/mpai/v1/chat-history/"
CHAT_URL = "/api/mpai/v1/chat/"
pytestmark = pytest.mark.django_db


def test_anonymous_history_request_is_401_with_www_authenticate_token():
    response = APIClient().get(HISTORY_URL)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"


def test_anonymous_chat_request_is_401_with_www_authenticate_token():
    response = APIClient().post(CHAT_URL, {"content": "Hi"}, format="json")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"


def test_a_bad_token_is_401_with_www_authenticate_token():
    response = APIClient().get(HISTORY_URL, HTTP_AUTHORIZATION="Token not-a-real-key")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"


def test_a_valid_token_still_reads_the_history(user):
    token = Token.objects.create(user=user)
    response = APIClient().get(HISTORY_URL, HTTP_AUTHORIZATION=f"Token {token.key}")
    assert response.status_code == 200


class _Probe(AuthenticateHeaderMixin, APIView):
    permission_classes = [IsAuthenticated]

    def get(self, request):
        return Response({})


def test_without_a_header_giving_authenticator_the_answer_stays_403():
    view = _Probe.as_view(authentication_classes=[SessionAuthentication])
    response = view(APIRequestFactory().get("/probe/"))
    assert response.status_code == 403
    assert "WWW-Authenticate" not in response


def test_the_header_comes_from_the_first_authenticator_that_offers_one():
    view = _Probe.as_view(authentication_classes=[SessionAuthentication, TokenAuthentication])
    response = view(APIRequestFactory().get("/probe/"))
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"
