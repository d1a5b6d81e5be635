//! `promoter promote`, `promoter jobs` and `promoter restore`: the durable executor run from
//! the command line. A command creates its job in the store and then works as one more runner
//! until that job is finished, so it is recorded, resumable and audited like any other (if
//! `promoter serve` takes the job first, the command waits for it and reports).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::executor::{Engine, RESTORE_KIND, RestoreJob, RestoreSpec};
use super::model::{Command, Decision, Mode, Owner, Plan, PlanKind, Target, Trigger};
use super::{progress, snapshot, worker};
use crate::config::Settings;
use crate::store::{JobRow, JobStatus, NewJob, Store};

/// `promoter promote --app ID`: decides for the app now (trigger `manual`) and runs the job
/// with progress bars. Returns whether the job succeeded.
pub async fn promote(settings: &Settings, app: &str) -> anyhow::Result<bool> {
    crate::telemetry::init_console("warn");
    let app = app.trim();
    let settings = Arc::new(settings.clone());
    let store = Store::open(&settings).await?;
    let engine = Engine::new(settings.clone(), store.clone())
        .await?
        .with_progress(progress::bars());
    let reader = engine.sites().local().reader();
    let snap = snapshot::load(&reader, app).await.map_err(|e| {
        if e.is_not_found() {
            anyhow::anyhow!(
                "there is no app {app} on the local site \"{}\"",
                settings.local.alias
            )
        } else {
            anyhow::anyhow!("cannot read app {app} on the local site: {e}")
        }
    })?;
    let (decision, job) = worker::decide_and_enqueue(&engine, &snap, Trigger::Manual)
        .await
        .map_err(|e| anyhow::anyhow!("cannot record the job: {}", e.message()))?;
    let plan = match decision {
        Decision::Nothing(reason) => {
            println!(
                "Nothing to do for \"{}\" ({}): {reason}.",
                snap.name, snap.id
            );
            return Ok(false);
        }
        Decision::Plan(p) => p,
    };
    let Some((job_id, _)) = job else {
        anyhow::bail!("the decision made no job");
    };
    println!(
        "{} \"{}\" ({}) as job {job_id}:",
        plan.kind, plan.app_name, plan.app_id
    );
    for (i, c) in plan.commands.iter().enumerate() {
        println!("  {:>2}. {c}", i + 1);
    }
    let row = drive(&engine, &job_id).await?;
    println!();
    print_job(&store, &row).await?;
    Ok(row.status == JobStatus::Succeeded)
}

/// `promoter restore`: puts a stored version back on a site and stream through the executor.
pub async fn restore(
    settings: &Settings,
    app: &str,
    version: &str,
    to: &str,
    stream: &str,
    duplicate: bool,
) -> anyhow::Result<bool> {
    crate::telemetry::init_console("warn");
    let app = app.trim();
    let Some(site) = settings.remote(to) else {
        anyhow::bail!(
            "\"{to}\" is not a configured target site (configured: {})",
            settings.remote_aliases_quoted()
        );
    };
    let versions = crate::versioning::VersionStore::new(settings).await?;
    let info = versions
        .get(app, version)
        .await
        .with_context(|| format!("cannot find version {version} of app {app}"))?;
    let settings = Arc::new(settings.clone());
    let store = Store::open(&settings).await?;
    let engine = Engine::new(settings.clone(), store.clone())
        .await?
        .with_progress(progress::bars());
    let mode = if duplicate {
        Mode::Duplicate
    } else {
        Mode::Overwrite
    };
    let spec = RestoreSpec {
        app_id: app.to_string(),
        version_id: version.to_string(),
        site: site.alias.clone(),
        stream: stream.trim().to_string(),
        mode,
    };
    let job = restore_job(&spec, &info.meta.app_name);
    let (job_id, _) = store
        .job_create(&NewJob {
            key: format!(
                "restore|{}|{}|{}",
                spec.app_id,
                spec.version_id,
                uuid::Uuid::new_v4()
            ),
            app_id: spec.app_id.clone(),
            app_name: info.meta.app_name.clone(),
            trigger: "cli".into(),
            kind: RESTORE_KIND.into(),
            plan: serde_json::to_value(&job)?,
        })
        .await?;
    println!(
        "Restoring version {version} of \"{}\" ({app}) to site \"{}\", stream \"{}\" ({mode}) as job {job_id}",
        info.meta.app_name, site.alias, spec.stream
    );
    let row = drive(&engine, &job_id).await?;
    println!();
    print_job(&store, &row).await?;
    Ok(row.status == JobStatus::Succeeded)
}

