"""Run the mongoeco wire server (in-memory engine) on a port; started by ``tests/mongo_support.py``.

Runs under Python >= 3.13 in the side virtualenv that holds ``mongoeco[wire]``; it
prints ``ready`` once the port accepts connections and serves until terminated.
"""

from __future__ import annotations

import asyncio
import signal
import sys


async def main(port: int) -> None:
    from mongoeco.engines.memory import MemoryEngine
    from mongoeco.wire.proxy import AsyncMongoEcoProxyServer

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with AsyncMongoEcoProxyServer(engine=MemoryEngine(), host="127.0.0.1", port=port):
        print("ready", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
