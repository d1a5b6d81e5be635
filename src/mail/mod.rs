//! Email notices: templates rendered with minijinja, sent through SMTP (lettre) or written as
//! `.eml` files into a folder (the default, so a new install needs no mail server).
//!
//! The engine decides *when* a notice is due (at most once per job and kind); this module decides
//! *who* gets it and *how*:
//!
//! | Notice | To | Cc |
//! |---|---|---|
//! | publish review | the stream's approvers (approvers CSV, by stream id or name) | |
//! | approved, denied | the owner (email attribute), else `email.fallback_recipients` | |
//! | promotion result | the owner, else the fallback recipients | the stream's approvers |
//! | job failed | `email.admin_recipients` | |
//!
//! Every message is multipart (plain text + HTML), UTF-8, with a `Message-ID` derived from the job
//! id and the notice kind, so a duplicate is recognisable. The file transport names the file after
//! that id and never writes it twice.

mod approvers;
mod smtp;
mod templates;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use lettre::message::MultiPart;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::{MailTransportKind, Settings};
use crate::engine::hooks::{JobFacts, Notice};

/// A validated address with an optional display name (re-exported from lettre).
pub use lettre::message::Mailbox;

pub use approvers::{ApproversMap, CsvProblem, load_approvers_csv, parse_approvers_csv};
pub use templates::{BUILT_IN as BUILT_IN_TEMPLATES, Rendered, Templates, View, one_line};

/// What a notice needs besides the notice itself: the people to write to. Built by
/// [`Mailer::context`] from the approvers CSV and the configuration; tests may build it by hand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailContext {
    /// The approvers of the job's source stream (by stream id or name).
    pub approvers: Vec<Mailbox>,
    /// `email.admin_recipients`: who is told when a job fails for good.
    pub admins: Vec<Mailbox>,
    /// `email.fallback_recipients`: who gets the owner's mail when the owner has no address.
    pub fallback: Vec<Mailbox>,
}

/// Who a message goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipients {
    /// The `To` header.
    pub to: Vec<Mailbox>,
    /// The `Cc` header (never repeats an address of `to`).
    pub cc: Vec<Mailbox>,
}

/// A message that was handed over (or found already handed over).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMail {
    /// The `Message-ID` header, with angle brackets.
    pub message_id: String,
    /// Every recipient address (To and Cc).
    pub recipients: Vec<String>,
    /// The `.eml` file (file transport).
    pub file: Option<PathBuf>,
    /// The file transport found this very message (same job and kind) already written and did
    /// not write it again.
    pub duplicate: bool,
}

/// Why a message was not sent.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// Nobody to send to: permanent, and not a failure of the mail system (audit it as skipped).
    #[error("no {kind} mail sent: {reason}")]
    NoRecipients { kind: &'static str, reason: String },
    /// A template could not be rendered (an administrator's override is broken).
    #[error("the {kind} mail cannot be rendered: {reason}")]
    Template { kind: &'static str, reason: String },
    /// The message could not be built (an address or header was refused).
    #[error("the {kind} mail cannot be built: {reason}")]
    Build { kind: &'static str, reason: String },
    /// The transport failed; `message` explains it in words.
    #[error("{message}")]
    Transport {
        /// What went wrong and what to change, in words (never a secret).
        message: String,
        /// Whether sending again later can succeed.
        retryable: bool,
    },
}

impl MailError {
    /// Whether sending again later can succeed (server unreachable, busy, timed out, disk full).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            MailError::Transport {
                retryable: true,
                ..
            }
        )
    }

    /// Whether the message was skipped because it had nobody to go to.
    pub fn is_no_recipients(&self) -> bool {
        matches!(self, MailError::NoRecipients { .. })
    }
}

/// Sends notices. Cheap to share behind an `Arc`; sends may run concurrently.
pub struct Mailer {
    from: Mailbox,
    id_domain: String,
    transport: Transport,
    templates: Templates,
    admins: Vec<Mailbox>,
    fallback: Vec<Mailbox>,
    approvers: Option<ApproversFile>,
}

enum Transport {
    File {
        folder: PathBuf,
    },
    Smtp {
        client: AsyncSmtpTransport<Tokio1Executor>,
        target: smtp::SmtpTarget,
    },
}

/// The approvers CSV, re-read when the file changes (no restart needed after an edit).
struct ApproversFile {
    path: PathBuf,
    cache: Mutex<(Option<SystemTime>, ApproversMap)>,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("from", &self.from.to_string())
            .field("transport", &self.transport_description())
            .finish_non_exhaustive()
    }
}

