//! App versions: a no-data copy of each promoted app, kept in S3 (bucket versioning) or in a local
//! folder, listed with `promoter versions` and put back with `promoter restore`.
//!
//! Versions are keyed by the source app's id, never its name (names change and can contain any
//! character): S3 keeps every version of `{prefix}apps/{app_id}/app.qvf` and the version id is
//! S3's own; the folder backend writes `{folder}/{app_id}/{version_id}.qvf` with a JSON sidecar,
//! and the version id is a UTC timestamp plus a random suffix. Both store the metadata the engine
//! gives (source app id and name, site, stream, job id, approver, time) and the SHA-256 of the
//! content, so a restore can be checked.

mod folder;
mod s3;

use std::pin::Pin;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::config::{Settings, VersionBackendKind};
use crate::engine::hooks::VersionMeta;

/// Default size of one multipart-upload part: memory use of an upload is about one part.
pub const DEFAULT_PART_SIZE: usize = 16 * 1024 * 1024;
/// S3's smallest allowed part (all but the last).
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;

/// One stored version of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredVersion {
    /// S3 version id, or the folder backend's file name (without `.qvf`).
    pub version_id: String,
    /// Object key (S3) or file path relative to the versions folder.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content, lower-case hex (empty if the object was not written by Promoter).
    pub sha256: String,
    /// When it was stored (UTC).
    pub stored_at: DateTime<Utc>,
    /// What the engine said about it.
    pub meta: VersionMeta,
}

/// A stored version's content, for restore.
pub type VersionReader = Pin<Box<dyn AsyncRead + Send>>;

/// Why storing, listing or reading a version failed.
#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    /// The app id cannot be used in a key or path.
    #[error(
        "\"{0}\" is not an app id (expected letters, digits, '-', '_' or '.', like a Qlik app GUID)"
    )]
    InvalidAppId(String),
    /// No such version of that app.
    #[error(
        "app {app_id} has no stored version \"{version_id}\"; `promoter versions --app {app_id}` lists them"
    )]
    NotFound {
        /// The app id asked for.
        app_id: String,
        /// The version id asked for.
        version_id: String,
    },
    /// The bucket does not keep versions, so a new upload would destroy the previous one.
    #[error(
        "the S3 bucket \"{bucket}\" does not have versioning enabled, so each upload would replace the previous version. Enable it (for example `aws s3api put-bucket-versioning --bucket {bucket} --versioning-configuration Status=Enabled`)"
    )]
    NotVersioned {
        /// The bucket name.
        bucket: String,
    },
    /// Reading the body or local files failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// S3 refused or could not be reached; `message` says which and what to do.
    #[error("{message}")]
    S3 {
        /// What failed, why, and what to change, in words.
        message: String,
        /// Whether trying again later can succeed.
        retryable: bool,
    },
}

impl VersionError {
    /// Whether trying again later can succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            VersionError::S3 { retryable, .. } => *retryable,
            VersionError::Io { .. } => true,
            _ => false,
        }
    }
}

/// Where versions are kept.
#[derive(Debug)]
pub struct VersionStore {
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    Folder(folder::FolderBackend),
    S3(s3::S3Backend),
}

impl VersionStore {
    /// The store for these settings; `None` when `versioning.enabled` is false. Makes no network
    /// call (the S3 bucket is checked before the first upload and by [`VersionStore::check`]).
    pub async fn from_settings(settings: &Settings) -> anyhow::Result<Option<VersionStore>> {
        if !settings.versioning.enabled {
            return Ok(None);
        }
        VersionStore::new(settings).await.map(Some)
    }

    /// The store whatever `versioning.enabled` says (`promoter versions`, restore, tests).
    pub async fn new(settings: &Settings) -> anyhow::Result<VersionStore> {
        let v = &settings.versioning;
        let backend = match v.backend {
            VersionBackendKind::Folder => Backend::Folder(folder::FolderBackend::new(&v.folder)),
            // Boxed: the AWS SDK's futures are deep enough to overflow the compiler's layout
            // depth limit in callers that await many things.
            VersionBackendKind::S3 => Backend::S3(Box::pin(s3::S3Backend::new(&v.s3)).await?),
        };
        Ok(VersionStore { backend })
    }

    /// Sets the multipart part size (S3; at least [`MIN_PART_SIZE`]). Memory use of an upload
    /// is about one part.
    pub fn with_part_size(mut self, bytes: usize) -> VersionStore {
        if let Backend::S3(b) = &mut self.backend {
            b.part_size = bytes.max(MIN_PART_SIZE);
        }
        self
    }

