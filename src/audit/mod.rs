//! The audit trail: every decision, step, email and version as an event in the store (what
//! `promoter history` prints) and as a row in a daily CSV file (what the Qlik dashboard loads,
//! see `dashboard/README.md`).
//!
//! # The CSV files
//!
//! `{audit.folder}/promoter-audit-YYYY-MM-DD.csv`, one file per UTC day of the event's time,
//! append-only, UTF-8 without byte-order mark, comma-separated, fields quoted when needed (`"`
//! doubled inside), CRLF line ends, one row per line (line breaks inside values become spaces),
//! and a header row once per file. The columns are fixed, in this order ([`CSV_HEADER`]):
//!
//! | Column | Content |
//! |---|---|
//! | `time_utc` | `YYYY-MM-DD hh:mm:ss.fff`, UTC |
//! | `job_id` | job id, or empty for events outside a job |
//! | `app_id` | source app id |
//! | `app_name` | source app name |
//! | `event` | `decision`, `step`, `email`, `version`, `job`, ... |
//! | `site` | site alias, or empty |
//! | `stream` | stream name, or empty |
//! | `target_app_id` | target app id, or empty |
//! | `actor` | who caused it (approver, owner, `promoter`) |
//! | `outcome` | `ok`, `failed`, `skipped`, `retrying`, a decision or a job status |
//! | `detail` | free text |
//!
//! A value that a spreadsheet would run as a formula (starting with `=`, `+`, `-`, `@`, a tab or
//! a carriage return, or their full-width forms) is written with a leading `'`, which spreadsheets
//! show as text; the dashboard's load script removes it again.
//!
//! Rows are written with one `write` call each, under a mutex (safe for concurrent writers in the
//! process) to a file opened for appending (rows of several processes do not interleave). A new
//! day's file is created with its header in one atomic step, so no process can append a row
//! before the header.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::NaiveDate;

use crate::config::Settings;
use crate::engine::hooks::AuditEvent;
use crate::store::Store;

/// The CSV columns, in order. Changing them breaks the dashboard: only ever append.
pub const CSV_HEADER: [&str; 11] = [
    "time_utc",
    "job_id",
    "app_id",
    "app_name",
    "event",
    "site",
    "stream",
    "target_app_id",
    "actor",
    "outcome",
    "detail",
];

/// The format of `time_utc` (chrono), read by Qlik as `YYYY-MM-DD hh:mm:ss.fff`.
pub const CSV_TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S%.3f";

/// Appends audit events to the store and the daily CSV file. Cheap to clone.
#[derive(Clone)]
pub struct Audit {
    csv: Arc<CsvAuditLog>,
    store: Store,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("csv", &self.csv.folder)
            .field("store", &self.store)
            .finish()
    }
}

impl Audit {
    /// The audit trail for these settings, writing into `store` and `audit.folder`.
    pub fn new(settings: &Settings, store: Store) -> Audit {
        Audit {
            csv: Arc::new(CsvAuditLog::new(&settings.audit.folder)),
            store,
        }
    }

    /// The CSV half.
    pub fn csv(&self) -> &CsvAuditLog {
        &self.csv
    }

    /// Appends one event to the store and to the day's CSV file. Both are attempted; the error
    /// names each that failed.
    pub async fn record(&self, e: &AuditEvent) -> anyhow::Result<()> {
        let csv = Arc::clone(&self.csv);
        let event = e.clone();
        let csv_result = tokio::task::spawn_blocking(move || csv.append(&event))
            .await
            .map_err(|join| anyhow::anyhow!("the CSV writer stopped: {join}"))
            .and_then(|r| r.map_err(anyhow::Error::from));
        let store_result = self.store.audit_append(e).await;
        match (csv_result, store_result) {
            (Ok(_), Ok(())) => Ok(()),
            (Err(c), Ok(())) => {
                Err(c.context("the audit event is in the store but not in the CSV file"))
            }
            (Ok(_), Err(s)) => Err(anyhow::anyhow!(
                "the audit event is in the CSV file but not in the store: {s}"
            )),
            (Err(c), Err(s)) => Err(anyhow::anyhow!(
                "the audit event was lost: CSV: {c:#}; store: {s}"
            )),
        }
    }
}

