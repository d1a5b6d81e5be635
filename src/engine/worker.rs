//! The workers behind `promoter serve`: one intake loop turns inbox entries into decisions and
//! jobs; a pool of runners claims jobs (with a lease they keep renewing) and runs them.
//!
//! - Intake: claim inbox entries, read the app on the local site (a deleted app is ignored),
//!   drop the promoter's own writes, run [`decide`], record the decision in the audit trail,
//!   and create a job keyed by (app, trigger, modifiedDate), so a change delivered twice (or
//!   found again by the sweep) never makes two jobs.
//! - Runners: `promotion.workers` of them. The store never hands out two jobs of one app at
//!   the same time; transfers to one site are limited to `promotion.per_site_concurrency`.
//!   A runner that stops renewing its lease (crash) loses the job to another runner after
//!   `promotion.lease_seconds`; on shutdown a running job is put back at once, resumable.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::decide::decide;
use super::executor::{Engine, JobOutcome, StepError};
use super::hooks::AuditEvent;
use super::model::{AppSnapshot, Decision, DecisionConfig, Trigger};
use super::snapshot;
use crate::config::Settings;
use crate::store::{InboxEntry, InboxState, NewJob, Store, StoreError};

/// How long a claimed job stays reserved without a renewal (`promotion.lease_seconds`), ms.
pub fn lease_ms(settings: &Settings) -> i64 {
    i64::try_from(settings.promotion.lease_seconds.max(1))
        .unwrap_or(60)
        .saturating_mul(1000)
}
/// How often idle loops look for work (they are also woken when a job is created).
const IDLE_POLL: Duration = Duration::from_millis(250);
/// Inbox entries evaluated per claim.
const INBOX_BATCH: u32 = 32;

/// Runs the intake loop and `promotion.workers` job runners until `shutdown` is cancelled.
/// A job running at shutdown is interrupted at once and left to resume on the next start.
pub async fn run_workers(
    settings: Arc<Settings>,
    store: Store,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let engine = Engine::new(settings.clone(), store.clone()).await?;
    remove_orphan_files(&engine).await;
    let wake = Arc::new(Notify::new());
    let base = worker_base();
    let mut set = JoinSet::new();
    set.spawn(intake_loop(engine.clone(), wake.clone(), shutdown.clone()));
    for i in 0..settings.promotion.workers.max(1) {
        set.spawn(runner_loop(
            engine.clone(),
            format!("{base}-{i}"),
            wake.clone(),
            shutdown.clone(),
        ));
    }
    tracing::info!(
        workers = settings.promotion.workers.max(1),
        per_site = settings.promotion.per_site_concurrency,
        "promotion workers started"
    );
    while let Some(r) = set.join_next().await {
        if let Err(e) = r
            && e.is_panic()
        {
            shutdown.cancel();
            anyhow::bail!("a promotion worker panicked: {e}");
        }
    }
    tracing::info!("promotion workers stopped");
    Ok(())
}

/// A name unique to this process, for job leases.
fn worker_base() -> String {
    let host = std::env::var("HOSTNAME")
        .or_else(|_| std::env::var("COMPUTERNAME"))
        .unwrap_or_else(|_| "host".into());
    let tag = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}:{}:{}", std::process::id(), &tag[..8])
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The triggers an inbox entry stands for. Every app change is an update; a change of
/// `lastReloadTime` is also a reload and one of `publishTime` also a publish, as QRS calls both
/// subscriptions for it (the inbox keeps one entry for identical deliveries, whichever callback
/// came first, so the changed properties decide, with the callback as a fallback).
pub fn triggers_of(source: &str, changed: &[String]) -> Vec<Trigger> {
    if source == crate::store::SWEEP_SOURCE {
        return vec![Trigger::Sweep];
    }
    let has = |p: &str| changed.iter().any(|c| c.eq_ignore_ascii_case(p));
    let mut out = vec![Trigger::AppUpdated];
    if source == "reload" || has("lastReloadTime") {
        out.push(Trigger::AppReloaded);
    }
    if source == "publish" || has("publishTime") {
        out.push(Trigger::AppPublished);
    }
    out
}

