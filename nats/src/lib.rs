//! The NATS transport of alluvium. For now: the subject grammar of the three stages and the
//! validation of every subject token, so no subject is ever built from raw input.
//!
//! Subjects (the prefix, `alluvium` by default, is configurable):
//! - `{prefix}.ingest.{tenant}.{table}`: producers publish events;
//! - `{prefix}.events.{tenant}.{table}.{flushed|compacted|schema}`: commit events;
//! - `{prefix}.rejects.{tenant}.{table}`: rejected events with the reason.

use std::fmt;

/// Why a subject or a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid subject token {shown:?}: {reason}")]
pub struct SubjectError {
    /// The token, truncated for display.
    pub shown: String,
    /// The rule it broke.
    pub reason: &'static str,
}

/// Longest token accepted (a table name is at most 128 characters).
pub const MAX_TOKEN_LEN: usize = 128;

/// Checks one subject token: non-empty, bounded, and free of `.`, `*`, `>`, whitespace and
/// control characters (async-nats would accept some of them and change the subject's meaning).
pub fn validate_token(token: &str) -> Result<(), SubjectError> {
    let err = |reason| SubjectError {
        shown: token.chars().take(64).collect(),
        reason,
    };
    if token.is_empty() {
        return Err(err("empty"));
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(err("longer than 128 bytes"));
    }
    for c in token.chars() {
        match c {
            '.' => return Err(err("contains '.'")),
            '*' | '>' => return Err(err("contains a wildcard")),
            c if c.is_whitespace() => return Err(err("contains whitespace")),
            c if c.is_control() => return Err(err("contains a control character")),
            _ => {}
        }
    }
    Ok(())
}

/// What a commit event announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitKind {
    /// A flush added files.
    Flushed,
    /// A compaction replaced files.
    Compacted,
    /// A table's schema changed.
    Schema,
}

impl fmt::Display for CommitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CommitKind::Flushed => "flushed",
            CommitKind::Compacted => "compacted",
            CommitKind::Schema => "schema",
        })
    }
}

/// Builds and parses subjects under one validated prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// A grammar under `prefix` (one or more valid tokens separated by `.`).
    pub fn new(prefix: &str) -> Result<Self, SubjectError> {
        for t in prefix.split('.') {
            validate_token(t)?;
        }
        Ok(Self {
            prefix: prefix.to_string(),
        })
    }

    /// `{prefix}.ingest.{tenant}.{table}`
    pub fn ingest(&self, tenant: &str, table: &str) -> Result<String, SubjectError> {
        validate_token(tenant)?;
        validate_token(table)?;
        Ok(format!("{}.ingest.{tenant}.{table}", self.prefix))
    }

    /// `{prefix}.events.{tenant}.{table}.{kind}`
    pub fn events(
        &self,
        tenant: &str,
        table: &str,
        kind: CommitKind,
    ) -> Result<String, SubjectError> {
        validate_token(tenant)?;
        validate_token(table)?;
        Ok(format!("{}.events.{tenant}.{table}.{kind}", self.prefix))
    }

    /// `{prefix}.rejects.{tenant}.{table}`
    pub fn rejects(&self, tenant: &str, table: &str) -> Result<String, SubjectError> {
        validate_token(tenant)?;
        validate_token(table)?;
        Ok(format!("{}.rejects.{tenant}.{table}", self.prefix))
    }

    /// Splits an ingest subject into (tenant, table); `None` if it is not one.
    pub fn parse_ingest<'a>(&self, subject: &'a str) -> Option<(&'a str, &'a str)> {
        let rest = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".ingest.")?;
        let (tenant, table) = rest.split_once('.')?;
        (validate_token(tenant).is_ok() && validate_token(table).is_ok()).then_some((tenant, table))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_parses() {
        let s = Subjects::new("alluvium").unwrap();
        let subj = s.ingest("acme", "clicks").unwrap();
        assert_eq!(subj, "alluvium.ingest.acme.clicks");
        assert_eq!(s.parse_ingest(&subj), Some(("acme", "clicks")));
        assert_eq!(
            s.events("acme", "clicks", CommitKind::Flushed).unwrap(),
            "alluvium.events.acme.clicks.flushed"
        );
        assert_eq!(s.parse_ingest("alluvium.ingest.acme.a.b"), None);
        assert_eq!(s.parse_ingest("other.ingest.acme.a"), None);
    }

    #[test]
    fn rejects_hostile_tokens() {
        let s = Subjects::new("alluvium").unwrap();
        for bad in [
            "",
            "a.b",
            "*",
            ">",
            "a b",
            "a\tb",
            "a\r\nPUB x",
            "\u{0}",
            &"x".repeat(129),
        ] {
            assert!(s.ingest(bad, "t").is_err(), "{bad:?}");
            assert!(s.rejects("t", bad).is_err(), "{bad:?}");
        }
        assert!(Subjects::new("a..b").is_err());
        assert!(Subjects::new("team.alluvium").is_ok());
    }
}
