"""A burst of entity creations against a running broker, remembering which were
acknowledged (answered 201): for tests of what a backup or a shutdown keeps."""

from __future__ import annotations

import threading
from types import TracebackType

import httpx


class WriteBurst:
    """``workers`` threads creating entities until stopped (or the server goes)."""

    def __init__(self, base_url: str, workers: int = 6, tenant: str = "komae") -> None:
        self.url = f"{base_url}/ngsi-ld/v1/entities"
        self.tenant = tenant
        self.acknowledged: list[str] = []
        #: statuses of the answers other than 201
        self.refused: list[int] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        #: (count, event set once that many writes are acknowledged)
        self._targets: list[tuple[int, threading.Event]] = []
        self._threads = [threading.Thread(target=self._run, args=(w,)) for w in range(workers)]

    def __enter__(self) -> WriteBurst:
        for t in self._threads:
            t.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def acked(self) -> list[str]:
        with self._lock:
            return list(self.acknowledged)

    def wait_for(self, count: int, timeout: float = 60.0) -> None:
        """Until ``count`` writes in all have been acknowledged."""
        reached = threading.Event()
        with self._lock:
            if len(self.acknowledged) >= count:
                return
            self._targets.append((count, reached))
        if not reached.wait(timeout):
            raise TimeoutError(f"{len(self.acked())} of {count} writes acknowledged")

    def _run(self, worker: int) -> None:
        with httpx.Client(timeout=30, headers={"NGSILD-Tenant": self.tenant}) as client:
            n = 0
            while not self._stop.is_set():
                eid = f"urn:ngsi-ld:WaterLevelObserved:w{worker}-{n}"
                body = {
                    "id": eid,
                    "type": "WaterLevelObserved",
                    "name": {"type": "Property", "value": f"多摩川水位計 {worker}-{n}"},
                    "waterLevel": {"type": "Property", "value": n / 100},
                }
                try:
                    r = client.post(self.url, json=body)
                except httpx.HTTPError:
                    return  # the server went: this write was never acknowledged
                if r.status_code != 201:
                    with self._lock:
                        self.refused.append(r.status_code)
                else:
                    with self._lock:
                        self.acknowledged.append(eid)
                        for count, reached in self._targets:
                            if len(self.acknowledged) >= count:
                                reached.set()
                n += 1
