//! `promoter check`: `GET /qrs/about` on every site at once, a table of the results, and for
//! every failure a hint a Qlik administrator can act on.
//!
//! Failures are classified by walking the error chain (rustls errors, I/O error kinds, HTTP
//! statuses); see [`classify`].

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use rustls::{AlertDescription, CertificateError};

use crate::config::{Settings, SiteSettings};
use crate::qrs::{QrsError, QrsErrorKind, QrsReader, TlsMode};

/// What went wrong with one site, as far as can be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Certificate files missing or unusable (the message names the file).
    Setup,
    /// The server did not accept Promoter's client certificate.
    ClientCertRejected,
    /// The server certificate was issued to other names (those it presents, when known).
    ServerNameMismatch {
        /// Names found in the server certificate.
        presented: Vec<String>,
    },
    /// The server certificate is not signed by the configured `root.pem`.
    UnknownIssuer,
    /// Another certificate problem (expired, not yet valid, ...).
    BadServerCertificate,
    /// The connection was refused: nothing listens on the port.
    Refused,
    /// No answer in time (firewall, host down).
    Timeout,
    /// The host name does not resolve.
    UnknownHost,
    /// The connection was closed during the handshake (often a refused client certificate).
    ClosedDuringHandshake,
    /// 401/403: the user directory or user is wrong or lacks rights.
    UserRejected,
    /// Another HTTP status.
    Status(u16),
    /// Anything else.
    Other,
}

/// The outcome for one site.
#[derive(Debug, Clone)]
pub struct SiteReport {
    /// Site alias.
    pub alias: String,
    /// `local` or `remote`.
    pub role: &'static str,
    /// `host:port`.
    pub endpoint: String,
    /// How the server certificate is checked.
    pub tls: TlsMode,
    /// QRS build version, when it answered.
    pub version: Option<String>,
    /// Time for `GET /qrs/about` (the first call opens the TLS connection).
    pub latency: Duration,
    /// `None` when the site answered.
    pub problem: Option<Problem>,
    /// The error, as one sentence.
    pub error: Option<String>,
    /// What to do about it.
    pub hint: Option<String>,
}

impl SiteReport {
    /// Whether the site answered.
    pub fn ok(&self) -> bool {
        self.problem.is_none()
    }
}

/// Checks every configured site concurrently (local first in the result).
pub async fn check_sites(settings: &Settings) -> Vec<SiteReport> {
    let futures = settings.sites().enumerate().map(|(i, site)| {
        let role = if i == 0 { "local" } else { "remote" };
        check_site(site, settings, role)
    });
    futures_util::future::join_all(futures).await
}

async fn check_site(site: &SiteSettings, settings: &Settings, role: &'static str) -> SiteReport {
    let mut report = SiteReport {
        alias: site.alias.clone(),
        role,
        endpoint: format!("{}:{}", site.host, site.port),
        tls: TlsMode::of(site),
        version: None,
        latency: Duration::ZERO,
        problem: None,
        error: None,
        hint: None,
    };
    let started = Instant::now();
    let result = match QrsReader::new(site, &settings.qrs) {
        Ok(reader) => reader.about().await,
        Err(e) => Err(e),
    };
    report.latency = started.elapsed();
    match result {
        Ok(about) => {
            report.version = Some(if about.build_version.is_empty() {
                "?".into()
            } else {
                about.build_version
            });
        }
        Err(e) => {
            let problem = classify(&e);
            report.hint = Some(hint(&problem, site, settings));
            report.error = Some(e.to_string());
            report.problem = Some(problem);
        }
    }
    report
}

/// Classifies a failed call by walking its error chain.
pub fn classify(e: &QrsError) -> Problem {
    match e.kind() {
        QrsErrorKind::Setup(_) => return Problem::Setup,
        QrsErrorKind::Timeout(_) => return Problem::Timeout,
        QrsErrorKind::Status { status, body, .. } => {
            let b = body.to_lowercase();
            return match status {
                401 => Problem::UserRejected,
                403 if b.contains("certificate") => Problem::ClientCertRejected,
                403 if b.contains("xsrf") => Problem::Status(403),
                403 => Problem::UserRejected,
                s => Problem::Status(*s),
            };
        }
        _ => {}
    }
    let causes = e.causes();
    for c in &causes {
        if let Some(tls) = c.downcast_ref::<rustls::Error>() {
            return classify_tls(tls);
        }
    }
    for c in &causes {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            match io.kind() {
                ErrorKind::ConnectionRefused => return Problem::Refused,
                ErrorKind::TimedOut => return Problem::Timeout,
                ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe
                | ErrorKind::UnexpectedEof => return Problem::ClosedDuringHandshake,
                _ => {}
            }
        }
    }
    let text = causes
        .iter()
        .map(|c| c.to_string().to_lowercase())
        .collect::<Vec<_>>()
        .join(" / ");
    if text.contains("dns error")
        || text.contains("failed to lookup address")
        || text.contains("name or service not known")
        || text.contains("no such host")
    {
        Problem::UnknownHost
    } else if text.contains("connection closed before message completed")
        || text.contains("connection reset")
    {
        Problem::ClosedDuringHandshake
    } else {
        Problem::Other
    }
}

