//! Mail through a real SMTP server process (aiosmtpd, `tests/support/smtp_server.py`) with
//! STARTTLS, implicit TLS and AUTH, and through the file transport. The server parses what it
//! receives with Python's email package, so the assertions see the message as a mail client would.
//!
//! Needs `python3 -m pip install 'aiosmtpd==1.4.6'` (done by `.ci/test`).

use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "support/servers.rs"]
mod servers;
use servers::{PyServer, settings_with, spawn_py};
use std::time::{Duration, Instant};

use promoter::config::{Secret, Settings};
use promoter::engine::hooks::{JobFacts, Notice, TargetOutcome};
use promoter::mail::{MailError, Mailer};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::Value;

const USER: &str = "promoter";
const PASSWORD: &str = "correct horse";

/// A CA and a server certificate for 127.0.0.1, as PEM files in `dir`.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn make_pki(dir: &Path) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Promoter test mail CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let pki = Pki {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server_key.pem"),
    };
    std::fs::write(&pki.ca, ca_cert.pem()).unwrap();
    std::fs::write(&pki.cert, cert.pem()).unwrap();
    std::fs::write(&pki.key, key.serialize_pem()).unwrap();
    pki
}

/// The SMTP server child process; stopped when dropped.
struct SmtpServer {
    _server: PyServer,
    port: u16,
    out: PathBuf,
}

