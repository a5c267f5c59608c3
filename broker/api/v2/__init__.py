"""The NGSI v2 API (FIWARE Orion's ``/v2``), on the same store as NGSI-LD.

``ROUTERS`` are the v2 routers, in the order the app includes them (each directly: a
router nested in another is matched twice per request); the catch-all of ``meta`` comes
last so that unknown paths and methods get v2's 404/405 answers. ``router`` holds them
all, for documentation and tests.
"""

from fastapi import APIRouter

from broker.api.v2 import batch, entities, meta, subscriptions, types

ROUTERS: tuple[APIRouter, ...] = (
    entities.router,
    types.router,
    batch.router,
    subscriptions.router,
    meta.router,
)

router = APIRouter()
for _part in ROUTERS:
    router.include_router(_part)

__all__ = ["ROUTERS", "router"]