fn classify_tls(e: &rustls::Error) -> Problem {
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::NotValidForNameContext { presented, .. } => {
                Problem::ServerNameMismatch {
                    presented: presented.iter().filter_map(|p| clean_name(p)).collect(),
                }
            }
            CertificateError::NotValidForName => Problem::ServerNameMismatch {
                presented: Vec::new(),
            },
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                Problem::UnknownIssuer
            }
            _ => Problem::BadServerCertificate,
        },
        rustls::Error::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateRequired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::AccessDenied
            | AlertDescription::HandshakeFailure
            | AlertDescription::DecryptError,
        ) => Problem::ClientCertRejected,
        _ => Problem::Other,
    }
}

/// `DnsName("qlik01")` -> `qlik01`, `IpAddress(10.0.0.1)` -> `10.0.0.1` (webpki's Debug form).
fn clean_name(presented: &str) -> Option<String> {
    let p = presented.trim();
    if let Some(rest) = p.strip_prefix("DnsName(") {
        return Some(rest.trim_end_matches(')').trim_matches('"').to_string());
    }
    if let Some(rest) = p.strip_prefix("IpAddress(") {
        return Some(rest.trim_end_matches(')').to_string());
    }
    if p.contains('(') {
        None
    } else {
        Some(p.to_string())
    }
}

