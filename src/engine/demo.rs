//! `promoter demo`: a complete promotion on simulated sites, narrated, in one process.
//!
//! It starts simulated dev, test and prod sites (QRS over mutual TLS, as real as the tests
//! use them), runs `promoter serve` on their generated configuration (SQLite, mail as `.eml`
//! files, versions in a folder, the audit trail as CSV), then acts as an approver in the QMC
//! would: it sets the promotion properties on "Sales Dashboard" on dev. It narrates what the
//! promoter does until the app is published on test and prod, and says where to look.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::sim::{self, SimOptions};
use crate::store::{JobRow, Store};

/// The app the demo promotes (from the simulator's default fixture).
const APP: &str = "Sales Dashboard";
/// Who approves it.
const APPROVER: &str = "INTERNAL\\approver";
/// How long the demo waits for the promotion.
const DEADLINE: Duration = Duration::from_secs(120);

/// Runs the narrated demo; returns whether the app reached every target.
pub async fn run(dir: Option<&Path>, keep_running: bool) -> anyhow::Result<bool> {
    crate::tls::init();
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => std::env::temp_dir().join(format!(
            "promoter-demo-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        )),
    };
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the demo folder {}", dir.display()))?;
    let dir = dir.canonicalize().unwrap_or(dir);
    println!("Promoter demo in {}", dir.display());
    println!();

    let sim = sim::start(SimOptions::new(dir.clone(), &["dev", "test", "prod"]))
        .await
        .context("cannot start the simulated sites")?;
    for s in sim.sites() {
        println!(
            "  simulated site {:<5} https://localhost:{} (QRS, mutual TLS)",
            s.alias(),
            s.port()
        );
    }
    let settings = Settings::load(&sim.config_path())
        .with_context(|| format!("cannot load {}", sim.config_path().display()))?;
    let _log = crate::telemetry::init(&settings.logging, None).map_err(anyhow::Error::msg)?;
    let shutdown = CancellationToken::new();
    let serve = tokio::spawn(crate::serve::run(settings.clone(), shutdown.clone()));

    let outcome = narrate(&sim, &settings, &serve).await;
    let ok = match &outcome {
        Ok(()) => true,
        Err(e) => {
            println!();
            println!("The demo did not complete: {e:#}");
            false
        }
    };
    println!();
    print_mail_and_versions(&settings).await;
    print_where_to_look(&settings, &dir, &sim.config_path());

    if keep_running && ok {
        println!();
        println!("The simulated sites and the promoter keep running. Try, in another terminal:");
        let cfg = sim.config_path();
        println!("  promoter --config {} jobs", cfg.display());
        println!("  promoter --config {} inbox", cfg.display());
        println!("  promoter --config {} history", cfg.display());
        println!(
            "  The simulator's admin API: {} (apps, properties, reloads, faults)",
            sim.admin_url()
        );
        println!("Press Ctrl-C to stop.");
        let _ = tokio::signal::ctrl_c().await;
    }
    shutdown.cancel();
    match tokio::time::timeout(Duration::from_secs(30), serve).await {
        Ok(Ok(Err(e))) => tracing::warn!("the promoter stopped with an error: {e:#}"),
        Ok(Err(e)) => tracing::warn!("the promoter task failed: {e}"),
        _ => {}
    }
    sim.shutdown().await;
    Ok(ok)
}

fn secs(start: Instant) -> String {
    format!("[{:>5.1}s]", start.elapsed().as_secs_f64())
}

/// Approves the app, then tells what happens until its job ends and the targets are checked.
async fn narrate(
    sim: &sim::Sim,
    settings: &Settings,
    serve: &tokio::task::JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let dev = sim.site("dev").context("no dev site")?;
    let start = Instant::now();
    let deadline = start + DEADLINE;
    println!();
    println!("Waiting for the promoter to subscribe to changes on dev...");
    while dev.subscriptions().is_empty() {
        if serve.is_finished() {
            anyhow::bail!("the promoter stopped at start; see the log folder");
        }
        if Instant::now() > deadline {
            anyhow::bail!("the promoter did not subscribe on dev within {DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "{} the promoter listens; QRS on dev will call it for every app change",
        secs(start)
    );

    let app = dev
        .app_by_name(APP)
        .into_iter()
        .find(|a| a.published)
        .with_context(|| format!("the simulated dev site has no published \"{APP}\""))?;
    let checksum = dev.content_checksum(&app.id).await?;
    let targets: Vec<(String, String)> = ["test", "prod"]
        .iter()
        .filter_map(|alias| {
            let site = sim.site(alias)?;
            let id = site
                .apps_in_stream("Sales")
                .into_iter()
                .find(|a| a.name == APP)?
                .id;
            Some((alias.to_string(), id))
        })
        .collect();
    println!(
        "{} \"{APP}\" ({}) is published in stream \"Sales\" on dev, owned by {}",
        secs(start),
        app.id,
        app.owner
    );
    for (alias, id) in &targets {
        println!(
            "         {alias} already has \"{APP}\" in Sales as app {id}: it will be replaced in place"
        );
    }
    println!();
    println!(
        "{} As {APPROVER}, in the QMC, set on \"{APP}\":",
        secs(start)
    );
    let props = [
        ("PromoteToServer", "test - Overwrite"),
        ("PromoteToServer", "prod - Overwrite"),
        ("PromoteToStream", "Sales"),
        ("PromotionS3Versioning", "True"),
        ("PromotionApproval", "Approve"),
    ];
    for (k, v) in props {
        println!("           {k} = {v}");
    }
    dev.set_custom_properties(&app.id, &props, APPROVER)?;
    println!();

    let store = Store::open(settings).await?;
    let job = follow(&store, &app.id, start, deadline, serve).await?;
    println!();
    println!(
        "{} job {} ended: {}",
        secs(start),
        job.id,
        job.status.as_str().to_uppercase()
    );
    if job.status != crate::store::JobStatus::Succeeded {
        anyhow::bail!(
            "the job ended {}: {}",
            job.status,
            job.last_error.unwrap_or_default()
        );
    }
    for (alias, id) in &targets {
        let site = sim.site(alias).context("site gone")?;
        let now = site.app(id).context("the target app disappeared")?;
        let same = site.content_checksum(id).await? == checksum;
        println!(
            "         {alias}: \"{}\" in {} is still app {id}, content {} dev's",
            now.name,
            now.stream.as_deref().unwrap_or("(no stream)"),
            if same {
                "identical to"
            } else {
                "DIFFERENT from"
            }
        );
        if !same || !now.published {
            anyhow::bail!("the app on {alias} is not the promoted one");
        }
    }
    let copy = dev
        .app_by_name(APP)
        .into_iter()
        .find(|a| !a.published)
        .map(|a| format!("app {} in {}'s work", a.id, a.owner))
        .unwrap_or_else(|| "none".into());
    println!("         dev: the published app was unpublished; the owner's copy is {copy}");
    Ok(())
}

/// Prints the decision, each step as it ends (and long ones as they start), mail and versions,
/// in time order, until the job of `app_id` ends.
async fn follow(
    store: &Store,
    app_id: &str,
    start: Instant,
    deadline: Instant,
    serve: &tokio::task::JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<JobRow> {
    let t0 = chrono::Utc::now().timestamp_millis() - start.elapsed().as_millis() as i64;
    let stamp = |ms: i64| format!("[{:>5.1}s]", (ms - t0).max(0) as f64 / 1000.0);
    let mut printed: HashSet<String> = HashSet::new();
    loop {
        if Instant::now() > deadline {
            anyhow::bail!(
                "the promotion did not finish within {DEADLINE:?}; `promoter jobs` shows where it is"
            );
        }
        if serve.is_finished() {
            anyhow::bail!("the promoter stopped unexpectedly; see the log folder");
        }
        let mut items: Vec<(i64, String, String)> = Vec::new();
        for (i, e) in store
            .audit_list(Some(app_id), 1000)
            .await?
            .iter()
            .enumerate()
        {
            let text = match e.event.as_str() {
                "decision" => format!(
                    "decision: {} (the app was changed by {}): {}",
                    e.outcome, e.actor, e.detail
                ),
                "email" => format!("mail {}: {}", e.outcome, e.detail),
                "version" => format!("version stored: {}", e.detail),
                _ => continue,
            };
            items.push((e.time.timestamp_millis(), format!("audit:{i}"), text));
        }
        let jobs = store.jobs_list(Some(app_id), 10).await?;
        let job = jobs.iter().find(|j| j.kind == "promote");
        if let Some(job) = job {
            for st in store.steps(&job.id).await? {
                match st.finished_at {
                    None if st.outcome == "running" => items.push((
                        st.started_at,
                        format!("run:{}", st.step_key),
                        format!("  ... {}", st.detail),
                    )),
                    Some(at) => {
                        let note = step_summary(&st.result);
                        let detail = if st.detail.is_empty() {
                            st.step_key.clone()
                        } else {
                            st.detail.clone()
                        };
                        items.push((
                            at,
                            format!("step:{}:{}", st.step_key, st.outcome),
                            format!(
                                "  {:<8} {detail}{}",
                                st.outcome,
                                if note.is_empty() {
                                    String::new()
                                } else {
                                    format!(" -> {note}")
                                }
                            ),
                        ));
                    }
                    None => {}
                }
            }
        }
        items.sort_by_key(|(t, _, _)| *t);
        for (t, id, text) in items {
            if printed.insert(id) {
                println!("{} {text}", stamp(t));
            }
        }
        if let Some(job) = job
            && job.status.is_final()
        {
            return Ok(job.clone());
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// One line for a step's recorded result.
fn step_summary(result: &serde_json::Value) -> String {
    let s = |k: &str| result.get(k).and_then(serde_json::Value::as_str);
    if let Some(e) = s("error") {
        return e.to_string();
    }
    if let (Some(action), Some(id)) = (s("action"), s("app_id")) {
        return format!("{action} app {id}");
    }
    if let Some(n) = s("note").filter(|n| !n.is_empty()) {
        return n.to_string();
    }
    if let Some(b) = result.get("bytes").and_then(serde_json::Value::as_u64) {
        return format!("{b} bytes");
    }
    String::new()
}

/// Shows the messages written by the file transport (recipients and subject) and the versions
/// stored, so the demo ends with what an owner and an administrator would see.
async fn print_mail_and_versions(settings: &Settings) {
    let mut mails: Vec<PathBuf> = std::fs::read_dir(&settings.email.folder)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    mails.retain(|p| p.extension().is_some_and(|x| x == "eml"));
    mails.sort();
    println!("Emails ({}):", mails.len());
    for path in &mails {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let header = |name: &str| {
            text.lines()
                .take_while(|l| !l.is_empty())
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .unwrap_or("")
                .to_string()
        };
        println!("  to {:<28} subject: {}", header("To:"), header("Subject:"));
    }
    if let Ok(Some(store)) = crate::versioning::VersionStore::from_settings(settings).await {
        let apps: Vec<String> = std::fs::read_dir(&settings.versioning.folder)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        for app in apps {
            if let Ok(versions) = store.list(&app).await {
                println!("Versions of app {app}:");
                print!("{}", crate::versioning::render_table(&versions));
            }
        }
    }
    println!();
}

fn print_where_to_look(settings: &Settings, dir: &Path, config: &Path) {
    let db = if settings.data.is_postgres() {
        "PostgreSQL (data.database_url)".to_string()
    } else {
        settings.data.dir.join("promoter.db").display().to_string()
    };
    let list = |p: &PathBuf| -> String {
        let mut names: Vec<String> = std::fs::read_dir(p)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        if names.is_empty() {
            String::new()
        } else {
            format!(" ({})", names.join(", "))
        }
    };
    println!("Where to look (everything is in {}):", dir.display());
    println!(
        "  mail (.eml files):   {}{}",
        settings.email.folder.display(),
        list(&settings.email.folder)
    );
    println!(
        "  versions:            {} (one folder per source app id)",
        settings.versioning.folder.display()
    );
    println!(
        "  audit trail (CSV):   {}{}",
        settings.audit.folder.display(),
        list(&settings.audit.folder)
    );
    println!("  database (SQLite):   {db}");
    if let Some(logs) = &settings.logging.folder {
        println!("  log files:           {}", logs.display());
    }
    println!(
        "  configuration:       {} (try `promoter --config {} jobs`)",
        config.display(),
        config.display()
    );
}
