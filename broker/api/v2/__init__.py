"""The NGSI v2 API (FIWARE Orion's ``/v2``), on the same store as NGSI-LD.

``router`` holds every v2 route; the catch-all of ``meta`` comes last so that unknown
paths and methods get v2's 404/405 answers.
"""

from fastapi import APIRouter

from broker.api.v2 import batch, entities, meta, subscriptions, types

router = APIRouter()
router.include_router(entities.router)
router.include_router(types.router)
router.include_router(batch.router)
router.include_router(subscriptions.router)
router.include_router(meta.router)

__all__ = ["router"]