fn start_server(dir: &Path, tls: &str, pki: Option<&Pki>, auth: bool) -> SmtpServer {
    let out = dir.join(format!("received-{tls}"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtp_server.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script).arg("--out").arg(&out).arg("--tls").arg(tls);
    if let Some(p) = pki {
        cmd.arg("--cert").arg(&p.cert).arg("--key").arg(&p.key);
    }
    if auth {
        cmd.args(["--user", USER, "--password", PASSWORD]);
    }
    let server = spawn_py(
        cmd,
        "is aiosmtpd installed? python3 -m pip install 'aiosmtpd==1.4.6'",
    );
    let port = server.port;
    SmtpServer {
        _server: server,
        port,
        out,
    }
}

/// Messages the server received, in order.
fn received(server: &SmtpServer, at_least: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut files: Vec<(u32, PathBuf)> = std::fs::read_dir(&server.out)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().to_string();
                        let n = name.strip_suffix(".json")?.parse().ok()?;
                        Some((n, e.path()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if files.len() >= at_least || Instant::now() > deadline {
            files.sort();
            return files
                .iter()
                .map(|(_, p)| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
                .collect();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn settings(dir: &Path, smtp: Option<(&SmtpServer, &str)>, root_ca: Option<&Path>) -> Settings {
    let approvers = dir.join("approvers.csv");
    std::fs::write(
        &approvers,
        "stream,email\n\
         stream-1,\"山田 太郎 <yamada@example.jp>; anna@example.com\"\n\
         Review,anna@example.com\n\
         Review,bad address\n",
    )
    .unwrap();
    let (transport, port, security) = match smtp {
        Some((s, sec)) => ("smtp", s.port, sec),
        None => ("file", 1, "starttls"),
    };
    let ca = root_ca
        .map(|p| format!("root_ca = {:?}", p.display().to_string()))
        .unwrap_or_default();
    let text = format!(
        r#"
[email]
enabled = true
transport = "{transport}"
folder = {folder:?}
from = "Promoter <promoter@example.com>"
admin_recipients = ["ops@example.com"]
fallback_recipients = ["fallback@example.com"]
approvers_csv = {approvers:?}

[email.smtp]
host = "127.0.0.1"
port = {port}
security = "{security}"
username = "{USER}"
timeout_seconds = 3
{ca}
"#,
        folder = dir.join("mail").display().to_string(),
        approvers = approvers.display().to_string(),
    );
    let mut s: Settings = settings_with(&text);
    s.email.smtp.password_value = Some(Secret::new(PASSWORD));
    s
}

fn job(app_name: &str, owner_name: &str, owner_email: Option<&str>) -> JobFacts {
    JobFacts {
        job_id: format!("job-{}", uuid::Uuid::new_v4().simple()),
        app_id: "0b5e9c1d-1111-2222-3333-444455556666".into(),
        app_name: app_name.into(),
        stream: Some("Review".into()),
        stream_id: Some("stream-1".into()),
        owner: "CORP\\jgross".into(),
        owner_name: owner_name.into(),
        owner_email: owner_email.map(String::from),
        approver: Some("CORP\\boss".into()),
        source_site: "dev".into(),
        source_hub_link: "https://qlik-dev/sense/app/0b5e9c1d-1111-2222-3333-444455556666".into(),
    }
}

fn header<'a>(msg: &'a Value, name: &str) -> Vec<&'a str> {
    msg["headers"][name]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn rcpts(msg: &Value) -> Vec<&str> {
    msg["rcpt_tos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect()
}

fn transport_error(r: Result<promoter::mail::SentMail, MailError>) -> (String, bool) {
    match r {
        Err(e @ MailError::Transport { .. }) => (e.to_string(), e.is_retryable()),
        other => panic!("expected a transport error, got {other:?}"),
    }
}

#[tokio::test]
async fn starttls_with_auth_delivers_utf8_multipart_notices() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let server = start_server(dir.path(), "starttls", Some(&pki), true);
    let s = settings(dir.path(), Some((&server, "starttls")), Some(&pki.ca));
    let mailer = Mailer::from_settings(&s).unwrap().unwrap();

    // 1. Publish review to the stream's approvers (CSV rows by id and by name, de-duplicated).
    let review_job = job(
        "販売ダッシュボード – Verkäufe",
        "Jürgen Groß",
        Some("jg@example.de"),
    );
    let ctx = mailer.context(&review_job);
    let sent = mailer
        .send(
            &Notice::PublishReview {
                job: review_job.clone(),
            },
            &ctx,
        )
        .await
        .unwrap();
    assert_eq!(sent.recipients, ["yamada@example.jp", "anna@example.com"]);
    assert_eq!(
        sent.message_id,
        format!("<{}.publish_review@example.com>", review_job.job_id)
    );

    // 2. The result to the owner (copy to the approvers), with a hostile app name.
    let evil = "<script>alert('x')</script> Sales";
    let result_job = job(evil, "Jürgen Groß", Some("jg@example.de"));
    let targets = vec![
        TargetOutcome {
            site: "test".into(),
            stream: "Sales".into(),
            app_id: Some("aaaa-1".into()),
            hub_link: Some("https://qlik-test/sense/app/aaaa-1".into()),
            error: None,
        },
        TargetOutcome {
            site: "prod".into(),
            stream: "Finance".into(),
            app_id: None,
            hub_link: None,
            error: Some("stream 'Finance' not found on prod".into()),
        },
    ];
    let notice = Notice::PromotionResult {
        job: result_job.clone(),
        targets,
        version_id: Some("3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY".into()),
    };
    mailer
        .send(&notice, &mailer.context(&result_job))
        .await
        .unwrap();

    let msgs = received(&server, 2);
    assert_eq!(msgs.len(), 2);

    let review = &msgs[0];
    assert_eq!(review["tls"], true);
    assert_eq!(review["authenticated"], true);
    assert_eq!(review["mail_from"], "promoter@example.com");
    assert_eq!(rcpts(review), ["yamada@example.jp", "anna@example.com"]);
    assert_eq!(
        review["subject"],
        "Review requested: '販売ダッシュボード – Verkäufe' was published to 'Review'"
    );
    assert_eq!(review["content_type"], "multipart/alternative");
    assert_eq!(
        header(review, "message-id"),
        [format!(
            "<{}.publish_review@example.com>",
            review_job.job_id
        )]
    );
    assert_eq!(header(review, "x-promoter-kind"), ["publish_review"]);
    assert!(
        header(review, "to")[0].contains("山田 太郎"),
        "{:?}",
        header(review, "to")
    );
    let text = review["text"].as_str().unwrap();
    assert!(
        text.contains("Owned by:     Jürgen Groß (CORP\\jgross)"),
        "{text}"
    );
    assert!(text.contains("https://qlik-dev/sense/app/0b5e9c1d-1111-2222-3333-444455556666"));
    let html = review["html"].as_str().unwrap();
    assert!(html.contains("販売ダッシュボード – Verkäufe"));

    let result = &msgs[1];
    assert_eq!(
        rcpts(result),
        ["jg@example.de", "yamada@example.jp", "anna@example.com"]
    );
    assert_eq!(header(result, "to").len(), 1);
    assert!(header(result, "to")[0].contains("Jürgen Groß"));
    assert_eq!(header(result, "cc").len(), 1);
    assert_eq!(
        result["subject"],
        format!("'{evil}' promotion partly failed: 1 of 2 targets")
    );
    let html = result["html"].as_str().unwrap();
    assert!(!html.contains("<script>"), "{html}");
    assert!(html.contains("&lt;script&gt;alert("), "{html}");
    // Links (minijinja also escapes '/' inside attributes; browsers decode it).
    let unescaped = html.replace("&#x2f;", "/");
    assert!(
        unescaped.contains("href=\"https://qlik-test/sense/app/aaaa-1\""),
        "{html}"
    );
    assert!(
        html.contains("stream &#x27;Finance&#x27; not found on prod"),
        "{html}"
    );
    let text = result["text"].as_str().unwrap();
    assert!(text.contains("https://qlik-test/sense/app/aaaa-1"));
    assert!(text.contains("site prod, stream 'Finance': stream 'Finance' not found on prod"));
    assert!(text.contains("Stored version: 3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY"));
}

#[tokio::test]
async fn names_cannot_inject_headers() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let server = start_server(dir.path(), "starttls", Some(&pki), true);
    let s = settings(dir.path(), Some((&server, "starttls")), Some(&pki.ca));
    let mailer = Mailer::from_settings(&s).unwrap().unwrap();

    let mut j = job(
        "Sales\r\nBcc: victim@evil.example\r\nX-Evil: 1",
        "Eve\r\nBcc: victim2@evil.example",
        Some("owner@example.com"),
    );
    j.approver = Some("CORP\\x\r\nBcc: victim3@evil.example".into());
    j.job_id = format!("{}\r\nBcc: victim4@evil.example", j.job_id);
    let sent = mailer
        .send(&Notice::Denied { job: j.clone() }, &mailer.context(&j))
        .await
        .unwrap();
    assert_eq!(sent.recipients, ["owner@example.com"]);

    let msgs = received(&server, 1);
    let m = &msgs[0];
    assert_eq!(rcpts(m), ["owner@example.com"]);
    assert!(header(m, "bcc").is_empty());
    assert!(header(m, "x-evil").is_empty());
    let subject = m["subject"].as_str().unwrap();
    assert!(!subject.contains('\r') && !subject.contains('\n'));
    assert!(subject.starts_with("'Sales Bcc: victim@evil.example X-Evil: 1' promotion denied"));
    let raw = m["raw"].as_str().unwrap();
    let head = raw.split("\r\n\r\n").next().unwrap();
    for line in head.lines() {
        assert!(!line.to_lowercase().starts_with("bcc:"), "{line}");
        assert!(!line.to_lowercase().starts_with("x-evil:"), "{line}");
    }
}

#[tokio::test]
async fn implicit_tls_with_auth_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let server = start_server(dir.path(), "implicit", Some(&pki), true);
    let s = settings(dir.path(), Some((&server, "tls")), Some(&pki.ca));
    let mailer = Mailer::new(&s).unwrap();
    let j = job("Sales", "Ann", None);
    let sent = mailer
        .send(
            &Notice::JobFailed {
                job: j.clone(),
                reason: "QRS at qlik-test:4242 refused the client certificate".into(),
            },
            &mailer.context(&j),
        )
        .await
        .unwrap();
    assert_eq!(sent.recipients, ["ops@example.com"]);
    let msgs = received(&server, 1);
    assert_eq!(msgs[0]["tls"], true);
    assert_eq!(msgs[0]["authenticated"], true);
    assert_eq!(msgs[0]["subject"], "Promoter job failed: 'Sales'");
    assert!(
        msgs[0]["text"]
            .as_str()
            .unwrap()
            .contains("QRS at qlik-test:4242 refused the client certificate")
    );
}

#[tokio::test]
async fn wrong_password_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let server = start_server(dir.path(), "starttls", Some(&pki), true);
    let mut s = settings(dir.path(), Some((&server, "starttls")), Some(&pki.ca));
    s.email.smtp.password_value = Some(Secret::new("wrong"));
    let mailer = Mailer::new(&s).unwrap();
    let (msg, retryable) = transport_error(mailer.send_test("someone@example.com").await);
    assert!(msg.contains("authentication refused"), "{msg}");
    assert!(msg.contains("email.smtp.password"), "{msg}");
    assert!(!msg.contains("wrong"), "the password leaked: {msg}");
    assert!(!retryable);
    assert!(received(&server, 0).is_empty());
}

#[tokio::test]
async fn certificate_problems_and_wrong_ports_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let starttls = start_server(dir.path(), "starttls", Some(&pki), true);
    let implicit = start_server(dir.path(), "implicit", Some(&pki), true);

    // The server's CA is not trusted.
    let s = settings(dir.path(), Some((&starttls, "starttls")), None);
    let (msg, retryable) =
        transport_error(Mailer::new(&s).unwrap().send_test("a@example.com").await);
    assert!(
        msg.contains("not trusted") && msg.contains("email.smtp.root_ca"),
        "{msg}"
    );
    assert!(!retryable);

    // Implicit TLS against a port that speaks plain SMTP first.
    let s = settings(dir.path(), Some((&starttls, "tls")), Some(&pki.ca));
    let (msg, _) = transport_error(Mailer::new(&s).unwrap().send_test("a@example.com").await);
    assert!(
        msg.contains("did not answer with TLS") && msg.contains("\"starttls\""),
        "{msg}"
    );

    // STARTTLS against a port that expects TLS from the first byte: no greeting comes.
    let s = settings(dir.path(), Some((&implicit, "starttls")), Some(&pki.ca));
    let started = Instant::now();
    let (msg, retryable) =
        transport_error(Mailer::new(&s).unwrap().send_test("a@example.com").await);
    assert!(
        msg.contains("within 3 s") && msg.contains("security = \"tls\""),
        "{msg}"
    );
    assert!(retryable);
    assert!(started.elapsed() < Duration::from_secs(30));

    // Nothing listens.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut s = settings(dir.path(), Some((&starttls, "starttls")), Some(&pki.ca));
    s.email.smtp.port = port;
    let (msg, retryable) =
        transport_error(Mailer::new(&s).unwrap().send_test("a@example.com").await);
    assert!(msg.contains("connection refused"), "{msg}");
    assert!(retryable);

    assert!(received(&starttls, 0).is_empty());
    assert!(received(&implicit, 0).is_empty());
}

#[tokio::test]
async fn send_test_email_reports_success_and_failure() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let server = start_server(dir.path(), "starttls", Some(&pki), true);
    let s = settings(dir.path(), Some((&server, "starttls")), Some(&pki.ca));
    assert!(
        promoter::mail::send_test_email(&s, "Grüße <tester@example.com>")
            .await
            .unwrap()
    );
    let msgs = received(&server, 1);
    assert_eq!(rcpts(&msgs[0]), ["tester@example.com"]);
    assert_eq!(msgs[0]["subject"], "Promoter test message");
    assert!(msgs[0]["text"].as_str().unwrap().contains("Grüße, 日本語"));

    let mut s = s;
    s.email.smtp.password_value = Some(Secret::new("nope"));
    assert!(
        !promoter::mail::send_test_email(&s, "tester@example.com")
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn file_transport_writes_each_notice_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path(), None, None);
    let mailer = Mailer::from_settings(&s).unwrap().unwrap();
    let j = job("Umsätze <2024>", "Jürgen Groß", None);
    let notice = Notice::Approved {
        job: j.clone(),
        targets: vec![TargetOutcome {
            site: "test".into(),
            stream: "Sales".into(),
            app_id: None,
            hub_link: None,
            error: None,
        }],
    };
    let first = mailer.send(&notice, &mailer.context(&j)).await.unwrap();
    // The owner has no address: the fallback recipients get it.
    assert_eq!(first.recipients, ["fallback@example.com"]);
    assert!(!first.duplicate);
    let file = first.file.clone().unwrap();
    assert_eq!(
        file,
        dir.path()
            .join("mail")
            .join(format!("{}.approved.eml", j.job_id))
    );
    let eml = std::fs::read_to_string(&file).unwrap();
    assert!(eml.contains(&format!("Message-ID: <{}.approved@example.com>", j.job_id)));
    assert!(
        eml.contains("Subject: =?utf-8?"),
        "UTF-8 subject must be encoded:\n{eml}"
    );
    assert!(eml.contains("Content-Type: multipart/alternative"));

    // Sent again (a retry after a crash): recognised, not written twice.
    let second = mailer.send(&notice, &mailer.context(&j)).await.unwrap();
    assert!(second.duplicate);
    assert_eq!(second.message_id, first.message_id);
    assert_eq!(
        std::fs::read_dir(dir.path().join("mail")).unwrap().count(),
        1
    );
}

#[tokio::test]
async fn disabled_mail_sends_nothing_and_missing_recipients_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path(), None, None);
    s.email.enabled = false;
    assert!(Mailer::from_settings(&s).unwrap().is_none());

    s.email.enabled = true;
    s.email.fallback_recipients.clear();
    s.email.approvers_csv = None;
    let mailer = Mailer::from_settings(&s).unwrap().unwrap();
    let j = job("Sales", "Ann", None);
    let err = mailer
        .send(
            &Notice::PublishReview { job: j.clone() },
            &mailer.context(&j),
        )
        .await
        .unwrap_err();
    assert!(err.is_no_recipients() && !err.is_retryable(), "{err}");
    assert!(err.to_string().contains("\"Review\""), "{err}");
    let err = mailer
        .send(&Notice::Denied { job: j.clone() }, &mailer.context(&j))
        .await
        .unwrap_err();
    assert!(err.is_no_recipients(), "{err}");
    assert!(!dir.path().join("mail").exists());
}
