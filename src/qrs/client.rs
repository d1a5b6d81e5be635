//! [`QrsReader`] (calls that change nothing on the site) and [`QrsClient`] (a reader plus the
//! writes). The engine's dry run gets only a reader, so "no write call" holds by type.
//!
//! Every request carries a fresh random xrfkey (header and query parameter) and
//! `X-Qlik-User`; every path segment and query value is percent-encoded. One reqwest client
//! (one connection pool) per site, shared by all clones.

use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::TryStream;
use percent_encoding::percent_decode_str;
use rand::RngExt;
use reqwest::Method;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::{QrsError, QrsErrorKind};
use super::filter::{Filter, encode_query, encode_segment};
use super::models::{
    About, App, CustomPropertyDefinition, DefinitionRef, ExportResponse, NotificationSpec, Stream,
    Tag, TagRef, User, ValueOrBare,
};
use super::tls::{TlsMode, client_config};
use super::transfer::{AppDownload, Progress};
use crate::config::{QrsSettings, SiteSettings};

/// Content type of QVF uploads.
pub const QVF_CONTENT_TYPE: &str = "application/vnd.qlik.sense.app";

/// A fresh random 16-character alphanumeric xrfkey.
pub fn new_xrfkey() -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(16)
        .map(char::from)
        .collect()
}

/// Builds an encoded `path?query` from raw segments and raw query pairs.
///
/// `qrs_path(&["qrs", "app", id, "copy"], &[("name", "A & B")])` gives
/// `/qrs/app/<id>/copy?name=A%20%26%20B`.
pub fn qrs_path(segments: &[&str], query: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for s in segments {
        out.push('/');
        out.push_str(&encode_segment(s));
    }
    for (i, (k, v)) in query.iter().enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        out.push_str(&encode_query(k));
        out.push('=');
        out.push_str(&encode_query(v));
    }
    out
}

/// The path as shown in errors and logs: decoded for reading (never holds the xrfkey).
fn display_path(encoded: &str) -> String {
    percent_decode_str(encoded).decode_utf8_lossy().into_owned()
}

/// A request body.
pub(super) enum ReqBody {
    /// No body (`Content-Length: 0` on POST/PUT, as QRS clients send).
    Empty,
    /// A JSON document.
    Json(Vec<u8>),
    /// A QVF stream with its length when known.
    Qvf(reqwest::Body, Option<u64>),
}

struct Inner {
    alias: String,
    host: String,
    port: u16,
    base: String,
    http: reqwest::Client,
    user: HeaderValue,
    tls: TlsMode,
    request_timeout: Duration,
    transfer_timeout: Duration,
    conflict_retries: u32,
}

/// Read-only access to one site: GETs, and export/download (which leave the site as it was).
/// Cheap to clone; clones share one connection pool.
#[derive(Clone)]
pub struct QrsReader {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for QrsReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QrsReader")
            .field("site", &self.inner.alias)
            .field("base", &self.inner.base)
            .field("tls", &self.inner.tls)
            .finish()
    }
}

