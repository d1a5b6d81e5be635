//! The folder backend: `{folder}/{app_id}/{version_id}.qvf` plus `{version_id}.json` (metadata,
//! size, SHA-256). A version is complete when its sidecar exists; both files are written under a
//! temporary name and renamed into place.

use std::path::{Path, PathBuf};

use chrono::Utc;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::{StoredVersion, VersionError, VersionReader};
use crate::engine::hooks::VersionMeta;

#[derive(Debug)]
pub(super) struct FolderBackend {
    pub(super) root: PathBuf,
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> VersionError {
    let context = context.into();
    move |source| VersionError::Io { context, source }
}

/// Folder version ids: `20240501T100000.123Z-1a2b3c4d`.
fn valid_version_id(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && !v.starts_with('.')
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl FolderBackend {
    pub(super) fn new(root: &Path) -> FolderBackend {
        FolderBackend {
            root: root.to_path_buf(),
        }
    }

    pub(super) async fn check(&self) -> Result<(), VersionError> {
        tokio::fs::create_dir_all(&self.root)
            .await
            .map_err(io(format!(
                "cannot create the versions folder {} (versioning.folder)",
                self.root.display()
            )))
    }

    pub(super) async fn put(
        &self,
        meta: &VersionMeta,
        mut body: impl AsyncRead + Unpin + Send,
    ) -> Result<StoredVersion, VersionError> {
        let newest = self
            .list(&meta.app_id)
            .await?
            .into_iter()
            .max_by(|a, b| a.version_id.cmp(&b.version_id));
        if let Some(v) = newest.filter(|v| !meta.job_id.is_empty() && v.meta.job_id == meta.job_id)
        {
            return Ok(v);
        }
        let dir = self.root.join(&meta.app_id);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(io(format!("cannot create {}", dir.display())))?;
        let now = Utc::now();
        let version_id = format!(
            "{}-{}",
            now.format("%Y%m%dT%H%M%S%.3fZ"),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let tmp = dir.join(format!(".{version_id}.qvf.part"));
        let result = async {
            let mut file = tokio::fs::File::create(&tmp)
                .await
                .map_err(io(format!("cannot create {}", tmp.display())))?;
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            let mut buf = vec![0u8; 1024 * 1024];
            loop {
                let n = body
                    .read(&mut buf)
                    .await
                    .map_err(io("cannot read the app export"))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                file.write_all(&buf[..n])
                    .await
                    .map_err(io(format!("cannot write {}", tmp.display())))?;
                size += n as u64;
            }
            file.sync_all()
                .await
                .map_err(io(format!("cannot write {}", tmp.display())))?;
            Ok::<_, VersionError>((hex::encode(hasher.finalize()), size))
        }
        .await;
        let (sha256, size) = match result {
            Ok(v) => v,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        let qvf = dir.join(format!("{version_id}.qvf"));
        tokio::fs::rename(&tmp, &qvf)
            .await
            .map_err(io(format!("cannot rename into {}", qvf.display())))?;
        let stored = StoredVersion {
            version_id: version_id.clone(),
            key: format!("{}/{version_id}.qvf", meta.app_id),
            size,
            sha256,
            stored_at: now,
            meta: meta.clone(),
        };
        let json = serde_json::to_vec_pretty(&stored).map_err(|e| VersionError::Io {
            context: "cannot encode the version metadata".into(),
            source: std::io::Error::other(e),
        })?;
        let sidecar = dir.join(format!("{version_id}.json"));
        let tmp = dir.join(format!(".{version_id}.json.part"));
        tokio::fs::write(&tmp, json)
            .await
            .map_err(io(format!("cannot write {}", tmp.display())))?;
        tokio::fs::rename(&tmp, &sidecar)
            .await
            .map_err(io(format!("cannot rename into {}", sidecar.display())))?;
        Ok(stored)
    }

    pub(super) async fn list(&self, app_id: &str) -> Result<Vec<StoredVersion>, VersionError> {
        let dir = self.root.join(app_id);
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(format!("cannot list {}", dir.display()))(e)),
        };
        let mut out = Vec::new();
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(io(format!("cannot list {}", dir.display())))?
        {
            let name = entry.file_name().to_string_lossy().to_string();
            let Some(version_id) = name.strip_suffix(".json") else {
                continue;
            };
            if !valid_version_id(version_id) {
                continue;
            }
            match self.get(app_id, version_id).await {
                Ok(v) => out.push(v),
                Err(e) => tracing::warn!("skipping {}: {e}", entry.path().display()),
            }
        }
        Ok(out)
    }

    pub(super) async fn get(
        &self,
        app_id: &str,
        version_id: &str,
    ) -> Result<StoredVersion, VersionError> {
        let not_found = || VersionError::NotFound {
            app_id: app_id.into(),
            version_id: version_id.into(),
        };
        if !valid_version_id(version_id) {
            return Err(not_found());
        }
        let sidecar = self.root.join(app_id).join(format!("{version_id}.json"));
        let bytes = match tokio::fs::read(&sidecar).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found()),
            Err(e) => return Err(io(format!("cannot read {}", sidecar.display()))(e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| VersionError::Io {
            context: format!("{} is not a version sidecar", sidecar.display()),
            source: std::io::Error::other(e),
        })
    }

    pub(super) async fn open(
        &self,
        app_id: &str,
        version_id: &str,
    ) -> Result<VersionReader, VersionError> {
        // The sidecar marks a complete version.
        self.get(app_id, version_id).await?;
        let path = self.root.join(app_id).join(format!("{version_id}.qvf"));
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(io(format!("cannot open {}", path.display())))?;
        Ok(Box::pin(tokio::io::BufReader::with_capacity(1024 * 1024, file)) as VersionReader)
    }
}
