"""NATS JetStream floor for scripts/bench-broker.sh: acked publishes to a file-backed stream.

    python3 nats_publish.py URL ROW_BYTES SECONDS

Prints two JSON lines: one publish at a time (each awaits its ack), and windows of 100
publishes in flight (all acks awaited before the next window), like a batched publish.
"""
import asyncio
import json
import sys
import time

import nats
from nats.js.api import StorageType, StreamConfig


async def main(url: str, size: int, seconds: float) -> None:
    connection = await nats.connect(url)
    js = connection.jetstream()
    await js.add_stream(StreamConfig(name="bench", subjects=["bench.>"], storage=StorageType.FILE))
    payload = b"x" * size

    for scenario, window in (("nats_acked_single", 1), ("nats_acked_window_100", 100)):
        sent = 0
        start = time.monotonic()
        end = start + seconds
        while time.monotonic() < end:
            await asyncio.gather(*(js.publish(f"bench.{scenario}", payload) for _ in range(window)))
            sent += window
        elapsed = time.monotonic() - start
        print(json.dumps({"engine": "nats", "scenario": scenario, "messages": sent, "per_second": sent / elapsed}))
        sys.stdout.flush()
    await connection.close()


asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
