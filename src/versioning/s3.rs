//! The S3 backend: every version of an app is an S3 object version of
//! `{prefix}apps/{app_id}/app.qvf` in a bucket with versioning enabled.
//!
//! Metadata goes into `x-amz-meta-*` headers, percent-encoded so any name survives the ASCII-only
//! header. The SHA-256 of the content is in the metadata when the body fits one request; a
//! multipart upload only knows it at the end, so it goes into the version's `sha256` tag.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketVersioningStatus, CompletedMultipartUpload, CompletedPart, Tag, Tagging,
};
use chrono::{DateTime, TimeZone, Utc};
use futures_util::{StreamExt, TryStreamExt};
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::OnceCell;

use super::{DEFAULT_PART_SIZE, StoredVersion, VersionError, VersionReader};
use crate::config::S3Settings;
use crate::engine::hooks::VersionMeta;

/// Percent-encode controls, `%` and (always) non-ASCII bytes.
const META_ENCODE: &AsciiSet = &CONTROLS.add(b'%');

const TAG_SHA256: &str = "sha256";

pub(super) struct S3Backend {
    client: Client,
    bucket: String,
    prefix: String,
    endpoint: Option<String>,
    pub(super) part_size: usize,
    versioned: OnceCell<()>,
}

impl std::fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Backend")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl S3Backend {
    pub(super) async fn new(s: &S3Settings) -> anyhow::Result<S3Backend> {
        if s.bucket.trim().is_empty() {
            anyhow::bail!("versioning.s3.bucket is empty; name the bucket that keeps app versions");
        }
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(s.region.clone()))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .read_timeout(Duration::from_secs(120))
                    .build(),
            );
        if let Some((id, key)) = &s.credentials {
            loader = loader.credentials_provider(Credentials::new(
                id.expose(),
                key.expose(),
                None,
                None,
                "promoter-config",
            ));
        }
        let endpoint = s
            .endpoint
            .as_deref()
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(String::from);
        if let Some(endpoint) = &endpoint {
            loader = loader.endpoint_url(endpoint.clone());
        }
        let sdk = loader.load().await;
        let conf = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(s.path_style)
            .build();
        let mut prefix = s.prefix.trim().trim_start_matches('/').to_string();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(S3Backend {
            client: Client::from_conf(conf),
            bucket: s.bucket.trim().to_string(),
            prefix,
            endpoint,
            part_size: DEFAULT_PART_SIZE,
            versioned: OnceCell::new(),
        })
    }

    pub(super) fn describe(&self) -> String {
        match &self.endpoint {
            Some(e) => format!("s3://{}/{} at {e}", self.bucket, self.prefix),
            None => format!("s3://{}/{}", self.bucket, self.prefix),
        }
    }

    fn key(&self, app_id: &str) -> String {
        format!("{}apps/{app_id}/app.qvf", self.prefix)
    }

    pub(super) async fn check(&self) -> Result<(), VersionError> {
        let out = self
            .client
            .get_bucket_versioning()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| self.error("reading the versioning state of", &self.bucket, e))?;
        if out.status() == Some(&BucketVersioningStatus::Enabled) {
            Ok(())
        } else {
            Err(VersionError::NotVersioned {
                bucket: self.bucket.clone(),
            })
        }
    }

    async fn ensure_versioned(&self) -> Result<(), VersionError> {
        self.versioned
            .get_or_try_init(|| self.check())
            .await
            .map(|_| ())
    }

    pub(super) async fn put(
        &self,
        meta: &VersionMeta,
        mut body: impl AsyncRead + Unpin + Send,
        size_hint: Option<u64>,
    ) -> Result<StoredVersion, VersionError> {
        self.ensure_versioned().await?;
        let key = self.key(&meta.app_id);
        // A retry of the same job after a crash finds its version already stored.
        if let Some(existing) = self.latest_of_job(&meta.app_id, &meta.job_id).await? {
            tracing::info!(
                app = %meta.app_id,
                version = %existing.version_id,
                "job {} already stored this version; not uploading it again",
                meta.job_id
            );
            return Ok(existing);
        }
        let first = read_part(&mut body, self.part_size, size_hint).await?;
        if first.len() < self.part_size {
            self.put_single(meta, &key, first).await
        } else {
            self.put_multipart(meta, &key, first, body).await
        }
    }

    async fn put_single(
        &self,
        meta: &VersionMeta,
        key: &str,
        bytes: Vec<u8>,
    ) -> Result<StoredVersion, VersionError> {
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let size = bytes.len() as u64;
        let mut metadata = encode_meta(meta);
        metadata.insert(TAG_SHA256.into(), sha256.clone());
        let out = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/octet-stream")
            .set_metadata(Some(metadata))
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| self.error("uploading", key, e))?;
        let version_id = self.version_id_of(out.version_id())?;
        Ok(StoredVersion {
            version_id,
            key: key.into(),
            size,
            sha256,
            stored_at: Utc::now(),
            meta: meta.clone(),
        })
    }

    async fn put_multipart(
        &self,
        meta: &VersionMeta,
        key: &str,
        first: Vec<u8>,
        mut body: impl AsyncRead + Unpin + Send,
    ) -> Result<StoredVersion, VersionError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/octet-stream")
            .set_metadata(Some(encode_meta(meta)))
            .send()
            .await
            .map_err(|e| self.error("starting the multipart upload of", key, e))?;
        let Some(upload_id) = created.upload_id().map(String::from) else {
            return Err(VersionError::S3 {
                message: format!("S3 started no multipart upload for {key} (no upload id)"),
                retryable: true,
            });
        };
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let uploaded = async {
            let mut parts = Vec::new();
            let mut chunk = first;
            let mut number = 1;
            loop {
                hasher.update(&chunk);
                size += chunk.len() as u64;
                let out = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .body(ByteStream::from(chunk))
                    .send()
                    .await
                    .map_err(|e| self.error(&format!("uploading part {number} of"), key, e))?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(out.e_tag().map(String::from))
                        .build(),
                );
                chunk = read_part(&mut body, self.part_size, None).await?;
                if chunk.is_empty() {
                    break;
                }
                number += 1;
            }
            self.client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| self.error("completing the multipart upload of", key, e))
        }
        .await;
        let completed = match uploaded {
            Ok(c) => c,
            Err(e) => {
                // Do not leave the parts behind (they cost money until aborted).
                if let Err(abort) = self
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .send()
                    .await
                {
                    tracing::warn!(
                        "could not abort the multipart upload {upload_id} of {key}: {}",
                        DisplayErrorContext(&abort)
                    );
                }
                return Err(e);
            }
        };
        let version_id = self.version_id_of(completed.version_id())?;
        let sha256 = hex::encode(hasher.finalize());
        if let Err(e) = self.tag_sha256(key, &version_id, &sha256).await {
            tracing::warn!(
                "stored version {version_id} of {key} but could not tag its SHA-256: {e}"
            );
        }
        Ok(StoredVersion {
            version_id,
            key: key.into(),
            size,
            sha256,
            stored_at: Utc::now(),
            meta: meta.clone(),
        })
    }

    async fn tag_sha256(
        &self,
        key: &str,
        version_id: &str,
        sha256: &str,
    ) -> Result<(), VersionError> {
        let tag = Tag::builder()
            .key(TAG_SHA256)
            .value(sha256)
            .build()
            .map_err(|e| VersionError::S3 {
                message: format!("cannot build the tag: {e}"),
                retryable: false,
            })?;
        let tagging = Tagging::builder()
            .tag_set(tag)
            .build()
            .map_err(|e| VersionError::S3 {
                message: format!("cannot build the tag set: {e}"),
                retryable: false,
            })?;
        self.client
            .put_object_tagging()
            .bucket(&self.bucket)
            .key(key)
            .version_id(version_id)
            .tagging(tagging)
            .send()
            .await
            .map_err(|e| self.error("tagging", key, e))?;
        Ok(())
    }

    fn version_id_of(&self, v: Option<&str>) -> Result<String, VersionError> {
        match v {
            Some(v) if !v.is_empty() && v != "null" => Ok(v.to_string()),
            _ => Err(VersionError::NotVersioned {
                bucket: self.bucket.clone(),
            }),
        }
    }

    /// The newest version, when it was stored by this job.
    async fn latest_of_job(
        &self,
        app_id: &str,
        job_id: &str,
    ) -> Result<Option<StoredVersion>, VersionError> {
        let key = self.key(app_id);
        let head = match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
        {
            Ok(h) => h,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(self.error("reading", &key, e)),
        };
        let meta = decode_meta(app_id, head.metadata());
        if meta.job_id != job_id || job_id.is_empty() {
            return Ok(None);
        }
        match head.version_id() {
            Some(v) => self.get(app_id, v).await.map(Some),
            None => Ok(None),
        }
    }

    pub(super) async fn list(&self, app_id: &str) -> Result<Vec<StoredVersion>, VersionError> {
        let key = self.key(app_id);
        let mut ids = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut version_marker: Option<String> = None;
        loop {
            let out = self
                .client
                .list_object_versions()
                .bucket(&self.bucket)
                .prefix(&key)
                .set_key_marker(key_marker.take())
                .set_version_id_marker(version_marker.take())
                .send()
                .await
                .map_err(|e| self.error("listing the versions of", &key, e))?;
            for v in out.versions() {
                if v.key() == Some(key.as_str())
                    && let Some(id) = v.version_id()
                {
                    ids.push(id.to_string());
                }
            }
            if out.is_truncated() == Some(true) {
                key_marker = out.next_key_marker().map(String::from);
                version_marker = out.next_version_id_marker().map(String::from);
                if key_marker.is_none() && version_marker.is_none() {
                    break;
                }
            } else {
                break;
            }
        }
        futures_util::stream::iter(ids)
            .map(|id| async move { self.get(app_id, &id).await })
            .buffered(8)
            .try_collect()
            .await
    }

    pub(super) async fn get(
        &self,
        app_id: &str,
        version_id: &str,
    ) -> Result<StoredVersion, VersionError> {
        let key = self.key(app_id);
        let head = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&key)
            .version_id(version_id)
            .send()
            .await
            .map_err(|e| self.version_error("reading", &key, app_id, version_id, e))?;
        let metadata = head.metadata();
        let mut sha256 = metadata
            .and_then(|m| m.get(TAG_SHA256))
            .cloned()
            .unwrap_or_default();
        if sha256.is_empty() {
            match self
                .client
                .get_object_tagging()
                .bucket(&self.bucket)
                .key(&key)
                .version_id(version_id)
                .send()
                .await
            {
                Ok(tags) => {
                    if let Some(t) = tags.tag_set().iter().find(|t| t.key() == TAG_SHA256) {
                        sha256 = t.value().to_string();
                    }
                }
                Err(e) => tracing::debug!(
                    "no tags for {key} version {version_id}: {}",
                    DisplayErrorContext(&e)
                ),
            }
        }
        let stored_at = head
            .last_modified()
            .and_then(|t| Utc.timestamp_opt(t.secs(), t.subsec_nanos()).single())
            .unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
        Ok(StoredVersion {
            version_id: version_id.to_string(),
            key,
            size: head.content_length().unwrap_or(0).max(0) as u64,
            sha256,
            stored_at,
            meta: decode_meta(app_id, metadata),
        })
    }

    pub(super) async fn open(
        &self,
        app_id: &str,
        version_id: &str,
    ) -> Result<VersionReader, VersionError> {
        let key = self.key(app_id);
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&key)
            .version_id(version_id)
            .send()
            .await
            .map_err(|e| self.version_error("downloading", &key, app_id, version_id, e))?;
        Ok(Box::pin(out.body.into_async_read()) as VersionReader)
    }

    /// Turns an SDK error into words: what failed, why, whether a retry can help.
    /// Like `error`, but a missing object or version is `NotFound` for that app and version.
    fn version_error<E>(
        &self,
        doing: &str,
        key: &str,
        app_id: &str,
        version_id: &str,
        e: SdkError<E>,
    ) -> VersionError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        if is_not_found(&e) {
            VersionError::NotFound {
                app_id: app_id.into(),
                version_id: version_id.into(),
            }
        } else {
            self.error(doing, key, e)
        }
    }

    fn error<E>(&self, doing: &str, what: &str, e: SdkError<E>) -> VersionError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let target = format!("s3://{}/{what}", self.bucket);
        let target = if what == self.bucket {
            format!("s3://{}", self.bucket)
        } else {
            target
        };
        let status = e.raw_response().map(|r| r.status().as_u16());
        let code = e.code().unwrap_or_default().to_string();
        let detail = DisplayErrorContext(&e).to_string();
        let (message, retryable) = match (&e, code.as_str()) {
            (_, "NoSuchBucket") => (
                format!(
                    "the bucket \"{}\" does not exist (versioning.s3.bucket, region {})",
                    self.bucket,
                    self.client
                        .config()
                        .region()
                        .map(|r| r.to_string())
                        .unwrap_or_default()
                ),
                false,
            ),
            (_, "AccessDenied" | "AllAccessDisabled") => (
                format!(
                    "S3 denied access while {doing} {target}. The credentials need s3:GetBucketVersioning and s3:ListBucketVersions on the bucket, and s3:PutObject, s3:GetObject, s3:GetObjectVersion, s3:PutObjectVersionTagging, s3:GetObjectVersionTagging and s3:AbortMultipartUpload on its objects"
                ),
                false,
            ),
            (
                _,
                "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "ExpiredToken" | "InvalidToken",
            ) => (
                format!(
                    "S3 refused the credentials ({code}) while {doing} {target}. Check versioning.s3.access_key_id and secret_access_key, or the AWS credential chain (environment, profile, instance role)"
                ),
                false,
            ),
            (_, "SlowDown" | "InternalError" | "ServiceUnavailable" | "RequestTimeout") => (
                format!("S3 is busy ({code}) while {doing} {target}; will retry"),
                true,
            ),
            (SdkError::DispatchFailure(_), _) if detail.contains("credentials") => (
                format!(
                    "no AWS credentials for {doing} {target}: set versioning.s3.access_key_id and secret_access_key, or provide them through the AWS credential chain ({detail})"
                ),
                false,
            ),
            (
                SdkError::DispatchFailure(_)
                | SdkError::TimeoutError(_)
                | SdkError::ResponseError(_),
                _,
            ) => (
                format!(
                    "cannot reach S3{} while {doing} {target}: {detail}",
                    self.endpoint
                        .as_deref()
                        .map(|e| format!(" at {e}"))
                        .unwrap_or_default()
                ),
                true,
            ),
            _ => {
                let retryable = matches!(status, Some(s) if s >= 500 || s == 429);
                (
                    format!("S3 failed while {doing} {target}: {detail}"),
                    retryable,
                )
            }
        };
        VersionError::S3 { message, retryable }
    }
}

