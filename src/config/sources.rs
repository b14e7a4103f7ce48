//! `[sources]`: sources of events besides the ingest endpoint and NATS, so far the inbound
//! webhooks of `[[sources.webhook]]`.

use std::path::PathBuf;

use serde::Deserialize;

use super::{ByteSize, ConfigError, HumanDuration};

/// `[sources]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourcesSection {
    /// `[[sources.webhook]]`: inbound webhooks signed by their sender, each received at
    /// `POST /v1/hooks/{name}`. Also settable as
    /// `ALLUVIUM_SOURCES__WEBHOOK='[{name = "...", table = "...", ...}]'`. Default: none.
    pub webhook: Vec<HookSection>,
}

/// `[[sources.webhook]]`: one inbound webhook source. Its deliveries are checked (signature in
/// constant time, signed timestamp within `tolerance`), deduplicated by the sender's delivery
/// id, mapped into rows and ingested into `table` like any batch.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookSection {
    /// The route segment `POST /v1/hooks/{name}`: `[a-z0-9_-]{1,64}`, unique. Required.
    pub name: String,
    /// The tenant owning `table`. Default: `default`.
    #[serde(default = "default_hook_tenant")]
    pub tenant: String,
    /// The table rows land in (it must exist when deliveries arrive). Required.
    pub table: String,
    /// How the sender signs: `github`, `stripe`, `slack`, `shopify` or `hmac`. Required.
    pub scheme: alluvium_pipelines::sources::webhook::Scheme,
    /// Shared secrets, each at least 16 bytes: one, or two while rotating (either verifies).
    /// Default: none.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Files each holding one secret (surrounding whitespace trimmed), added to `secrets`.
    /// Default: none. One or two secrets in all are required.
    #[serde(default)]
    pub secret_files: Vec<PathBuf>,
    /// Largest distance between a signed timestamp (Stripe, Slack, `hmac` with
    /// `timestamp_header`) and this server's clock. Default: `5m`.
    #[serde(default = "default_hook_tolerance")]
    pub tolerance: HumanDuration,
    /// Largest delivery body (bodies are read before their signature can be checked, so this
    /// bounds what an unauthenticated sender can make the server read); `server.body_limit`
    /// applies too. Default: `5MiB`.
    #[serde(default = "default_hook_body_limit")]
    pub body_limit: ByteSize,
    /// `hmac` only: the header carrying the signature. Default: `X-Signature`.
    #[serde(default)]
    pub signature_header: Option<String>,
    /// `hmac` only: text before the MAC in that header, such as `sha256=`. Default: none.
    #[serde(default)]
    pub signature_prefix: Option<String>,
    /// `hmac` only: `hex` or `base64`. Default: `hex`.
    #[serde(default)]
    pub encoding: alluvium_pipelines::sources::webhook::SignatureEncoding,
    /// `hmac` only: a header with the unix time the sender signed along with the body, as
    /// HMAC(secret, `"<ts>.<body>"`). Default: none (the body alone is signed).
    #[serde(default)]
    pub timestamp_header: Option<String>,
    /// A column that receives the raw body as text. Default: none.
    #[serde(default)]
    pub body_column: Option<String>,
    /// Columns filled from the body by JSON pointer: `{ repo = "/repository/full_name" }`.
    /// Default: none. Without `body_column` and `fields`, the body's JSON object is the row.
    #[serde(default)]
    pub fields: std::collections::BTreeMap<String, String>,
    /// Columns filled with request headers, as text: `{ event = "X-GitHub-Event" }`.
    /// Default: none.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
}

fn default_hook_tenant() -> String {
    "default".into()
}

fn default_hook_body_limit() -> ByteSize {
    ByteSize(alluvium_pipelines::sources::webhook::DEFAULT_MAX_BODY as u64)
}

fn default_hook_tolerance() -> HumanDuration {
    HumanDuration(alluvium_pipelines::sources::webhook::DEFAULT_TOLERANCE)
}