/// The plan a restore runs: the stored version takes the export's place.
pub fn restore_job(spec: &RestoreSpec, app_name: &str) -> RestoreJob {
    let promote = Command::PromoteTo {
        site: spec.site.clone(),
        stream_name: spec.stream.clone(),
        mode: spec.mode,
    };
    RestoreJob {
        restore: spec.clone(),
        plan: Plan {
            kind: PlanKind::Promote,
            trigger: Trigger::Manual,
            app_id: spec.app_id.clone(),
            app_name: app_name.to_string(),
            modified_date: String::new(),
            owner: Owner {
                id: String::new(),
                directory: String::new(),
                user_id: String::new(),
                name: String::new(),
                email: None,
            },
            source_stream: None,
            approver: None,
            targets: vec![Target {
                site: spec.site.clone(),
                stream: spec.stream.clone(),
                mode: spec.mode,
            }],
            versioned: false,
            unpublish: false,
            commands: vec![
                Command::ExportSource { skip_data: false },
                promote,
                Command::CleanUp,
            ],
            notes: vec![format!("restore of version {}", spec.version_id)],
        },
    }
}

/// Works as a runner until job `job_id` is finished; returns it. Ctrl-C interrupts (the job
/// stays resumable).
pub async fn drive(engine: &Engine, job_id: &str) -> anyhow::Result<JobRow> {
    let store = engine.store();
    let shutdown = CancellationToken::new();
    let ctrl_c = {
        let s = shutdown.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                s.cancel();
            }
        })
    };
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let runner = format!("cli:{}:{}", std::process::id(), &tag[..8]);
    let mut said_waiting = false;
    let result = loop {
        let Some(row) = store.job_get(job_id).await? else {
            break Err(anyhow::anyhow!("job {job_id} disappeared from the store"));
        };
        if row.status.is_final() {
            break Ok(row);
        }
        if shutdown.is_cancelled() {
            break Err(anyhow::anyhow!(
                "interrupted; job {job_id} resumes where it stopped with `promoter serve` or the next run"
            ));
        }
        if let Some(claimed) = store
            .job_claim(
                &runner,
                chrono::Utc::now().timestamp_millis(),
                worker::lease_ms(engine.settings()),
            )
            .await?
        {
            if claimed.id != job_id {
                println!(
                    "(running the waiting job {} of \"{}\" first)",
                    claimed.id, claimed.app_name
                );
            }
            let id = claimed.id.clone();
            let outcome = worker::run_claimed(engine, claimed, &runner, &shutdown).await;
            if id == job_id
                && let super::executor::JobOutcome::RetryAt(at) = outcome
            {
                let secs = (at - chrono::Utc::now().timestamp_millis()).max(0) / 1000;
                println!(
                    "A retryable failure; trying again in {secs}s (Ctrl-C leaves it to `promoter serve`)."
                );
            }
            continue;
        }
        if !said_waiting && row.status == JobStatus::Running {
            println!(
                "Job {job_id} is being run by another Promoter (`promoter serve`); waiting for it."
            );
            said_waiting = true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
    };
    ctrl_c.abort();
    result
}