/// The key that makes one job per change: app, trigger and modifiedDate. An update and the
/// sweep finding the same change share a key; a manual run is always a new job.
pub fn job_key(app_id: &str, trigger: Trigger, modified_date: &str) -> String {
    let class = match trigger {
        Trigger::AppUpdated | Trigger::Sweep => "update".to_string(),
        Trigger::AppReloaded => "reload".into(),
        Trigger::AppPublished => "publish".into(),
        Trigger::Manual => format!("manual-{}", uuid::Uuid::new_v4()),
    };
    format!(
        "{}|{class}|{}",
        app_id.trim().to_lowercase(),
        modified_date.trim()
    )
}

/// What evaluating one inbox entry did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// The inbox state to record.
    pub state: InboxState,
    /// Why, in words.
    pub note: String,
    /// The job, when one was created (or found for the same change).
    pub job: Option<(String, bool)>,
}

/// Decides for an app now and records the decision (audit) and the job, if any.
pub async fn decide_and_enqueue(
    engine: &Engine,
    snap: &AppSnapshot,
    trigger: Trigger,
) -> Result<(Decision, Option<(String, bool)>), StepError> {
    let cfg = DecisionConfig::from_settings(engine.settings());
    let decision = decide(snap, trigger, &cfg);
    let mut ev = AuditEvent {
        time: chrono::Utc::now(),
        job_id: None,
        app_id: snap.id.clone(),
        app_name: snap.name.clone(),
        event: "decision".into(),
        site: engine.settings().local.alias.clone(),
        stream: snap
            .stream
            .as_ref()
            .map(|s| s.name.clone())
            .unwrap_or_default(),
        target_app_id: String::new(),
        actor: snap
            .modified_by
            .clone()
            .unwrap_or_else(|| "promoter".into()),
        outcome: String::new(),
        detail: String::new(),
    };
    let job = match &decision {
        Decision::Nothing(reason) => {
            ev.outcome = "nothing".into();
            ev.detail = format!("{trigger}: {reason}");
            None
        }
        Decision::Plan(plan) => {
            let plan_json = serde_json::to_value(plan)
                .map_err(|e| StepError::fatal(format!("cannot encode the plan: {e}")))?;
            let (id, created) = engine
                .store()
                .job_create(&NewJob {
                    key: job_key(&snap.id, trigger, &snap.modified_date),
                    app_id: snap.id.clone(),
                    app_name: snap.name.clone(),
                    trigger: trigger.as_str().into(),
                    kind: plan.kind.as_str().into(),
                    plan: plan_json,
                })
                .await?;
            ev.job_id = Some(id.clone());
            ev.outcome = plan.kind.as_str().into();
            let steps: Vec<String> = plan.commands.iter().map(|c| c.step_key()).collect();
            ev.detail = format!("{trigger}: {}", steps.join(", "));
            if !plan.notes.is_empty() {
                ev.detail.push_str(&format!(" ({})", plan.notes.join("; ")));
            }
            if !created {
                ev.detail = format!("same change as job {id}; {}", ev.detail);
            }
            Some((id, created))
        }
    };
    // The same change delivered again records no second decision.
    if job.as_ref().is_none_or(|(_, created)| *created) {
        engine.audit(ev).await;
    }
    Ok((decision, job))
}