impl HookSection {
    /// The source it describes, with the secrets of `secret_files` read (not yet validated).
    pub fn hook_config(
        &self,
    ) -> Result<alluvium_pipelines::sources::webhook::HookConfig, ConfigError> {
        let mut secrets = self.secrets.clone();
        for path in &self.secret_files {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::Invalid(format!(
                    "webhook source {:?}: cannot read secret file {}: {e}",
                    self.name,
                    path.display()
                ))
            })?;
            secrets.push(text.trim().to_string());
        }
        Ok(alluvium_pipelines::sources::webhook::HookConfig {
            name: self.name.clone(),
            tenant: self.tenant.clone(),
            table: self.table.clone(),
            scheme: self.scheme,
            secrets,
            tolerance: self.tolerance.0,
            max_body: self.body_limit.0 as usize,
            signature_header: self.signature_header.clone(),
            signature_prefix: self.signature_prefix.clone(),
            encoding: self.encoding,
            timestamp_header: self.timestamp_header.clone(),
            body_column: self.body_column.clone(),
            fields: self.fields.clone(),
            headers: self.headers.clone(),
        })
    }
}

/// The secrets stay out of logs.
impl std::fmt::Debug for HookSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookSection")
            .field("name", &self.name)
            .field("tenant", &self.tenant)
            .field("table", &self.table)
            .field("scheme", &self.scheme)
            .field("secrets", &format!("<{} redacted>", self.secrets.len()))
            .field("secret_files", &self.secret_files)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Config;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn webhook_sources_load_from_file_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("gh.secret");
        std::fs::write(&secret, "  from-a-file-0123456789\n").unwrap();
        let f = dir.path().join("a.toml");
        std::fs::write(
            &f,
            format!(
                "[[sources.webhook]]\nname = \"gh\"\ntable = \"pushes\"\nscheme = \"github\"\nsecret_files = [{:?}]\ntolerance = \"1m\"\nheaders = {{ event = \"X-GitHub-Event\" }}\n",
                secret.display().to_string()
            ),
        )
        .unwrap();
        let c = Config::load(Some(&f), Vec::new()).unwrap();
        let hook = c.sources.webhook[0].hook_config().unwrap();
        assert_eq!(
            (
                hook.name.as_str(),
                hook.tenant.as_str(),
                hook.table.as_str()
            ),
            ("gh", "default", "pushes")
        );
        assert_eq!(hook.secrets, vec!["from-a-file-0123456789".to_string()]);
        assert_eq!(hook.tolerance, Duration::from_secs(60));
        assert_eq!(hook.headers["event"], "X-GitHub-Event");
        assert!(!format!("{:?}", c.sources.webhook[0]).contains("from-a-file"));

        let c = Config::load(
            None,
            env(&[(
                "ALLUVIUM_SOURCES__WEBHOOK",
                r#"[{ name = "s", table = "t", scheme = "stripe", secrets = ["0123456789abcdef"] }]"#,
            )]),
        )
        .unwrap();
        let hook = c.sources.webhook[0].hook_config().unwrap();
        assert_eq!(
            hook.scheme,
            alluvium_pipelines::sources::webhook::Scheme::Stripe
        );
        assert_eq!(hook.tolerance, Duration::from_secs(300));

        // A malformed array is reported as such, not taken as a string.
        let err = Config::load(None, env(&[("ALLUVIUM_SOURCES__WEBHOOK", "[{ name = }]")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ALLUVIUM_SOURCES__WEBHOOK: not a TOML array"),
            "{err}"
        );
        let err = Config::load(
            None,
            env(&[(
                "ALLUVIUM_SOURCES__WEBHOOK",
                r#"[{ name = "s", table = "t", scheme = "gitlab" }]"#,
            )]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("gitlab"), "{err}");
        let missing = dir.path().join("missing.secret");
        let section: HookSection = toml::from_str(&format!(
            "name = \"x\"\ntable = \"t\"\nscheme = \"slack\"\nsecret_files = [{:?}]\n",
            missing.display().to_string()
        ))
        .unwrap();
        let err = section.hook_config().unwrap_err().to_string();
        assert!(err.contains("cannot read secret file"), "{err}");
    }
}
