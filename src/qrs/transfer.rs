//! App transfers that never hold a whole app in memory: export download as a stream, to a
//! file, from a file, and straight from one site's download into another site's upload.

use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use tokio::io::AsyncWriteExt;
use tokio_util::io::ReaderStream;

use super::client::{QrsClient, QrsReader};
use super::error::{QrsError, QrsErrorKind};
use super::models::{App, ExportResponse};

/// Progress callback: `(bytes so far, total bytes when known)`. Called often; keep it cheap.
pub type Progress = Arc<dyn Fn(u64, Option<u64>) + Send + Sync>;

/// Buffer size for file reads and writes.
const FILE_BUF: usize = 256 * 1024;

/// An export whose download has started. Consume it with [`AppDownload::into_stream`],
/// [`AppDownload::save_to_file`] or [`transfer`]; it can be read only once.
pub struct AppDownload {
    export: ExportResponse,
    response: reqwest::Response,
    site: String,
    path: String,
}

impl std::fmt::Debug for AppDownload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppDownload")
            .field("site", &self.site)
            .field("app_id", &self.export.app_id)
            .field("content_length", &self.content_length())
            .finish()
    }
}

impl AppDownload {
    pub(crate) fn new(
        export: ExportResponse,
        response: reqwest::Response,
        site: String,
        path: String,
    ) -> Self {
        AppDownload {
            export,
            response,
            site,
            path,
        }
    }

    /// The export answer (token, app id, download path).
    pub fn export(&self) -> &ExportResponse {
        &self.export
    }

    /// The size in bytes, when QRS sent `Content-Length`.
    pub fn content_length(&self) -> Option<u64> {
        self.response.content_length()
    }

    /// The QVF bytes as they arrive. A failure mid-way is a retryable transport error.
    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, QrsError>> + Send + 'static {
        let site = self.site;
        let path = self.path;
        self.response
            .bytes_stream()
            .map_err(move |e| QrsError::from_reqwest(&site, "GET", &path, e))
    }

    /// Writes the download to `path` (created or truncated; removed again on failure).
    /// Returns the number of bytes written.
    pub async fn save_to_file(
        self,
        path: &Path,
        progress: Option<Progress>,
    ) -> Result<u64, QrsError> {
        let site = self.site.clone();
        let url_path = self.path.clone();
        let total = self.content_length();
        let io_err = |source: std::io::Error| {
            QrsError::new(
                &site,
                "GET",
                &url_path,
                QrsErrorKind::Io {
                    path: path.to_path_buf(),
                    source,
                },
            )
        };
        let file = tokio::fs::File::create(path).await.map_err(io_err)?;
        let mut out = tokio::io::BufWriter::with_capacity(FILE_BUF, file);
        let mut stream = std::pin::pin!(self.into_stream());
        let mut done = 0u64;
        let result: Result<(), QrsError> = async {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                out.write_all(&chunk).await.map_err(io_err)?;
                done += chunk.len() as u64;
                if let Some(p) = &progress {
                    p(done, total);
                }
            }
            out.flush().await.map_err(io_err)?;
            out.get_mut().sync_all().await.map_err(io_err)?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            drop(out);
            let _ = tokio::fs::remove_file(path).await;
            return Err(e);
        }
        Ok(done)
    }
}

/// Counts bytes through a stream and reports progress.
fn with_progress<S, E>(
    stream: S,
    total: Option<u64>,
    progress: Option<Progress>,
) -> impl Stream<Item = Result<Bytes, E>> + Send + 'static
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
{
    let mut done = 0u64;
    stream.inspect(move |item| {
        if let (Ok(b), Some(p)) = (item, &progress) {
            done += b.len() as u64;
            p(done, total);
        }
    })
}

/// Uploads a QVF file to a site, streamed from disk with a known length.
pub async fn upload_from_file(
    to: &QrsClient,
    name: &str,
    path: &Path,
    progress: Option<Progress>,
) -> Result<App, QrsError> {
    let io_err = |source: std::io::Error| {
        QrsError::new(
            to.alias(),
            "POST",
            "/qrs/app/upload",
            QrsErrorKind::Io {
                path: path.to_path_buf(),
                source,
            },
        )
    };
    let file = tokio::fs::File::open(path).await.map_err(io_err)?;
    let len = file.metadata().await.map_err(io_err)?.len();
    let stream = with_progress(
        ReaderStream::with_capacity(file, FILE_BUF),
        Some(len),
        progress,
    );
    to.upload_app_stream(name, stream, Some(len)).await
}

/// Exports `app_id` from one site and uploads it to another as `name`, streaming the
/// download straight into the upload (memory use does not grow with the app's size).
///
/// If the download fails mid-way, the error returned is the download's, wrapped as
/// [`QrsErrorKind::Upstream`] (retryable when the download error is).
pub async fn transfer(
    from: &QrsReader,
    app_id: &str,
    skip_data: bool,
    to: &QrsClient,
    name: &str,
    progress: Option<Progress>,
) -> Result<App, QrsError> {
    let download = from.export_app(app_id, skip_data).await?;
    let total = download.content_length();
    let failed: Arc<Mutex<Option<QrsError>>> = Arc::new(Mutex::new(None));
    let slot = failed.clone();
    let stream = with_progress(download.into_stream(), total, progress).map_err(move |e| {
        let msg = e.to_string();
        if let Ok(mut s) = slot.lock() {
            *s = Some(e);
        }
        std::io::Error::other(msg)
    });
    // Boxed: callers nest this deep inside their own futures.
    match Box::pin(to.upload_app_stream(name, stream, total)).await {
        Ok(app) => Ok(app),
        Err(up) => {
            let down = failed.lock().ok().and_then(|mut s| s.take());
            match down {
                Some(d) => Err(QrsError::new(
                    up.site(),
                    up.method(),
                    up.path(),
                    QrsErrorKind::Upstream(d),
                )),
                None => Err(up),
            }
        }
    }
}
