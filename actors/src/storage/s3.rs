//! S3 and S3-compatible object stores (MinIO, R2, moto) for the lake: where a lake lives
//! ([`StoreUrl`]), how to reach its bucket ([`S3Settings`]), and the [`Storage`] built from them.
//!
//! The catalog asks one thing of the store beyond durable puts: a create-only put that exactly
//! one of several concurrent writers wins. object_store 0.14 sends `PutMode::Create` as
//! `If-None-Match: *` by default (`S3ConditionalPut::ETagMatch`); S3 answers the losers 412,
//! which object_store reports as `AlreadyExists` (wrapping `Precondition`), and a 409 from a
//! conditional write still in flight as `AlreadyExists` too. Stores without conditional writes
//! cannot hold a lake: their `put_new` fails loudly rather than letting two writers both win.
//!
//! Two clients are built per bucket: the data path's, with object_store's patient retries, and
//! the [`Storage::probe`]'s, with a short leash, so that a startup check against an unreachable
//! endpoint fails in seconds with the endpoint's name instead of retrying for minutes.

use std::path::{Component, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};
use serde::Deserialize;

use super::{Storage, StorageError};

/// How long the probe waits in all, retries and credential look-ups included.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// TCP connect timeout of every S3 request: an endpoint that does not accept a connection in
/// this time is down, not slow.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Per-request timeout of the probe (the data path keeps object_store's 30 s default, which
/// large Parquet uploads need).
const PROBE_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The key prefix the probe lists: nothing is ever stored there, so the answer is one short
/// page whatever the size of the lake.
const PROBE_PREFIX: &str = "alluvium-probe";

/// Where a lake lives, as written in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `file:///absolute/path`: a local directory.
    Local(PathBuf),
    /// `s3://bucket` or `s3://bucket/some/prefix`: keys under `prefix` (no leading or
    /// trailing `/`, empty for the bucket root) in `bucket`.
    S3 {
        /// The bucket name.
        bucket: String,
        /// The key prefix of the lake.
        prefix: String,
    },
}

impl StoreUrl {
    /// Parses `file:///absolute/path`, `s3://bucket` or `s3://bucket/some/prefix`.
    pub fn parse(url: &str) -> Result<Self, StorageError> {
        let invalid =
            |reason: String| StorageError::Config(format!("storage URL `{url}`: {reason}"));
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(invalid(
                "not a URL: use file:///absolute/path or s3://bucket/prefix".into(),
            ));
        };
        match scheme {
            "file" => {
                if !rest.starts_with('/') {
                    return Err(invalid(format!(
                        "a file URL takes an absolute path (file:///absolute/path), `{rest}` is not one"
                    )));
                }
                let path = PathBuf::from(rest);
                if path.components().any(|c| c == Component::ParentDir) {
                    return Err(invalid("`..` segments are not allowed".into()));
                }
                Ok(Self::Local(path))
            }
            "s3" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                validate_bucket(bucket).map_err(invalid)?;
                let prefix = normalize_prefix(prefix).map_err(invalid)?;
                Ok(Self::S3 {
                    bucket: bucket.to_string(),
                    prefix,
                })
            }
            other => Err(invalid(format!(
                "unsupported scheme `{other}`: use file:///absolute/path or s3://bucket/prefix"
            ))),
        }
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local(path) => write!(f, "file://{}", path.display()),
            Self::S3 { bucket, prefix } => f.write_str(&s3_url(bucket, prefix)),
        }
    }
}

