//! The SMTP transport (lettre over rustls) and the explanation of its failures in words.

use std::time::Duration;

use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, Tokio1Executor};

use crate::config::{SmtpSecurity, SmtpSettings};

/// What an explanation needs to know about the connection (no secrets).
#[derive(Debug, Clone)]
pub(crate) struct SmtpTarget {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub auth: bool,
    pub has_root_ca: bool,
    pub timeout: Duration,
}

impl SmtpTarget {
    pub(crate) fn of(s: &SmtpSettings) -> SmtpTarget {
        SmtpTarget {
            host: s.host.trim().to_string(),
            port: s.port,
            security: s.security,
            auth: s.username.is_some(),
            has_root_ca: s.root_ca.is_some(),
            timeout: Duration::from_secs(s.timeout_seconds.max(1)),
        }
    }

    /// E.g. `SMTP smtp.company.com:587 (STARTTLS, AUTH)`.
    pub(crate) fn describe(&self) -> String {
        let sec = match self.security {
            SmtpSecurity::Starttls => "STARTTLS",
            SmtpSecurity::Tls => "implicit TLS",
            SmtpSecurity::Plain => "no encryption",
        };
        let auth = if self.auth { ", AUTH" } else { "" };
        format!("SMTP {}:{} ({sec}{auth})", self.host, self.port)
    }

    fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Builds the lettre transport from the settings.
pub(crate) fn build_transport(
    s: &SmtpSettings,
) -> anyhow::Result<AsyncSmtpTransport<Tokio1Executor>> {
    crate::tls::init();
    let target = SmtpTarget::of(s);
    if target.host.is_empty() {
        anyhow::bail!("email.smtp.host is empty; name the SMTP server");
    }
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(target.host.clone())
        .port(s.port)
        .timeout(Some(target.timeout));
    if s.security != SmtpSecurity::Plain {
        let mut params = TlsParameters::builder(target.host.clone());
        if let Some(ca) = &s.root_ca {
            let pem = std::fs::read(ca).map_err(|e| {
                anyhow::anyhow!("cannot read email.smtp.root_ca {}: {e}", ca.display())
            })?;
            let cert = Certificate::from_pem(&pem).map_err(|e| {
                anyhow::anyhow!(
                    "email.smtp.root_ca {} is not a PEM certificate: {e}",
                    ca.display()
                )
            })?;
            params = params.add_root_certificate(cert);
        }
        let params = params
            .build_rustls()
            .map_err(|e| anyhow::anyhow!("cannot set up TLS for SMTP: {e}"))?;
        builder = builder.tls(match s.security {
            SmtpSecurity::Tls => Tls::Wrapper(params),
            _ => Tls::Required(params),
        });
    }
    if let Some(user) = &s.username {
        let password = s
            .password_value
            .as_ref()
            .map(|p| p.expose().to_string())
            .unwrap_or_default();
        builder = builder.credentials(Credentials::new(user.clone(), password));
    }
    Ok(builder.build())
}

/// Explains an SMTP failure in words and says whether trying again later can help.
pub(crate) fn explain(e: &lettre::transport::smtp::Error, t: &SmtpTarget) -> (String, bool) {
    let addr = t.addr();
    let sec_hint = security_hint(t);

    // TLS problems, found anywhere in the error's chain.
    if let Some(tls) = find_rustls_error(e) {
        return (explain_tls(tls, t), false);
    }
    if let Some(io) = find_io_error(e) {
        use std::io::ErrorKind as K;
        match io.kind() {
            K::ConnectionRefused => {
                return (
                    format!(
                        "connection refused by {addr}: nothing listens on that port. Check email.smtp.host and email.smtp.port{sec_hint}"
                    ),
                    true,
                );
            }
            K::TimedOut => return (timeout_text(t), true),
            K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => {
                return (
                    format!(
                        "{addr} closed the connection unexpectedly ({io}){}",
                        if sec_hint.is_empty() {
                            ". Try again later".to_string()
                        } else {
                            sec_hint.clone()
                        }
                    ),
                    true,
                );
            }
            K::NotFound | K::AddrNotAvailable => {
                return (
                    format!("cannot resolve or reach {addr} ({io}). Check email.smtp.host"),
                    true,
                );
            }
            _ => {}
        }
        if io.to_string().contains("failed to lookup address") {
            return (
                format!(
                    "the host name \"{}\" cannot be resolved ({io}). Check email.smtp.host",
                    t.host
                ),
                true,
            );
        }
    }

    let text = e.to_string();
    if e.is_client() && text.contains("STARTTLS is not supported") {
        let hint = if t.port == 465 {
            " Port 465 usually expects TLS from the first byte: set email.smtp.security = \"tls\"."
        } else {
            " Use email.smtp.security = \"tls\" if the port expects TLS from the first byte (usually 465), or \"plain\" for a relay on a trusted network."
        };
        return (
            format!("the server at {addr} does not offer STARTTLS.{hint}"),
            false,
        );
    }
    if e.is_client() && text.contains("No compatible authentication mechanism") {
        return (
            format!(
                "the server at {addr} offers no login method Promoter can use (AUTH PLAIN or LOGIN) on this connection. Many servers offer AUTH only over TLS: use security = \"starttls\" or \"tls\", or remove email.smtp.username if the server needs no login"
            ),
            false,
        );
    }
    if let Some(code) = e.status() {
        let code = code.to_string();
        let reply = e
            .source()
            .map(|s| s.to_string())
            .unwrap_or_default()
            .replace(['\r', '\n'], " ");
        let reply = reply.trim();
        if e.is_transient() {
            return (
                format!("the server at {addr} asked to try again later ({code} {reply})"),
                true,
            );
        }
        let msg = match code.as_str() {
            "535" | "534" => format!(
                "authentication refused by {addr} ({code} {reply}). Check email.smtp.username and email.smtp.password"
            ),
            "530" if !t.auth => format!(
                "the server at {addr} requires a login ({code} {reply}). Set email.smtp.username and email.smtp.password"
            ),
            "530" | "538" => format!(
                "the server at {addr} requires encryption before login ({code} {reply}). Set email.smtp.security = \"starttls\" (port 587) or \"tls\" (port 465)"
            ),
            "550" | "551" | "553" | "501" => format!(
                "the server at {addr} refused the sender or a recipient ({code} {reply}). Check email.from and the recipient addresses"
            ),
            "552" => format!("the server at {addr} refused the message size ({code} {reply})"),
            _ => format!("the server at {addr} refused the message ({code} {reply})"),
        };
        return (msg, false);
    }
    if e.is_response() && text.contains("incomplete response") {
        return (
            format!(
                "{addr} closed the connection without a complete SMTP answer{}",
                if sec_hint.is_empty() {
                    String::new()
                } else {
                    sec_hint
                }
            ),
            true,
        );
    }
    if e.is_timeout() {
        return (timeout_text(t), true);
    }
    (
        format!("sending through {addr} failed: {text}"),
        !e.is_client(),
    )
}

/// The text for "no answer in time".
pub(crate) fn timeout_text(t: &SmtpTarget) -> String {
    let secs = t.timeout.as_secs();
    let mut msg = format!(
        "no answer from {} within {secs} s (email.smtp.timeout_seconds)",
        t.addr()
    );
    match t.security {
        SmtpSecurity::Starttls | SmtpSecurity::Plain if t.port == 465 => msg.push_str(
            ". Port 465 expects TLS from the first byte: set email.smtp.security = \"tls\"",
        ),
        SmtpSecurity::Starttls | SmtpSecurity::Plain => msg.push_str(
            ". If this port expects TLS from the first byte (usually 465), set email.smtp.security = \"tls\"; otherwise check that a firewall lets the connection through",
        ),
        SmtpSecurity::Tls => {
            msg.push_str(". Check that a firewall lets the connection through")
        }
    }
    msg
}

fn security_hint(t: &SmtpTarget) -> String {
    match (t.security, t.port) {
        (SmtpSecurity::Tls, 587 | 25) => format!(
            ". Port {} usually speaks plain SMTP first: use security = \"starttls\"",
            t.port
        ),
        (SmtpSecurity::Starttls | SmtpSecurity::Plain, 465) => {
            ". Port 465 usually expects TLS from the first byte: use security = \"tls\"".into()
        }
        _ => String::new(),
    }
}

fn explain_tls(e: &rustls::Error, t: &SmtpTarget) -> String {
    use rustls::{CertificateError as C, Error as R};
    let addr = t.addr();
    match e {
        R::InvalidCertificate(C::UnknownIssuer) | R::InvalidCertificate(C::BadSignature) => {
            if t.has_root_ca {
                format!(
                    "the certificate of {addr} is not trusted: it was not issued by email.smtp.root_ca nor a public CA. Put the CA that issued the server's certificate in email.smtp.root_ca"
                )
            } else {
                format!(
                    "the certificate of {addr} is not trusted (issuer unknown). If the server uses an internal or self-signed CA, set email.smtp.root_ca to that CA's PEM file"
                )
            }
        }
        R::InvalidCertificate(C::NotValidForName)
        | R::InvalidCertificate(C::NotValidForNameContext { .. }) => format!(
            "the certificate of {addr} was issued for another name than \"{}\". Set email.smtp.host to a name the certificate lists",
            t.host
        ),
        R::InvalidCertificate(C::Expired) | R::InvalidCertificate(C::ExpiredContext { .. }) => {
            format!(
                "the certificate of {addr} has expired; ask the mail administrators to renew it"
            )
        }
        R::InvalidCertificate(C::NotValidYet)
        | R::InvalidCertificate(C::NotValidYetContext { .. }) => {
            format!("the certificate of {addr} is not valid yet; check this machine's clock")
        }
        R::InvalidCertificate(other) => {
            format!("the certificate of {addr} was refused: {other:?}")
        }
        R::InvalidMessage(_) | R::InappropriateMessage { .. } => match t.security {
            SmtpSecurity::Tls => format!(
                "{addr} did not answer with TLS: the port speaks plain SMTP first. Set email.smtp.security = \"starttls\" (usually port 587), or use the implicit-TLS port (usually 465)"
            ),
            _ => format!("the TLS handshake with {addr} failed: {e}"),
        },
        other => format!("the TLS handshake with {addr} failed: {other}"),
    }
}

fn find_rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(r) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(r);
        }
        cur = err.source();
    }
    None
}

fn find_io_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        cur = err.source();
    }
    None
}

use std::error::Error as _;