impl Mailer {
    /// The mailer for these settings; `None` when `email.enabled` is false.
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Option<Mailer>> {
        if !settings.email.enabled {
            return Ok(None);
        }
        Mailer::new(settings).map(Some)
    }

    /// Builds a mailer whatever `email.enabled` says (`send-test-email`, tests). Checks the
    /// addresses, reads the templates (and overrides) and the approvers CSV.
    pub fn new(settings: &Settings) -> anyhow::Result<Mailer> {
        let e = &settings.email;
        let from = approvers::parse_mailbox(&e.from)
            .map_err(|why| anyhow::anyhow!("email.from \"{}\" is not an address: {why}", e.from))?;
        let id_domain = sanitise_id(from.email.domain());
        let list = |key: &str, values: &[String]| -> anyhow::Result<Vec<Mailbox>> {
            values
                .iter()
                .filter(|v| !v.trim().is_empty())
                .map(|v| {
                    approvers::parse_mailbox(v)
                        .map_err(|why| anyhow::anyhow!("{key}: \"{v}\" is not an address: {why}"))
                })
                .collect()
        };
        let admins = list("email.admin_recipients", &e.admin_recipients)?;
        let fallback = list("email.fallback_recipients", &e.fallback_recipients)?;
        let templates = Templates::load(e.templates_dir.as_deref())?;
        let transport = match e.transport {
            MailTransportKind::File => Transport::File {
                folder: e.folder.clone(),
            },
            MailTransportKind::Smtp => Transport::Smtp {
                client: smtp::build_transport(&e.smtp)?,
                target: smtp::SmtpTarget::of(&e.smtp),
            },
        };
        let approvers = match &e.approvers_csv {
            Some(path) => {
                let file = ApproversFile {
                    path: path.clone(),
                    cache: Mutex::new((None, ApproversMap::default())),
                };
                // Read once now so a missing file or bad rows show at start-up.
                file.current()?;
                Some(file)
            }
            None => None,
        };
        Ok(Mailer {
            from,
            id_domain,
            transport,
            templates,
            admins,
            fallback,
            approvers,
        })
    }

    /// How mail leaves, e.g. `SMTP smtp.company.com:587 (STARTTLS, AUTH)` or `files in /x/mail`.
    pub fn transport_description(&self) -> String {
        match &self.transport {
            Transport::File { folder } => format!(".eml files in {}", folder.display()),
            Transport::Smtp { target, .. } => target.describe(),
        }
    }