impl QrsReader {
    /// Builds the client for a site: loads the certificates, sets up TLS and the pool.
    /// Errors (files, keys) are permanent [`QrsErrorKind::Setup`] errors naming the file.
    pub fn new(site: &SiteSettings, qrs: &QrsSettings) -> Result<QrsReader, QrsError> {
        crate::tls::init();
        let setup = |m: String| QrsError::new(&site.alias, "CONNECT", "/", QrsErrorKind::Setup(m));
        let tls = client_config(site).map_err(setup)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(qrs.connect_timeout_seconds.max(1)))
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .https_only(true)
            .user_agent(concat!("promoter/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| setup(format!("cannot build the HTTP client: {e}")))?;
        let (dir, user) = site.user_parts();
        let user_header = HeaderValue::from_bytes(
            format!("UserDirectory={dir}; UserId={user}").as_bytes(),
        )
        .map_err(|_| {
            setup(format!(
                "user \"{}\" cannot be sent in the X-Qlik-User header (control characters?)",
                site.user
            ))
        })?;
        let host = site.host.trim().to_string();
        let url_host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        Ok(QrsReader {
            inner: Arc::new(Inner {
                alias: site.alias.clone(),
                base: format!("https://{url_host}:{}", site.port),
                host,
                port: site.port,
                http,
                user: user_header,
                tls: TlsMode::of(site),
                request_timeout: Duration::from_secs(qrs.request_timeout_seconds.max(1)),
                transfer_timeout: Duration::from_secs(qrs.transfer_timeout_seconds.max(1)),
                conflict_retries: qrs.conflict_retries,
            }),
        })
    }

    /// The site's alias.
    pub fn alias(&self) -> &str {
        &self.inner.alias
    }

    /// `https://host:port`.
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// Host name as configured.
    pub fn host(&self) -> &str {
        &self.inner.host
    }

    /// Port.
    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// How the server certificate is checked.
    pub fn tls_mode(&self) -> &TlsMode {
        &self.inner.tls
    }

    /// Sends one request (fresh xrfkey, user header, timeout) and fails on a non-2xx status.
    /// `pq` is an encoded `path?query` (see [`qrs_path`]) without the xrfkey.
    pub(super) async fn send(
        &self,
        method: Method,
        pq: &str,
        body: ReqBody,
        transfer: bool,
    ) -> Result<reqwest::Response, QrsError> {
        let inner = &self.inner;
        let key = new_xrfkey();
        let sep = if pq.contains('?') { '&' } else { '?' };
        let url = format!("{}{pq}{sep}xrfkey={key}", inner.base);
        let shown = display_path(pq);
        let timeout = if transfer {
            inner.transfer_timeout
        } else {
            inner.request_timeout
        };
        let mut rb = inner
            .http
            .request(method.clone(), url)
            .header("X-Qlik-Xrfkey", &key)
            .header("X-Qlik-User", inner.user.clone())
            .timeout(timeout);
        let has_body = method == Method::POST || method == Method::PUT;
        rb = match body {
            ReqBody::Empty if has_body => rb.body(Vec::new()),
            ReqBody::Empty => rb,
            ReqBody::Json(bytes) => rb
                .header(CONTENT_TYPE, "application/json; charset=utf-8")
                .body(bytes),
            ReqBody::Qvf(body, len) => {
                let rb = rb.header(CONTENT_TYPE, QVF_CONTENT_TYPE);
                match len {
                    Some(n) => rb.header(CONTENT_LENGTH, n).body(body),
                    None => rb.body(body),
                }
            }
        };
        let started = Instant::now();
        let resp = match rb.send().await {
            Ok(r) => r,
            Err(e) => {
                let err = QrsError::from_reqwest(&inner.alias, method.as_str(), &shown, e);
                tracing::debug!(site = %inner.alias, %method, path = %shown, error = %err, "QRS call failed");
                return Err(err);
            }
        };
        let status = resp.status();
        tracing::debug!(
            site = %inner.alias,
            %method,
            path = %shown,
            status = status.as_u16(),
            ms = started.elapsed().as_millis() as u64,
            "QRS call"
        );
        if status.is_success() {
            return Ok(resp);
        }
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = read_limited(resp, 4096).await;
        Err(QrsError::status(
            &inner.alias,
            method.as_str(),
            &shown,
            status.as_u16(),
            &body,
            retry_after,
        ))
    }

    /// Sends a request and decodes a JSON answer.
    pub(super) async fn call_json<T: DeserializeOwned>(
        &self,
        method: Method,
        pq: &str,
        body: ReqBody,
    ) -> Result<T, QrsError> {
        self.call_json_timed(method, pq, body, false).await
    }

    /// [`Self::call_json`], with the transfer timeout when `long` (export, copy, replace and
    /// upload can take minutes for big apps).
    pub(super) async fn call_json_timed<T: DeserializeOwned>(
        &self,
        method: Method,
        pq: &str,
        body: ReqBody,
        long: bool,
    ) -> Result<T, QrsError> {
        let resp = self.send(method.clone(), pq, body, long).await?;
        let bytes = resp.bytes().await.map_err(|e| {
            QrsError::from_reqwest(&self.inner.alias, method.as_str(), &display_path(pq), e)
        })?;
        serde_json::from_slice(&bytes).map_err(|e| {
            QrsError::new(
                &self.inner.alias,
                method.as_str(),
                display_path(pq),
                QrsErrorKind::Decode(format!(
                    "{e} in {}",
                    super::error::trim_body(&String::from_utf8_lossy(&bytes))
                )),
            )
        })
    }

    /// Sends a request whose answer body is not needed.
    pub(super) async fn call_empty(
        &self,
        method: Method,
        pq: &str,
        body: ReqBody,
    ) -> Result<(), QrsError> {
        let resp = self.send(method, pq, body, false).await?;
        // Drain so the connection goes back to the pool.
        let _ = resp.bytes().await;
        Ok(())
    }

    fn json_body<B: Serialize>(
        &self,
        method: &Method,
        pq: &str,
        b: &B,
    ) -> Result<ReqBody, QrsError> {
        serde_json::to_vec(b).map(ReqBody::Json).map_err(|e| {
            QrsError::new(
                &self.inner.alias,
                method.as_str(),
                display_path(pq),
                QrsErrorKind::Decode(format!("cannot encode the request body: {e}")),
            )
        })
    }

    /// Any GET, decoded as JSON: `get_json(&["qrs", "app", "count"], &[("filter", f)])`.
    /// Segments and values are raw; they are encoded here.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<T, QrsError> {
        self.call_json(Method::GET, &qrs_path(segments, query), ReqBody::Empty)
            .await
    }

