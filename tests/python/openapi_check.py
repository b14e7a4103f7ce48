"""Checks of src/http/openapi.json for tests/openapi.rs and tests/openapi_examples.rs: the
document is valid OpenAPI 3.1 (spec), its examples fit their schemas (examples), and answers of
a real server fit theirs (instances). Prints {"checked": N, "failures": [...]}."""
import json, sys
from jsonschema import Draft202012Validator

mode, doc_path = sys.argv[1], sys.argv[2]
with open(doc_path) as f:
    doc = json.load(f)
checked = 0
failures = []

def deref(obj):
    while isinstance(obj, dict) and "$ref" in obj:
        node = doc
        for part in obj["$ref"].lstrip("#").strip("/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        obj = node
    return obj

def check(label, schema, instance):
    global checked
    checked += 1
    root = {"components": doc.get("components", {}), "allOf": [schema]}
    errors = sorted(Draft202012Validator(root).iter_errors(instance), key=lambda e: list(e.path))
    for e in errors[:3]:
        where = "/".join(str(p) for p in e.path) or "(root)"
        failures.append(f"{label}: at {where}: {e.message[:300]}")

def examples_of(holder):
    """Named examples of a media type, parameter or header (`example` is named `default`)."""
    out = []
    if "example" in holder:
        out.append(("default", holder["example"]))
    for name, ex in (holder.get("examples") or {}).items():
        out.append((name, deref(ex).get("value")))
    return out

def check_sse(label, text):
    commit = {"$ref": "#/components/schemas/CommitEvent"}
    for block in text.split("\n\n"):
        fields = {}
        for line in block.split("\n"):
            if line.startswith(":") or not line:
                continue
            key, _, value = line.partition(":")
            fields[key] = value[1:] if value.startswith(" ") else value
        if "data" not in fields:
            continue
        data = json.loads(fields["data"])
        if fields.get("event") == "error":
            check(f"{label} error event", {"$ref": "#/components/schemas/Problem"}, data)
            continue
        check(f"{label} event {fields.get('id')}", commit, data)
        if data.get("id") != fields.get("id") or data.get("kind") != fields.get("event"):
            failures.append(f"{label}: id/event lines do not match the data of event {fields.get('id')}")

def check_media(label, mt, media, require):
    found = examples_of(media)
    if require and not found:
        failures.append(f"{label}: no example")
    for name, value in found:
        where = f"{label} example {name!r}"
        check(where, media.get("schema", {}), value)
        if mt == "application/x-ndjson" and isinstance(value, str):
            for i, line in enumerate(value.splitlines()):
                if line.strip() and not isinstance(json.loads(line), dict):
                    failures.append(f"{where}: line {i + 1} is not a JSON object")
        if mt == "text/event-stream" and isinstance(value, str):
            check_sse(where, value)

if mode == "spec":
    from openapi_spec_validator import OpenAPIV31SpecValidator, validate
    if not str(doc.get("openapi", "")).startswith("3.1."):
        failures.append(f"openapi is {doc.get('openapi')!r}, not 3.1.x")
    try:
        validate(doc, cls=OpenAPIV31SpecValidator)
        checked += 1
    except Exception as e:
        failures.append(f"{type(e).__name__}: {str(e)[:2000]}")
elif mode == "examples":
    for path, item in doc["paths"].items():
        item = deref(item)
        for method in ["get", "put", "post", "delete", "patch", "head", "options", "trace"]:
            if method not in item:
                continue
            op = item[method]
            label = f"{op.get('operationId')} ({method.upper()} {path})"
            for p in item.get("parameters", []) + op.get("parameters", []):
                p = deref(p)
                for name, value in examples_of(p):
                    check(f"{label} parameter {p['name']} example {name!r}", p.get("schema", {}), value)
            if "requestBody" in op:
                for mt, media in deref(op["requestBody"]).get("content", {}).items():
                    check_media(f"{label} request {mt}", mt, media, True)
            for status, resp in op.get("responses", {}).items():
                resp = deref(resp)
                for hname, header in (resp.get("headers") or {}).items():
                    header = deref(header)
                    for name, value in examples_of(header):
                        check(f"{label} {status} header {hname} example {name!r}", header.get("schema", {}), value)
                for mt, media in (resp.get("content") or {}).items():
                    # Success answers in JSON carry examples (this document excepted).
                    require = (status.startswith("2") and mt == "application/json"
                               and op.get("operationId") != "getOpenApi")
                    check_media(f"{label} {status} {mt}", mt, media, require)
elif mode == "instances":
    with open(sys.argv[3]) as f:
        for item in json.load(f):
            check(item["label"], item["schema"], item["instance"])
            if item.get("sse") is not None:
                check_sse(item["label"], item["sse"])
print(json.dumps({"checked": checked, "failures": failures}))
