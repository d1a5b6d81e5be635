//! Event intake end to end: the real `promoter serve` process against the QRS simulator.
//!
//! Each test starts its own simulated sites (in this process) and its own `promoter serve`
//! child process with a 1 s subscription interval, and reads the inbox through the store.
//! The PostgreSQL variants run when `TEST_POSTGRES_URL` is set.
//!
//! `acknowledgement_latency_benchmark` prints p50/p99/max acknowledgement latency, throughput
//! and peak RSS; `INTAKE_BENCH_RATE` (default 500/s) and `INTAKE_BENCH_SECONDS` (default 3)
//! set the load (run with `--nocapture` to see the numbers).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use promoter::sim::{self, Fault, Sim, SimOptions, SimSite};
use promoter::store::{InboxEntry, Store};
use serde_json::{Value, json};
use sqlx::Connection;

const APPROVER: &str = "INTERNAL\\approver";
/// An app that is not published: the promotion engine (running in `promoter serve`) evaluates
/// its changes and leaves it alone, so the tests see only what the intake did.
const UNPUBLISHED: &str = "Work in progress";

/// A running `promoter serve`; killed when dropped.
struct Promoter {
    child: Child,
    logs: PathBuf,
}

impl Promoter {
    fn start(sim: &Sim, db: &Db, extra_env: &[(&str, &str)]) -> Promoter {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_promoter"));
        cmd.arg("serve")
            .arg("--config")
            .arg(sim.config_path())
            .env("PROMOTER__SUBSCRIPTIONS__INTERVAL_SECONDS", "1")
            .env("PROMOTER__SUBSCRIPTIONS__SWEEP_INTERVAL_SECONDS", "3600")
            .env("PROMOTER__LOGGING__LEVEL", "info,promoter=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(url) = &db.pg_url {
            cmd.env("PROMOTER__DATA__DATABASE_URL", url);
        }
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        Promoter {
            child: cmd.spawn().unwrap(),
            logs: sim.dir().join("logs"),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process logged so far.
    fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(dir) = std::fs::read_dir(&self.logs) {
            let mut files: Vec<_> = dir.flatten().map(|e| e.path()).collect();
            files.sort();
            for f in files {
                out.push_str(&std::fs::read_to_string(f).unwrap_or_default());
            }
        }
        out
    }

    /// Peak resident set size (VmHWM), KiB.
    fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit.
    fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "promoter did not stop within {within:?} after SIGTERM\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Promoter {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- promoter log ---\n{}", self.logs());
        }
        self.kill_9();
    }
}

/// The database a test's promoter uses: SQLite in the simulator folder, or a fresh
/// PostgreSQL schema.
struct Db {
    sqlite_url: String,
    pg_url: Option<String>,
    pg_schema: Option<(String, String)>,
}

impl Db {
    fn sqlite(sim: &Sim) -> Db {
        Db {
            sqlite_url: format!(
                "sqlite://{}?mode=rwc",
                sim.dir().join("data").join("promoter.db").display()
            ),
            pg_url: None,
            pg_schema: None,
        }
    }

