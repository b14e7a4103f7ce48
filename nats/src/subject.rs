//! The subject grammar of the three stages, and the validation of every token: no subject is
//! ever built from raw input.

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

impl CommitKind {
    /// The last token of the event's subject.
    pub fn as_str(self) -> &'static str {
        match self {
            CommitKind::Flushed => "flushed",
            CommitKind::Compacted => "compacted",
            CommitKind::Schema => "schema",
        }
    }

    /// The kind named by a subject token.
    pub fn parse(token: &str) -> Option<CommitKind> {
        match token {
            "flushed" => Some(CommitKind::Flushed),
            "compacted" => Some(CommitKind::Compacted),
            "schema" => Some(CommitKind::Schema),
            _ => None,
        }
    }
}

impl fmt::Display for CommitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for CommitKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for CommitKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        CommitKind::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown commit kind {s:?}: expected flushed, compacted or schema"
            ))
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

    /// The prefix every subject starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `{prefix}.ingest.>`: every ingest subject.
    pub fn ingest_all(&self) -> String {
        format!("{}.ingest.>", self.prefix)
    }

    /// `{prefix}.log.>`: the replicated log of cluster mode (stream `ALLUVIUM_INGEST`).
    pub fn log_all(&self) -> String {
        format!("{}.log.>", self.prefix)
    }

    /// `{prefix}.log.{tenant}.{table}`: one shard's part of the replicated log, written by
    /// ingest nodes once a batch is validated, read by the shard's owner.
    pub fn log(&self, tenant: &str, table: &str) -> Result<String, SubjectError> {
        validate_token(tenant)?;
        validate_token(table)?;
        Ok(format!("{}.log.{tenant}.{table}", self.prefix))
    }

    /// `{prefix}.query.{node}`: where a processing node answers reads of its memtables.
    pub fn query(&self, node: &str) -> Result<String, SubjectError> {
        validate_token(node)?;
        Ok(format!("{}.query.{node}", self.prefix))
    }

    /// `{prefix}.events.>`: every commit event.
    pub fn events_all(&self) -> String {
        format!("{}.events.>", self.prefix)
    }

    /// `{prefix}.rejects.>`: every rejected batch.
    pub fn rejects_all(&self) -> String {
        format!("{}.rejects.>", self.prefix)
    }

    /// `{prefix}.events.{tenant}.>` or, with a table, `{prefix}.events.{tenant}.{table}.*`:
    /// what a subscriber of one tenant or table listens to.
    pub fn events_filter(&self, tenant: &str, table: Option<&str>) -> Result<String, SubjectError> {
        validate_token(tenant)?;
        match table {
            Some(table) => {
                validate_token(table)?;
                Ok(format!("{}.events.{tenant}.{table}.*", self.prefix))
            }
            None => Ok(format!("{}.events.{tenant}.>", self.prefix)),
        }
    }

    /// `{prefix}.rejects.{tenant}.{table}`, or `{prefix}.rejects.{tenant}.*` without a table.
    pub fn rejects_filter(
        &self,
        tenant: &str,
        table: Option<&str>,
    ) -> Result<String, SubjectError> {
        validate_token(tenant)?;
        match table {
            Some(table) => self.rejects(tenant, table),
            None => Ok(format!("{}.rejects.{tenant}.*", self.prefix)),
        }
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

    /// Splits an event subject into (tenant, table, kind); `None` if it is not one.
    pub fn parse_events<'a>(&self, subject: &'a str) -> Option<(&'a str, &'a str, CommitKind)> {
        let rest = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".events.")?;
        let mut parts = rest.split('.');
        let (tenant, table, kind) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some()
            || validate_token(tenant).is_err()
            || validate_token(table).is_err()
        {
            return None;
        }
        Some((tenant, table, CommitKind::parse(kind)?))
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
        assert_eq!(
            s.parse_events("alluvium.events.acme.clicks.compacted"),
            Some(("acme", "clicks", CommitKind::Compacted))
        );
        assert_eq!(s.parse_events("alluvium.events.acme.clicks.other"), None);
        assert_eq!(
            s.parse_events("alluvium.events.acme.clicks.flushed.x"),
            None
        );
        assert_eq!(s.ingest_all(), "alluvium.ingest.>");
        assert_eq!(
            s.events_filter("acme", Some("clicks")).unwrap(),
            "alluvium.events.acme.clicks.*"
        );
        assert_eq!(
            s.events_filter("acme", None).unwrap(),
            "alluvium.events.acme.>"
        );
        assert!(s.events_filter("acme", Some("a b")).is_err());
        assert_eq!(
            serde_json::to_string(&CommitKind::Schema).unwrap(),
            "\"schema\""
        );
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
