"""NGSI-LD endpoints this version does not offer yet: 501 after the common checks.

Media types are still checked (415 before 406 before 501), so clients get the same
answers for malformed requests as from a complete broker, and a plain 501
OperationNotSupported for the operation itself.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from broker.api.common import check_content_type, negotiate
from broker.errors import NotImplementedYet

router = APIRouter(prefix="/ngsi-ld/v1", include_in_schema=False)

NOT_YET = {
    "csourceRegistrations": "context source registrations",
    "csourceSubscriptions": "context source subscriptions",
    "entityMaps": "entity maps",
    "info": "broker information",
}


async def _not_yet(request: Request) -> Response:
    if request.method in ("POST", "PATCH", "PUT"):
        check_content_type(request, allow_merge_patch=request.method == "PATCH")
    negotiate(request)
    section = request.url.path.split("/ngsi-ld/v1/", 1)[-1].split("/", 1)[0]
    raise NotImplementedYet(
        f"{NOT_YET.get(section, section)} is not available in this version of Renkei"
    )


for _section in NOT_YET:
    router.add_api_route(
        f"/{_section}", _not_yet, methods=["GET", "POST", "PATCH", "PUT", "DELETE"]
    )
    router.add_api_route(
        f"/{_section}/{{rest:path}}", _not_yet, methods=["GET", "POST", "PATCH", "PUT", "DELETE"]
    )