fn is_not_found<E: ProvideErrorMetadata>(e: &SdkError<E>) -> bool {
    let status = e.raw_response().map(|r| r.status().as_u16());
    matches!(
        e.code(),
        Some("NoSuchKey" | "NoSuchVersion" | "NotFound" | "InvalidArgument")
    ) || (matches!(e, SdkError::ServiceError(_)) && status == Some(404))
}

/// Reads up to `part_size` bytes (less only at the end of the body).
async fn read_part(
    body: &mut (impl AsyncRead + Unpin),
    part_size: usize,
    size_hint: Option<u64>,
) -> Result<Vec<u8>, VersionError> {
    let capacity = size_hint
        .map(|h| (h as usize).saturating_add(1).min(part_size))
        .unwrap_or(part_size);
    let mut buf = Vec::with_capacity(capacity);
    (&mut *body)
        .take(part_size as u64)
        .read_to_end(&mut buf)
        .await
        .map_err(|source| VersionError::Io {
            context: "cannot read the app export".into(),
            source,
        })?;
    Ok(buf)
}

fn encode_meta(meta: &VersionMeta) -> HashMap<String, String> {
    let enc = |v: &str| utf8_percent_encode(v, META_ENCODE).to_string();
    let mut m = HashMap::new();
    m.insert("app-id".into(), enc(&meta.app_id));
    m.insert("app-name".into(), enc(&meta.app_name));
    m.insert("site".into(), enc(&meta.site));
    if let Some(s) = &meta.stream {
        m.insert("stream".into(), enc(s));
    }
    m.insert("job-id".into(), enc(&meta.job_id));
    if let Some(a) = &meta.approver {
        m.insert("approver".into(), enc(a));
    }
    m.insert("time".into(), enc(&meta.time));
    m
}

