//! [`QrsError`]: what failed (site, method, path without the xrfkey), why, and whether it is
//! worth retrying.

use std::error::Error as StdError;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// How many characters of an error body are kept.
const MAX_BODY_CHARS: usize = 500;

/// An error from a QRS call. Cheap to move (boxed).
///
/// `Display` is one self-contained sentence for an administrator, including the underlying
/// cause; [`QrsError::causes`] walks the underlying error chain for classification.
pub struct QrsError(Box<Inner>);

struct Inner {
    site: String,
    method: String,
    path: String,
    kind: QrsErrorKind,
}

/// Why a QRS call failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum QrsErrorKind {
    /// The client for the site could not be built (certificate files, TLS set-up).
    Setup(String),
    /// No connection could be made (refused, DNS, TLS handshake).
    Connect(reqwest::Error),
    /// The call did not finish within its timeout.
    Timeout(reqwest::Error),
    /// The connection failed after it was made (dropped mid-request or mid-response).
    Transport(reqwest::Error),
    /// QRS answered with a non-success status.
    Status {
        /// HTTP status code.
        status: u16,
        /// The body QRS sent (plain text), trimmed.
        body: String,
        /// The `Retry-After` delay, when QRS sent one in seconds.
        retry_after: Option<Duration>,
    },
    /// QRS answered 2xx but the body is not what was expected.
    Decode(String),
    /// A local file could not be read or written during a transfer.
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// An upload failed because the download feeding it failed; this is the download's error.
    Upstream(QrsError),
}

impl QrsError {
    /// Builds an error for `method path` on `site`. `path` must not contain the xrfkey.
    pub fn new(
        site: impl Into<String>,
        method: impl Into<String>,
        path: impl Into<String>,
        kind: QrsErrorKind,
    ) -> Self {
        QrsError(Box::new(Inner {
            site: site.into(),
            method: method.into(),
            path: path.into(),
            kind,
        }))
    }

    /// Classifies a reqwest error (connect, timeout, transport).
    pub(crate) fn from_reqwest(site: &str, method: &str, path: &str, e: reqwest::Error) -> Self {
        let kind = if e.is_timeout() {
            QrsErrorKind::Timeout(e)
        } else if e.is_connect() || is_tls(&e) {
            QrsErrorKind::Connect(e)
        } else {
            QrsErrorKind::Transport(e)
        };
        QrsError::new(site, method, path, kind)
    }

    /// Builds a status error; the body is trimmed.
    pub(crate) fn status(
        site: &str,
        method: &str,
        path: &str,
        status: u16,
        body: &str,
        retry_after: Option<Duration>,
    ) -> Self {
        QrsError::new(
            site,
            method,
            path,
            QrsErrorKind::Status {
                status,
                body: trim_body(body),
                retry_after,
            },
        )
    }

    /// The site alias.
    pub fn site(&self) -> &str {
        &self.0.site
    }

    /// The HTTP method (`GET`, `PUT`, ...).
    pub fn method(&self) -> &str {
        &self.0.method
    }

    /// The path and query, decoded for reading, without the xrfkey.
    pub fn path(&self) -> &str {
        &self.0.path
    }

    /// What went wrong.
    pub fn kind(&self) -> &QrsErrorKind {
        &self.0.kind
    }

    /// The HTTP status, when QRS answered (for [`QrsErrorKind::Upstream`], the download's).
    pub fn status_code(&self) -> Option<u16> {
        match &self.0.kind {
            QrsErrorKind::Status { status, .. } => Some(*status),
            QrsErrorKind::Upstream(e) => e.status_code(),
            _ => None,
        }
    }

    /// The (trimmed) body QRS sent with an error status.
    pub fn body(&self) -> Option<&str> {
        match &self.0.kind {
            QrsErrorKind::Status { body, .. } => Some(body),
            QrsErrorKind::Upstream(e) => e.body(),
            _ => None,
        }
    }

    /// 404 Not Found.
    pub fn is_not_found(&self) -> bool {
        self.status_code() == Some(404)
    }

    /// 409 Conflict (stale `modifiedDate`).
    pub fn is_conflict(&self) -> bool {
        self.status_code() == Some(409)
    }