    /// The people a notice about `job` may go to: the approvers of its stream (re-reading the
    /// approvers CSV if it changed), the administrators and the fallback recipients.
    pub fn context(&self, job: &JobFacts) -> MailContext {
        let approvers = match &self.approvers {
            Some(file) => match file.current() {
                Ok(map) => map.lookup(job.stream_id.as_deref(), job.stream.as_deref()),
                Err(e) => {
                    tracing::warn!("{e:#}; publish alerts have no recipients until it is fixed");
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        MailContext {
            approvers,
            admins: self.admins.clone(),
            fallback: self.fallback.clone(),
        }
    }

    /// Renders and sends one notice. The `Message-ID` is `<job.kind@domain>`.
    pub async fn send(&self, notice: &Notice, ctx: &MailContext) -> Result<SentMail, MailError> {
        let kind = notice.kind();
        let rcpt =
            recipients(notice, ctx).map_err(|reason| MailError::NoRecipients { kind, reason })?;
        let rendered = self
            .templates
            .render(&View::of_notice(notice))
            .map_err(|reason| MailError::Template { kind, reason })?;
        let job = notice.job();
        let message_id = message_id(&job.job_id, kind, &self.id_domain);
        let message = self
            .build(&rcpt, &rendered, &message_id, Some((job, kind)))
            .map_err(|reason| MailError::Build { kind, reason })?;
        let sent = self.deliver(message, &message_id, &rcpt).await?;
        tracing::info!(
            job = %job.job_id,
            kind,
            message_id = %sent.message_id,
            recipients = %sent.recipients.join(", "),
            duplicate = sent.duplicate,
            "mail handed over"
        );
        Ok(sent)
    }

    /// Sends the test message to `to` (a fresh `Message-ID` each time).
    pub async fn send_test(&self, to: &str) -> Result<SentMail, MailError> {
        let kind = "test";
        let to = approvers::parse_mailbox(to).map_err(|why| MailError::Build {
            kind,
            reason: format!("\"{to}\" is not an address: {why}"),
        })?;
        let rcpt = Recipients {
            to: vec![to],
            cc: vec![],
        };
        let transport = self.transport_description();
        let rendered = self
            .templates
            .render(&View::test(&transport))
            .map_err(|reason| MailError::Template { kind, reason })?;
        let id = format!("test-{}", uuid::Uuid::new_v4());
        let message_id = message_id(&id, kind, &self.id_domain);
        let message = self
            .build(&rcpt, &rendered, &message_id, None)
            .map_err(|reason| MailError::Build { kind, reason })?;
        self.deliver(message, &message_id, &rcpt).await
    }

    fn build(
        &self,
        rcpt: &Recipients,
        rendered: &Rendered,
        message_id: &str,
        job: Option<(&JobFacts, &str)>,
    ) -> Result<Message, String> {
        let mut b = Message::builder()
            .from(self.from.clone())
            .subject(one_line(&rendered.subject))
            .message_id(Some(message_id.to_string()))
            .user_agent(format!("Promoter {}", env!("CARGO_PKG_VERSION")));
        for m in &rcpt.to {
            b = b.to(m.clone());
        }
        for m in &rcpt.cc {
            b = b.cc(m.clone());
        }
        if let Some((job, kind)) = job {
            b = b
                .raw_header(HeaderValue::new(
                    HeaderName::new_from_ascii_str("X-Promoter-Job"),
                    sanitise_id(&job.job_id),
                ))
                .raw_header(HeaderValue::new(
                    HeaderName::new_from_ascii_str("X-Promoter-Kind"),
                    kind.to_string(),
                ));
        }
        b.multipart(MultiPart::alternative_plain_html(
            rendered.text.clone(),
            rendered.html.clone(),
        ))
        .map_err(|e| e.to_string())
    }

    async fn deliver(
        &self,
        message: Message,
        message_id: &str,
        rcpt: &Recipients,
    ) -> Result<SentMail, MailError> {
        let recipients: Vec<String> = rcpt
            .to
            .iter()
            .chain(&rcpt.cc)
            .map(|m| m.email.to_string())
            .collect();
        match &self.transport {
            Transport::File { folder } => {
                let (file, duplicate) = write_eml(folder, message_id, &message.formatted())
                    .await
                    .map_err(|e| MailError::Transport {
                    message: format!(
                        "cannot write the message into {} (email.folder): {e}",
                        folder.display()
                    ),
                    retryable: true,
                })?;
                Ok(SentMail {
                    message_id: message_id.to_string(),
                    recipients,
                    file: Some(file),
                    duplicate,
                })
            }
            Transport::Smtp { client, target } => {
                // lettre's own timeout covers connecting only; this one covers the whole exchange.
                match tokio::time::timeout(
                    target.timeout + Duration::from_secs(1),
                    client.send(message),
                )
                .await
                {
                    Ok(Ok(_)) => Ok(SentMail {
                        message_id: message_id.to_string(),
                        recipients,
                        file: None,
                        duplicate: false,
                    }),
                    Ok(Err(e)) => {
                        let (message, retryable) = smtp::explain(&e, target);
                        Err(MailError::Transport { message, retryable })
                    }
                    Err(_) => Err(MailError::Transport {
                        message: smtp::timeout_text(target),
                        retryable: true,
                    }),
                }
            }
        }
    }
}

impl ApproversFile {
    fn current(&self) -> anyhow::Result<ApproversMap> {
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot read the approvers file {} (email.approvers_csv): {e}",
                    self.path.display()
                )
            })?;
        let mut cache = self
            .cache
            .lock()
            .map_err(|_| anyhow::anyhow!("approvers cache poisoned"))?;
        if cache.0 != Some(modified) {
            let (map, problems) = load_approvers_csv(&self.path)?;
            for p in &problems {
                tracing::warn!("{}: {p}; the row is ignored", self.path.display());
            }
            tracing::info!(
                "read {} stream(s) with approvers from {}",
                map.len(),
                self.path.display()
            );
            *cache = (Some(modified), map);
        }
        Ok(cache.1.clone())
    }
}