    async fn list<T: DeserializeOwned>(
        &self,
        kind: &str,
        filter: Option<&Filter>,
    ) -> Result<Vec<T>, QrsError> {
        match filter {
            Some(f) => {
                self.get_json(&["qrs", kind, "full"], &[("filter", f.as_str())])
                    .await
            }
            None => self.get_json(&["qrs", kind, "full"], &[]).await,
        }
    }

    /// `GET /qrs/about`: version and node type; the health probe.
    pub async fn about(&self) -> Result<About, QrsError> {
        self.get_json(&["qrs", "about"], &[]).await
    }

    /// `GET /qrs/app/{id}`. A missing app is a 404 error ([`QrsError::is_not_found`]).
    pub async fn get_app(&self, id: &str) -> Result<App, QrsError> {
        self.get_json(&["qrs", "app", id], &[]).await
    }

    /// `GET /qrs/app/{id}`, or `None` on 404.
    pub async fn find_app(&self, id: &str) -> Result<Option<App>, QrsError> {
        match self.get_app(id).await {
            Ok(a) => Ok(Some(a)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /qrs/app/{id}` as raw JSON (every property, for a complete PUT).
    pub async fn get_app_json(&self, id: &str) -> Result<Value, QrsError> {
        self.get_json(&["qrs", "app", id], &[]).await
    }

    /// `GET /qrs/app/full[?filter=...]`.
    pub async fn apps(&self, filter: Option<&Filter>) -> Result<Vec<App>, QrsError> {
        self.list("app", filter).await
    }

    /// `GET /qrs/stream/{id}`.
    pub async fn get_stream(&self, id: &str) -> Result<Stream, QrsError> {
        self.get_json(&["qrs", "stream", id], &[]).await
    }

    /// `GET /qrs/stream/full[?filter=...]`.
    pub async fn streams(&self, filter: Option<&Filter>) -> Result<Vec<Stream>, QrsError> {
        self.list("stream", filter).await
    }

    /// Streams with exactly this name (QRS compares case-insensitively; names need not be unique).
    pub async fn streams_named(&self, name: &str) -> Result<Vec<Stream>, QrsError> {
        self.streams(Some(&Filter::eq("name", name))).await
    }

    /// `GET /qrs/user/{id}` (with attributes, for the e-mail address).
    pub async fn get_user(&self, id: &str) -> Result<User, QrsError> {
        self.get_json(&["qrs", "user", id], &[]).await
    }

    /// `GET /qrs/user/full[?filter=...]`.
    pub async fn users(&self, filter: Option<&Filter>) -> Result<Vec<User>, QrsError> {
        self.list("user", filter).await
    }

    /// `GET /qrs/tag/full[?filter=...]`.
    pub async fn tags(&self, filter: Option<&Filter>) -> Result<Vec<Tag>, QrsError> {
        self.list("tag", filter).await
    }

    /// The tag with this name, if it exists.
    pub async fn find_tag(&self, name: &str) -> Result<Option<Tag>, QrsError> {
        Ok(self
            .tags(Some(&Filter::eq("name", name)))
            .await?
            .into_iter()
            .next())
    }

    /// `GET /qrs/custompropertydefinition/full[?filter=...]`.
    pub async fn custom_property_definitions(
        &self,
        filter: Option<&Filter>,
    ) -> Result<Vec<CustomPropertyDefinition>, QrsError> {
        self.list("custompropertydefinition", filter).await
    }

    /// The custom property definition with this name, if it exists.
    pub async fn find_custom_property_definition(
        &self,
        name: &str,
    ) -> Result<Option<CustomPropertyDefinition>, QrsError> {
        Ok(self
            .custom_property_definitions(Some(&Filter::eq("name", name)))
            .await?
            .into_iter()
            .next())
    }

    /// Exports an app (fresh token, `POST /qrs/app/{id}/export/{token}`) and opens its
    /// one-time download. The returned download streams; nothing is buffered.
    pub async fn export_app(&self, id: &str, skip_data: bool) -> Result<AppDownload, QrsError> {
        let token = uuid::Uuid::new_v4().to_string();
        let query: &[(&str, &str)] = if skip_data {
            &[("skipData", "true")]
        } else {
            &[]
        };
        let pq = qrs_path(&["qrs", "app", id, "export", &token], query);
        let export: ExportResponse = self
            .call_json_timed(Method::POST, &pq, ReqBody::Empty, true)
            .await?;
        let path = export.download_path.trim();
        if path.is_empty() {
            return Err(QrsError::new(
                self.alias(),
                "POST",
                display_path(&pq),
                QrsErrorKind::Decode("the export answer has no downloadPath".into()),
            ));
        }
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        let resp = self.send(Method::GET, &path, ReqBody::Empty, true).await?;
        Ok(AppDownload::new(
            export,
            resp,
            self.alias().to_string(),
            display_path(&path),
        ))
    }

    /// Exports an app and writes it to `path` (streamed). Returns the number of bytes.
    pub async fn download_app_to_file(
        &self,
        id: &str,
        skip_data: bool,
        path: &std::path::Path,
        progress: Option<Progress>,
    ) -> Result<u64, QrsError> {
        self.export_app(id, skip_data)
            .await?
            .save_to_file(path, progress)
            .await
    }
}

/// Reads at most `limit` bytes of an error body.
async fn read_limited(mut resp: reqwest::Response, limit: usize) -> String {
    let mut buf = Vec::new();
    while buf.len() < limit {
        match resp.chunk().await {
            Ok(Some(c)) => buf.extend_from_slice(&c),
            _ => break,
        }
    }
    buf.truncate(limit);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Full access to one site: everything a [`QrsReader`] does (through `Deref`) plus the writes.
#[derive(Clone, Debug)]
pub struct QrsClient {
    reader: QrsReader,
}

impl Deref for QrsClient {
    type Target = QrsReader;
    fn deref(&self) -> &QrsReader {
        &self.reader
    }
}

impl QrsClient {
    /// Builds the client for a site (see [`QrsReader::new`]).
    pub fn new(site: &SiteSettings, qrs: &QrsSettings) -> Result<QrsClient, QrsError> {
        Ok(QrsClient {
            reader: QrsReader::new(site, qrs)?,
        })
    }

    /// The read-only half, sharing the same connection pool.
    pub fn reader(&self) -> QrsReader {
        self.reader.clone()
    }

    async fn write_json<T: DeserializeOwned>(
        &self,
        method: Method,
        pq: &str,
        long: bool,
    ) -> Result<T, QrsError> {
        self.reader
            .call_json_timed(method, pq, ReqBody::Empty, long)
            .await
    }

    /// `PUT /qrs/app/{id}/publish?stream={streamId}[&name=...]` (only unpublished apps).
    pub async fn publish_app(
        &self,
        id: &str,
        stream_id: &str,
        name: Option<&str>,
    ) -> Result<App, QrsError> {
        let mut q = vec![("stream", stream_id)];
        if let Some(n) = name {
            q.push(("name", n));
        }
        self.write_json(
            Method::PUT,
            &qrs_path(&["qrs", "app", id, "publish"], &q),
            false,
        )
        .await
    }

    /// `PUT /qrs/app/{source}/replace?app={target}`: the target keeps its id and stream and
    /// gets the source's content. The source is not removed.
    pub async fn replace_app(&self, source_id: &str, target_id: &str) -> Result<App, QrsError> {
        self.write_json(
            Method::PUT,
            &qrs_path(&["qrs", "app", source_id, "replace"], &[("app", target_id)]),
            true,
        )
        .await
    }

    /// `POST /qrs/app/{id}/copy[?name=...]`: an unpublished copy owned by the calling user.
    pub async fn copy_app(&self, id: &str, name: Option<&str>) -> Result<App, QrsError> {
        let q: Vec<(&str, &str)> = name.map(|n| ("name", n)).into_iter().collect();
        self.write_json(
            Method::POST,
            &qrs_path(&["qrs", "app", id, "copy"], &q),
            true,
        )
        .await
    }

    /// `DELETE /qrs/app/{id}`.
    pub async fn delete_app(&self, id: &str) -> Result<(), QrsError> {
        self.reader
            .call_empty(
                Method::DELETE,
                &qrs_path(&["qrs", "app", id], &[]),
                ReqBody::Empty,
            )
            .await
    }

    /// `POST /qrs/app/{id}/reload`: an ad-hoc reload (updates `lastReloadTime`).
    pub async fn reload_app(&self, id: &str) -> Result<(), QrsError> {
        self.reader
            .call_empty(
                Method::POST,
                &qrs_path(&["qrs", "app", id, "reload"], &[]),
                ReqBody::Empty,
            )
            .await
    }

    /// `POST /qrs/app/upload?name=...` with a streamed QVF body (`Content-Length` sent when
    /// known, chunked otherwise). The new app is unpublished and owned by the calling user.
    pub async fn upload_app_stream<S>(
        &self,
        name: &str,
        stream: S,
        content_length: Option<u64>,
    ) -> Result<App, QrsError>
    where
        S: TryStream + Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        Bytes: From<S::Ok>,
    {
        let pq = qrs_path(&["qrs", "app", "upload"], &[("name", name)]);
        let body = ReqBody::Qvf(reqwest::Body::wrap_stream(stream), content_length);
        let resp = self.reader.send(Method::POST, &pq, body, true).await?;
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| QrsError::from_reqwest(self.alias(), "POST", &display_path(&pq), e))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            QrsError::new(
                self.alias(),
                "POST",
                display_path(&pq),
                QrsErrorKind::Decode(e.to_string()),
            )
        })
    }

    /// Uploads a QVF file (streamed from disk).
    pub async fn upload_app_from_file(
        &self,
        name: &str,
        path: &std::path::Path,
        progress: Option<Progress>,
    ) -> Result<App, QrsError> {
        super::transfer::upload_from_file(self, name, path, progress).await
    }

    /// Reads the app, applies `edit` to its full JSON and PUTs it back with the
    /// `modifiedDate` that was read (`id` and `modifiedDate` are restored if `edit` touched
    /// them). On 409 Conflict (someone changed the app in between) it re-reads and re-applies,
    /// up to `conflict_retries` times. If `edit` changes nothing, nothing is written and the
    /// app as read is returned.
    pub async fn update_app<F>(&self, id: &str, mut edit: F) -> Result<App, QrsError>
    where
        F: FnMut(&mut Value),
    {
        let pq = qrs_path(&["qrs", "app", id], &[]);
        let mut conflicts = 0u32;
        loop {
            let current: Value = self
                .reader
                .call_json(Method::GET, &pq, ReqBody::Empty)
                .await?;
            let mut next = current.clone();
            edit(&mut next);
            if next == current {
                return serde_json::from_value(current).map_err(|e| {
                    QrsError::new(
                        self.alias(),
                        "GET",
                        display_path(&pq),
                        QrsErrorKind::Decode(e.to_string()),
                    )
                });
            }
            if let (Some(obj), Some(cur)) = (next.as_object_mut(), current.as_object()) {
                for key in ["id", "modifiedDate"] {
                    match cur.get(key) {
                        Some(v) => obj.insert(key.into(), v.clone()),
                        None => obj.remove(key),
                    };
                }
            }
            let body = self.reader.json_body(&Method::PUT, &pq, &next)?;
            match self.reader.call_json(Method::PUT, &pq, body).await {
                Ok(app) => return Ok(app),
                Err(e) if e.is_conflict() && conflicts < self.reader.inner.conflict_retries => {
                    conflicts += 1;
                    tracing::debug!(site = %self.alias(), app = id, conflicts, "409 Conflict on update; re-reading and re-applying");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Removes every value of the named custom properties (no write if none is set).
    pub async fn strip_app_properties(&self, id: &str, names: &[&str]) -> Result<App, QrsError> {
        self.update_app(id, |app| {
            super::edit::strip_properties(app, names);
        })
        .await
    }

    /// Sets the values of one custom property (replacing its previous values).
    pub async fn set_app_property_values(
        &self,
        id: &str,
        definition: &DefinitionRef,
        values: &[&str],
    ) -> Result<App, QrsError> {
        self.update_app(id, |app| {
            super::edit::set_property_values(app, definition, values)
        })
        .await
    }

    /// Adds a tag to an app (no write if it is already there).
    pub async fn add_app_tag(&self, id: &str, tag: &TagRef) -> Result<App, QrsError> {
        self.update_app(id, |app| {
            super::edit::add_tag(app, tag);
        })
        .await
    }

    /// Removes the tag with this name from an app (no write if it is not there).
    pub async fn remove_app_tag(&self, id: &str, tag_name: &str) -> Result<App, QrsError> {
        self.update_app(id, |app| {
            super::edit::remove_tag(app, tag_name);
        })
        .await
    }

    /// Sets an app's description.
    pub async fn set_app_description(&self, id: &str, text: &str) -> Result<App, QrsError> {
        self.update_app(id, |app| super::edit::set_description(app, text))
            .await
    }

    /// Sets an app's owner (by user id).
    pub async fn set_app_owner(&self, id: &str, user_id: &str) -> Result<App, QrsError> {
        self.update_app(id, |app| {
            let same = app
                .pointer("/owner/id")
                .and_then(Value::as_str)
                .is_some_and(|o| o.eq_ignore_ascii_case(user_id));
            if !same {
                super::edit::set_owner(app, user_id)
            }
        })
        .await
    }

    /// `POST /qrs/tag` with `{"name": ...}`.
    pub async fn create_tag(&self, name: &str) -> Result<Tag, QrsError> {
        let pq = qrs_path(&["qrs", "tag"], &[]);
        let body =
            self.reader
                .json_body(&Method::POST, &pq, &serde_json::json!({ "name": name }))?;
        self.reader.call_json(Method::POST, &pq, body).await
    }

    /// The tag with this name, created if missing.
    pub async fn find_or_create_tag(&self, name: &str) -> Result<Tag, QrsError> {
        match self.find_tag(name).await? {
            Some(t) => Ok(t),
            None => self.create_tag(name).await,
        }
    }

    /// `POST /qrs/notification?name=...&changetype=...&propertyName=...&filter=...` with the
    /// callback URL as a JSON string. Returns the subscription handle.
    pub async fn subscribe(
        &self,
        spec: &NotificationSpec,
        callback_url: &str,
    ) -> Result<String, QrsError> {
        let mut q: Vec<(&str, &str)> = vec![("name", spec.object_type.as_str())];
        if let Some(t) = spec.change_type {
            q.push(("changetype", t.name()));
        }
        if let Some(p) = &spec.property_name {
            q.push(("propertyName", p));
        }
        if let Some(f) = &spec.filter {
            q.push(("filter", f.as_str()));
        }
        if let Some(id) = &spec.id {
            q.push(("id", id));
        }
        let pq = qrs_path(&["qrs", "notification"], &q);
        let body = self.reader.json_body(&Method::POST, &pq, &callback_url)?;
        let handle: ValueOrBare<String> = self.reader.call_json(Method::POST, &pq, body).await?;
        Ok(handle.into_inner())
    }

    /// `DELETE /qrs/notification?handle=...`. Returns `false` if QRS did not know the handle
    /// (404, e.g. after a restart).
    pub async fn unsubscribe(&self, handle: &str) -> Result<bool, QrsError> {
        let pq = qrs_path(&["qrs", "notification"], &[("handle", handle)]);
        match self
            .reader
            .call_empty(Method::DELETE, &pq, ReqBody::Empty)
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// One client per configured site, built once and shared.
#[derive(Clone, Debug)]
pub struct QrsSites {
    local: QrsClient,
    remotes: Vec<QrsClient>,
}

impl QrsSites {
    /// Builds a client for every site in the settings.
    pub fn from_settings(settings: &crate::config::Settings) -> Result<QrsSites, QrsError> {
        Ok(QrsSites {
            local: QrsClient::new(&settings.local, &settings.qrs)?,
            remotes: settings
                .remotes
                .iter()
                .map(|r| QrsClient::new(r, &settings.qrs))
                .collect::<Result<_, _>>()?,
        })
    }

    /// The local (source) site.
    pub fn local(&self) -> &QrsClient {
        &self.local
    }

    /// The remote sites, in configuration order.
    pub fn remotes(&self) -> &[QrsClient] {
        &self.remotes
    }

    /// The remote site with this alias (case-insensitive, trimmed).
    pub fn remote(&self, alias: &str) -> Option<&QrsClient> {
        let a = alias.trim().to_lowercase();
        self.remotes
            .iter()
            .find(|c| c.alias().trim().to_lowercase() == a)
    }

    /// Any site with this alias.
    pub fn site(&self, alias: &str) -> Option<&QrsClient> {
        let a = alias.trim().to_lowercase();
        if self.local.alias().trim().to_lowercase() == a {
            Some(&self.local)
        } else {
            self.remote(alias)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xrfkeys_are_fresh_16_alphanumerics() {
        let a = new_xrfkey();
        let b = new_xrfkey();
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn paths_encode_segments_and_values() {
        assert_eq!(
            qrs_path(&["qrs", "app", "a/b?c#d"], &[("name", "O'Brien & Co + 1")]),
            "/qrs/app/a%2Fb%3Fc%23d?name=O%27Brien%20%26%20Co%20%2B%201"
        );
        assert_eq!(
            qrs_path(
                &["qrs", "app", "full"],
                &[("filter", Filter::eq("name", "été").as_str())]
            ),
            "/qrs/app/full?filter=name%20eq%20%27%C3%A9t%C3%A9%27"
        );
        assert_eq!(
            display_path("/qrs/app/full?filter=name%20eq%20%27x%27"),
            "/qrs/app/full?filter=name eq 'x'"
        );
    }
}