impl std::str::FromStr for StoreUrl {
    type Err = StorageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn s3_url(bucket: &str, prefix: &str) -> String {
    if prefix.is_empty() {
        format!("s3://{bucket}")
    } else {
        format!("s3://{bucket}/{prefix}")
    }
}

/// Checks S3's bucket naming rules (general purpose buckets): 3 to 63 lowercase letters,
/// digits, `.` and `-`, starting and ending with a letter or digit, no `..`, not an IPv4
/// address, none of the reserved prefixes and suffixes.
fn validate_bucket(bucket: &str) -> Result<(), String> {
    if bucket.is_empty() {
        return Err("the bucket name is empty".into());
    }
    let bad = |why: &str| Err(format!("invalid bucket name `{bucket}`: {why}"));
    if !(3..=63).contains(&bucket.len()) {
        return bad("it must be 3 to 63 characters long");
    }
    if let Some(c) = bucket
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '.' || *c == '-'))
    {
        return bad(&format!(
            "`{c}` is not allowed (lowercase letters, digits, `.` and `-` only)"
        ));
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = bucket.as_bytes();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return bad("it must start and end with a letter or digit");
    }
    if bucket.contains("..") {
        return bad("it must not contain `..`");
    }
    if bucket.parse::<std::net::Ipv4Addr>().is_ok() {
        return bad("it must not be an IP address");
    }
    if ["xn--", "sthree-", "amzn-s3-demo-"]
        .iter()
        .any(|p| bucket.starts_with(p))
        || ["-s3alias", "--ol-s3", "--x-s3", "--table-s3"]
            .iter()
            .any(|s| bucket.ends_with(s))
    {
        return bad("it uses a prefix or suffix S3 reserves");
    }
    Ok(())
}

/// Strips leading and trailing `/` and checks that every segment is a valid object path part.
fn normalize_prefix(prefix: &str) -> Result<String, String> {
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    if trimmed.split('/').any(|s| s == ".." || s == ".") {
        return Err(format!(
            "`..` and `.` segments are not allowed in the prefix `{prefix}`"
        ));
    }
    ObjectPath::parse(trimmed)
        .map(|p| p.to_string())
        .map_err(|e| format!("invalid prefix `{prefix}`: {e}"))
}

/// How to reach the lake's bucket. Deserializable with a default for every field but `bucket`.
///
/// With `access_key_id` and `secret_access_key` set, only these settings are used. Without
/// them, credentials come from the standard `AWS_*` environment (keys, session token, web
/// identity, container or instance credentials), which also supplies any other `AWS_*` setting
/// not given here.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// The bucket. Required.
    pub bucket: String,
    /// Key prefix of the lake in the bucket, leading and trailing `/` ignored. Default `""`:
    /// the bucket root.
    #[serde(default)]
    pub prefix: String,
    /// URL of an S3-compatible endpoint (`http://127.0.0.1:9000`), addressed path-style
    /// (`endpoint/bucket/key`). Default: none, AWS S3 in `region`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The region requests are signed for. Default `"us-east-1"`.
    #[serde(default = "default_region")]
    pub region: String,
    /// Static access key id. Default: none (credentials from the environment).
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Static secret access key, set together with `access_key_id`. Default: none.
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Whether a plain `http://` endpoint is allowed. Default `false`.
    #[serde(default)]
    pub allow_http: bool,
}

fn default_region() -> String {
    "us-east-1".into()
}

impl S3Settings {
    /// Settings for `prefix` in `bucket` on AWS S3, everything else at its default.
    pub fn new(bucket: impl Into<String>, prefix: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            prefix: prefix.into(),
            endpoint: None,
            region: default_region(),
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
        }
    }
}

// By hand, so that the secret stays out of logs.
impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

/// The client the probe uses, and how its errors name the store.
pub(super) struct Probe {
    store: Arc<dyn ObjectStore>,
    /// "S3 bucket `b` at https://..." for error messages.
    target: String,
}