/// Who a notice goes to (pure). The error says why there is nobody.
pub fn recipients(notice: &Notice, ctx: &MailContext) -> Result<Recipients, String> {
    let job = notice.job();
    let stream_desc = || match (&job.stream, &job.stream_id) {
        (Some(n), Some(id)) => format!("stream \"{n}\" ({id})"),
        (Some(n), None) => format!("stream \"{n}\""),
        (None, Some(id)) => format!("stream {id}"),
        (None, None) => "the app's stream".to_string(),
    };
    let owner = || -> Result<Vec<Mailbox>, String> {
        let from_attribute = job
            .owner_email
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .and_then(|addr| match addr.parse::<lettre::Address>() {
                Ok(a) => {
                    let name = one_line(&job.owner_name);
                    Some(Mailbox::new((!name.is_empty()).then_some(name), a))
                }
                Err(e) => {
                    tracing::warn!(
                        owner = %job.owner,
                        "the owner's email attribute \"{addr}\" is not an address ({e}); using the fallback recipients"
                    );
                    None
                }
            });
        match from_attribute {
            Some(m) => Ok(vec![m]),
            None if !ctx.fallback.is_empty() => Ok(ctx.fallback.clone()),
            None => Err(format!(
                "the owner {} has no usable email attribute and email.fallback_recipients is empty",
                job.owner
            )),
        }
    };
    let (to, cc) = match notice {
        Notice::PublishReview { .. } => {
            if ctx.approvers.is_empty() {
                return Err(format!(
                    "{} has no approvers in email.approvers_csv",
                    stream_desc()
                ));
            }
            (ctx.approvers.clone(), vec![])
        }
        Notice::Approved { .. } | Notice::Denied { .. } => (owner()?, vec![]),
        Notice::PromotionResult { .. } => match owner() {
            Ok(to) => (to, ctx.approvers.clone()),
            Err(_) if !ctx.approvers.is_empty() => (ctx.approvers.clone(), vec![]),
            Err(e) => return Err(e),
        },
        Notice::JobFailed { .. } => {
            if ctx.admins.is_empty() {
                return Err("email.admin_recipients is empty".into());
            }
            (ctx.admins.clone(), vec![])
        }
    };
    let to = dedupe(to, &[]);
    let cc = dedupe(cc, &to);
    Ok(Recipients { to, cc })
}

fn dedupe(list: Vec<Mailbox>, already: &[Mailbox]) -> Vec<Mailbox> {
    let key = |m: &Mailbox| m.email.to_string().to_lowercase();
    let mut out: Vec<Mailbox> = Vec::new();
    for m in list {
        let k = key(&m);
        if !already.iter().chain(&out).any(|o| key(o) == k) {
            out.push(m);
        }
    }
    out
}

/// `<job-id.kind@domain>`, with every character outside `[A-Za-z0-9._-]` replaced.
pub fn message_id(job_id: &str, kind: &str, domain: &str) -> String {
    format!(
        "<{}.{}@{}>",
        sanitise_id(job_id),
        sanitise_id(kind),
        sanitise_id(domain)
    )
}

fn sanitise_id(s: &str) -> String {
    let out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() { "_".into() } else { out }
}

