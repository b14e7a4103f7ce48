#!/usr/bin/env python3
"""Cluster-mode benchmark on one machine: nats-server, moto (S3), one ingest node and N
processing nodes of the release binary; two `alluvium bench http` generators load two tables
(two shards) through the ingest node, each checking that every acknowledged event is stored
once. Reports events/s and the CPU seconds of every process, then kills one processing node
and measures how long until its shards are owned again and their rows readable.

    .venv/bin/python scripts/cluster_bench.py --processing 1
    .venv/bin/python scripts/cluster_bench.py --processing 2 --events 400000

Needs target/release/alluvium (cargo build --release) and the test virtualenv
(./scripts/test.sh installs nats-server and moto into .venv).
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

from benchproc import cpu_seconds, free_port, metric, wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "alluvium")
VENV = os.path.join(ROOT, ".venv", "bin")
KEY = "bench-admin-key-0123456789abcdef"
TABLES = ["bench_a", "bench_b"]


class Node:
    def __init__(self, workdir, name, role, env):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.name = name
        e = dict(env)
        e.update({"ALLUVIUM_NODE__ROLE": role, "ALLUVIUM_NODE__ID": name})
        self.log = open(os.path.join(workdir, f"{name}.log"), "w")
        self.proc = subprocess.Popen(
            [BIN, "serve", "--data-dir", os.path.join(workdir, name),
             "--listen", f"127.0.0.1:{self.port}"],
            env=e, stdout=self.log, stderr=self.log)
        wait_port(self.port, 60)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--processing", type=int, default=1)
    ap.add_argument("--events", type=int, default=400_000, help="per table")
    ap.add_argument("--connections", type=int, default=4, help="per generator")
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--lease-ttl", default="5s")
    args = ap.parse_args()
    if not os.path.exists(BIN):
        raise SystemExit("build the release binary first: cargo build --release")

    work = tempfile.mkdtemp(prefix="alluvium-cluster-bench-")
    procs = []
    try:
        moto_port, nats_port = free_port(), free_port()
        procs.append(subprocess.Popen(
            [os.path.join(VENV, "moto_server"), "-H", "127.0.0.1", "-p", str(moto_port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        conf = os.path.join(work, "nats.conf")
        with open(conf, "w") as f:
            f.write(f"host: 127.0.0.1\nport: {nats_port}\nmax_payload: 8MB\n"
                    f"jetstream {{ store_dir: {os.path.join(work, 'nats')} }}\n")
        procs.append(subprocess.Popen(
            [os.path.join(VENV, "nats-server"), "-c", conf],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(moto_port)
        wait_port(nats_port)
        urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{moto_port}/lake", method="PUT"), timeout=30)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ALLUVIUM_")}
        env.update({
            "ALLUVIUM_BOOTSTRAP_KEY": KEY,
            "ALLUVIUM_LOG": "warn",
            "ALLUVIUM_NATS__URL": f"nats://127.0.0.1:{nats_port}",
            "ALLUVIUM_STORE__URL": "s3://lake/bench",
            "ALLUVIUM_STORE__ENDPOINT": f"http://127.0.0.1:{moto_port}",
            "ALLUVIUM_STORE__ALLOW_HTTP": "true",
            "ALLUVIUM_STORE__ACCESS_KEY_ID": "testing",
            "ALLUVIUM_STORE__SECRET_ACCESS_KEY": "testing",
            "ALLUVIUM_CLUSTER__LEASE_TTL": args.lease_ttl,
            "ALLUVIUM_CLUSTER__CATALOG_REFRESH": "200ms",
            "ALLUVIUM_COMPACTION__INTERVAL": "0s",
        })
        ingest = Node(work, "ingest1", "ingest", env)
        procs.append(ingest.proc)
        workers = []
        for i in range(args.processing):
            n = Node(work, f"proc{i + 1}", "processing", env)
            procs.append(n.proc)
            workers.append(n)
        # The generator creates its table; a short warm-up run does that for both.
        for t in TABLES:
            subprocess.run(
                [BIN, "bench", "http", "--url", ingest.base, "--key", KEY, "--table", t,
                 "--events", "1000", "--no-verify", "--json"],
                check=True, stdout=subprocess.DEVNULL)
        # Every shard owned before the clock starts.
        deadline = time.time() + 60
        while sum(metric(w.base, "alluvium_shards_owned") for w in workers) < len(TABLES):
            if time.time() > deadline:
                raise SystemExit("shards not owned after 60 s")
            time.sleep(0.1)
        owned = {w.name: metric(w.base, "alluvium_shards_owned") for w in workers}

        servers = {"ingest1": ingest.proc.pid, "nats-server": procs[1].pid}
        servers.update({w.name: w.proc.pid for w in workers})
        cpu0 = {k: cpu_seconds(p) for k, p in servers.items()}
        start = time.time()
        gens = [subprocess.Popen(
            [BIN, "bench", "http", "--url", ingest.base, "--key", KEY, "--table", t,
             "--events", str(args.events), "--batch", str(args.batch),
             "--connections", str(args.connections), "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for t in TABLES]
        reports = []
        for g in gens:
            out, err = g.communicate()
            try:
                reports.append(json.loads(out))
            except json.JSONDecodeError:
                raise SystemExit(f"bench failed: {out}\n{err}")
        elapsed = time.time() - start
        cpu = {k: round(cpu_seconds(p) - cpu0[k], 2) for k, p in servers.items()}
        acked = sum(r["events_acked"] for r in reports)
        result = {
            "processing_nodes": args.processing,
            "shards_owned_at_start": owned,
            "events_acked": acked,
            "elapsed_s": round(elapsed, 2),
            "events_per_s": round(acked / elapsed),
            "p50_ms": [r["latency_ms"]["p50"] for r in reports] if "latency_ms" in reports[0] else None,
            "p99_ms": [r["latency_ms"]["p99"] for r in reports] if "latency_ms" in reports[0] else None,
            "verify": [r.get("verify") for r in reports],
            "cpu_s": cpu,
            "cpu_us_per_event": {k: round(v / acked * 1e6, 2) for k, v in cpu.items()},
        }

        # Takeover: kill -9 the processing node owning the most shards.
        if args.processing >= 2:
            victim = max(workers, key=lambda w: metric(w.base, "alluvium_shards_owned"))
            lost = metric(victim.base, "alluvium_shards_owned")
            rest = [w for w in workers if w is not victim]
            claims0 = sum(metric(w.base, "alluvium_shard_claims_total") for w in rest)
            victim.proc.send_signal(signal.SIGKILL)
            killed = time.time()
            while sum(metric(w.base, "alluvium_shard_claims_total") for w in rest) < claims0 + lost:
                if time.time() - killed > 120:
                    raise SystemExit("no takeover within 120 s")
                time.sleep(0.02)
            result["takeover"] = {
                "lease_ttl": args.lease_ttl,
                "shards_moved": lost,
                "kill_to_claim_s": round(time.time() - killed, 2),
            }
        print(json.dumps(result, indent=2))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