/// Evaluates one inbox entry.
pub async fn evaluate(engine: &Engine, entry: &InboxEntry) -> Result<Evaluation, StepError> {
    let ignored = |note: &str| Evaluation {
        state: InboxState::Ignored,
        note: note.into(),
        job: None,
    };
    if !entry.object_type.eq_ignore_ascii_case("app") {
        return Ok(ignored("not an app"));
    }
    if entry.change_type == 3 {
        return Ok(ignored("the app was deleted"));
    }
    let triggers = triggers_of(&entry.source, &entry.changed_properties);
    let reader = engine.sites().local().reader();
    let snap = match snapshot::load(&reader, &entry.object_id).await {
        Ok(s) => s,
        Err(e) if e.is_not_found() => return Ok(ignored("the app no longer exists")),
        Err(e) => return Err(e.into()),
    };
    if engine
        .store()
        .own_write_seen(&snap.id, &snap.modified_date)
        .await?
    {
        return Ok(ignored("the promoter's own change"));
    }
    let mut notes = Vec::new();
    let mut created = None;
    for trigger in triggers {
        let (decision, job) = decide_and_enqueue(engine, &snap, trigger).await?;
        notes.push(match (&decision, &job) {
            (Decision::Nothing(r), _) => format!("{trigger}: {r}"),
            (Decision::Plan(p), Some((id, true))) => format!("{trigger}: {} job {id}", p.kind),
            (Decision::Plan(p), Some((id, false))) => {
                format!("{trigger}: {}, same change as job {id}", p.kind)
            }
            (Decision::Plan(p), None) => format!("{trigger}: {}", p.kind),
        });
        if job.as_ref().is_some_and(|(_, c)| *c) || created.is_none() {
            created = job.or(created);
        }
    }
    Ok(Evaluation {
        state: InboxState::Done,
        note: notes.join("; "),
        job: created,
    })
}