/// Writes `<message-id>.eml` once: an existing file means the message was already written.
async fn write_eml(
    folder: &Path,
    message_id: &str,
    bytes: &[u8],
) -> std::io::Result<(PathBuf, bool)> {
    let stem = message_id.trim_start_matches('<').trim_end_matches('>');
    let stem = sanitise_id(stem.split('@').next().unwrap_or(stem));
    let path = folder.join(format!("{stem}.eml"));
    tokio::fs::create_dir_all(folder).await?;
    if tokio::fs::try_exists(&path).await? {
        return Ok((path, true));
    }
    let tmp = folder.join(format!(".{stem}.{}.tmp", uuid::Uuid::new_v4().simple()));
    tokio::fs::write(&tmp, bytes).await?;
    // A hard link fails when the name exists, so two writers cannot both deliver.
    let linked = tokio::fs::hard_link(&tmp, &path).await;
    let _ = tokio::fs::remove_file(&tmp).await;
    match linked {
        Ok(()) => Ok((path, false)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok((path, true)),
        Err(e) => Err(e),
    }
}

/// `promoter send-test-email`: sends one message and explains failures in words. Returns
/// whether the message was accepted.
pub async fn send_test_email(settings: &Settings, to: &str) -> anyhow::Result<bool> {
    let mailer = Mailer::new(settings)?;
    if !settings.email.enabled {
        println!(
            "note: email.enabled is false, so Promoter sends no notices; testing the settings anyway"
        );
    }
    println!(
        "sending a test message to {to} through {}",
        mailer.transport_description()
    );
    match mailer.send_test(to).await {
        Ok(sent) => {
            match &sent.file {
                Some(f) => println!("ok: written to {} ({})", f.display(), sent.message_id),
                None => println!("ok: the server accepted the message {}", sent.message_id),
            }
            Ok(true)
        }
        Err(e) => {
            println!("failed: {e}");
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::hooks::TargetOutcome;

    fn job(owner_email: Option<&str>) -> JobFacts {
        JobFacts {
            job_id: "job-1".into(),
            app_id: "a1".into(),
            app_name: "Sales".into(),
            stream: Some("Review".into()),
            stream_id: Some("s1".into()),
            owner: "DIR\\jg".into(),
            owner_name: "Jürgen Groß".into(),
            owner_email: owner_email.map(String::from),
            approver: Some("DIR\\boss".into()),
            source_site: "dev".into(),
            source_hub_link: "https://dev/sense/app/a1".into(),
        }
    }

    fn mb(s: &str) -> Mailbox {
        s.parse().unwrap()
    }

    fn ctx() -> MailContext {
        MailContext {
            approvers: vec![mb("ap1@example.com"), mb("owner@example.com")],
            admins: vec![mb("admin@example.com")],
            fallback: vec![mb("fallback@example.com")],
        }
    }

    fn addrs(v: &[Mailbox]) -> Vec<String> {
        v.iter().map(|m| m.email.to_string()).collect()
    }

    #[test]
    fn who_gets_what() {
        let j = job(Some("owner@example.com"));
        let r = recipients(&Notice::PublishReview { job: j.clone() }, &ctx()).unwrap();
        assert_eq!(addrs(&r.to), ["ap1@example.com", "owner@example.com"]);

        let r = recipients(&Notice::Denied { job: j.clone() }, &ctx()).unwrap();
        assert_eq!(addrs(&r.to), ["owner@example.com"]);
        assert_eq!(r.to[0].name.as_deref(), Some("Jürgen Groß"));

        let result = Notice::PromotionResult {
            job: j.clone(),
            targets: vec![TargetOutcome {
                site: "t".into(),
                stream: "s".into(),
                app_id: None,
                hub_link: None,
                error: Some("x".into()),
            }],
            version_id: None,
        };
        let r = recipients(&result, &ctx()).unwrap();
        assert_eq!(addrs(&r.to), ["owner@example.com"]);
        // The owner is not copied twice.
        assert_eq!(addrs(&r.cc), ["ap1@example.com"]);

        let failed = Notice::JobFailed {
            job: j,
            reason: "r".into(),
        };
        assert_eq!(
            addrs(&recipients(&failed, &ctx()).unwrap().to),
            ["admin@example.com"]
        );
    }

    #[test]
    fn owner_without_address_falls_back() {
        for email in [None, Some(""), Some("not an address")] {
            let r = recipients(
                &Notice::Approved {
                    job: job(email),
                    targets: vec![],
                },
                &ctx(),
            )
            .unwrap();
            assert_eq!(addrs(&r.to), ["fallback@example.com"], "{email:?}");
        }
        let mut c = ctx();
        c.fallback.clear();
        let err = recipients(&Notice::Denied { job: job(None) }, &c).unwrap_err();
        assert!(err.contains("DIR\\jg"), "{err}");
    }

    #[test]
    fn empty_lists_are_explained() {
        let empty = MailContext::default();
        let j = job(None);
        let err = recipients(&Notice::PublishReview { job: j.clone() }, &empty).unwrap_err();
        assert!(
            err.contains("\"Review\"") && err.contains("approvers_csv"),
            "{err}"
        );
        let err = recipients(
            &Notice::JobFailed {
                job: j,
                reason: "r".into(),
            },
            &empty,
        )
        .unwrap_err();
        assert!(err.contains("admin_recipients"));
    }

    #[test]
    fn message_ids_are_stable_and_safe() {
        assert_eq!(
            message_id("job-1", "approved", "company.com"),
            "<job-1.approved@company.com>"
        );
        assert_eq!(message_id("a b>\r\nBcc:x", "k", "d"), "<a_b___Bcc_x.k@d>");
    }

    #[tokio::test]
    async fn the_file_transport_writes_each_message_once() {
        let dir = tempfile::tempdir().unwrap();
        let id = message_id("job-9", "denied", "x.org");
        let (p1, dup1) = write_eml(dir.path(), &id, b"one").await.unwrap();
        let (p2, dup2) = write_eml(dir.path(), &id, b"two").await.unwrap();
        assert_eq!(p1, p2);
        assert!(!dup1 && dup2);
        assert_eq!(std::fs::read(&p1).unwrap(), b"one");
        assert_eq!(p1.file_name().unwrap(), "job-9.denied.eml");
        // No temporary files are left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