/// `promoter jobs [--app ID]`: the most recent jobs with their steps, attempts and errors.
pub async fn jobs(settings: &Settings, app: Option<&str>) -> anyhow::Result<()> {
    let store = Store::open(settings).await?;
    let rows = store.jobs_list(app.map(str::trim), 50).await?;
    if rows.is_empty() {
        match app {
            Some(a) => println!("No jobs for app {a}."),
            None => println!("No jobs yet."),
        }
        return Ok(());
    }
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            println!();
        }
        print_job(&store, row).await?;
    }
    Ok(())
}

fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

/// A step result's one-line summary.
fn step_note(result: &serde_json::Value) -> String {
    let s = |k: &str| result.get(k).and_then(serde_json::Value::as_str);
    if let Some(e) = s("error") {
        return e.to_string();
    }
    if let (Some(action), Some(app)) = (s("action"), s("app_id")) {
        return format!("{action} app {app}");
    }
    if let Some(n) = s("note").filter(|n| !n.is_empty()) {
        return n.to_string();
    }
    if let (Some(path), Some(bytes)) = (s("path"), result.get("bytes").and_then(|b| b.as_u64())) {
        return format!("{bytes} bytes to {path}");
    }
    String::new()
}

/// Prints one job: a header line, its steps, failed attempts and error.
pub async fn print_job(store: &Store, row: &JobRow) -> anyhow::Result<()> {
    let finished = row
        .finished_at
        .map(|t| format!(", finished {}", time(t)))
        .unwrap_or_default();
    println!(
        "job {}  {}  {} \"{}\" ({})  trigger {}  created {}{finished}",
        row.id,
        row.status.as_str().to_uppercase(),
        row.kind,
        row.app_name,
        row.app_id,
        row.trigger,
        time(row.created_at),
    );
    if row.status == JobStatus::Retry {
        println!("  next attempt at {}", time(row.next_run_at));
    }
    if let Some(e) = row.last_error.as_deref().filter(|e| !e.is_empty()) {
        println!("  error: {e}");
    }
    let steps = store.steps(&row.id).await?;
    let width = steps.iter().map(|s| s.step_key.len()).max().unwrap_or(0);
    for s in &steps {
        let took = s
            .finished_at
            .map(|f| format!("{:>6.1}s", (f - s.started_at) as f64 / 1000.0))
            .unwrap_or_else(|| "      -".into());
        println!(
            "  {:<9} {:<width$} {took}  {}",
            s.outcome,
            s.step_key,
            step_note(&s.result)
        );
    }
    for a in store.attempts(&row.id).await? {
        println!(
            "  attempt {} of {} failed at {} ({}): {}",
            a.attempt,
            a.step_key,
            time(a.at),
            if a.retryable {
                "retryable"
            } else {
                "permanent"
            },
            a.error
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_notes_say_what_happened() {
        assert_eq!(
            step_note(&serde_json::json!({"error": "boom", "note": "x"})),
            "boom"
        );
        assert_eq!(
            step_note(&serde_json::json!({"action": "replaced", "app_id": "a1"})),
            "replaced app a1"
        );
        assert_eq!(step_note(&serde_json::json!({"note": "sent"})), "sent");
        assert_eq!(
            step_note(&serde_json::json!({"path": "/w/f.qvf", "bytes": 10})),
            "10 bytes to /w/f.qvf"
        );
        assert_eq!(step_note(&serde_json::Value::Null), "");
    }

    #[test]
    fn a_restore_runs_fetch_promote_clean_up() {
        let spec = RestoreSpec {
            app_id: "a".into(),
            version_id: "v".into(),
            site: "test".into(),
            stream: "Sales".into(),
            mode: Mode::Overwrite,
        };
        let job = restore_job(&spec, "Sales app");
        let keys: Vec<String> = job.plan.commands.iter().map(|c| c.step_key()).collect();
        assert_eq!(keys, ["export:data", "promote:test:Sales", "cleanup"]);
        assert_eq!(job.plan.app_name, "Sales app");
    }
}
