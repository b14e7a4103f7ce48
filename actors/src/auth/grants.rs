//! What a credential may do: grants (a scope on every table of the tenant or on one table) and
//! quotas. One model for every credential: API keys store grants, JWTs carry them in `scopes` /
//! `scope`, and every source (HTTP, NATS, webhooks) checks them through [`super::Principal`].
//!
//! A grant is written `ingest`, `query` or `admin` (every table of the tenant; `ingest:*` is the
//! same), or `ingest:clicks` (one table). `admin` on every table also manages the tenant's API
//! keys; `admin:clicks` manages the table `clicks` (its definition, flushes, compactions) and,
//! like any admin grant, implies `ingest` and `query` where it applies.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Scope;
use crate::ids::TableName;

/// One scope, on every table of the tenant (`table: None`) or on one table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Grant {
    /// The operation.
    pub scope: Scope,
    /// The table it is limited to; `None`: every table of the tenant.
    pub table: Option<TableName>,
}

impl Grant {
    /// `scope` on every table of the tenant.
    pub fn all(scope: Scope) -> Grant {
        Grant { scope, table: None }
    }

    /// `scope` on `table` only.
    pub fn on(scope: Scope, table: TableName) -> Grant {
        Grant {
            scope,
            table: Some(table),
        }
    }

    /// Parses `ingest`, `ingest:*` or `ingest:<table>` (and the same for `query` and `admin`).
    pub fn parse(text: &str) -> Result<Grant, String> {
        let (name, table) = match text.split_once(':') {
            Some((name, table)) => (name, Some(table)),
            None => (text, None),
        };
        let scope = Scope::parse(name).ok_or_else(|| {
            format!(
                "unknown scope {text:?}: use ingest, query or admin, optionally with :<table> or :*"
            )
        })?;
        match table {
            None | Some("*") => Ok(Grant::all(scope)),
            Some(t) => TableName::new(t)
                .map(|t| Grant::on(scope, t))
                .map_err(|e| format!("scope {text:?}: {e}")),
        }
    }

    /// Whether this grant allows `scope` on `table` (`None`: on every table, as tenant-wide
    /// operations need). An admin grant allows every scope where it applies.
    pub fn allows(&self, scope: Scope, table: Option<&TableName>) -> bool {
        (self.scope == scope || self.scope == Scope::Admin)
            && match (&self.table, table) {
                (None, _) => true,
                (Some(mine), Some(asked)) => mine == asked,
                (Some(_), None) => false,
            }
    }
}

impl From<Scope> for Grant {
    fn from(scope: Scope) -> Grant {
        Grant::all(scope)
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.table {
            None => f.write_str(self.scope.as_str()),
            Some(t) => write!(f, "{}:{t}", self.scope.as_str()),
        }
    }
}

impl Serialize for Grant {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Grant {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Grant, D::Error> {
        let text = String::deserialize(d)?;
        Grant::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Rate limits of one API key, over all its batches from every source of a node (HTTP, NATS).
/// A batch over the rate is refused with 429 `quota_exceeded` and a `Retry-After`; a batch larger
/// than one second's allowance passes once the allowance is full, and the key then waits until
/// its debt is paid back (see `alluvium_pipelines::quota`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Most events per second, sustained; bursts up to one second's worth. `None`: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_per_sec: Option<u64>,
    /// Most bytes of batches (decompressed) per second, sustained; bursts up to one second's
    /// worth. `None`: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_sec: Option<u64>,
}

impl Quota {
    /// Whether it limits anything.
    pub fn is_unlimited(&self) -> bool {
        self.events_per_sec.is_none() && self.bytes_per_sec.is_none()
    }

    /// Refuses a zero rate, which would refuse everything.
    pub fn validate(&self) -> Result<(), String> {
        if self.events_per_sec == Some(0) || self.bytes_per_sec == Some(0) {
            return Err(
                "a quota of 0 refuses everything: leave it out for no limit, or revoke the key"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn table(t: &str) -> TableName {
        TableName::new(t).unwrap()
    }

    #[test]
    fn grants_parse_display_and_allow() {
        assert_eq!(Grant::parse("ingest").unwrap(), Grant::all(Scope::Ingest));
        assert_eq!(Grant::parse("query:*").unwrap(), Grant::all(Scope::Query));
        let clicks = Grant::parse("ingest:clicks").unwrap();
        assert_eq!(clicks, Grant::on(Scope::Ingest, table("clicks")));
        assert_eq!(clicks.to_string(), "ingest:clicks");
        assert_eq!(Grant::parse("query:*").unwrap().to_string(), "query");

        assert!(clicks.allows(Scope::Ingest, Some(&table("clicks"))));
        assert!(!clicks.allows(Scope::Ingest, Some(&table("orders"))));
        assert!(!clicks.allows(Scope::Ingest, None));
        assert!(!clicks.allows(Scope::Query, Some(&table("clicks"))));
        let admin_clicks = Grant::parse("admin:clicks").unwrap();
        assert!(admin_clicks.allows(Scope::Query, Some(&table("clicks"))));
        assert!(!admin_clicks.allows(Scope::Admin, None));
        assert!(Grant::all(Scope::Admin).allows(Scope::Ingest, Some(&table("x"))));
        assert!(Grant::all(Scope::Query).allows(Scope::Query, None));

        for bad in [
            "",
            "write",
            "ingest:",
            "ingest:Clicks",
            "ingest:a/b",
            "ingest:..",
            "admin:a:b",
        ] {
            assert!(Grant::parse(bad).is_err(), "{bad:?} parsed");
        }
        let json: Vec<Grant> = serde_json::from_str(r#"["ingest:clicks","query"]"#).unwrap();
        assert_eq!(
            serde_json::to_string(&json).unwrap(),
            r#"["ingest:clicks","query"]"#
        );
        assert!(serde_json::from_str::<Grant>(r#""ingest:../x""#).is_err());
    }

    #[test]
    fn quotas_refuse_zero_rates() {
        assert!(Quota::default().is_unlimited());
        assert!(
            Quota {
                events_per_sec: Some(0),
                bytes_per_sec: None
            }
            .validate()
            .is_err()
        );
        assert!(
            Quota {
                events_per_sec: Some(5),
                bytes_per_sec: None
            }
            .validate()
            .is_ok()
        );
        assert!(serde_json::from_str::<Quota>(r#"{"events_per_second":1}"#).is_err());
    }
}