impl Storage {
    /// Opens the lake in an S3 bucket. Builds the clients only: nothing is sent until the first
    /// request, so call [`Storage::probe`] to learn whether the bucket can be reached.
    pub fn s3(settings: &S3Settings) -> Result<Self, StorageError> {
        let bucket = &settings.bucket;
        validate_bucket(bucket).map_err(StorageError::Config)?;
        let prefix = normalize_prefix(&settings.prefix).map_err(StorageError::Config)?;
        let builder = builder(settings)?;
        let endpoint = builder
            .get_config_value(&AmazonS3ConfigKey::Endpoint)
            .unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", settings.region));

        let data = builder
            .clone()
            .with_client_options(ClientOptions::new().with_connect_timeout(CONNECT_TIMEOUT))
            .with_allow_http(settings.allow_http)
            .with_retry(RetryConfig::default());
        let probe = builder
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(CONNECT_TIMEOUT)
                    .with_timeout(PROBE_REQUEST_TIMEOUT),
            )
            .with_allow_http(settings.allow_http)
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(1),
                    base: 2.0,
                },
                max_retries: 2,
                retry_timeout: Duration::from_secs(5),
            });
        let build = |b: AmazonS3Builder| {
            b.build().map_err(|e| {
                StorageError::Config(format!("cannot configure S3 bucket `{bucket}`: {e}"))
            })
        };
        Ok(Self {
            store: with_prefix(build(data)?, &prefix),
            description: s3_url(bucket, &prefix),
            probe: Some(Arc::new(Probe {
                store: with_prefix(build(probe)?, &prefix),
                target: format!("S3 bucket `{bucket}` at {endpoint}"),
            })),
        })
    }

    /// Checks that the store answers and the bucket exists, with one cheap list of an empty
    /// prefix, within [`PROBE_TIMEOUT`]. The error names the bucket and endpoint and says
    /// whether it is unreachable, missing or refusing access.
    pub async fn probe(&self) -> Result<(), StorageError> {
        let (store, target) = match &self.probe {
            Some(p) => (&p.store, p.target.as_str()),
            None => (&self.store, self.description.as_str()),
        };
        let prefix = ObjectPath::from(PROBE_PREFIX);
        let mut list = store.list(Some(&prefix));
        let problem = match tokio::time::timeout(PROBE_TIMEOUT, list.try_next()).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => describe(&e),
            Err(_) => format!("did not answer within {} s", PROBE_TIMEOUT.as_secs()),
        };
        Err(StorageError::Unavailable {
            target: target.to_string(),
            problem,
        })
    }
}

fn builder(settings: &S3Settings) -> Result<AmazonS3Builder, StorageError> {
    let bucket = &settings.bucket;
    let mut b = match (&settings.access_key_id, &settings.secret_access_key) {
        (Some(id), Some(secret)) => AmazonS3Builder::new()
            .with_access_key_id(id)
            .with_secret_access_key(secret),
        (None, None) => AmazonS3Builder::from_env(),
        _ => {
            return Err(StorageError::Config(format!(
                "S3 bucket `{bucket}`: set both access_key_id and secret_access_key, or neither"
            )));
        }
    };
    b = b.with_bucket_name(bucket).with_region(&settings.region);
    if let Some(endpoint) = &settings.endpoint {
        let endpoint = endpoint.trim_end_matches('/');
        if endpoint.starts_with("http://") {
            if !settings.allow_http {
                return Err(StorageError::Config(format!(
                    "S3 endpoint {endpoint} is plain HTTP: set allow_http to use it"
                )));
            }
        } else if !endpoint.starts_with("https://") {
            return Err(StorageError::Config(format!(
                "S3 endpoint `{endpoint}` is not an http:// or https:// URL"
            )));
        }
        // Custom endpoints are addressed path-style: `endpoint/bucket/key` needs no DNS entry
        // per bucket.
        b = b
            .with_endpoint(endpoint)
            .with_virtual_hosted_style_request(false);
    }
    Ok(b)
}

fn with_prefix(store: AmazonS3, prefix: &str) -> Arc<dyn ObjectStore> {
    if prefix.is_empty() {
        Arc::new(store)
    } else {
        Arc::new(PrefixStore::new(store, prefix))
    }
}

/// Says in words why a probe failed, with the whole error chain.
fn describe(e: &object_store::Error) -> String {
    let chain = error_chain(e);
    let transport = {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        let mut found = false;
        while let Some(s) = source {
            found |= s.is::<object_store::client::HttpError>();
            source = s.source();
        }
        found
    };
    if chain.contains("NoSuchBucket") {
        // The rest is S3's XML error document: the code says it all.
        "does not exist (S3 answered NoSuchBucket)".into()
    } else if matches!(e, object_store::Error::NotFound { .. }) {
        format!("does not exist: {chain}")
    } else if matches!(
        e,
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
    ) || [
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
    ]
    .iter()
    .any(|code| chain.contains(code))
    {
        format!("refused access: {chain}")
    } else if transport {
        format!("is unreachable: {chain}")
    } else {
        format!("failed the probe: {chain}")
    }
}

