"""Authentication behaviour shared by mpai's API views.

DRF answers a request without credentials with 401 and a ``WWW-Authenticate`` header
only when the *first* authentication class gives such a header; otherwise it answers
403 (DRF's "Authentication" guide, "Unauthorized and Forbidden responses").
``SessionAuthentication`` gives none, and sites commonly list it first, so a token
client is told 403 ("forbidden") where it should be told 401 ("send credentials").
``AuthenticateHeaderMixin`` asks every configured authenticator in order and uses the
first header offered, so mpai's views answer 401 with ``WWW-Authenticate: Token``
whenever ``TokenAuthentication`` is configured, whatever its place in the list
(README, "Security defaults of the demo"; RFC 9110, section 15.5.2: a 401 carries
``WWW-Authenticate``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rest_framework.request import Request

if TYPE_CHECKING:
    from rest_framework.views import APIView

    _ViewBase = APIView
else:
    _ViewBase = object


class AuthenticateHeaderMixin(_ViewBase):
    """For an ``APIView``: 401 with the first ``WWW-Authenticate`` any authenticator offers.

    Put it before the view class: ``class MyView(AuthenticateHeaderMixin, APIView)``.
    """

    def get_authenticate_header(self, request: Request) -> str:
        for authenticator in self.get_authenticators():
            header = authenticator.authenticate_header(request)
            if header:
                return str(header)
        return ""  # none: DRF answers 403