    async fn postgres(sim: &Sim, base: &str) -> Db {
        let schema = format!("intake_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(base).await.unwrap();
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let sep = if base.contains('?') { '&' } else { '?' };
        Db {
            pg_url: Some(format!("{base}{sep}options=-csearch_path%3D{schema}")),
            pg_schema: Some((base.to_string(), schema)),
            ..Db::sqlite(sim)
        }
    }

    fn url(&self) -> &str {
        self.pg_url.as_deref().unwrap_or(&self.sqlite_url)
    }

    async fn open(&self) -> Store {
        Store::open_url(self.url()).await.unwrap()
    }

    async fn drop_schema(&self) {
        if let Some((base, schema)) = &self.pg_schema {
            let mut conn = sqlx::PgConnection::connect(base).await.unwrap();
            sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(&mut conn)
                .await
                .unwrap();
        }
    }
}

fn postgres_url() -> Option<String> {
    std::env::var("TEST_POSTGRES_URL")
        .ok()
        .filter(|s| !s.is_empty())
}

async fn start_sim(dir: &Path) -> Sim {
    sim::start(SimOptions::new(dir, &["dev", "test"]))
        .await
        .unwrap()
}

/// Polls `f` every 50 ms until it returns `Some`, or fails with the promoter's log.
async fn eventually<T, F, Fut>(what: &str, within: Duration, p: &Promoter, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}\n--- promoter log ---\n{}",
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Our subscriptions on the site, by kind (`update`, `reload`, `publish`) -> callback URL.
fn our_subscriptions(site: &SimSite) -> Vec<(String, String)> {
    site.subscriptions()
        .into_iter()
        .filter(|s| s.callback_url.contains("/notify/"))
        .map(|s| {
            let kind = s
                .callback_url
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string();
            (kind, s.callback_url)
        })
        .collect()
}

fn our_subscriptions_handles(site: &SimSite) -> HashSet<String> {
    site.subscriptions()
        .into_iter()
        .filter(|s| s.callback_url.contains("/notify/"))
        .map(|s| s.handle)
        .collect()
}

/// Waits until the site holds exactly one subscription of each kind; returns the URLs.
async fn subscribed(site: &SimSite, p: &Promoter, within: Duration) -> HashMap<String, String> {
    eventually("one subscription of each kind", within, p, || async {
        let subs = our_subscriptions(site);
        let kinds: HashSet<_> = subs.iter().map(|(k, _)| k.as_str()).collect();
        (subs.len() == 3 && kinds == HashSet::from(["update", "reload", "publish"]))
            .then(|| subs.into_iter().collect())
    })
    .await
}

fn base_of(callback: &str) -> String {
    let i = callback.find("/notify/").unwrap();
    callback[..i].to_string()
}

async fn entries_for(store: &Store, app_id: &str) -> Vec<InboxEntry> {
    store
        .inbox_recent(100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.object_id == app_id)
        .collect()
}

fn app_id(site: &SimSite, name: &str) -> String {
    site.app_by_name(name)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no app {name}"))
        .id
}

fn change(app: &str, modified: &str) -> Value {
    json!({
        "changeType": 2,
        "objectType": "App",
        "objectID": app,
        "changedProperties": ["modifiedDate", "customProperties"],
        "engineID": "",
        "engineType": "",
        "originatorNodeID": "6b3a6fa8-6f3d-4211-9823-75976a88623d",
        "originatorHostName": "sim",
        "originatorContextID": null,
        "createdDate": "2024-11-19T07:37:20.031Z",
        "modifiedDate": modified,
        "schemaPath": "ExternalChangeInfo"
    })
}

fn run_cli(sim: &Sim, db: &Db, args: &[&str]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_promoter"));
    cmd.args(args).arg("--config").arg(sim.config_path());
    if let Some(url) = &db.pg_url {
        cmd.env("PROMOTER__DATA__DATABASE_URL", url);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "promoter {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_change_reaches_the_inbox() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path()).await;
    let dev = sim.site("dev").unwrap();
    let db = Db::sqlite(&sim);
    let p = Promoter::start(&sim, &db, &[]);
    let urls = subscribed(&dev, &p, Duration::from_secs(30)).await;
    let store = db.open().await;

    let app = app_id(&dev, UNPUBLISHED);
    dev.set_custom_properties(&app, &[("PromotionApproval", "Approve")], APPROVER)
        .unwrap();
    let modified = dev.app(&app).unwrap().modified_date;
    let entry = eventually(
        "the change in the inbox",
        Duration::from_secs(30),
        &p,
        || async {
            entries_for(&store, &app)
                .await
                .into_iter()
                .find(|e| e.source != "sweep")
        },
    )
    .await;
    assert_eq!(entry.object_type, "App");
    assert_eq!(entry.change_type, 2);
    assert_eq!(entry.modified_date.as_deref(), Some(modified.as_str()));

    // The operator commands show it.
    let inbox = run_cli(&sim, &db, &["inbox"]);
    assert!(inbox.contains(&app), "{inbox}");
    let subs = run_cli(&sim, &db, &["subscriptions"]);
    for url in urls.values() {
        assert!(subs.contains(url.as_str()), "{subs}");
    }
    assert!(
        subs.contains("Last successful subscription check"),
        "{subs}"
    );

    // Health and metrics.
    let base = base_of(&urls["update"]);
    let http = reqwest::Client::new();
    let health = http.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = http.get(format!("{base}/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["ready"], true, "{ready}");
    assert!(ready["last_subscription_check"].is_string(), "{ready}");
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("promoter_deliveries_received_total{endpoint=\"update\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("promoter_subscription_checks_total"),
        "{metrics}"
    );
    assert!(metrics.contains("promoter_inbox_depth"), "{metrics}");

    // Readiness follows the local site.
    dev.set_fault(Fault::Status {
        status: 503,
        count: 10_000,
        path_contains: Some("/qrs/about".into()),
        retry_after: None,
    });
    let ready = http.get(format!("{base}/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["database"], "ok", "{ready}");
    assert_ne!(ready["qrs"], "ok", "{ready}");
    dev.clear_faults();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_restart_is_detected_and_missed_approvals_are_swept() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path()).await;
    let dev = sim.site("dev").unwrap();
    let db = Db::sqlite(&sim);
    let p = Promoter::start(&sim, &db, &[]);
    let before = subscribed(&dev, &p, Duration::from_secs(30)).await;
    let store = db.open().await;
    let app = app_id(&dev, UNPUBLISHED);

    // Restart the site, and approve the app before the keeper has subscribed again (retry in
    // the unlikely case it was faster than us).
    let mut missed = false;
    for _ in 0..5 {
        dev.restart().await;
        dev.set_custom_properties(&app, &[("PromotionApproval", "Approve")], APPROVER)
            .unwrap();
        if our_subscriptions(&dev).is_empty() {
            missed = true;
            break;
        }
        dev.clear_custom_properties(&app, &["PromotionApproval"], APPROVER)
            .unwrap();
    }
    assert!(missed, "could not change the app while unsubscribed");
    let restarted = Instant::now();
    let modified = dev.app(&app).unwrap().modified_date;

    // Subscriptions are back long before the next slow sweep would find the gap (the check
    // runs every second here; the bound is generous because CI machines are shared).
    let after = subscribed(&dev, &p, Duration::from_secs(30)).await;
    assert!(restarted.elapsed() < Duration::from_secs(30));
    assert_eq!(base_of(&after["update"]), base_of(&before["update"]));

    // The approval nobody was told about is found by the sweep after the restart.
    let entry = eventually(
        "the swept app in the inbox",
        Duration::from_secs(30),
        &p,
        || async {
            entries_for(&store, &app)
                .await
                .into_iter()
                .find(|e| e.source == "sweep")
        },
    )
    .await;
    assert_eq!(entry.modified_date.as_deref(), Some(modified.as_str()));
    assert_eq!(entry.change_type, 0);
    assert!(
        entries_for(&store, &app)
            .await
            .iter()
            .all(|e| e.source == "sweep" || e.modified_date.as_deref() != Some(modified.as_str())),
        "no notification of the missed change should have reached us"
    );

    // Renewals never accumulate: over several intervals at most two per kind exist for a
    // moment (a new one registered before the old one is deleted), and it settles at one each.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let n = our_subscriptions(&dev).len();
        assert!(n <= 6, "{n} subscriptions: {:?}", our_subscriptions(&dev));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    subscribed(&dev, &p, Duration::from_secs(30)).await;
    // The store holds exactly the handles the site holds.
    eventually(
        "stored handles equal the site's",
        Duration::from_secs(30),
        &p,
        || async {
            let site: HashSet<String> = our_subscriptions_handles(&dev);
            let stored: HashSet<String> = store
                .subscriptions()
                .await
                .unwrap()
                .into_iter()
                .map(|s| s.handle)
                .collect();
            (site == stored && site.len() == 3).then_some(())
        },
    )
    .await;

    let base = base_of(&after["update"]);
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let gaps: u64 = metrics
        .lines()
        .find(|l| l.starts_with("promoter_subscription_gaps_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(gaps >= 2, "start and restart: {metrics}");
    assert!(
        metrics.contains("promoter_sweeps_total{outcome=\"ok\"}"),
        "{metrics}"
    );
    assert!(
        p.logs()
            .contains("sweeping for approvals that may have been missed"),
        "the restart is named in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_made_while_stopped_is_found_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path()).await;
    let dev = sim.site("dev").unwrap();
    let approved = app_id(&dev, UNPUBLISHED);
    let untouched = app_id(&dev, "Big Picture");
    dev.set_custom_properties(
        &approved,
        &[
            ("PromoteToServer", "test - Overwrite"),
            ("PromoteToStream", "Sales"),
            ("PromotionApproval", "Approve"),
        ],
        APPROVER,
    )
    .unwrap();
    let modified = dev.app(&approved).unwrap().modified_date;
    let db = Db::sqlite(&sim);
    let mut p = Promoter::start(&sim, &db, &[]);
    subscribed(&dev, &p, Duration::from_secs(30)).await;
    let store = db.open().await;
    let entry = eventually("the swept app", Duration::from_secs(30), &p, || async {
        entries_for(&store, &approved).await.into_iter().next()
    })
    .await;
    assert_eq!(entry.source, "sweep");
    assert_eq!(entry.modified_date.as_deref(), Some(modified.as_str()));
    assert_eq!(entry.payload["PromotionApproval"], json!(["Approve"]));
    assert!(entries_for(&store, &untouched).await.is_empty());

    // SIGTERM stops it gracefully.
    let status = p.terminate(Duration::from_secs(20));
    assert!(status.success(), "{status:?}\n{}", p.logs());
    assert!(p.logs().contains("stopped"));
    // A graceful stop deletes the subscriptions: QRS does not call a listener that is gone.
    assert!(
        our_subscriptions(&dev).is_empty(),
        "{:?}",
        our_subscriptions(&dev)
    );
    assert!(store.subscriptions().await.unwrap().is_empty());

    // The next start sweeps again: the unchanged app is a duplicate, not a new entry.
    let p = Promoter::start(&sim, &db, &[]);
    subscribed(&dev, &p, Duration::from_secs(30)).await;
    eventually("the second sweep", Duration::from_secs(30), &p, || async {
        let e = entries_for(&store, &approved).await;
        (e.len() == 1 && e[0].duplicates >= 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_duplicate_deliveries_make_one_entry() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path()).await;
    let dev = sim.site("dev").unwrap();
    let db = Db::sqlite(&sim);
    let p = Promoter::start(&sim, &db, &[]);
    let urls = subscribed(&dev, &p, Duration::from_secs(30)).await;
    let store = db.open().await;
    let app = app_id(&dev, UNPUBLISHED);

    dev.set_fault(Fault::DuplicateDeliveries(100));
    dev.set_custom_properties(&app, &[("PromotionApproval", "Deny")], APPROVER)
        .unwrap();
    let entry = eventually(
        "99 duplicates counted",
        Duration::from_secs(20),
        &p,
        || async {
            entries_for(&store, &app)
                .await
                .into_iter()
                .find(|e| e.duplicates >= 99)
        },
    )
    .await;
    dev.clear_faults();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let entries = entries_for(&store, &app).await;
    assert_eq!(entries.len(), 1, "{entries:#?}");
    assert_eq!(entries[0].id, entry.id);

    let metrics = reqwest::get(format!("{}/metrics", base_of(&urls["update"])))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dups: u64 = metrics
        .lines()
        .find(|l| l.starts_with("promoter_delivery_duplicates_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(dups >= 99, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_deliveries_are_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path()).await;
    let dev = sim.site("dev").unwrap();
    let db = Db::sqlite(&sim);
    let p = Promoter::start(&sim, &db, &[]);
    let urls = subscribed(&dev, &p, Duration::from_secs(30)).await;
    let store = db.open().await;
    let update = urls["update"].clone();
    let base = base_of(&update);
    let http = reqwest::Client::new();
    let stored = || async { store.inbox_recent(100_000).await.unwrap().len() };
    let before = stored().await;
    let app = uuid::Uuid::new_v4().to_string();
    let good = json!([change(&app, "2024-01-01T00:00:00.000Z")]).to_string();

    let huge = {
        let records: Vec<Value> = (0..6000)
            .map(|i| {
                change(
                    &uuid::Uuid::new_v4().to_string(),
                    &format!("2024-01-01T00:00:{i}Z"),
                )
            })
            .collect();
        json!(records).to_string()
    };
    assert!(huge.len() > 1024 * 1024);
    let cases: Vec<(String, String, u16)> = vec![
        (format!("{base}/notify/not-the-secret/app/update"), good.clone(), 404),
        (format!("{base}/notify/app/update"), good.clone(), 404),
        (format!("{base}/notify/"), good.clone(), 404),
        (update.replace("/app/update", "/app/delete"), good.clone(), 404),
        (update.clone(), "{not json".into(), 400),
        (update.clone(), "{\"objectID\": 1}".into(), 400),
        (
            update.clone(),
            json!([{"changeType": "2", "objectType": 7, "objectID": app}]).to_string(),
            400,
        ),
        (
            update.clone(),
            json!([{"changeType": 2, "objectType": "App", "objectID": 12345}]).to_string(),
            400,
        ),
        (
            update.clone(),
            json!([change(&app, "2024-01-01T00:00:00.000Z"), {"changeType": 2, "objectType": "Stream", "objectID": app}]).to_string(),
            400,
        ),
        (update.clone(), "[]".into(), 400),
        (update.clone(), huge, 413),
    ];
    for (url, body, status) in &cases {
        let r = http
            .post(url)
            .header("Content-Type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let got = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(got, *status, "{} -> {text}", &body[..body.len().min(80)]);
        if *status == 400 {
            assert!(!text.trim().is_empty() && text.len() < 300, "{text}");
        }
    }
    let r = http.get(&update).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(stored().await, before, "nothing may be stored");

    // The good delivery is stored (so the check above could have failed).
    let r = http.post(&update).body(good).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ack: Value = r.json().await.unwrap();
    assert_eq!(ack, json!({"accepted": 1, "new": 1, "duplicates": 0}));
    assert_eq!(stored().await, before + 1);
    assert_eq!(entries_for(&store, &app).await.len(), 1);

    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (reason, n) in [
        ("wrong_secret", 3),
        ("unknown_endpoint", 1),
        ("malformed_json", 1),
        ("not_an_array", 1),
        ("invalid_record", 3),
        ("empty", 1),
        ("too_large", 1),
        ("method", 1),
    ] {
        let line = format!("promoter_deliveries_rejected_total{{reason=\"{reason}\"}} {n}");
        assert!(metrics.contains(&line), "{line}\n{metrics}");
    }
    // The secret never reaches the log.
    let secret = update.split('/').rev().nth(2).unwrap();
    assert!(secret.len() >= 32);
    assert!(!p.logs().contains(secret));
}

/// Sends deliveries (each a new app id) from `senders` tasks until `stop`; returns the acked ids.
fn flood(
    url: String,
    senders: usize,
    stop: tokio_util::sync::CancellationToken,
    acks: Arc<std::sync::atomic::AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    (0..senders)
        .map(|_| {
            let (http, url, stop, acks) = (http.clone(), url.clone(), stop.clone(), acks.clone());
            tokio::spawn(async move {
                let mut acked = Vec::new();
                while !stop.is_cancelled() {
                    let ids: Vec<String> = (0..1 + acked.len() % 3)
                        .map(|_| uuid::Uuid::new_v4().to_string())
                        .collect();
                    let body: Vec<Value> = ids
                        .iter()
                        .map(|id| change(id, "2024-01-01T00:00:00.000Z"))
                        .collect();
                    match http.post(&url).json(&body).send().await {
                        Ok(r) if r.status() == 200 => {
                            acks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            acked.extend(ids)
                        }
                        _ => break,
                    }
                }
                acked
            })
        })
        .collect()
}

async fn kill_9_loses_no_acknowledged_delivery(db_of: impl AsyncFnOnce(&Sim) -> Db) {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path()).await;
    let dev = sim.site("dev").unwrap();
    let db = db_of(&sim).await;
    let mut p = Promoter::start(&sim, &db, &[]);
    let urls = subscribed(&dev, &p, Duration::from_secs(30)).await;

    let stop = tokio_util::sync::CancellationToken::new();
    let acks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks = flood(urls["update"].clone(), 8, stop.clone(), acks.clone());
    let store = db.open().await;
    // Kill while deliveries are in flight, after a few hundred acknowledgements.
    eventually(
        "300 acknowledgements",
        Duration::from_secs(30),
        &p,
        || async { (acks.load(std::sync::atomic::Ordering::Relaxed) >= 300).then_some(()) },
    )
    .await;
    p.kill_9();
    let stale = our_subscriptions_handles(&dev);
    assert_eq!(
        stale.len(),
        3,
        "a killed promoter leaves its subscriptions behind"
    );
    stop.cancel();
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert!(acked.len() >= 300, "{}", acked.len());
    let stored: HashSet<String> = store
        .inbox_recent(1_000_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.object_id)
        .collect();
    let missing: Vec<_> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged records lost",
        missing.len(),
        acked.len()
    );

    // It starts again on the same database and carries on; the handles of the killed run are
    // deleted, not accumulated.
    let p = Promoter::start(&sim, &db, &[]);
    eventually(
        "the killed run's handles replaced",
        Duration::from_secs(20),
        &p,
        || async {
            let now = our_subscriptions_handles(&dev);
            (now.len() == 3 && now.is_disjoint(&stale)).then_some(())
        },
    )
    .await;
    subscribed(&dev, &p, Duration::from_secs(30)).await;
    assert!(store.inbox_recent(1_000_000).await.unwrap().len() >= acked.len());
    store.close().await;
    drop(p);
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_kill_9_loses_no_acknowledged_delivery() {
    kill_9_loses_no_acknowledged_delivery(async |sim: &Sim| Db::sqlite(sim)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_kill_9_loses_no_acknowledged_delivery() {
    let Some(base) = postgres_url() else {
        eprintln!("TEST_POSTGRES_URL is not set: PostgreSQL variant skipped");
        return;
    };
    kill_9_loses_no_acknowledged_delivery(async |sim: &Sim| Db::postgres(sim, &base).await).await;
}

/// Open-loop load: `rate` deliveries per second for `seconds`, each on its own task.
async fn bench(db_of: impl AsyncFnOnce(&Sim) -> Db, label: &str) {
    let rate: u64 = std::env::var("INTAKE_BENCH_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let seconds: u64 = std::env::var("INTAKE_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path()).await;
    let dev = sim.site("dev").unwrap();
    let db = db_of(&sim).await;
    let p = Promoter::start(&sim, &db, &[("PROMOTER__LOGGING__LEVEL", "warn")]);
    let urls = subscribed(&dev, &p, Duration::from_secs(30)).await;
    let url = urls["update"].clone();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    // Warm the connection pool.
    for _ in 0..20 {
        let id = uuid::Uuid::new_v4().to_string();
        http.post(&url)
            .json(&json!([change(&id, "warm")]))
            .send()
            .await
            .unwrap();
    }
    let store = db.open().await;
    let baseline = store.inbox_recent(1_000_000).await.unwrap().len();

    let total = rate * seconds;
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for _ in 0..total {
        tick.tick().await;
        let (http, url) = (http.clone(), url.clone());
        let (latencies, failures) = (latencies.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let id = uuid::Uuid::new_v4().to_string();
            let body = json!([change(&id, "2024-01-01T00:00:00.000Z")]);
            let t = Instant::now();
            match http.post(&url).json(&body).send().await {
                Ok(r) if r.status() == 200 => latencies.lock().unwrap().push(t.elapsed()),
                Ok(r) => failures.lock().unwrap().push(r.status().to_string()),
                Err(e) => failures.lock().unwrap().push(e.to_string()),
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let mut l = latencies.lock().unwrap().clone();
    l.sort();
    let pct = |q: f64| l[((l.len() as f64 * q) as usize).min(l.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    eprintln!(
        "intake benchmark ({label}): {} deliveries at {rate}/s for {seconds} s: \
         ack latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; throughput {:.0}/s; \
         peak RSS {} MiB",
        l.len(),
        ms(pct(0.50)),
        ms(pct(0.99)),
        ms(*l.last().unwrap()),
        l.len() as f64 / elapsed.as_secs_f64(),
        p.peak_rss_kib().unwrap_or(0) / 1024
    );
    // Every acknowledged delivery is in the store.
    assert_eq!(
        store.inbox_recent(1_000_000).await.unwrap().len(),
        baseline + l.len()
    );
    store.close().await;
    drop(p);
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgement_latency_benchmark() {
    bench(async |sim: &Sim| Db::sqlite(sim), "SQLite").await;
    if let Some(base) = postgres_url() {
        bench(
            async |sim: &Sim| Db::postgres(sim, &base).await,
            "PostgreSQL",
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_speaks_https_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path()).await;
    let dev = sim.site("dev").unwrap();
    let key = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let cert_path = dir.path().join("listener.pem");
    let key_path = dir.path().join("listener_key.pem");
    std::fs::write(&cert_path, key.cert.pem()).unwrap();
    std::fs::write(&key_path, key.signing_key.serialize_pem()).unwrap();
    let db = Db::sqlite(&sim);
    let p = Promoter::start(
        &sim,
        &db,
        &[
            ("PROMOTER__LISTENER__TLS_CERT", cert_path.to_str().unwrap()),
            ("PROMOTER__LISTENER__TLS_KEY", key_path.to_str().unwrap()),
        ],
    );
    let urls = subscribed(&dev, &p, Duration::from_secs(30)).await;
    let base = base_of(&urls["update"]);
    assert!(base.starts_with("https://127.0.0.1:"), "{base}");
    promoter::tls::init();
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(key.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let r = http.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let app = uuid::Uuid::new_v4().to_string();
    let r = http
        .post(&urls["update"])
        .json(&json!([change(&app, "2024-01-01T00:00:00.000Z")]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let store = db.open().await;
    assert_eq!(entries_for(&store, &app).await.len(), 1);
    // Plain HTTP is not answered.
    let plain = base.replace("https://", "http://");
    assert!(
        reqwest::get(format!("{plain}/health"))
            .await
            .map(|r| !r.status().is_success())
            .unwrap_or(true)
    );
}
