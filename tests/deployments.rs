//! The deployment files pass `scripts/validate_deployments.sh` (hadolint, docker compose,
//! nats-server, kubernetes-validate, check-jsonschema and the alluvium binary itself), and the
//! validator catches a deliberately broken copy of each kind of file, naming the file and the
//! problem.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository (this package's root).
fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The test virtualenv holding the validators: `ALLUVIUM_TEST_VENV`, else the one of
/// `ALLUVIUM_TEST_PYTHON` (`<venv>/bin/python`), else the repository's `.venv`.
fn venv() -> PathBuf {
    if let Some(v) = std::env::var_os("ALLUVIUM_TEST_VENV") {
        return PathBuf::from(v);
    }
    if let Some(python) = std::env::var_os("ALLUVIUM_TEST_PYTHON") {
        let python = PathBuf::from(python);
        if let Some(venv) = python.parent().and_then(Path::parent)
            && venv.join("bin/hadolint").exists()
        {
            return venv.to_path_buf();
        }
    }
    let venv = repo().join(".venv");
    assert!(
        venv.join("bin/hadolint").exists(),
        "{} lacks the deployment validators: run ./scripts/test.sh once to install them",
        venv.display()
    );
    venv
}

/// What the validator printed and whether it passed.
struct Outcome {
    passed: bool,
    output: String,
}

