"""An independent NATS client (nats-py) publishing to alluvium: request/reply ingest with
idempotency keys, an error case, and a subscription to commit events.

Usage: nats_ingest.py NATS_URL API_KEY TENANT TABLE BATCHES
Prints one JSON document: the acknowledgements, the error reply, and the first flushed event.
"""

import asyncio
import json
import sys

import nats


async def main(url: str, key: str, tenant: str, table: str, batches: int) -> None:
    nc = await nats.connect(url)
    subject = f"alluvium.ingest.{tenant}.{table}"
    headers = {"Authorization": f"Bearer {key}"}
    acks = []
    bodies = []
    for i in range(batches):
        body = "\n".join(json.dumps({"n": i * 10 + j, "src": "nats-py"}) for j in range(10))
        bodies.append(body)
        h = dict(headers, **{"Nats-Msg-Id": f"py-{i}", "Content-Type": "application/x-ndjson"})
        msg = await nc.request(subject, body.encode(), timeout=10, headers=h)
        acks.append({"status": msg.headers.get("Alluvium-Status"), "body": json.loads(msg.data)})
    # A retry of the first batch: answered as a duplicate.
    h = dict(headers, **{"Nats-Msg-Id": "py-0", "Content-Type": "application/x-ndjson"})
    msg = await nc.request(subject, bodies[0].encode(), timeout=10, headers=h)
    retry = {"status": msg.headers.get("Alluvium-Status"), "body": json.loads(msg.data)}
    # The same id for other data: refused.
    msg = await nc.request(subject, b'{"n": 1000, "src": "nats-py"}', timeout=10, headers=h)
    reused = {"status": msg.headers.get("Alluvium-Status"), "code": msg.headers.get("Alluvium-Code")}
    msg = await nc.request(subject, b'{"n": "not a number"}', timeout=10, headers=headers)
    error = {"status": msg.headers.get("Alluvium-Status"), "code": msg.headers.get("Alluvium-Code"),
             "body": json.loads(msg.data)}
    await nc.drain()
    print(json.dumps({"acks": acks, "retry": retry, "reused": reused, "error": error}))


if __name__ == "__main__":
    url, key, tenant, table, batches = sys.argv[1:6]
    asyncio.run(main(url, key, tenant, table, int(batches)))