/// What an administrator should do about a problem.
pub fn hint(problem: &Problem, site: &SiteSettings, settings: &Settings) -> String {
    let certs = site.certificates.display();
    let port = site.port;
    let host = &site.host;
    match problem {
        Problem::Setup => format!(
            "Export the certificates from this site's QMC (Certificates > Export, PEM format, include secret key) and copy client.pem, client_key.pem and root.pem into {certs}."
        ),
        Problem::ClientCertRejected => format!(
            "The server did not accept Promoter's client certificate. Export the certificates again from the QMC of THIS site (\"{}\", {host}) and copy client.pem and client_key.pem into {certs}; certificates exported from another site are signed by another root and are refused.",
            site.alias
        ),
        Problem::ServerNameMismatch { presented } => {
            let names = if presented.is_empty() {
                "another name".to_string()
            } else {
                presented
                    .iter()
                    .map(|n| format!("\"{n}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let suggestion = presented
                .iter()
                .find(|n| !n.starts_with('*'))
                .or(presented.first())
                .map(String::as_str)
                .unwrap_or("<name in the certificate>");
            let current = site
                .server_name
                .as_deref()
                .map(|n| format!(" (server_name is \"{n}\")"))
                .unwrap_or_default();
            format!(
                "The server certificate was issued to {names}, not to \"{host}\"{current}. Qlik often issues it to the short host name. Add server_name = \"{suggestion}\" to this site's section in {} (keep host as it is); do not turn verify_tls off.",
                settings.config_path.display()
            )
        }
        Problem::UnknownIssuer => format!(
            "The server certificate is not signed by {}. Copy root.pem from the same QMC certificate export of this site as client.pem (the export contains client.pem, client_key.pem and root.pem).",
            site.root_cert_path().display()
        ),
        Problem::BadServerCertificate => format!(
            "The server certificate of {host} is not usable (expired, not yet valid, or wrong usage). Check the certificate of the Qlik Sense Repository Service on the central node."
        ),
        Problem::Refused => format!(
            "Nothing accepts connections on {host}:{port}. Check that the Qlik Sense Repository Service is running on the central node and that port {port} is right (QRS listens on 4242)."
        ),
        Problem::Timeout => format!(
            "No answer from {host}:{port} in time. A firewall probably blocks port {port} between this machine and the central node, or the host is down."
        ),
        Problem::UnknownHost => format!(
            "The host name \"{host}\" cannot be resolved. Check the spelling, or use the central node's full DNS name."
        ),
        Problem::ClosedDuringHandshake => format!(
            "{host}:{port} closed the connection during the TLS handshake. This usually means the client certificate in {certs} was not accepted: export the certificates again from this site's QMC. Check also that {port} is the QRS port (4242) and not the proxy."
        ),
        Problem::UserRejected => {
            let (dir, user) = site.user_parts();
            format!(
                "QRS refused the user {dir}\\{user}. Check user = \"DIRECTORY\\userid\" for this site: the user directory and user id must exist on the site with administrator rights (for example INTERNAL\\sa_api)."
            )
        }
        Problem::Status(s) if *s >= 500 => format!(
            "QRS answered with a server error ({s}). Check the Repository Service logs on {host}; try again when it is up."
        ),
        Problem::Status(s) => format!(
            "QRS answered {s}. Check that {host}:{port} is the Qlik Sense Repository Service (port 4242)."
        ),
        Problem::Other => format!(
            "Check that {host}:{port} is the Qlik Sense Repository Service of this site and that the certificates in {certs} come from its QMC."
        ),
    }
}

fn problem_label(p: &Problem) -> String {
    match p {
        Problem::Setup => "certificate files".into(),
        Problem::ClientCertRejected => "client certificate refused".into(),
        Problem::ServerNameMismatch { .. } => "server certificate name".into(),
        Problem::UnknownIssuer => "server certificate not from root.pem".into(),
        Problem::BadServerCertificate => "server certificate invalid".into(),
        Problem::Refused => "connection refused".into(),
        Problem::Timeout => "timeout".into(),
        Problem::UnknownHost => "unknown host".into(),
        Problem::ClosedDuringHandshake => "closed during handshake".into(),
        Problem::UserRejected => "user refused".into(),
        Problem::Status(s) => format!("HTTP {s}"),
        Problem::Other => "failed".into(),
    }
}

/// Renders the table and the hints.
pub fn render(reports: &[SiteReport]) -> String {
    let header = [
        "SITE", "ROLE", "ADDRESS", "VERSION", "LATENCY", "TLS", "STATUS",
    ];
    let rows: Vec<[String; 7]> = reports
        .iter()
        .map(|r| {
            [
                r.alias.clone(),
                r.role.to_string(),
                r.endpoint.clone(),
                r.version.clone().unwrap_or_else(|| "-".into()),
                format!("{} ms", r.latency.as_millis()),
                r.tls.to_string(),
                match &r.problem {
                    None => "OK".into(),
                    Some(p) => format!("FAILED: {}", problem_label(p)),
                },
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(c);
                s.push_str(&" ".repeat(w - c.chars().count() + 2));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    for r in reports.iter().filter(|r| !r.ok()) {
        out.push('\n');
        out.push_str(&format!("{} ({}):\n", r.alias, r.endpoint));
        if let Some(e) = &r.error {
            out.push_str(&format!("  error: {e}\n"));
        }
        if let Some(h) = &r.hint {
            out.push_str(&format!("  hint:  {h}\n"));
        }
    }
    out
}

/// Connects to every site and prints a table. Returns whether every site answered.
pub async fn run(settings: &Settings) -> anyhow::Result<bool> {
    let reports = Box::pin(check_sites(settings)).await;
    print!("{}", render(&reports));
    let ok = reports.iter().all(SiteReport::ok);
    if ok {
        println!("\nAll {} sites answered.", reports.len());
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presented_names_are_cleaned() {
        assert_eq!(clean_name("DnsName(\"qlik01\")").as_deref(), Some("qlik01"));
        assert_eq!(
            clean_name("IpAddress(10.0.0.1)").as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(clean_name("DirectoryName"), Some("DirectoryName".into()));
        assert_eq!(clean_name("Unsupported(0x01)"), None);
    }

    #[test]
    fn statuses_are_classified() {
        let s = |code, body: &str| {
            QrsError::new(
                "x",
                "GET",
                "/qrs/about",
                QrsErrorKind::Status {
                    status: code,
                    body: body.into(),
                    retry_after: None,
                },
            )
        };
        assert_eq!(classify(&s(401, "")), Problem::UserRejected);
        assert_eq!(classify(&s(403, "Forbidden")), Problem::UserRejected);
        assert_eq!(
            classify(&s(403, "Client certificate not trusted")),
            Problem::ClientCertRejected
        );
        assert_eq!(
            classify(&s(403, "XSRF prevention check failed")),
            Problem::Status(403)
        );
        assert_eq!(classify(&s(503, "")), Problem::Status(503));
        assert_eq!(
            classify(&QrsError::new(
                "x",
                "CONNECT",
                "/",
                QrsErrorKind::Setup("no file".into())
            )),
            Problem::Setup
        );
    }

    #[test]
    fn tls_errors_are_classified() {
        assert_eq!(
            classify_tls(&rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            )),
            Problem::UnknownIssuer
        );
        assert_eq!(
            classify_tls(&rustls::Error::AlertReceived(
                AlertDescription::CertificateRequired
            )),
            Problem::ClientCertRejected
        );
        assert_eq!(
            classify_tls(&rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName
            )),
            Problem::ServerNameMismatch { presented: vec![] }
        );
    }
}