/// The daily CSV files.
#[derive(Debug)]
pub struct CsvAuditLog {
    folder: PathBuf,
    open: Mutex<Option<OpenFile>>,
}

#[derive(Debug)]
struct OpenFile {
    date: NaiveDate,
    path: PathBuf,
    file: File,
}

/// Why a row could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the audit file {path} (audit.folder): {source}")]
pub struct CsvError {
    /// The day's file.
    pub path: PathBuf,
    /// The I/O error.
    #[source]
    pub source: std::io::Error,
}

impl CsvAuditLog {
    /// Writes into `folder` (created when the first row is written).
    pub fn new(folder: &Path) -> CsvAuditLog {
        CsvAuditLog {
            folder: folder.to_path_buf(),
            open: Mutex::new(None),
        }
    }

    /// The file of a UTC day.
    pub fn file_for(&self, date: NaiveDate) -> PathBuf {
        self.folder
            .join(format!("promoter-audit-{}.csv", date.format("%Y-%m-%d")))
    }

    /// Appends one row to the file of the event's UTC day; returns that file.
    pub fn append(&self, e: &AuditEvent) -> Result<PathBuf, CsvError> {
        let date = e.time.date_naive();
        let path = self.file_for(date);
        let err = |source| CsvError {
            path: path.clone(),
            source,
        };
        let row = encode_row(&csv_row(e)).map_err(err)?;
        // A poisoned lock only means another writer panicked mid-row; the file is still fine.
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let current = match open.take() {
            // Reopen when the day changed or the file was moved away (archived, deleted).
            Some(f) if f.date == date && f.path.exists() => f,
            _ => OpenFile {
                date,
                path: path.clone(),
                file: open_day_file(&self.folder, &path).map_err(err)?,
            },
        };
        let result = (&current.file).write_all(&row);
        let result = result.and_then(|()| (&current.file).flush());
        *open = Some(current);
        result.map_err(err)?;
        Ok(path)
    }
}

