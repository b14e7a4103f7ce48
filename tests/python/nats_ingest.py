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
    for i in range(batches):
        body = "\n".join(json.dumps({"n": i * 10 + j, "src": "nats-py"}) for j in range(10))
        h = dict(headers, **{"Nats-Msg-Id": f"py-{i}", "Content-Type": "application/x-ndjson"})
        msg = await nc.request(subject, body.encode(), timeout=10, headers=h)
        acks.append({"status": msg.headers.get("Alluvium-Status"), "body": json.loads(msg.data)})
    # A retry of the first batch: answered as a duplicate.
    h = dict(headers, **{"Nats-Msg-Id": "py-0"})
    msg = await nc.request(subject, b'{"n": 0, "src": "nats-py"}', timeout=10, headers=h)
    retry = {"status": msg.headers.get("Alluvium-Status"), "body": json.loads(msg.data)}
    msg = await nc.request(subject, b'{"n": "not a number"}', timeout=10, headers=headers)
    error = {"status": msg.headers.get("Alluvium-Status"), "code": msg.headers.get("Alluvium-Code"),
             "body": json.loads(msg.data)}
    await nc.drain()
    print(json.dumps({"acks": acks, "retry": retry, "error": error}))


if __name__ == "__main__":
    url, key, tenant, table, batches = sys.argv[1:6]
    asyncio.run(main(url, key, tenant, table, int(batches)))