/// Runs the validator of `root` on `root`, with the repository's virtualenv and the binary
/// under test.
fn validate(root: &Path) -> Outcome {
    let out = Command::new("bash")
        .arg(root.join("scripts/validate_deployments.sh"))
        .arg(root)
        .env("ALLUVIUM_TEST_VENV", venv())
        .env("ALLUVIUM_BIN", env!("CARGO_BIN_EXE_alluvium"))
        .output()
        .expect("cannot run bash");
    Outcome {
        passed: out.status.success(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A copy of the repository's `deployments/`, `.github/` and validator in a temporary directory.
fn copy_of_repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("deployments"), &dir.path().join("deployments"));
    copy_dir(&repo().join(".github"), &dir.path().join(".github"));
    std::fs::create_dir_all(dir.path().join("scripts")).unwrap();
    std::fs::copy(
        repo().join("scripts/validate_deployments.sh"),
        dir.path().join("scripts/validate_deployments.sh"),
    )
    .unwrap();
    dir
}

/// Replaces the first `from` in `root/file` by `to` (which must be there).
fn edit(root: &Path, file: &str, from: &str, to: &str) {
    let path = root.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{file} does not contain {from:?}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

/// The validator's `FAIL` lines.
fn failures(output: &str) -> Vec<&str> {
    output.lines().filter(|l| l.starts_with("FAIL")).collect()
}

/// Breaks `file` by replacing `from` with `to` in a copy, runs the validator on it and checks
/// that it fails, that every failed check names `file` (so nothing else broke), and that the
/// output says `problem`.
fn assert_caught(file: &str, from: &str, to: &str, problem: &str) -> String {
    let dir = copy_of_repo();
    edit(dir.path(), file, from, to);
    let after = validate(dir.path());
    assert!(
        !after.passed,
        "breaking {file} went unnoticed:\n{}",
        after.output
    );
    let failed = failures(&after.output);
    assert!(!failed.is_empty(), "no FAIL line:\n{}", after.output);
    let name = Path::new(file).file_name().unwrap().to_str().unwrap();
    for line in &failed {
        assert!(
            line.contains(name),
            "{line:?} does not name {name}:\n{}",
            after.output
        );
    }
    assert!(
        after.output.contains(problem),
        "the output does not say {problem:?}:\n{}",
        after.output
    );
    after.output
}

#[test]
fn the_repository_deployments_pass() {
    let outcome = validate(repo());
    assert!(outcome.passed, "{}", outcome.output);
    for tool in [
        "== hadolint",
        "== docker compose",
        "== nats-server",
        "== kubernetes-validate",
        "== check-jsonschema",
        "== alluvium configurations",
    ] {
        assert!(
            outcome.output.contains(tool),
            "{tool} did not run:\n{}",
            outcome.output
        );
    }
    // Every kind of file was checked, the configurations with the real binary.
    for checked in [
        "ok    deployments/docker/Dockerfile",
        "ok    deployments/docker/compose.yaml (config)",
        "ok    deployments/kubernetes/kustomization.yaml",
        "ok    .github/workflows/ci.yaml",
        "services.processing1: deployments/cluster/processing.toml",
        "statefulset/alluvium-processing: /etc/alluvium/processing.toml",
    ] {
        assert!(
            outcome.output.contains(checked),
            "{checked:?} missing:\n{}",
            outcome.output
        );
    }
    assert!(
        !outcome.output.contains("skip  set ALLUVIUM_BIN"),
        "{}",
        outcome.output
    );
}

#[test]
fn a_dockerfile_running_as_root_is_refused() {
    assert_caught(
        "deployments/docker/Dockerfile",
        "USER 10001:10001",
        "USER root",
        "DL3002",
    );
}

#[test]
fn a_dockerfile_with_a_latest_base_image_is_refused() {
    assert_caught(
        "deployments/docker/Dockerfile",
        "FROM debian:bookworm-slim",
        "FROM debian:latest",
        "DL3007",
    );
}

#[test]
fn a_misspelled_compose_key_is_refused() {
    assert_caught(
        "deployments/docker/compose.yaml",
        "  depends_on:",
        "  depends_onn:",
        "additional properties 'depends_onn' not allowed",
    );
}

#[test]
fn a_compose_mount_of_a_missing_file_is_refused() {
    assert_caught(
        "deployments/docker/compose.yaml",
        "../cluster/processing.toml:",
        "../cluster/procesing.toml:",
        "procesing.toml does not exist",
    );
}

#[test]
fn an_unknown_nats_setting_is_refused() {
    assert_caught(
        "deployments/docker/nats.conf",
        "max_payload: 8MB",
        "max_paylod: 8MB",
        "unknown field \"max_paylod\"",
    );
}

#[test]
fn a_manifest_with_a_port_that_is_not_a_number_is_refused() {
    assert_caught(
        "deployments/kubernetes/ingest-deployment.yaml",
        "containerPort: 8080",
        "containerPort: \"eighty\"",
        "'eighty' is not of type 'integer'",
    );
}

#[test]
fn a_manifest_with_an_unknown_field_is_refused() {
    assert_caught(
        "deployments/kubernetes/processing-statefulset.yaml",
        "livenessProbe:",
        "livenesProbe:",
        "'livenesProbe' was unexpected",
    );
}

#[test]
fn a_manifest_missing_from_the_kustomization_is_refused() {
    assert_caught(
        "deployments/kubernetes/kustomization.yaml",
        "  - nats-pdb.yaml\n",
        "",
        "nats-pdb.yaml is not listed in resources",
    );
}

#[test]
fn an_unknown_alluvium_setting_in_the_config_map_is_refused() {
    // The binary refuses unknown keys: the processing nodes would not start.
    let output = assert_caught(
        "deployments/kubernetes/configmap.yaml",
        "[memtable]\n    # Keep",
        "[memtable]\n    budgett = \"1GiB\"\n    # Keep",
        "budgett",
    );
    assert!(
        output.contains("statefulset/alluvium-processing"),
        "{output}"
    );
}

#[test]
fn a_misspelled_alluvium_variable_in_a_manifest_is_refused() {
    // ALLUVIUM_NODE_ID (one underscore) would be the unknown top-level key `node_id`.
    assert_caught(
        "deployments/kubernetes/ingest-deployment.yaml",
        "- name: ALLUVIUM_NODE__ID",
        "- name: ALLUVIUM_NODE_ID",
        "node_id",
    );
}

#[test]
fn a_workflow_job_without_runs_on_is_refused() {
    assert_caught(
        ".github/workflows/ci.yaml",
        "    runs-on: ubuntu-24.04\n",
        "",
        "'runs-on' is a required property",
    );
}