    /// Worth retrying later: connection failures (except TLS certificate problems), timeouts,
    /// dropped connections, 408, 429 and 5xx. Everything else (other 4xx, bad bodies, local
    /// files, certificates) is permanent.
    pub fn retryable(&self) -> bool {
        match &self.0.kind {
            QrsErrorKind::Setup(_) | QrsErrorKind::Decode(_) | QrsErrorKind::Io { .. } => false,
            QrsErrorKind::Connect(e) => !is_tls(e),
            QrsErrorKind::Timeout(_) => true,
            QrsErrorKind::Transport(e) => !is_tls(e),
            QrsErrorKind::Status { status, .. } => {
                *status == 408 || *status == 429 || (500..600).contains(status)
            }
            QrsErrorKind::Upstream(e) => e.retryable(),
        }
    }

    /// How long QRS asked us to wait (`Retry-After` on 429/503), if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match &self.0.kind {
            QrsErrorKind::Status { retry_after, .. } => *retry_after,
            QrsErrorKind::Upstream(e) => e.retry_after(),
            _ => None,
        }
    }

    /// The underlying errors, outermost first (the reqwest error and everything under it,
    /// looking inside `std::io::Error` wrappers too). Empty for status and decode errors.
    pub fn causes(&self) -> Vec<&(dyn StdError + 'static)> {
        match &self.0.kind {
            QrsErrorKind::Connect(e) | QrsErrorKind::Timeout(e) | QrsErrorKind::Transport(e) => {
                chain(e)
            }
            QrsErrorKind::Io { source, .. } => chain(source),
            QrsErrorKind::Upstream(e) => e.causes(),
            _ => Vec::new(),
        }
    }
}

/// Every error in the chain under `e` (including `e`), also descending into the custom
/// payload of `std::io::Error`, whose `source()` skips it.
pub(crate) fn chain<'a>(e: &'a (dyn StdError + 'static)) -> Vec<&'a (dyn StdError + 'static)> {
    let mut out: Vec<&'a (dyn StdError + 'static)> = Vec::new();
    let mut next = Some(e);
    while let Some(cur) = next {
        if out.len() > 32 {
            break;
        }
        out.push(cur);
        next = match cur.downcast_ref::<std::io::Error>() {
            Some(io) => match io.get_ref() {
                Some(inner) => Some(inner as &(dyn StdError + 'static)),
                None => cur.source(),
            },
            None => cur.source(),
        };
    }
    out
}

/// Whether a rustls error is somewhere in the chain: a certificate or handshake problem that
/// retrying will not fix.
fn is_tls(e: &reqwest::Error) -> bool {
    chain(e)
        .iter()
        .any(|c| c.downcast_ref::<rustls::Error>().is_some())
}

/// The messages of the chain, without repeats (reqwest and hyper often repeat their cause).
fn describe_chain(e: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in chain(e) {
        let s = c.to_string();
        if s.is_empty() || parts.iter().any(|p| p.contains(&s)) {
            continue;
        }
        parts.push(s);
    }
    // The URL reqwest puts in its message carries the xrfkey; it is noise anyway.
    parts
        .into_iter()
        .map(|p| strip_url(&p))
        .collect::<Vec<_>>()
        .join(": ")
}

/// Removes a `(https://...)` or `for url (...)` part from a reqwest message.
fn strip_url(s: &str) -> String {
    if let Some(i) = s.find(" for url (")
        && let Some(j) = s[i..].find(')')
    {
        return format!("{}{}", &s[..i], &s[i + j + 1..]);
    }
    if let Some(i) = s.find(" (https://")
        && let Some(j) = s[i..].find(')')
    {
        return format!("{}{}", &s[..i], &s[i + j + 1..]);
    }
    s.to_string()
}

/// Trims an error body for messages: whitespace collapsed, at most [`MAX_BODY_CHARS`].
pub(crate) fn trim_body(body: &str) -> String {
    let collapsed = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.chars().count() > MAX_BODY_CHARS {
        let cut: String = collapsed.chars().take(MAX_BODY_CHARS).collect();
        format!("{cut}...")
    } else {
        collapsed
    }
}

fn reason(status: u16) -> &'static str {
    reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

impl fmt::Display for QrsErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QrsErrorKind::Setup(m) => write!(f, "cannot set up the connection: {m}"),
            QrsErrorKind::Connect(e) => write!(f, "cannot connect: {}", describe_chain(e)),
            QrsErrorKind::Timeout(e) => write!(f, "timed out: {}", describe_chain(e)),
            QrsErrorKind::Transport(e) => {
                write!(f, "connection failed: {}", describe_chain(e))
            }
            QrsErrorKind::Status { status, body, .. } => {
                write!(f, "QRS answered {status} {}", reason(*status))?;
                if !body.is_empty() {
                    write!(f, ": {body}")?;
                }
                Ok(())
            }
            QrsErrorKind::Decode(m) => write!(f, "unexpected answer: {m}"),
            QrsErrorKind::Io { path, source } => {
                write!(f, "file {}: {}", path.display(), describe_chain(source))
            }
            QrsErrorKind::Upstream(e) => write!(f, "the download feeding it failed: {e}"),
        }
    }
}