fn decode_meta(app_id: &str, m: Option<&HashMap<String, String>>) -> VersionMeta {
    let get = |k: &str| {
        m.and_then(|m| m.get(k))
            .map(|v| percent_decode_str(v).decode_utf8_lossy().to_string())
    };
    VersionMeta {
        app_id: get("app-id").unwrap_or_else(|| app_id.to_string()),
        app_name: get("app-name").unwrap_or_default(),
        site: get("site").unwrap_or_default(),
        stream: get("stream"),
        job_id: get("job-id").unwrap_or_default(),
        approver: get("approver"),
        time: get("time").unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_survives_ascii_only_headers() {
        let meta = VersionMeta {
            app_id: "a-1".into(),
            app_name: "Verkäufe 100% <販売>\r\nX: y".into(),
            site: "dev".into(),
            stream: Some("Überblick".into()),
            job_id: "j".into(),
            approver: Some("CORP\\jürgen".into()),
            time: "2024-05-01T10:00:00Z".into(),
        };
        let enc = encode_meta(&meta);
        for v in enc.values() {
            assert!(v.bytes().all(|b| (0x20..0x7f).contains(&b)), "{v}");
        }
        assert_eq!(
            enc["app-name"],
            "Verk%C3%A4ufe 100%25 <%E8%B2%A9%E5%A3%B2>%0D%0AX: y"
        );
        assert_eq!(decode_meta("a-1", Some(&enc)), meta);
        let bare = decode_meta("a-2", None);
        assert_eq!(bare.app_id, "a-2");
        assert!(bare.stream.is_none());
    }
}