    /// E.g. `s3://bucket/prefix/` or `folder /data/versions`.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Folder(f) => format!("folder {}", f.root.display()),
            Backend::S3(s) => s.describe(),
        }
    }

    /// Checks that the store can be used (S3: the bucket exists, is reachable with these
    /// credentials and has versioning enabled). Returns a one-line description.
    pub async fn check(&self) -> Result<String, VersionError> {
        match &self.backend {
            Backend::Folder(f) => f.check().await,
            Backend::S3(s) => Box::pin(s.check()).await,
        }
        .map(|()| self.describe())
    }

    /// Stores a version of `meta.app_id` read from `body` (streamed; large bodies go to S3 as a
    /// multipart upload). `size_hint` only sizes the first buffer.
    ///
    /// Idempotent per job: when the newest stored version was stored by `meta.job_id` (a retry
    /// after a crash), that version is returned and nothing is uploaded.
    pub async fn put(
        &self,
        meta: &VersionMeta,
        body: impl AsyncRead + Unpin + Send,
        size_hint: Option<u64>,
    ) -> Result<StoredVersion, VersionError> {
        check_app_id(&meta.app_id)?;
        let stored = match &self.backend {
            Backend::Folder(f) => f.put(meta, body).await?,
            Backend::S3(s) => Box::pin(s.put(meta, body, size_hint)).await?,
        };
        tracing::info!(
            app = %meta.app_id,
            version = %stored.version_id,
            size = stored.size,
            sha256 = %stored.sha256,
            "stored app version in {}",
            self.describe()
        );
        Ok(stored)
    }

    /// Every stored version of an app, newest first.
    pub async fn list(&self, app_id: &str) -> Result<Vec<StoredVersion>, VersionError> {
        check_app_id(app_id)?;
        let mut list = match &self.backend {
            Backend::Folder(f) => f.list(app_id).await?,
            Backend::S3(s) => Box::pin(s.list(app_id)).await?,
        };
        list.sort_by(|a, b| {
            b.stored_at
                .cmp(&a.stored_at)
                .then_with(|| b.version_id.cmp(&a.version_id))
        });
        Ok(list)
    }

    /// One stored version's description.
    pub async fn get(&self, app_id: &str, version_id: &str) -> Result<StoredVersion, VersionError> {
        check_app_id(app_id)?;
        match &self.backend {
            Backend::Folder(f) => f.get(app_id, version_id).await,
            Backend::S3(s) => Box::pin(s.get(app_id, version_id)).await,
        }
    }

    /// Opens a stored version's content (for restore).
    pub async fn open(
        &self,
        app_id: &str,
        version_id: &str,
    ) -> Result<VersionReader, VersionError> {
        check_app_id(app_id)?;
        match &self.backend {
            Backend::Folder(f) => f.open(app_id, version_id).await,
            Backend::S3(s) => Box::pin(s.open(app_id, version_id)).await,
        }
    }
}

/// Reads `reader` to the end: (SHA-256 lower-case hex, size). For checking a restored file.
pub async fn sha256_of(mut reader: impl AsyncRead + Unpin) -> std::io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// App ids go into keys and paths: only `[A-Za-z0-9._-]`, not starting with a dot.
pub(crate) fn check_app_id(app_id: &str) -> Result<(), VersionError> {
    let ok = !app_id.is_empty()
        && app_id.len() <= 128
        && !app_id.starts_with('.')
        && app_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(VersionError::InvalidAppId(app_id.to_string()))
    }
}

/// `promoter versions --app ID`: prints the stored versions as a table.
pub async fn cli_versions(settings: &Settings, app: &str) -> anyhow::Result<()> {
    let store = VersionStore::new(settings).await?;
    if !settings.versioning.enabled {
        println!(
            "note: versioning.enabled is false, so no new versions are stored; listing what {} holds",
            store.describe()
        );
    }
    let list = store.list(app).await?;
    if list.is_empty() {
        println!("no stored versions of app {app} in {}", store.describe());
        return Ok(());
    }
    print!("{}", render_table(&list));
    println!(
        "{} version(s) of app {app} in {}. Restore one with `promoter restore --app {app} --version VERSION --to SITE --stream NAME`",
        list.len(),
        store.describe()
    );
    Ok(())
}

/// The table `promoter versions` prints.
pub fn render_table(list: &[StoredVersion]) -> String {
    let header = [
        "VERSION",
        "STORED (UTC)",
        "SIZE",
        "SHA-256",
        "SITE",
        "STREAM",
        "APPROVER",
        "JOB",
        "NAME",
    ];
    let rows: Vec<[String; 9]> = list
        .iter()
        .map(|v| {
            [
                v.version_id.clone(),
                v.stored_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                human_size(v.size),
                v.sha256.chars().take(12).collect(),
                v.meta.site.clone(),
                v.meta.stream.clone().unwrap_or_default(),
                v.meta.approver.clone().unwrap_or_default(),
                v.meta.job_id.clone(),
                v.meta.app_name.clone(),
            ]
        })
        .collect();
    crate::cli::render_table(header, &rows, usize::MAX)
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_ids_are_checked() {
        for ok in ["0b5e9c1d-1111-2222-3333-444455556666", "a.b_c-1"] {
            assert!(check_app_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "../etc", "a/b", ".hidden", "a b", "ä", "a\\b"] {
            assert!(check_app_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(20 * 1024 * 1024), "20.0 MiB");
    }

    #[test]
    fn the_table_has_a_header_and_aligned_columns() {
        let v = StoredVersion {
            version_id: "v1".into(),
            key: "k".into(),
            size: 10,
            sha256: "0123456789abcdef".into(),
            stored_at: DateTime::parse_from_rfc3339("2024-05-01T10:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
            meta: VersionMeta {
                app_id: "a".into(),
                app_name: "Verkäufe".into(),
                site: "dev".into(),
                stream: Some("Review".into()),
                job_id: "j1".into(),
                approver: None,
                time: "2024-05-01T10:00:00Z".into(),
            },
        };
        let t = render_table(&[v]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("VERSION  STORED (UTC)"));
        assert!(lines[1].starts_with("v1       2024-05-01 10:00:00  10 B  0123456789ab  dev"));
        assert!(lines[1].ends_with("j1   Verkäufe"), "{t}");
    }
}