impl fmt::Display for QrsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "site \"{}\": {} {}: {}",
            self.0.site, self.0.method, self.0.path, self.0.kind
        )
    }
}

impl fmt::Debug for QrsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QrsError")
            .field("site", &self.0.site)
            .field("method", &self.0.method)
            .field("path", &self.0.path)
            .field("kind", &self.0.kind)
            .field("retryable", &self.retryable())
            .finish()
    }
}

/// `Display` already carries the cause, so there is no `source()` (anyhow's `{:#}` would
/// print it twice). Use [`QrsError::causes`] to classify.
impl StdError for QrsError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, retry_after: Option<u64>) -> QrsError {
        QrsError::status(
            "test",
            "GET",
            "/qrs/about",
            code,
            "  some\n  body ",
            retry_after.map(Duration::from_secs),
        )
    }

    #[test]
    fn statuses_are_classified() {
        for (code, retry) in [
            (400, false),
            (401, false),
            (403, false),
            (404, false),
            (409, false),
            (408, true),
            (429, true),
            (500, true),
            (502, true),
            (503, true),
        ] {
            assert_eq!(status(code, None).retryable(), retry, "status {code}");
        }
        assert_eq!(
            status(429, Some(7)).retry_after(),
            Some(Duration::from_secs(7))
        );
        assert!(status(404, None).is_not_found());
        assert!(status(409, None).is_conflict());
    }

    #[test]
    fn display_names_site_method_path_status_and_body() {
        let s = status(403, None).to_string();
        assert_eq!(
            s,
            "site \"test\": GET /qrs/about: QRS answered 403 Forbidden: some body"
        );
    }

    #[test]
    fn upstream_errors_carry_the_download_classification() {
        let down = status(503, Some(3));
        let up = QrsError::new(
            "prod",
            "POST",
            "/qrs/app/upload?name=x",
            QrsErrorKind::Upstream(down),
        );
        assert!(up.retryable());
        assert_eq!(up.retry_after(), Some(Duration::from_secs(3)));
        assert_eq!(up.status_code(), Some(503));
        assert!(up.to_string().contains("the download feeding it failed"));
    }

    #[test]
    fn bodies_are_trimmed() {
        let long = "x".repeat(2000);
        let t = trim_body(&long);
        assert_eq!(t.chars().count(), MAX_BODY_CHARS + 3);
        assert_eq!(trim_body(" a \n b "), "a b");
    }

    #[test]
    fn local_files_and_decode_errors_are_permanent() {
        let io = QrsError::new(
            "dev",
            "GET",
            "/tempcontent/x",
            QrsErrorKind::Io {
                path: "/tmp/x.qvf".into(),
                source: std::io::Error::other("disk full"),
            },
        );
        assert!(!io.retryable());
        assert!(io.to_string().contains("/tmp/x.qvf: disk full"));
        let d = QrsError::new("dev", "GET", "/qrs/about", QrsErrorKind::Decode("x".into()));
        assert!(!d.retryable());
    }

    #[test]
    fn urls_are_removed_from_messages() {
        assert_eq!(
            strip_url("error sending request for url (https://h:4242/qrs/about?xrfkey=abc)"),
            "error sending request"
        );
    }
}
