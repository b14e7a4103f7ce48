#!/usr/bin/env bash
# `alluvium send` of a large NDJSON file to a standalone release server on this machine: the
# first run is killed (kill -9) halfway, the second resumes from its checkpoint; then the table
# is flushed and DuckDB counts the rows in its Parquet files: every row must be there once.
#
#   ./scripts/bench_send.sh [MB] [-- extra send options]    # default 1024 MB
#
# Needs the test virtualenv (./scripts/test.sh installs it) for DuckDB. Prints the progress
# lines of both runs, their reports and the counts; exits non-zero if a row is missing or
# doubled.
set -euo pipefail
cd "$(dirname "$0")/.."
mb=${1:-1024}
shift || true
[ "${1:-}" = "--" ] && shift
python=.venv/bin/python
if ! "$python" -c 'import duckdb' 2>/dev/null; then
  echo "bench_send: DuckDB is missing from .venv: run ./scripts/test.sh once" >&2
  exit 2
fi
cargo build --release --locked --bin alluvium
bin=$PWD/target/release/alluvium
work=$(mktemp -d)
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

file=$work/events.ndjson
echo "== writing $file ($mb MB)"
"$python" - "$file" "$mb" <<'PY'
import sys
path, mb = sys.argv[1], int(sys.argv[2])
target = mb * 1_000_000
pages = ["/", "/pricing", "/docs", "/blog/post", "/signup"]
with open(path, "w", buffering=1 << 20) as f:
    written, i = 0, 0
    while written < target:
        lines = []
        for j in range(i, i + 10_000):
            lines.append(
                f'{{"id":{j},"user":"user-{j % 100_000}","page":"{pages[j % 5]}",'
                f'"ts":{1_764_547_200_000 + j},"ms":{j % 997},'
                f'"ua":"Mozilla/5.0 (X11; Linux x86_64) bench/{j % 13}"}}\n'
            )
        chunk = "".join(lines)
        f.write(chunk)
        written += len(chunk)
        i += 10_000
print(f"{i} rows, {written} bytes")
PY
rows=$(wc -l <"$file")

key=bench-send-admin-key-0123456789
export ALLUVIUM_BOOTSTRAP_KEY=$key ALLUVIUM_LOG=warn
"$bin" serve --data-dir "$work/data" --listen 127.0.0.1:0 >"$work/server.out" &
server_pid=$!
for _ in $(seq 100); do
  grep -q "listening on" "$work/server.out" 2>/dev/null && break
  sleep 0.1
done
url=$(sed -n 's/^listening on //p' "$work/server.out" | head -1)
[ -n "$url" ] || { echo "bench_send: the server did not start" >&2; exit 1; }
curl -fsS -X PUT "$url/v1/tables/events" -H "Authorization: Bearer $key" \
  -H 'Content-Type: application/json' -d '{"fields":[
    {"name":"id","type":"int64","nullable":false},{"name":"user","type":"string"},
    {"name":"page","type":"string"},{"name":"ts","type":"timestamp_ms"},
    {"name":"ms","type":"int64"},{"name":"ua","type":"string"}],
    "time_column":"ts"}' >/dev/null

export ALLUVIUM_URL=$url ALLUVIUM_API_KEY=$key
echo "== send, killed halfway ($rows rows)"
"$bin" send events "$file" "$@" &
send_pid=$!
half=$(( $(stat -c %s "$file") / 2 ))
while kill -0 "$send_pid" 2>/dev/null; do
  at=$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["position"]["byte"])' \
    "$file.alluvium-send" 2>/dev/null || echo 0)
  [ "$at" -ge "$half" ] && break
  sleep 0.2
done
kill -9 "$send_pid" 2>/dev/null || { echo "bench_send: the first send ended before halfway" >&2; exit 1; }
wait "$send_pid" 2>/dev/null || true
echo "killed at byte $at of $(stat -c %s "$file")"

echo "== send again"
"$bin" send events "$file" "$@"
"$bin" send events "$file" --json "$@" >/dev/null  # complete: sends nothing

curl -fsS -X POST "$url/v1/tables/events/flush" -H "Authorization: Bearer $key" >/dev/null
echo "== DuckDB over the Parquet files"
"$python" - "$work/data/tables" "$rows" <<'PY'
import duckdb, sys
root, rows = sys.argv[1], int(sys.argv[2])
total, distinct, lo, hi = duckdb.sql(
    f"select count(*), count(distinct id), min(id), max(id) "
    f"from read_parquet('{root}/**/*.parquet')"
).fetchall()[0]
print(f"{total} rows, {distinct} distinct ids ({lo}..{hi}); the file has {rows}")
sys.exit(0 if total == distinct == rows and lo == 0 and hi == rows - 1 else 1)
PY
