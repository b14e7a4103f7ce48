#!/usr/bin/env python3
"""Ingest benchmark on one machine, HTTP and NATS side by side: one nats-server and one
release-binary server per phase (each on a fresh data directory), all on the same cores.

1. HTTP at maximum rate: `alluvium bench http`, 8 connections, 1000-event batches, --events N,
   every acknowledged event checked to be stored once; server CPU s per GB and peak RSS.
2. NATS core on a fresh server: `alluvium bench nats`, 10-event messages with a Nats-Msg-Id,
   256 in flight, against a plain subscriber on the same nats-server; the same check.
3. HTTP latency at 70 % of the rate of 1, paced for 20 s, on a fresh server.
4. (--rss) Peak RSS (VmHWM) of a fresh server after enough events to fill the memtable budget.
5. NATS JetStream on a fresh server with ingest_mode = "jetstream", 1024 in flight, against a
   plain JetStream pull consumer.

JetStream runs last: its ALLUVIUM_INGEST stream captures the ingest subjects, which a later
core-mode server would refuse. Server CPU s per GB of a NATS phase counts from before the
bench process to when alluvium_nats_ingest_events_total reaches every event (`ingest`, like
bench http, read-back excluded) and to the end of the bench process (`total`, read-back
included); GB is events x EVENT_BYTES (src/bench/events.rs). Prints a Markdown table with the
ratios against their targets; exits non-zero if a verification or a subprocess failed.
--perf DIR profiles the server during phases 1, 2 and 4 (perf record, then perf report to
DIR/<phase>.txt); --out FILE writes every figure as JSON.

    .venv/bin/python scripts/ingest_bench.py
    .venv/bin/python scripts/ingest_bench.py --events 1000000 --messages 50000 --js-messages 20000
    .venv/bin/python scripts/ingest_bench.py --rss --perf /tmp/prof --out /tmp/ingest.json

Needs target/release/alluvium (cargo build --release; INGEST_BENCH_BIN picks another binary) and the test virtualenv's nats-server
(./scripts/test.sh; or set ALLUVIUM_TEST_NATS_SERVER). Server settings such as
ALLUVIUM_MEMTABLE__BUDGET=256MiB are passed on from the environment.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from benchproc import cpu_seconds, free_port, loadavg, metric, peak_rss_mib, wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("INGEST_BENCH_BIN") or os.path.join(ROOT, "target", "release", "alluvium")
NATS = os.environ.get("ALLUVIUM_TEST_NATS_SERVER", os.path.join(ROOT, ".venv", "bin", "nats-server"))
PERF = "/usr/bin/perf"
KEY = "bench-admin-key-0123456789abcdef"


def event_bytes():
    with open(os.path.join(ROOT, "src", "bench", "events.rs")) as f:
        return int(re.search(r"pub const EVENT_BYTES: usize = (\d+);", f.read()).group(1))


class Server:
    """One `alluvium serve` on a fresh data directory, connected to the nats-server."""

    def __init__(self, work, name, nats_url, jetstream=False):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.data = os.path.join(work, name)
        env = dict(os.environ)
        env.update({"ALLUVIUM_BOOTSTRAP_KEY": KEY, "ALLUVIUM_LOG": "warn",
                    "ALLUVIUM_NATS__INGEST_MODE": "jetstream" if jetstream else "core"})
        self.log = open(os.path.join(work, f"{name}.log"), "w")
        self.proc = subprocess.Popen(
            [BIN, "serve", "--data-dir", self.data, "--listen", f"127.0.0.1:{self.port}",
             "--nats-url", nats_url], env=env, stdout=self.log, stderr=self.log)
        self.pid = self.proc.pid
        wait_port(self.port, 60)
        # The ingest subscription (or consumer) is made before the HTTP port opens.
        deadline = time.time() + 30
        while metric(self.base, "alluvium_nats_connected") != 1:
            if time.time() > deadline:
                raise SystemExit(f"{name} not connected to NATS after 30 s")
            time.sleep(0.1)
        time.sleep(0.5)

    def stop(self):
        # The data is thrown away: no graceful flush that would compete with the next phase.
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.data, ignore_errors=True)


class Bench:
    def __init__(self, args):
        self.args = args
        self.results = {}
        self.failures = []

    def phase(self, name):
        load = loadavg()
        print(f"== {name} (loadavg {load})", flush=True)
        self.results[name] = {"loadavg_before": load}
        return self.results[name]

    def run(self, name, cmd, pid):
        """Runs a bench command, profiled with perf when asked; returns its JSON report."""
        prof = None
        if self.args.perf and name in ("http_max", "nats_core", "nats_jetstream"):
            os.makedirs(self.args.perf, exist_ok=True)
            data = os.path.join(self.args.perf, f"{name}.data")
            prof = subprocess.Popen([PERF, "record", "-e", "cpu-clock", "-F", "999", "-g",
                                     "-p", str(pid), "-o", data],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        p = subprocess.run([BIN, "bench", *cmd, "--key", KEY], capture_output=True, text=True,
                           timeout=1800)
        if prof:
            prof.send_signal(signal.SIGINT)
            prof.wait(60)
            rep = subprocess.run([PERF, "report", "--stdio", "--no-children", "--sort", "symbol",
                                  "--percent-limit", "1.5", "-i", data],
                                 capture_output=True, text=True)
            lines = [ln.rstrip() for ln in rep.stdout.splitlines()
                     if ln.strip() and not ln.startswith("#")]
            with open(os.path.join(self.args.perf, f"{name}.txt"), "w") as f:
                f.write("\n".join(lines[:60]) + "\n")
        if p.returncode != 0:
            self.failures.append(f"{name}: bench exited {p.returncode}")
        try:
            # bench http --json prints one JSON document; bench nats ends with a JSON line.
            return json.loads(p.stdout if cmd[0] == "http" else p.stdout.strip().splitlines()[-1])
        except (json.JSONDecodeError, IndexError):
            raise SystemExit(f"{name}: bench failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")

    def check(self, name, verify):
        ok = verify is not None and all(verify[k] == 0 for k in ("missing", "duplicated", "foreign"))
        if not ok:
            self.failures.append(f"{name}: verification failed: {verify}")
        return ok

    def http(self, name, srv, extra):
        r = self.results[name]
        rep = self.run(name, ["http", "--url", srv.base, "--connections", "8", "--batch", "1000",
                              "--server-pid", str(srv.pid), "--json", *extra], srv.pid)
        r.update({k: rep[k] for k in ("events_acked", "elapsed_s", "events_per_s", "mb_per_s",
                                      "latency_ms", "requests", "first_error")})
        r.update(cpu_s_per_gb=rep["server"]["cpu_s_per_gb"],
                 peak_rss_mib=rep["server"]["peak_rss_mib"], verify=rep["verify"])
        if "--no-verify" not in extra:
            r["verify_ok"] = self.check(name, rep["verify"])
        return rep

    def nats(self, name, srv, nats_url, nats_pid, messages, in_flight, jetstream):
        r = self.results[name]
        eb = self.results["event_bytes"]
        target = metric(srv.base, "alluvium_nats_ingest_events_total") + messages * 10
        cpu0, ncpu0 = cpu_seconds(srv.pid), cpu_seconds(nats_pid)
        ingested = {}

        def watch():  # CPU when every event is ingested, before the read-back
            while not stop.is_set():
                if metric(srv.base, "alluvium_nats_ingest_events_total") >= target:
                    ingested["cpu"] = cpu_seconds(srv.pid)
                    return
                time.sleep(0.1)

        stop = threading.Event()
        watcher = threading.Thread(target=watch)
        watcher.start()
        cmd = ["nats", "--nats-url", nats_url, "--url", srv.base, "--batch", "10",
               "--messages", str(messages), "--in-flight", str(in_flight)]
        try:
            rep = self.run(name, cmd + (["--jetstream"] if jetstream else []), srv.pid)
        finally:
            stop.set()
            watcher.join()
        cpu = cpu_seconds(srv.pid) - cpu0
        gb = rep["alluvium"]["events"] * eb / 1e9
        per_gb = lambda s: round(s / gb, 1) if gb else None
        r.update(plain=rep["plain"], alluvium=rep["alluvium"], ratio=rep["ratio"],
                 retried=rep["retried"], verify=rep["verify"], server_cpu_s=round(cpu, 2),
                 nats_server_cpu_s=round(cpu_seconds(nats_pid) - ncpu0, 2),
                 cpu_s_per_gb_total=per_gb(cpu),
                 cpu_s_per_gb_ingest=per_gb(ingested["cpu"] - cpu0) if ingested else None)
        r["verify_ok"] = self.check(name, rep["verify"])


def fmt(x, nd=0):
    return "-" if x is None else f"{x:,.{nd}f}".replace(",", " ")


def table(res, args):
    rows = ["| phase | loadavg before | events/s | MB/s | ack p50 / p90 / p99 / max ms "
            "| server CPU s/GB | peak RSS MiB | verify |", "|---|---|---:|---:|---|---:|---:|---|"]

    def ok(r):
        return {True: "ok", False: "FAILED"}.get(r.get("verify_ok"), "-")

    def http_row(label, r, rss=True):
        lat = " / ".join(fmt(r["latency_ms"][k], 1) for k in ("p50", "p90", "p99", "max"))
        rows.append(f"| {label} | {r['loadavg_before']} | {fmt(r['events_per_s'])} "
                    f"| {fmt(r['mb_per_s'], 1)} | {lat} | {fmt(r['cpu_s_per_gb'], 1)} "
                    f"| {fmt(r['peak_rss_mib']) if rss else '-'} | {ok(r)} |")

    def nats_rows(label, plain, r):
        rows.append(f"| {label}: {plain} | {r['loadavg_before']} | {fmt(r['plain']['events_per_s'])} "
                    f"| {fmt(r['plain']['mb_per_s'], 1)} | - | - | - | - |")
        gb = f"{fmt(r['cpu_s_per_gb_ingest'], 1)} ({fmt(r['cpu_s_per_gb_total'], 1)} with read-back)"
        rows.append(f"| {label}: alluvium | | {fmt(r['alluvium']['events_per_s'])} "
                    f"| {fmt(r['alluvium']['mb_per_s'], 1)} | - | {gb} | - | {ok(r)} |")

    http_row(f"HTTP max, {args.events} events", res["http_max"])
    nats_rows(f"NATS core, {args.messages} x 10", "plain subscriber", res["nats_core"])
    if "http_70" in res:
        http_row(f"HTTP at 70 % ({fmt(res['http_70']['target_rate'])} events/s, 20 s)",
                 res["http_70"], rss=False)
    if "rss" in res:
        r = res["rss"]
        rows.append(f"| memtable budget full, {args.rss_events} events (budget "
                    f"{r['memtable_budget']}) | {r['loadavg_before']} | {fmt(r['events_per_s'])} "
                    f"| {fmt(r['mb_per_s'], 1)} | - | {fmt(r['cpu_s_per_gb'], 1)} "
                    f"| {fmt(r['vm_hwm_mib'])} | - |")
    if "nats_jetstream" in res:
        nats_rows(f"NATS JetStream, {args.js_messages} x 10", "plain consumer",
                  res["nats_jetstream"])
    rows += ["", "| ratio | value | target | met |", "|---|---:|---:|---|"]
    for name, value, target, good in res["ratios"]:
        met = "-" if value is None else ("yes" if good else "no")
        rows.append(f"| {name} | {fmt(value, 2) if value is not None else '-'} | {target} | {met} |")
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=6_000_000, help="HTTP events at maximum rate")
    ap.add_argument("--messages", type=int, default=300_000, help="NATS core messages (10 events)")
    ap.add_argument("--js-messages", type=int, default=100_000, help="JetStream messages")
    ap.add_argument("--skip-jetstream", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--rss", action="store_true", help="also measure peak RSS, memtable budget full")
    ap.add_argument("--rss-events", type=int, default=12_000_000)
    ap.add_argument("--perf", metavar="DIR", help="perf profiles of HTTP max, NATS core and JetStream")
    ap.add_argument("--out", metavar="FILE", help="write every result as JSON")
    args = ap.parse_args()
    for path, hint in [(BIN, "cargo build --release"), (NATS, "./scripts/test.sh")]:
        if not os.path.exists(path):
            raise SystemExit(f"{path} is missing: {hint}")

    b = Bench(args)
    res = b.results
    res.update(event_bytes=event_bytes(), nproc=os.cpu_count())
    work = tempfile.mkdtemp(prefix="alluvium-ingest-bench-")
    nats, srv = None, None
    try:
        nport = free_port()
        nats_url = f"nats://127.0.0.1:{nport}"
        nats = subprocess.Popen([NATS, "-a", "127.0.0.1", "-p", str(nport), "-js",
                                 "-sd", os.path.join(work, "js")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(nport)

        srv = Server(work, "s1", nats_url)
        b.phase("http_max")
        http = b.http("http_max", srv, ["--events", str(args.events)])
        srv.stop()
        # A fresh server: the HTTP phase's memtables would be flushing during this one.
        srv = Server(work, "s1n", nats_url)
        b.phase("nats_core")
        b.nats("nats_core", srv, nats_url, nats.pid, args.messages, 256, False)
        srv.stop()

        if not args.skip_latency:
            srv = Server(work, "s2", nats_url)
            rate = round(0.7 * http["events_per_s"])
            b.phase("http_70")["target_rate"] = rate
            b.http("http_70", srv, ["--duration", "20s", "--rate", str(rate), "--no-verify"])
            srv.stop()

        if args.rss:
            srv = Server(work, "s3", nats_url)
            r = b.phase("rss")
            # No read-back: its query would add to the peak.
            b.http("rss", srv, ["--events", str(args.rss_events), "--no-verify"])
            r.update(vm_hwm_mib=peak_rss_mib(srv.pid),
                     memtable_budget=os.environ.get("ALLUVIUM_MEMTABLE__BUDGET", "1GiB"))
            srv.stop()

        if not args.skip_jetstream:
            srv = Server(work, "s4", nats_url, jetstream=True)
            b.phase("nats_jetstream")
            b.nats("nats_jetstream", srv, nats_url, nats.pid, args.js_messages, 1024, True)
            srv.stop()
    finally:
        if srv:
            srv.stop()
        if nats and nats.poll() is None:
            nats.kill()
        shutil.rmtree(work, ignore_errors=True)

    core = res["nats_core"]["alluvium"]["events_per_s"] / res["http_max"]["events_per_s"]
    ratios = [("NATS core / HTTP events/s", core, ">= 0.8", core >= 0.8)]
    if "nats_jetstream" in res:
        js = res["nats_jetstream"]["ratio"]
        ratios.append(("JetStream alluvium / plain consumer", js, ">= 0.6", js >= 0.6))
    if "http_70" in res:
        p99 = res["http_70"]["latency_ms"]["p99"]
        ratios.append(("p99 ms at 70 %", p99, "<= 20", p99 <= 20))
    res["ratios"] = ratios
    res["failures"] = b.failures
    res["all_verified"] = all(r.get("verify_ok", True) for r in res.values() if isinstance(r, dict))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)
    print()
    print(table(res, args))
    print(f"\nevery exactly-once verification ok: {'yes' if res['all_verified'] else 'NO'}")
    for f in b.failures:
        print(f"FAILED: {f}")
    return 1 if b.failures else 0


if __name__ == "__main__":
    sys.exit(main())
