//! Message templates (minijinja): built in, overridable file by file from `email.templates_dir`.
//!
//! Each message kind has three templates: `<kind>.subject.txt`, `<kind>.txt` (plain text part)
//! and `<kind>.html` (HTML part, which usually extends `layout.html`). Templates whose name ends
//! in `.html` escape every value for HTML; the subject has line breaks and control characters
//! removed after rendering, so no value can add a header.

use std::path::Path;

use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;

use crate::engine::hooks::{JobFacts, Notice, TargetOutcome};

/// The built-in templates, embedded so a new install works without template files.
pub const BUILT_IN: &[(&str, &str)] = &[
    (
        "layout.html",
        include_str!("../../config/templates/layout.html"),
    ),
    (
        "publish_review.subject.txt",
        include_str!("../../config/templates/publish_review.subject.txt"),
    ),
    (
        "publish_review.txt",
        include_str!("../../config/templates/publish_review.txt"),
    ),
    (
        "publish_review.html",
        include_str!("../../config/templates/publish_review.html"),
    ),
    (
        "approved.subject.txt",
        include_str!("../../config/templates/approved.subject.txt"),
    ),
    (
        "approved.txt",
        include_str!("../../config/templates/approved.txt"),
    ),
    (
        "approved.html",
        include_str!("../../config/templates/approved.html"),
    ),
    (
        "denied.subject.txt",
        include_str!("../../config/templates/denied.subject.txt"),
    ),
    (
        "denied.txt",
        include_str!("../../config/templates/denied.txt"),
    ),
    (
        "denied.html",
        include_str!("../../config/templates/denied.html"),
    ),
    (
        "promotion_result.subject.txt",
        include_str!("../../config/templates/promotion_result.subject.txt"),
    ),
    (
        "promotion_result.txt",
        include_str!("../../config/templates/promotion_result.txt"),
    ),
    (
        "promotion_result.html",
        include_str!("../../config/templates/promotion_result.html"),
    ),
    (
        "job_failed.subject.txt",
        include_str!("../../config/templates/job_failed.subject.txt"),
    ),
    (
        "job_failed.txt",
        include_str!("../../config/templates/job_failed.txt"),
    ),
    (
        "job_failed.html",
        include_str!("../../config/templates/job_failed.html"),
    ),
    (
        "test.subject.txt",
        include_str!("../../config/templates/test.subject.txt"),
    ),
    ("test.txt", include_str!("../../config/templates/test.txt")),
    (
        "test.html",
        include_str!("../../config/templates/test.html"),
    ),
];

/// A rendered message: subject (one line), plain text and HTML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// One line, no control characters.
    pub subject: String,
    /// The plain-text part (CRLF line ends).
    pub text: String,
    /// The HTML part.
    pub html: String,
}

/// The compiled templates.
#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
    /// Names of the templates taken from the override folder.
    overridden: Vec<String>,
}

/// What the templates see. Field names are part of the template interface (documented in
/// `config/templates/README.md`), so only add to them.
#[derive(Debug, Clone, Serialize)]
pub struct View<'a> {
    /// Message kind, e.g. `promotion_result`.
    pub kind: &'a str,
    /// Always "Promoter".
    pub product: &'static str,
    /// The job, when the message belongs to one.
    pub job: Option<&'a JobFacts>,
    /// Every target (empty for kinds without targets).
    pub targets: Vec<&'a TargetOutcome>,
    /// The targets that succeeded.
    pub succeeded: Vec<&'a TargetOutcome>,
    /// The targets that failed.
    pub failed: Vec<&'a TargetOutcome>,
    /// Stored version id (promotion result), if any.
    pub version_id: Option<&'a str>,
    /// Why the job failed (job failed).
    pub reason: Option<&'a str>,
    /// How mail is sent (test message), e.g. `SMTP smtp.company.com:587 (STARTTLS)`.
    pub transport: Option<&'a str>,
}