async fn intake_loop(engine: Engine, wake: Arc<Notify>, shutdown: CancellationToken) {
    let store = engine.store().clone();
    let mut backoff = Duration::from_secs(1);
    while !shutdown.is_cancelled() {
        let entries = match store.inbox_claim(INBOX_BATCH, now_ms()).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("cannot read the inbox: {e}");
                pause(&shutdown, backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        if entries.is_empty() {
            pause(&shutdown, IDLE_POLL).await;
            continue;
        }
        let mut failed = false;
        for entry in &entries {
            if failed || shutdown.is_cancelled() {
                // Put it back for the next round.
                let _ = store.inbox_done(entry.id, InboxState::Pending, "").await;
                continue;
            }
            match evaluate(&engine, entry).await {
                Ok(ev) => {
                    if let Err(e) = store.inbox_done(entry.id, ev.state, &ev.note).await {
                        tracing::warn!(inbox = entry.id, "cannot record the evaluation: {e}");
                    }
                    if ev.job.as_ref().is_some_and(|(_, created)| *created) {
                        wake.notify_waiters();
                    }
                    tracing::debug!(inbox = entry.id, app = %entry.object_id, "{}", ev.note);
                    backoff = Duration::from_secs(1);
                }
                Err(StepError::Fatal(m)) => {
                    tracing::warn!(inbox = entry.id, app = %entry.object_id, "cannot evaluate: {m}");
                    let _ = store.inbox_done(entry.id, InboxState::Failed, &m).await;
                }
                Err(e) => {
                    let m = e.message();
                    tracing::warn!(
                        inbox = entry.id,
                        app = %entry.object_id,
                        "cannot evaluate now, will retry in {}s: {m}",
                        backoff.as_secs()
                    );
                    let _ = store.inbox_done(entry.id, InboxState::Pending, &m).await;
                    failed = true;
                }
            }
        }
        if failed {
            pause(&shutdown, backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }
}

async fn pause(shutdown: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

async fn runner_loop(
    engine: Engine,
    worker: String,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let store = engine.store().clone();
    while !shutdown.is_cancelled() {
        match store
            .job_claim(&worker, now_ms(), lease_ms(engine.settings()))
            .await
        {
            Ok(Some(job)) => {
                run_claimed(&engine, job, &worker, &shutdown).await;
            }
            Ok(None) => {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(IDLE_POLL * 2) => {}
                }
            }
            Err(e) => {
                tracing::warn!(worker, "cannot claim a job: {e}");
                pause(&shutdown, Duration::from_secs(1)).await;
            }
        }
    }
}

/// Runs a claimed job while renewing its lease; puts it back at once when interrupted by
/// shutdown (a lost lease means another runner has it: leave it alone).
pub async fn run_claimed(
    engine: &Engine,
    job: crate::store::JobRow,
    worker: &str,
    shutdown: &CancellationToken,
) -> JobOutcome {
    let id = job.id.clone();
    let Some(held) = job.lease() else {
        tracing::error!(job = %id, worker, "a claimed job without a lease; leaving it alone");
        return JobOutcome::Interrupted;
    };
    let cancel = shutdown.child_token();
    let lease = lease_ms(engine.settings());
    let renew_every = Duration::from_millis(u64::try_from(lease / 3).unwrap_or(1000).max(100));
    let renew = {
        let store = engine.store().clone();
        let id = id.clone();
        let held = held.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let mut last_ok = now_ms();
            loop {
                tokio::time::sleep(renew_every).await;
                match store.job_renew_lease(&id, &held, now_ms(), lease).await {
                    Ok(true) => last_ok = now_ms(),
                    Ok(false) => {
                        tracing::warn!(job = %id, "lease lost; another worker has the job");
                        cancel.cancel();
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(job = %id, "cannot renew the lease: {e}");
                        if now_ms() - last_ok > lease * 3 / 4 {
                            cancel.cancel();
                            break;
                        }
                    }
                }
            }
        })
    };
    tracing::info!(job = %id, app = %job.app_id, kind = %job.kind, worker, "job claimed");
    let outcome = engine.run_job(job, held.clone(), cancel).await;
    renew.abort();
    if outcome == JobOutcome::Interrupted {
        // Shutdown (or a lost lease): make the job claimable again right away. The store
        // refuses this when another worker holds the job now, which leaves it to that worker.
        match engine
            .store()
            .job_retry_at(
                &id,
                &held,
                now_ms(),
                "interrupted; resumes where it stopped",
            )
            .await
        {
            Ok(()) | Err(StoreError::LeaseLost(_)) => {}
            Err(e) => tracing::warn!(job = %id, "cannot release the job: {e}"),
        }
    }
    outcome
}

/// Removes export files of jobs that are finished or unknown (left by a crash during clean-up).
async fn remove_orphan_files(engine: &Engine) {
    let dir = engine.settings().data.work_dir();
    let Ok(mut rd) = tokio::fs::read_dir(&dir).await else {
        return;
    };
    while let Ok(Some(entry)) = rd.next_entry().await {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("job-") else {
            continue;
        };
        let Some(id) = rest
            .strip_suffix("-data.qvf")
            .or_else(|| rest.strip_suffix("-nodata.qvf"))
        else {
            continue;
        };
        let orphan = match engine.store().job_get(id).await {
            Ok(Some(j)) => j.status.is_final(),
            Ok(None) => true,
            Err(_) => false,
        };
        if orphan {
            match tokio::fs::remove_file(entry.path()).await {
                Ok(()) => tracing::info!("removed the leftover file {}", entry.path().display()),
                Err(e) => tracing::warn!("cannot remove {}: {e}", entry.path().display()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_per_change_for_updates_and_the_sweep() {
        let a = job_key("APP", Trigger::AppUpdated, "2024-01-01T00:00:00.000Z");
        let b = job_key("app", Trigger::Sweep, "2024-01-01T00:00:00.000Z");
        assert_eq!(a, b);
        assert_ne!(
            a,
            job_key("app", Trigger::AppReloaded, "2024-01-01T00:00:00.000Z")
        );
        assert_ne!(
            a,
            job_key("app", Trigger::AppUpdated, "2024-01-02T00:00:00.000Z")
        );
        assert_ne!(
            job_key("app", Trigger::Manual, "x"),
            job_key("app", Trigger::Manual, "x")
        );
    }

    #[test]
    fn triggers_follow_the_changed_properties_and_the_callback() {
        let props = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(triggers_of("update", &[]), [Trigger::AppUpdated]);
        assert_eq!(
            triggers_of("update", &props(&["lastReloadTime", "modifiedDate"])),
            [Trigger::AppUpdated, Trigger::AppReloaded]
        );
        assert_eq!(
            triggers_of("reload", &[]),
            [Trigger::AppUpdated, Trigger::AppReloaded]
        );
        assert_eq!(
            triggers_of("update", &props(&["publishTime", "stream"])),
            [Trigger::AppUpdated, Trigger::AppPublished]
        );
        assert_eq!(
            triggers_of("sweep", &props(&["publishTime"])),
            [Trigger::Sweep]
        );
    }
}
