//! The checkpoint of `alluvium send`: how far a file is acknowledged, so that a rerun starts
//! there. Written after every acknowledged batch that extends the acknowledged prefix, to a
//! temporary file that is fsynced and renamed over the old one, so that it is always whole:
//! either the previous state or the new one.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::input::Position;

/// Current format of checkpoint files.
const VERSION: u32 = 1;

/// What a send of one file has had acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Format version.
    pub version: u32,
    /// The identity of the file and options ([`identity`]): batches are the same, and have
    /// the same idempotency keys, only for the same identity.
    pub identity: String,
    /// The file, for people.
    pub file: String,
    /// The table.
    pub table: String,
    /// Index of the first batch not acknowledged (all before it are).
    pub next_batch: u64,
    /// Where that batch starts in the file.
    pub position: Position,
    /// Rows in the acknowledged batches.
    pub rows: u64,
    /// Whether the whole file is acknowledged.
    pub complete: bool,
    /// When this was written (RFC 3339).
    pub updated_at: String,
}

impl Checkpoint {
    /// A checkpoint at the start of a file.
    pub fn new(identity: &str, file: &str, table: &str) -> Checkpoint {
        Checkpoint {
            version: VERSION,
            identity: identity.to_string(),
            file: file.to_string(),
            table: table.to_string(),
            next_batch: 0,
            position: Position::default(),
            rows: 0,
            complete: false,
            updated_at: String::new(),
        }
    }

    /// The checkpoint at `path`, if there is one.
    pub fn load(path: &Path) -> anyhow::Result<Option<Checkpoint>> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot read the checkpoint {}", path.display()));
            }
        };
        let cp: Checkpoint = serde_json::from_slice(&text).with_context(|| {
            format!(
                "the checkpoint {} is damaged; remove it, or pass --restart",
                path.display()
            )
        })?;
        if cp.version != VERSION {
            bail!(
                "the checkpoint {} has format version {}, this alluvium writes {VERSION}; pass --restart",
                path.display(),
                cp.version
            );
        }
        Ok(Some(cp))
    }

    /// Writes the checkpoint to `path` atomically.
    pub fn store(&mut self, path: &Path) -> anyhow::Result<()> {
        self.updated_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let tmp = tmp_path(path);
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            serde_json::to_writer_pretty(&mut f, self)?;
            f.write_all(b"\n")?;
            f.sync_data()?;
            std::fs::rename(&tmp, path)
        };
        write().with_context(|| format!("cannot write the checkpoint {}", path.display()))
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// The checkpoint next to `file`: `FILE.alluvium-send`.
pub fn default_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".alluvium-send");
    file.with_file_name(name)
}

/// 16 hex digits of SHA-256 over `parts`: the same file (path, size, modification time) sent
/// to the same table with the same format and batch sizes has the same identity, so its
/// batches have the same idempotency keys on every run.
pub fn identity(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    h.update(b"alluvium-send-v1");
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn stores_and_loads_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = default_path(&dir.path().join("events.ndjson"));
        assert!(path.ends_with("events.ndjson.alluvium-send"));
        assert_eq!(Checkpoint::load(&path).unwrap(), None);
        let mut cp = Checkpoint::new("abc", "events.ndjson", "t");
        cp.next_batch = 3;
        cp.position = Position {
            byte: 300,
            line: 30,
            record: 30,
        };
        cp.store(&path).unwrap();
        assert_eq!(Checkpoint::load(&path).unwrap(), Some(cp.clone()));
        assert!(!tmp_path(&path).exists());
        std::fs::write(&path, "{\"version\":1,").unwrap();
        let e = Checkpoint::load(&path).unwrap_err().to_string();
        assert!(e.contains("damaged"), "{e}");
    }

    #[test]
    fn identities_depend_on_every_part() {
        let a = identity(&["/x", "10", "5"]);
        assert_eq!(a.len(), 16);
        assert_eq!(a, identity(&["/x", "10", "5"]));
        assert_ne!(a, identity(&["/x", "10", "6"]));
        // Parts are delimited: moving a character between parts changes the identity.
        assert_ne!(identity(&["ab", "c"]), identity(&["a", "bc"]));
    }
}