impl<'a> View<'a> {
    /// The view of a notice.
    pub fn of_notice(notice: &'a Notice) -> View<'a> {
        let mut view = View {
            kind: notice.kind(),
            product: "Promoter",
            job: Some(notice.job()),
            targets: Vec::new(),
            succeeded: Vec::new(),
            failed: Vec::new(),
            version_id: None,
            reason: None,
            transport: None,
        };
        match notice {
            Notice::PublishReview { .. } | Notice::Denied { .. } => {}
            Notice::Approved { targets, .. } => view.set_targets(targets),
            Notice::PromotionResult {
                targets,
                version_id,
                ..
            } => {
                view.set_targets(targets);
                view.version_id = version_id.as_deref();
            }
            Notice::JobFailed { reason, .. } => view.reason = Some(reason),
        }
        view
    }

    /// The view of the test message.
    pub fn test(transport: &'a str) -> View<'a> {
        View {
            kind: "test",
            product: "Promoter",
            job: None,
            targets: Vec::new(),
            succeeded: Vec::new(),
            failed: Vec::new(),
            version_id: None,
            reason: None,
            transport: Some(transport),
        }
    }

    fn set_targets(&mut self, targets: &'a [TargetOutcome]) {
        self.targets = targets.iter().collect();
        self.failed = targets.iter().filter(|t| !t.succeeded()).collect();
        self.succeeded = targets.iter().filter(|t| t.succeeded()).collect();
    }
}

impl Templates {
    /// Compiles the built-in templates, each replaced by a file of the same name in `overrides`
    /// when there is one. Errors name the file and the line.
    pub fn load(overrides: Option<&Path>) -> anyhow::Result<Templates> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| anyhow::anyhow!("template syntax: {e}"))?,
        );
        let mut overridden = Vec::new();
        for (name, built_in) in BUILT_IN {
            let source = match overrides.map(|d| d.join(name)) {
                Some(path) if path.is_file() => {
                    let text = std::fs::read_to_string(&path).map_err(|e| {
                        anyhow::anyhow!("cannot read the template {}: {e}", path.display())
                    })?;
                    overridden.push((*name).to_string());
                    text
                }
                _ => (*built_in).to_string(),
            };
            env.add_template_owned(*name, source).map_err(|e| {
                anyhow::anyhow!(
                    "the template {} does not compile: {}",
                    describe_origin(overrides, name, &overridden),
                    describe_template_error(&e)
                )
            })?;
        }
        let templates = Templates { env, overridden };
        templates.self_test()?;
        Ok(templates)
    }

    /// Names of the templates taken from the override folder.
    pub fn overridden(&self) -> &[String] {
        &self.overridden
    }

    /// Renders the three parts of a message.
    pub fn render(&self, view: &View<'_>) -> Result<Rendered, String> {
        let render = |name: String| -> Result<String, String> {
            let tmpl = self
                .env
                .get_template(&name)
                .map_err(|e| format!("template {name}: {}", describe_template_error(&e)))?;
            tmpl.render(minijinja::value::Serde(view))
                .map_err(|e| format!("template {name}: {}", describe_template_error(&e)))
        };
        let subject = render(format!("{}.subject.txt", view.kind))?;
        let text = render(format!("{}.txt", view.kind))?;
        let html = render(format!("{}.html", view.kind))?;
        Ok(Rendered {
            subject: one_line(&subject),
            text: normalise_text(&text),
            html,
        })
    }

    /// Renders every kind once with sample data, so a broken override is found at start-up
    /// rather than when the first real message is due.
    fn self_test(&self) -> anyhow::Result<()> {
        let job = sample_job();
        let targets = vec![
            TargetOutcome {
                site: "test".into(),
                stream: "Sales".into(),
                app_id: Some("11111111-2222-3333-4444-555555555555".into()),
                hub_link: Some(
                    "https://qlik-test/sense/app/11111111-2222-3333-4444-555555555555".into(),
                ),
                error: None,
            },
            TargetOutcome {
                site: "prod".into(),
                stream: "Sales".into(),
                app_id: None,
                hub_link: None,
                error: Some("stream not found".into()),
            },
        ];
        let notices = [
            Notice::PublishReview { job: job.clone() },
            Notice::Approved {
                job: job.clone(),
                targets: targets.clone(),
            },
            Notice::Denied { job: job.clone() },
            Notice::PromotionResult {
                job: job.clone(),
                targets,
                version_id: Some("v1".into()),
            },
            Notice::JobFailed {
                job,
                reason: "sample".into(),
            },
        ];
        for n in &notices {
            self.render(&View::of_notice(n)).map_err(|e| {
                anyhow::anyhow!(
                    "{e} (rendering sample data{})",
                    if self.overridden.is_empty() {
                        String::new()
                    } else {
                        format!("; overridden templates: {}", self.overridden.join(", "))
                    }
                )
            })?;
        }
        self.render(&View::test("file"))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(())
    }
}

fn describe_origin(overrides: Option<&Path>, name: &str, overridden: &[String]) -> String {
    match overrides {
        Some(dir) if overridden.iter().any(|n| n == name) => dir.join(name).display().to_string(),
        _ => format!("{name} (built in)"),
    }
}