/// `e: source: source ...`, skipping a source whose text its parent already shows.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn s3(bucket: &str, prefix: &str) -> StoreUrl {
        StoreUrl::S3 {
            bucket: bucket.into(),
            prefix: prefix.into(),
        }
    }

    fn err(url: &str) -> String {
        StoreUrl::parse(url).unwrap_err().to_string()
    }

    #[test]
    fn parses_file_and_s3_urls() {
        assert_eq!(
            StoreUrl::parse("file:///var/lib/alluvium").unwrap(),
            StoreUrl::Local(PathBuf::from("/var/lib/alluvium"))
        );
        assert_eq!(StoreUrl::parse("s3://my-lake").unwrap(), s3("my-lake", ""));
        assert_eq!(StoreUrl::parse("s3://my-lake/").unwrap(), s3("my-lake", ""));
        assert_eq!(
            StoreUrl::parse("s3://my.lake-1/prod/events/").unwrap(),
            s3("my.lake-1", "prod/events")
        );
        for url in ["s3://my-lake", "s3://my-lake/a/b", "file:///tmp/x"] {
            assert_eq!(StoreUrl::parse(url).unwrap().to_string(), url);
        }
        assert_eq!("s3://abc/x".parse::<StoreUrl>().unwrap(), s3("abc", "x"));
    }

    #[test]
    fn rejects_other_schemes_and_relative_paths() {
        assert!(err("gs://bucket/x").contains("unsupported scheme `gs`"));
        assert!(err("/var/lib/alluvium").contains("not a URL"));
        assert!(err("file://relative/dir").contains("absolute path"));
        assert!(err("file://").contains("absolute path"));
        assert!(err("file:///var/../etc").contains("`..`"));
        // The message quotes the URL so that the operator finds the setting.
        assert!(err("gs://bucket/x").contains("`gs://bucket/x`"));
    }

    #[test]
    fn rejects_invalid_buckets_and_prefixes() {
        assert!(err("s3://").contains("bucket name is empty"));
        assert!(err("s3:///prefix").contains("bucket name is empty"));
        for bad in [
            "ab",
            "My-Lake",
            "under_score",
            "-lake",
            "lake-",
            "a..b",
            "192.168.1.1",
            "xn--lake",
            "lake-s3alias",
        ] {
            let e = err(&format!("s3://{bad}/x"));
            assert!(e.contains(&format!("invalid bucket name `{bad}`")), "{e}");
        }
        assert!(err(&format!("s3://{}", "a".repeat(64))).contains("3 to 63"));
        assert!(err("s3://lake/a/../b").contains("`..`"));
        assert!(err("s3://lake/a/./b").contains("`.`"));
        assert!(err("s3://lake/a//b").contains("invalid prefix"));
    }

    #[test]
    fn settings_deserialize_with_defaults_and_hide_the_secret() {
        let s: S3Settings =
            serde_json::from_str(r#"{"bucket": "lake", "secret_access_key": "hunter2"}"#).unwrap();
        assert_eq!(s.region, "us-east-1");
        assert_eq!(s.prefix, "");
        assert!(!s.allow_http && s.endpoint.is_none());
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(serde_json::from_str::<S3Settings>(r#"{"bucket": "lake", "nope": 1}"#).is_err());
    }

    #[test]
    fn invalid_settings_fail_before_any_request() {
        let mut s = S3Settings::new("lake", "/a/b/");
        s.endpoint = Some("http://127.0.0.1:9000".into());
        s.access_key_id = Some("k".into());
        s.secret_access_key = Some("s".into());
        let e = Storage::s3(&s).unwrap_err().to_string();
        assert!(e.contains("allow_http"), "{e}");
        s.allow_http = true;
        assert_eq!(Storage::s3(&s).unwrap().description(), "s3://lake/a/b");
        s.secret_access_key = None;
        let e = Storage::s3(&s).unwrap_err().to_string();
        assert!(e.contains("both"), "{e}");
        s.secret_access_key = Some("s".into());
        s.endpoint = Some("ftp://host".into());
        assert!(
            Storage::s3(&s)
                .unwrap_err()
                .to_string()
                .contains("ftp://host")
        );
        s.endpoint = None;
        s.bucket = "Bad".into();
        assert!(Storage::s3(&s).unwrap_err().to_string().contains("`Bad`"));
    }
}
