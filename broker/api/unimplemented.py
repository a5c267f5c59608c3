"""NGSI-LD endpoints this version does not offer yet: 501 after the common checks.

Media types are still checked (415 before 406 before 501), so clients get the same
answers for malformed requests as from a complete broker, and a plain 501
OperationNotSupported for the operation itself.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from starlette.requests import Request
from starlette.responses import Response

from broker.api import params as P
from broker.api.common import check_content_type, negotiate
from broker.errors import NotImplementedYet

router = APIRouter(route_class=P.DeclaredRoute, prefix="/ngsi-ld/v1", tags=["not available"])

NOT_YET = {
    "info": "broker information",
}
METHODS = ("GET", "POST", "PATCH", "PUT", "DELETE")
#: Methods answered 501 where not all are.
ONLY: dict[str, tuple[str, ...]] = {}
ANSWER: dict[int | str, dict[str, Any]] = {
    501: {"description": "OperationNotSupported: not available in this version"}
}


async def _not_yet(request: Request) -> Response:
    if request.method in ("POST", "PATCH", "PUT"):
        check_content_type(request, allow_merge_patch=request.method == "PATCH")
    negotiate(request)
    section = request.url.path.split("/ngsi-ld/v1/", 1)[-1].split("/", 1)[0]
    raise NotImplementedYet(
        f"{NOT_YET.get(section, section)} is not available in this version of Renkei"
    )


async def _not_yet_item(
    rest: Annotated[str, Path(description="The rest of the path.")], request: Request
) -> Response:
    return await _not_yet(request)


for _section, _what in NOT_YET.items():
    for _method in ONLY.get(_section, METHODS):
        router.add_api_route(
            f"/{_section}",
            _not_yet,
            methods=[_method],
            operation_id=f"{_method.lower()}_{_section}",
            summary=f"{_what[0].upper()}{_what[1:]}: not available in this version (501)",
            responses=ANSWER,
        )
        if _section in ONLY:
            continue
        router.add_api_route(
            f"/{_section}/{{rest:path}}",
            _not_yet_item,
            methods=[_method],
            operation_id=f"{_method.lower()}_{_section}_item",
            summary=f"{_what[0].upper()}{_what[1:]}: not available in this version (501)",
            responses=ANSWER,
        )
