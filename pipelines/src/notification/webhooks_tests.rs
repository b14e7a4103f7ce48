//! Tests of [`super`]: signatures, validation, cursors and the dead-letter log.

#![allow(clippy::unwrap_used)]

use super::*;

fn event(tenant: &str, table: &str, kind: CommitKind) -> CommitEvent {
    CommitEvent {
        id: "7:0".into(),
        lake_id: "0123456789abcdef0123456789abcdef".into(),
        kind,
        tenant: tenant.into(),
        table: table.into(),
        catalog_version: 7,
        committed_at: "2026-11-25T10:00:00Z".into(),
        schema_version: 1,
        files_added: Vec::new(),
        files_removed: Vec::new(),
        rows_added: 0,
        rows_removed: 0,
        committed_seq: None,
        schema: None,
    }
}

fn valid() -> WebhookConfig {
    WebhookConfig::new("ops-1", "https://hooks.example.com/x", "0123456789abcdef")
}

#[test]
fn hmac_matches_rfc_4231() {
    // RFC 4231, test case 2.
    assert_eq!(
        hmac_sha256_hex(b"Jefe", &[b"what do ya want ", b"for nothing?"]),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    let s = signature(b"Jefe", 1_700_000_000, b"{}");
    assert_eq!(
        s,
        format!(
            "t=1700000000,v1={}",
            hmac_sha256_hex(b"Jefe", &[b"1700000000.{}"])
        )
    );
}

#[test]
fn https_endpoints_are_supported() {
    // Nothing listens on port 1: the attempt fails connecting, not on an unknown scheme.
    let mut c = valid();
    c.url = "https://127.0.0.1:1/hook".into();
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build();
    let e = post(&agent, &c, "1:0", b"{}").unwrap_err();
    assert!(!e.to_lowercase().contains("scheme"), "{e}");
    assert!(e.contains("Connection"), "{e}");
}

#[test]
fn backoff_doubles_up_to_the_cap() {
    assert_eq!(backoff(1), Duration::from_millis(200));
    assert_eq!(backoff(2), Duration::from_millis(400));
    assert_eq!(backoff(5), Duration::from_millis(3200));
    assert_eq!(backoff(9), Duration::from_secs(30));
    assert_eq!(backoff(u32::MAX), Duration::from_secs(30));
}

#[test]
fn validation_names_the_rule() {
    assert_eq!(valid().validate(), Ok(()));
    let bad = |f: &dyn Fn(&mut WebhookConfig), needle: &str| {
        let mut c = valid();
        f(&mut c);
        let e = c.validate().unwrap_err();
        assert!(e.contains(needle), "{e:?} should mention {needle:?}");
    };
    bad(&|c| c.name = "Ops".into(), "invalid webhook name");
    bad(&|c| c.name = String::new(), "invalid webhook name");
    bad(&|c| c.name = "a".repeat(65), "invalid webhook name");
    bad(&|c| c.name = "../x".into(), "invalid webhook name");
    bad(&|c| c.url = "ftp://x".into(), "http:// or https://");
    bad(&|c| c.url = "http://".into(), "http:// or https://");
    bad(&|c| c.secret = "short".into(), "at least 16 bytes");
    bad(&|c| c.tenant = Some("Bad Tenant".into()), "tenant");
    bad(&|c| c.table = Some(String::new()), "table");
    bad(&|c| c.max_attempts = 0, "max_attempts");
    bad(&|c| c.timeout = Duration::ZERO, "timeout");
    let mut other = valid();
    other.url = "http://127.0.0.1:9/hook".into();
    assert!(
        validate_all(&[valid(), other.clone()])
            .unwrap_err()
            .contains("two webhooks")
    );
    other.name = "ops-2".into();
    assert_eq!(validate_all(&[valid(), other]), Ok(()));
    assert!(!format!("{:?}", valid()).contains("0123456789abcdef"));
}

#[test]
fn filters_by_tenant_table_and_kind() {
    let mut c = valid();
    assert!(c.matches(&event("a", "t", CommitKind::Schema)));
    c.tenant = Some("a".into());
    c.table = Some("t".into());
    c.kinds = vec![CommitKind::Flushed, CommitKind::Compacted];
    assert!(c.matches(&event("a", "t", CommitKind::Flushed)));
    assert!(c.matches(&event("a", "t", CommitKind::Compacted)));
    assert!(!c.matches(&event("a", "t", CommitKind::Schema)));
    assert!(!c.matches(&event("b", "t", CommitKind::Flushed)));
    assert!(!c.matches(&event("a", "u", CommitKind::Flushed)));
}

#[test]
fn cursor_round_trips_and_garbage_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let c = valid();
    let path = c.cursor_path(dir.path());
    assert_eq!(read_cursor(&path), Ok(None));
    write_cursor(&path, "12:3").unwrap();
    assert_eq!(read_cursor(&path), Ok(Some((12, 3))));
    write_cursor(&path, "12").unwrap();
    assert_eq!(read_cursor(&path), Ok(Some((12, usize::MAX))));
    std::fs::write(&path, "oops").unwrap();
    assert!(read_cursor(&path).unwrap_err().contains("not an event id"));
}

#[test]
fn dead_letters_append_lines_and_cut_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = valid().dead_letter_path(dir.path());
    let e = event("a", "t", CommitKind::Flushed);
    let letter = |err: &'static str| DeadLetter {
        event: &e,
        attempts: 3,
        last_error: err,
        failed_at: "2026-11-25T10:00:00.000Z".into(),
    };
    append_dead_letter(&path, &letter("first")).unwrap();
    // A crash in the middle of the second append.
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(b"{\"event\":{\"id\":\"8:").unwrap();
    drop(f);
    append_dead_letter(&path, &letter("second")).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0]["last_error"], "first");
    assert_eq!(lines[1]["last_error"], "second");
    assert_eq!(lines[1]["attempts"], 3);
    assert_eq!(lines[1]["event"]["id"], "7:0");
    assert_eq!(lines[1]["failed_at"], "2026-11-25T10:00:00.000Z");
}