/// Opens a day's file for appending, creating it with its header row first if needed.
fn open_day_file(folder: &Path, path: &Path) -> std::io::Result<File> {
    if !path.exists() {
        std::fs::create_dir_all(folder)?;
        let header = encode_row(&CSV_HEADER.map(String::from))?;
        let tmp = folder.join(format!(
            ".promoter-audit-{}-{}.tmp",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(&tmp, &header)?;
        // A hard link appears complete (header included) or not at all, and fails when the
        // file exists, so concurrent creators cannot both write a header.
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(_) => {
                // File systems without hard links (some network shares): create it directly.
                match OpenOptions::new().append(true).create_new(true).open(path) {
                    Ok(mut f) => f.write_all(&header)?,
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    OpenOptions::new().append(true).open(path)
}

/// One CSV line (with its CRLF) for these values.
fn encode_row(values: &[String]) -> std::io::Result<Vec<u8>> {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::with_capacity(256));
    w.write_record(values).map_err(std::io::Error::other)?;
    w.into_inner()
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// The CSV values of an event, in [`CSV_HEADER`] order, made safe for spreadsheets.
pub fn csv_row(e: &AuditEvent) -> [String; 11] {
    let v = |s: &str| one_line(&neutralise(s));
    [
        e.time.format(CSV_TIME_FORMAT).to_string(),
        v(e.job_id.as_deref().unwrap_or("")),
        v(&e.app_id),
        v(&e.app_name),
        v(&e.event),
        v(&e.site),
        v(&e.stream),
        v(&e.target_app_id),
        v(&e.actor),
        v(&e.outcome),
        v(&e.detail),
    ]
}

/// Prefixes `'` to a value a spreadsheet would run as a formula.
pub fn neutralise(value: &str) -> Cow<'_, str> {
    match value.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r' | '＝' | '＋' | '－' | '＠') => {
            Cow::Owned(format!("'{value}"))
        }
        _ => Cow::Borrowed(value),
    }
}

/// Line breaks become spaces, so each row is one line.
fn one_line(value: &str) -> String {
    if value.contains(['\r', '\n']) {
        value.replace("\r\n", " ").replace(['\r', '\n'], " ")
    } else {
        value.to_string()
    }
}

/// `promoter history [--app ID]`: prints the most recent events from the store, oldest first.
pub async fn cli_history(settings: &Settings, app: Option<&str>, limit: u32) -> anyhow::Result<()> {
    let store = Store::open(settings).await?;
    let events = store.audit_list(app, limit).await?;
    if events.is_empty() {
        match app {
            Some(a) => println!("no audit events for app {a}"),
            None => println!("no audit events yet"),
        }
        return Ok(());
    }
    print!("{}", render_history(&events));
    println!(
        "{} event(s){}; the daily CSV files are in {}",
        events.len(),
        if events.len() as u32 >= limit {
            format!(" (the last {limit}; --limit N shows more)")
        } else {
            String::new()
        },
        settings.audit.folder.display()
    );
    Ok(())
}

/// The table `promoter history` prints.
pub fn render_history(events: &[AuditEvent]) -> String {
    let header = [
        "TIME (UTC)",
        "EVENT",
        "OUTCOME",
        "APP",
        "SITE/STREAM",
        "ACTOR",
        "JOB",
        "DETAIL",
    ];
    let rows: Vec<[String; 8]> = events
        .iter()
        .map(|e| {
            let place = match (e.site.as_str(), e.stream.as_str()) {
                ("", "") => String::new(),
                (site, "") => site.to_string(),
                ("", stream) => stream.to_string(),
                (site, stream) => format!("{site}/{stream}"),
            };
            let mut detail = one_line(&e.detail);
            if !e.target_app_id.is_empty() {
                detail = format!("{detail} [target app {}]", e.target_app_id);
            }
            [
                e.time.format("%Y-%m-%d %H:%M:%S").to_string(),
                e.event.clone(),
                e.outcome.clone(),
                if e.app_name.is_empty() {
                    e.app_id.clone()
                } else {
                    e.app_name.clone()
                },
                place,
                e.actor.clone(),
                e.job_id.clone().unwrap_or_default(),
                detail,
            ]
            .map(|c| one_line(&c))
        })
        .collect();
    crate::cli::render_table(header, &rows, 40)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn event(name: &str) -> AuditEvent {
        AuditEvent {
            time: Utc.with_ymd_and_hms(2024, 5, 1, 10, 0, 0).unwrap()
                + chrono::Duration::milliseconds(42),
            job_id: Some("j1".into()),
            app_id: "a1".into(),
            app_name: name.into(),
            event: "step".into(),
            site: "test".into(),
            stream: "Sales".into(),
            target_app_id: "t1".into(),
            actor: "CORP\\boss".into(),
            outcome: "ok".into(),
            detail: "promote:test:sales: done\r\nsecond line".into(),
        }
    }

    #[test]
    fn formulas_are_neutralised() {
        for v in ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "＝1"] {
            assert_eq!(neutralise(v), format!("'{v}"), "{v:?}");
        }
        for v in ["Sales", "1-2", "a=b", "", "'quoted"] {
            assert_eq!(neutralise(v), v);
        }
    }

    #[test]
    fn rows_are_one_line_in_header_order() {
        let row = csv_row(&event("=HYPERLINK(\"http://x\",\"y\")"));
        assert_eq!(row[0], "2024-05-01 10:00:00.042");
        assert_eq!(row[3], "'=HYPERLINK(\"http://x\",\"y\")");
        assert_eq!(row[10], "promote:test:sales: done second line");
        let line = String::from_utf8(encode_row(&row).unwrap()).unwrap();
        assert!(line.ends_with("\r\n"));
        assert_eq!(line.matches('\n').count(), 1);
        assert!(
            line.contains(",\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\","),
            "{line}"
        );
    }

    #[test]
    fn history_table() {
        let t = render_history(&[event("Verkäufe")]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("TIME (UTC)           EVENT  OUTCOME  APP"));
        assert!(lines[1].starts_with("2024-05-01 10:00:00  step   ok       Verkäufe  test/Sales"));
        assert!(lines[1].ends_with("second line [target app t1]"), "{t}");
    }
}