fn describe_template_error(e: &minijinja::Error) -> String {
    match e.line() {
        Some(line) => {
            format!("{} (line {line})", e.kind()).replace('\n', " ")
                + &e.detail().map(|d| format!(": {d}")).unwrap_or_default()
        }
        None => e.to_string(),
    }
}

/// Collapses a rendered subject to one line: control characters (CR, LF, TAB...) become spaces,
/// runs of spaces become one.
pub fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .split(' ')
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Trims trailing spaces per line and the text's surrounding blank lines; CRLF line ends.
fn normalise_text(s: &str) -> String {
    let lines: Vec<&str> = s.lines().map(str::trim_end).collect();
    let mut out = lines.join("\r\n").trim_matches(['\r', '\n']).to_string();
    out.push_str("\r\n");
    out
}

fn sample_job() -> JobFacts {
    JobFacts {
        job_id: "sample-job".into(),
        app_id: "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee".into(),
        app_name: "Sample <app> & \"quotes\"".into(),
        stream: Some("Review".into()),
        stream_id: Some("ffffffff-0000-1111-2222-333333333333".into()),
        owner: "DIR\\owner".into(),
        owner_name: "Owner Name".into(),
        owner_email: Some("owner@example.com".into()),
        approver: Some("DIR\\approver".into()),
        source_site: "dev".into(),
        source_hub_link: "https://qlik-dev/sense/app/aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_one_line() {
        assert_eq!(one_line(" a\r\nBcc: x@y\t b \n"), "a Bcc: x@y b");
    }

    #[test]
    fn html_is_escaped_and_text_is_not() {
        let t = Templates::load(None).unwrap();
        let mut job = sample_job();
        job.app_name = "<script>alert(1)</script> Verkäufe".into();
        let n = Notice::Denied { job };
        let r = t.render(&View::of_notice(&n)).unwrap();
        assert!(r.html.contains("&lt;script&gt;alert(1)&lt;"), "{}", r.html);
        assert!(!r.html.contains("<script>"));
        assert!(r.text.contains("<script>alert(1)</script> Verkäufe"));
        assert!(
            r.subject
                .starts_with("'<script>alert(1)</script> Verkäufe' promotion denied")
        );
    }

    #[test]
    fn result_subject_reflects_the_outcome() {
        let t = Templates::load(None).unwrap();
        let ok = TargetOutcome {
            site: "test".into(),
            stream: "S".into(),
            app_id: Some("x".into()),
            hub_link: Some("https://h/sense/app/x".into()),
            error: None,
        };
        let bad = TargetOutcome {
            site: "prod".into(),
            stream: "S".into(),
            app_id: None,
            hub_link: None,
            error: Some("stream 'S' not found".into()),
        };
        let subject = |targets: Vec<TargetOutcome>| {
            let n = Notice::PromotionResult {
                job: sample_job(),
                targets,
                version_id: None,
            };
            t.render(&View::of_notice(&n)).unwrap().subject
        };
        let name = "'Sample <app> & \"quotes\"'";
        assert_eq!(
            subject(vec![ok.clone()]),
            format!("{name} was promoted to 1 target")
        );
        assert_eq!(
            subject(vec![ok.clone(), ok.clone()]),
            format!("{name} was promoted to 2 targets")
        );
        assert_eq!(
            subject(vec![ok, bad.clone()]),
            format!("{name} promotion partly failed: 1 of 2 targets")
        );
        assert_eq!(subject(vec![bad]), format!("{name} promotion failed"));
    }

    #[test]
    fn overrides_replace_single_files_and_errors_name_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("denied.subject.txt"),
            "NO for {{ job.app_name }}",
        )
        .unwrap();
        let t = Templates::load(Some(dir.path())).unwrap();
        assert_eq!(t.overridden(), ["denied.subject.txt"]);
        let n = Notice::Denied { job: sample_job() };
        let r = t.render(&View::of_notice(&n)).unwrap();
        assert_eq!(r.subject, "NO for Sample <app> & \"quotes\"");
        assert!(r.text.contains("was denied"));

        std::fs::write(dir.path().join("approved.txt"), "{% if %}").unwrap();
        let err = Templates::load(Some(dir.path())).unwrap_err().to_string();
        assert!(err.contains("approved.txt"), "{err}");

        std::fs::write(dir.path().join("approved.txt"), "{{ job.no_such_field }}").unwrap();
        let err = Templates::load(Some(dir.path())).unwrap_err().to_string();
        assert!(err.contains("approved.txt"), "{err}");
    }
}
