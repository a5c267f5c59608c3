"""``/ngsi-ld/v1/csourceSubscriptions``: create, list, retrieve, update and delete
subscriptions to context source registrations (clauses 5.11, 6.10 and 6.11 as applied
to registrations; ``broker.core.csubscriptions``). Every operation needs ``admin``."""

from __future__ import annotations

from fastapi import APIRouter

from broker.api import params as P
from broker.api.collection import ListedCollection, Names, Texts, declare, subscription_id
from broker.api.common import JSON, LD_JSON, negotiate, page_links
from broker.api.deps import Operation

router = APIRouter(
    route_class=P.DeclaredRoute,
    prefix="/ngsi-ld/v1",
    tags=["context source registration subscriptions"],
)


class CsourceSubscriptions(ListedCollection):
    """Listed a page at a time with ``Link`` headers to the neighbouring pages
    (clauses 5.5.9 and 6.3.10)."""

    def page_links(self, op: Operation, limit: int, offset: int, total: int) -> list[str]:
        kind = negotiate(op.request, (JSON, LD_JSON))
        return page_links(
            op.request, offset=offset, limit=limit, more=offset + limit < total, kind=kind
        )


declare(
    router,
    CsourceSubscriptions("/csourceSubscriptions", lambda hub: hub.csubscriptions),
    doc_id=subscription_id,
    texts=Texts(
        create="Create context source registration subscription (clause 6.10.3.1)",
        query="Query context source registration subscriptions (clause 6.10.3.2)",
        retrieve="Retrieve context source registration subscription (clause 6.11.3.1)",
        update="Update context source registration subscription (clause 6.11.3.2)",
        delete="Delete context source registration subscription (clause 6.11.3.3)",
        body="The subscription (clause 5.2.12).",
        patch="The subscription members to change.",
    ),
    names=Names(
        create="create_csource_subscription",
        query="list_csource_subscriptions",
        retrieve="retrieve_csource_subscription",
        update="update_csource_subscription",
        delete="delete_csource_subscription",
    ),
)
