//! The durable executor: runs one job's plan step by step, recording every step in the store
//! before and after it runs, so that a job interrupted at any point (crash, `kill -9`, lost
//! lease, shutdown) resumes where it stopped and ends exactly as an uninterrupted run would.
//!
//! # How a job stays correct across crashes
//! - Each [`Command`] of the plan is one step, keyed by [`Command::step_key`]. A step whose
//!   recorded outcome is final (`ok`, `skipped`, `failed`) is not run again; its recorded result
//!   is used instead (the outcome of each target feeds the result mail).
//! - Side effects whose result (an app id) is needed later are guarded by the job's working
//!   state ([`Store::job_set_state`]): the name of every app the executor is about to create is
//!   recorded *before* the call, its id right after. Such apps carry a unique temporary name
//!   (`__promoter_tmp_<job>_<site>_<n>`), so one created just before a crash is found again by
//!   name and reused; an app being published is recorded before the publish, which keeps its id.
//! - Replacing, deleting, stripping and tagging are idempotent; repeating them is harmless.
//!
//! # Errors
//! Retryable failures (QRS connection, timeout, 5xx, 429; database busy; SMTP unreachable) put
//! the job back with exponential backoff and jitter ([`super::retry`]), honouring `Retry-After`,
//! until a step has failed `promotion.max_attempts` times. Permanent failures end the job
//! (`failed`), leave the source app as it was, remove temporary files and uploads, and alert
//! the administrators. A target that cannot be promoted (its stream is missing, several apps
//! match) fails alone: the other targets still run and the job ends `partially_failed`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, OnceCell, Semaphore};
use tokio_util::sync::CancellationToken;

use super::hooks::{AuditEvent, JobFacts, TargetOutcome};
use super::model::{Command, Mode, Plan};
use super::progress::ProgressFactory;
use super::retry;
use super::steps;
use crate::config::Settings;
use crate::mail::{MailError, Mailer};
use crate::qrs::{QrsClient, QrsError, QrsSites};
use crate::store::{JobRow, JobStatus, Lease, Store, StoreError};

/// `kind` of the jobs `promoter restore` creates.
pub const RESTORE_KIND: &str = "restore";

/// Prefix of the names of the temporary apps the executor creates.
pub const TEMP_PREFIX: &str = "__promoter_tmp_";

/// The unique name of a temporary app of a job: `__promoter_tmp_<job>_<site>_<n>`.
pub fn temp_name(job_id: &str, site: &str, n: usize) -> String {
    format!("{TEMP_PREFIX}{job_id}_{}_{n}", site.trim().to_lowercase())
}

/// Everything jobs need, shared by all workers. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    settings: Arc<Settings>,
    store: Store,
    sites: QrsSites,
    mailer: Option<Arc<Mailer>>,
    hooks: steps::effects::Hooks,
    limits: HashMap<String, Arc<Semaphore>>,
    progress: Option<ProgressFactory>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("store", &self.inner.store)
            .field("sites", &self.inner.limits.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Builds the QRS clients (one pool per site), the mailer, the version store and the audit
    /// trail from the settings.
    pub async fn new(settings: Arc<Settings>, store: Store) -> anyhow::Result<Engine> {
        let sites = QrsSites::from_settings(&settings)?;
        let mailer = Mailer::from_settings(&settings)?.map(Arc::new);
        let hooks = steps::effects::Hooks::new(&settings, store.clone()).await?;
        let per_site = settings.promotion.per_site_concurrency.max(1);
        let limits = settings
            .sites()
            .map(|s| {
                (
                    s.alias.trim().to_lowercase(),
                    Arc::new(Semaphore::new(per_site)),
                )
            })
            .collect();
        Ok(Engine {
            inner: Arc::new(EngineInner {
                settings,
                store,
                sites,
                mailer,
                hooks,
                limits,
                progress: None,
            }),
        })
    }

    /// The same engine, reporting transfer progress through `progress` (`promoter promote`).
    pub fn with_progress(self, progress: ProgressFactory) -> Engine {
        let inner = &self.inner;
        Engine {
            inner: Arc::new(EngineInner {
                settings: inner.settings.clone(),
                store: inner.store.clone(),
                sites: inner.sites.clone(),
                mailer: inner.mailer.clone(),
                hooks: inner.hooks.clone(),
                limits: inner.limits.clone(),
                progress: Some(progress),
            }),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The QRS clients.
    pub fn sites(&self) -> &QrsSites {
        &self.inner.sites
    }

    pub(crate) fn mailer(&self) -> Option<&Mailer> {
        self.inner.mailer.as_deref()
    }

    pub(crate) fn hooks(&self) -> &steps::effects::Hooks {
        &self.inner.hooks
    }

    pub(crate) fn progress(&self) -> Option<&ProgressFactory> {
        self.inner.progress.as_ref()
    }

    /// The transfer slots of a site (`promotion.per_site_concurrency`).
    pub(crate) fn site_limit(&self, alias: &str) -> Arc<Semaphore> {
        let key = alias.trim().to_lowercase();
        self.inner
            .limits
            .get(&key)
            .cloned()
            .unwrap_or_else(|| Arc::new(Semaphore::new(1)))
    }

    /// Records an audit event; a failure is logged, never fatal (the job's own records stay).
    pub(crate) async fn audit(&self, event: AuditEvent) {
        self.inner.hooks.audit(&event).await;
    }

    /// Runs (or resumes) a claimed job, held under `lease`, until it finishes, must wait for a
    /// retry, or is cancelled. Writes the job's final status or retry time to the store.
    pub async fn run_job(
        &self,
        job: JobRow,
        lease: Lease,
        cancel: CancellationToken,
    ) -> JobOutcome {
        let id = job.id.clone();
        let run = match JobRun::new(self.clone(), job, lease.clone(), cancel) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(job = %id, "{e}");
                if let Err(se) = self
                    .store()
                    .job_finish(&id, &lease, JobStatus::Failed, Some(&e))
                    .await
                {
                    tracing::error!(job = %id, "cannot record the job's end: {se}");
                    return JobOutcome::Interrupted;
                }
                return JobOutcome::Finished(JobStatus::Failed);
            }
        };
        run.run().await
    }
}

/// How a run of a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// The job ended with this status.
    Finished(JobStatus),
    /// A retryable failure: the job runs again at this time (unix ms).
    RetryAt(i64),
    /// The run was cancelled (shutdown or lost lease); the job resumes later.
    Interrupted,
}

/// A step's failure, classified.
#[derive(Debug, Clone)]
pub enum StepError {
    /// Worth trying again later (after `retry_after` when the server said so).
    Retry {
        /// What failed.
        message: String,
        /// The server's requested pause.
        retry_after: Option<Duration>,
    },
    /// Trying again will not help.
    Fatal(String),
    /// The run was cancelled (shutdown or lost lease).
    Cancelled,
}

impl StepError {
    /// A permanent failure.
    pub fn fatal(message: impl Into<String>) -> StepError {
        StepError::Fatal(message.into())
    }

    /// What failed, in words.
    pub fn message(&self) -> String {
        match self {
            StepError::Retry { message, .. } | StepError::Fatal(message) => message.clone(),
            StepError::Cancelled => "cancelled".into(),
        }
    }
}

impl From<QrsError> for StepError {
    fn from(e: QrsError) -> Self {
        if e.retryable() {
            StepError::Retry {
                retry_after: e.retry_after(),
                message: e.to_string(),
            }
        } else {
            StepError::Fatal(e.to_string())
        }
    }
}

impl From<StoreError> for StepError {
    fn from(e: StoreError) -> Self {
        if let StoreError::LeaseLost(_) = e {
            // Another runner holds the job now; this one stops without recording anything.
            StepError::Cancelled
        } else if e.is_retryable() {
            StepError::Retry {
                message: e.to_string(),
                retry_after: None,
            }
        } else {
            StepError::Fatal(e.to_string())
        }
    }
}

impl From<MailError> for StepError {
    fn from(e: MailError) -> Self {
        if e.is_retryable() {
            StepError::Retry {
                message: e.to_string(),
                retry_after: None,
            }
        } else {
            StepError::Fatal(e.to_string())
        }
    }
}

/// A restore job: a stored version put back on one site and stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreSpec {
    /// Source app id the version was stored for.
    pub app_id: String,
    /// Version id.
    pub version_id: String,
    /// Target site alias.
    pub site: String,
    /// Target stream name.
    pub stream: String,
    /// Overwrite (default) or duplicate.
    pub mode: Mode,
}

/// What a restore job stores as its plan: the restore and the plan the executor runs for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreJob {
    /// The restore.
    pub restore: RestoreSpec,
    /// The commands run for it (fetch the version as the export, promote, clean up).
    pub plan: Plan,
}

/// A temporary file of a job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileRecord {
    /// Where it is.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
}

/// The working state of one target site.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SiteWork {
    /// Temporary names of apps being created whose id is not recorded yet.
    #[serde(default)]
    pub creating: BTreeSet<String>,
    /// The uploaded temporary app (the job's export on this site), until deleted.
    #[serde(default)]
    pub temp_id: Option<String>,
    /// Per target stream key: the app made for it (a copy of the upload), published or about
    /// to be published.
    #[serde(default)]
    pub new_apps: BTreeMap<String, String>,
}

/// The job's durable working state (`jobs.state`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct JobState {
    /// Every temporary file the job created (removed at the end).
    #[serde(default)]
    pub files: BTreeSet<PathBuf>,
    /// Per target site alias (lower case).
    #[serde(default)]
    pub sites: BTreeMap<String, SiteWork>,
    /// Temporary names on the local site being created (the unpublish copy).
    #[serde(default)]
    pub local_creating: BTreeSet<String>,
    /// The unpublish copy of the source app.
    #[serde(default)]
    pub source_copy: Option<String>,
}

/// The recorded result of one target (`promote:<site>:<stream>` steps).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TargetRecord {
    pub site: String,
    pub stream: String,
    pub mode: Mode,
    /// `replaced`, `published` or `failed`.
    pub action: String,
    pub stream_id: Option<String>,
    pub app_id: Option<String>,
    pub hub_link: Option<String>,
    pub error: Option<String>,
}

impl TargetRecord {
    /// The record as reported in mail and the audit trail.
    pub fn to_outcome(&self) -> TargetOutcome {
        TargetOutcome {
            site: self.site.clone(),
            stream: self.stream.clone(),
            app_id: self.app_id.clone(),
            hub_link: self.hub_link.clone(),
            error: self.error.clone(),
        }
    }
}

/// A value a step records as its result, with the outcome it stands for.
pub(crate) trait StepValue: Serialize + DeserializeOwned {
    /// `ok`, `skipped` or `failed` (a final failure that does not stop the job).
    fn outcome(&self) -> &'static str {
        "ok"
    }
}

impl StepValue for TargetRecord {
    fn outcome(&self) -> &'static str {
        if self.error.is_some() { "failed" } else { "ok" }
    }
}

impl StepValue for FileRecord {}

/// A step that did something or deliberately nothing (`skipped`), with a note.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Done {
    /// Whether the step was skipped.
    #[serde(default)]
    pub skipped: bool,
    /// What happened.
    #[serde(default)]
    pub note: String,
    /// An id the step produced (version id, copy id), if any.
    #[serde(default)]
    pub id: Option<String>,
}

impl Done {
    pub fn ok(note: impl Into<String>) -> Done {
        Done {
            skipped: false,
            note: note.into(),
            id: None,
        }
    }
    pub fn skipped(note: impl Into<String>) -> Done {
        Done {
            skipped: true,
            note: note.into(),
            id: None,
        }
    }
    pub fn with_id(mut self, id: impl Into<String>) -> Done {
        self.id = Some(id.into());
        self
    }
}

impl StepValue for Done {
    fn outcome(&self) -> &'static str {
        if self.skipped { "skipped" } else { "ok" }
    }
}

/// Outcomes after which a step is not run again.
fn is_final_outcome(outcome: &str) -> bool {
    matches!(outcome, "ok" | "skipped" | "failed")
}

/// One run of one job.
pub(crate) struct JobRun {
    pub engine: Engine,
    pub job: JobRow,
    /// This run's hold on the job; every write about the job carries it.
    pub lease: Lease,
    pub plan: Plan,
    pub restore: Option<RestoreSpec>,
    pub state: Mutex<JobState>,
    pub cancel: CancellationToken,
    facts: OnceCell<JobFacts>,
    /// Steps deferred after a retryable failure that does not block the rest (mail).
    deferred: std::sync::Mutex<Vec<StepError>>,
}

impl JobRun {
    fn new(
        engine: Engine,
        job: JobRow,
        lease: Lease,
        cancel: CancellationToken,
    ) -> Result<JobRun, String> {
        let (plan, restore) = if job.kind == RESTORE_KIND {
            let r: RestoreJob = serde_json::from_value(job.plan.clone())
                .map_err(|e| format!("the job's restore plan cannot be read: {e}"))?;
            (r.plan, Some(r.restore))
        } else {
            let p: Plan = serde_json::from_value(job.plan.clone())
                .map_err(|e| format!("the job's plan cannot be read: {e}"))?;
            (p, None)
        };
        let state: JobState = serde_json::from_value(job.state.clone()).unwrap_or_default();
        Ok(JobRun {
            engine,
            job,
            lease,
            plan,
            restore,
            state: Mutex::new(state),
            cancel,
            facts: OnceCell::new(),
            deferred: std::sync::Mutex::new(Vec::new()),
        })
    }

    pub fn id(&self) -> &str {
        &self.job.id
    }

    pub fn store(&self) -> &Store {
        self.engine.store()
    }

    pub fn settings(&self) -> &Settings {
        self.engine.settings()
    }

    pub fn local(&self) -> &QrsClient {
        self.engine.sites().local()
    }

    /// Changes the working state and saves it before returning.
    pub async fn update_state<R>(
        &self,
        f: impl FnOnce(&mut JobState) -> R,
    ) -> Result<R, StepError> {
        let mut st = self.state.lock().await;
        let r = f(&mut st);
        let json = serde_json::to_value(&*st)
            .map_err(|e| StepError::fatal(format!("cannot encode the job state: {e}")))?;
        self.store()
            .job_set_state(self.id(), &self.lease, &json)
            .await?;
        Ok(r)
    }

    /// A copy of the working state.
    pub async fn state(&self) -> JobState {
        self.state.lock().await.clone()
    }

    /// The facts every notice and audit event needs (reads the owner's email once).
    pub async fn facts(&self) -> &JobFacts {
        self.facts
            .get_or_init(|| steps::effects::job_facts(self))
            .await
    }

    /// An audit event about this job.
    pub fn event(&self, event: &str, outcome: &str, detail: impl Into<String>) -> AuditEvent {
        AuditEvent {
            time: chrono::Utc::now(),
            job_id: Some(self.job.id.clone()),
            app_id: self.job.app_id.clone(),
            app_name: self.job.app_name.clone(),
            event: event.into(),
            site: String::new(),
            stream: String::new(),
            target_app_id: String::new(),
            actor: "promoter".into(),
            outcome: outcome.into(),
            detail: detail.into(),
        }
    }

    /// The recorded final result of a step, if it has one.
    pub async fn recorded<T: StepValue>(&self, key: &str) -> Result<Option<T>, StepError> {
        match self.store().step_result(self.id(), key).await? {
            Some(row) if is_final_outcome(&row.outcome) => {
                Ok(serde_json::from_value::<T>(row.result).ok())
            }
            _ => Ok(None),
        }
    }

    /// Runs `work` as step `key`, unless the step already has a final result (then that result
    /// is returned). Records the step before and after, each failed attempt, and an audit event.
    /// A retryable failure of a step that has failed `max_attempts` times becomes permanent.
    pub async fn step<T, F>(&self, key: &str, detail: &str, work: F) -> Result<T, StepError>
    where
        T: StepValue,
        F: Future<Output = Result<T, StepError>>,
    {
        if let Some(done) = self.recorded::<T>(key).await? {
            return Ok(done);
        }
        self.run_step(key, detail, work).await
    }

    /// Runs `work` as step `key` even if it has a final result already (a recorded export whose
    /// file is gone).
    pub async fn run_step<T, F>(&self, key: &str, detail: &str, work: F) -> Result<T, StepError>
    where
        T: StepValue,
        F: Future<Output = Result<T, StepError>>,
    {
        if self.cancel.is_cancelled() {
            return Err(StepError::Cancelled);
        }
        self.store()
            .step_begin(self.id(), &self.lease, key, detail)
            .await?;
        super::fault::point(&format!("before:{key}"));
        tracing::info!(job = %self.id(), app = %self.job.app_id, step = key, "{detail}");
        let result = tokio::select! {
            r = work => r,
            _ = self.cancel.cancelled() => Err(StepError::Cancelled),
        };
        match result {
            Ok(value) => {
                let json = serde_json::to_value(&value)
                    .map_err(|e| StepError::fatal(format!("cannot encode the step result: {e}")))?;
                let outcome = value.outcome();
                self.store()
                    .step_finish(self.id(), &self.lease, key, outcome, &json)
                    .await?;
                super::fault::point(&format!("after:{key}"));
                let mut ev = self.event("step", outcome, format!("{key}: {detail}"));
                step_audit_fields(&mut ev, &json);
                self.engine.audit(ev).await;
                Ok(value)
            }
            Err(StepError::Cancelled) => Err(StepError::Cancelled),
            Err(e) => Err(self.record_failure(key, e).await),
        }
    }

    /// Records a failed attempt of a step; turns a retryable failure into a permanent one after
    /// `max_attempts`.
    pub async fn record_failure(&self, key: &str, e: StepError) -> StepError {
        let retryable = matches!(e, StepError::Retry { .. });
        let message = e.message();
        let attempt = match self
            .store()
            .attempt_record(self.id(), key, &message, retryable)
            .await
        {
            Ok(n) => n,
            Err(se) => {
                tracing::warn!(job = %self.id(), step = key, "cannot record the attempt: {se}");
                return StepError::from(se);
            }
        };
        let max = self.settings().promotion.max_attempts.max(1);
        let e = match e {
            StepError::Retry { message, .. } if attempt >= max => StepError::Fatal(format!(
                "gave up after {attempt} attempts; last error: {message}"
            )),
            other => other,
        };
        let (outcome, level_retry) = match &e {
            StepError::Retry { .. } => ("retrying", true),
            _ => ("failed", false),
        };
        let json = serde_json::json!({ "error": e.message(), "attempt": attempt });
        if let Err(se) = self
            .store()
            .step_finish(self.id(), &self.lease, key, outcome, &json)
            .await
        {
            tracing::warn!(job = %self.id(), step = key, "cannot record the step failure: {se}");
        }
        if level_retry {
            tracing::warn!(job = %self.id(), step = key, attempt, "retryable failure: {}", e.message());
        } else {
            tracing::error!(job = %self.id(), step = key, attempt, "step failed: {}", e.message());
        }
        self.engine
            .audit(self.event(
                "step",
                outcome,
                format!("{key} (attempt {attempt}): {}", e.message()),
            ))
            .await;
        e
    }

    /// Remembers a retryable failure of a step that does not block the rest of the plan.
    pub fn defer(&self, e: StepError) {
        if let Ok(mut d) = self.deferred.lock() {
            d.push(e);
        }
    }

    /// The target records of the plan's `PromoteTo` steps that have a final result.
    pub async fn target_records(&self) -> Result<Vec<TargetRecord>, StepError> {
        let mut out = Vec::new();
        for c in &self.plan.commands {
            if let Command::PromoteTo { .. } = c
                && let Some(r) = self.recorded::<TargetRecord>(&c.step_key()).await?
            {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The version id stored by this job, if any.
    pub async fn version_id(&self) -> Result<Option<String>, StepError> {
        Ok(self
            .recorded::<Done>(&Command::StoreVersion.step_key())
            .await?
            .and_then(|d| d.id))
    }

    async fn run(self) -> JobOutcome {
        let result = self.run_plan().await;
        match result {
            Ok(status) => {
                let deferred = self
                    .deferred
                    .lock()
                    .map(|mut d| std::mem::take(&mut *d))
                    .unwrap_or_default();
                if let Some(first) = deferred.first() {
                    // Only non-blocking steps (mail) are left: come back for them.
                    return self.schedule_retry(first).await;
                }
                self.finish(status, None).await
            }
            Err(StepError::Cancelled) => JobOutcome::Interrupted,
            Err(e @ StepError::Retry { .. }) => self.schedule_retry(&e).await,
            Err(StepError::Fatal(reason)) => self.fail(&reason).await,
        }
    }

    /// Decides the final status from the targets and writes it.
    async fn finish(&self, status: JobStatus, error: Option<&str>) -> JobOutcome {
        let error = match (status, error) {
            (_, Some(e)) => Some(e.to_string()),
            (JobStatus::PartiallyFailed | JobStatus::Failed, None) => {
                let failed: Vec<String> = self
                    .target_records()
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|t| t.error.map(|e| format!("{} / {}: {e}", t.site, t.stream)))
                    .collect();
                Some(failed.join("; "))
            }
            _ => None,
        };
        if matches!(status, JobStatus::PartiallyFailed | JobStatus::Failed) {
            let reason = error.clone().unwrap_or_default();
            steps::effects::notify_job_failed(self, &reason).await;
        }
        if let Err(e) = self
            .store()
            .job_finish(self.id(), &self.lease, status, error.as_deref())
            .await
        {
            tracing::error!(job = %self.id(), "cannot record the job's end: {e}");
            return JobOutcome::Interrupted;
        }
        let mut ev = self.event(
            "job",
            status.as_str(),
            error.clone().unwrap_or_else(|| self.plan.kind.to_string()),
        );
        ev.actor = self
            .plan
            .approver
            .clone()
            .unwrap_or_else(|| "promoter".into());
        self.engine.audit(ev).await;
        tracing::info!(job = %self.id(), app = %self.job.app_id, status = %status, "job finished");
        JobOutcome::Finished(status)
    }

    /// The job failed for good: clean up, tell the administrators, record why.
    async fn fail(&self, reason: &str) -> JobOutcome {
        steps::transfer::discard_temporaries(self).await;
        self.finish(JobStatus::Failed, Some(reason)).await
    }

    async fn schedule_retry(&self, e: &StepError) -> JobOutcome {
        let (message, retry_after) = match e {
            StepError::Retry {
                message,
                retry_after,
            } => (message.clone(), *retry_after),
            other => (other.message(), None),
        };
        let failures = self
            .store()
            .attempts(self.id())
            .await
            .map(|a| a.iter().filter(|a| a.retryable).count() as u32)
            .unwrap_or(1)
            .max(1);
        let delay = retry::delay_random(&self.settings().promotion, failures, retry_after);
        let at = chrono::Utc::now().timestamp_millis()
            + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
        if let Err(se) = self
            .store()
            .job_retry_at(self.id(), &self.lease, at, &message)
            .await
        {
            tracing::error!(job = %self.id(), "cannot schedule the retry: {se}");
            return JobOutcome::Interrupted;
        }
        tracing::info!(job = %self.id(), in_ms = delay.as_millis() as u64, "job will retry: {message}");
        JobOutcome::RetryAt(at)
    }

    /// Runs every command of the plan in order. Returns the final status.
    async fn run_plan(&self) -> Result<JobStatus, StepError> {
        if self.restore.is_none() && !self.first_run_check().await? {
            return Ok(JobStatus::Skipped);
        }
        let commands = self.plan.commands.clone();
        let mut promoted = false;
        let mut targets_failed = false;
        for cmd in &commands {
            if self.cancel.is_cancelled() {
                return Err(StepError::Cancelled);
            }
            match cmd {
                Command::PromoteTo { .. } => {
                    if !promoted {
                        promoted = true;
                        steps::transfer::promote_all(self).await?;
                        let records = self.target_records().await?;
                        targets_failed = records.iter().any(|r| r.error.is_some());
                    }
                }
                c if c.writes_source() && targets_failed => {
                    let key = c.step_key();
                    self.step(&key, &c.to_string(), async {
                        Ok(Done::skipped(
                            "the source app is left as it was because a target failed; fix the target and promote again",
                        ))
                    })
                    .await?;
                }
                c => steps::run_command(self, c).await?,
            }
        }
        if !promoted {
            return Ok(JobStatus::Succeeded);
        }
        let records = self.target_records().await?;
        let ok = records.iter().filter(|r| r.error.is_none()).count();
        Ok(if ok == records.len() {
            JobStatus::Succeeded
        } else if ok == 0 {
            JobStatus::Failed
        } else {
            JobStatus::PartiallyFailed
        })
    }

    /// Before the first step: the app must still exist and still be the version the decision
    /// saw (or one the promoter itself produced). Otherwise the job is superseded: the later
    /// change has its own notification and its own job.
    async fn first_run_check(&self) -> Result<bool, StepError> {
        if !self.store().steps(self.id()).await?.is_empty() {
            return Ok(true);
        }
        let app = match self.local().find_app(&self.plan.app_id).await? {
            Some(a) => a,
            None => {
                self.skip_job("the app no longer exists on the local site")
                    .await?;
                return Ok(false);
            }
        };
        if app.modified_date != self.plan.modified_date
            && !self
                .store()
                .own_write_seen(&app.id, &app.modified_date)
                .await?
        {
            self.skip_job(&format!(
                "superseded: the app changed at {} after the decision (made for {}); the later change is evaluated on its own",
                app.modified_date, self.plan.modified_date
            ))
            .await?;
            return Ok(false);
        }
        Ok(true)
    }

    async fn skip_job(&self, why: &str) -> Result<(), StepError> {
        self.step(
            "check",
            "check the app is unchanged since the decision",
            async { Ok(Done::skipped(why)) },
        )
        .await?;
        Ok(())
    }
}

/// Copies site, stream and target app id from a step result into its audit event.
fn step_audit_fields(ev: &mut AuditEvent, result: &serde_json::Value) {
    let s = |k: &str| {
        result
            .get(k)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    ev.site = s("site");
    ev.stream = s("stream");
    ev.target_app_id = s("app_id");
    if let Some(e) = result.get("error").and_then(serde_json::Value::as_str) {
        ev.detail = format!("{}: {e}", ev.detail);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_are_unique_per_job_site_and_index() {
        let a = temp_name("j1", "Test", 0);
        assert_eq!(a, "__promoter_tmp_j1_test_0");
        assert_ne!(a, temp_name("j1", "test", 1));
        assert_ne!(a, temp_name("j2", "test", 0));
        assert!(a.starts_with(TEMP_PREFIX));
    }

    #[test]
    fn only_final_outcomes_skip_a_step() {
        for o in ["ok", "skipped", "failed"] {
            assert!(is_final_outcome(o));
        }
        for o in ["running", "retrying", ""] {
            assert!(!is_final_outcome(o));
        }
    }

    #[test]
    fn target_records_say_failed_when_they_carry_an_error() {
        let mut r = TargetRecord {
            site: "test".into(),
            stream: "Sales".into(),
            mode: Mode::Overwrite,
            action: "replaced".into(),
            stream_id: None,
            app_id: Some("a".into()),
            hub_link: None,
            error: None,
        };
        assert_eq!(StepValue::outcome(&r), "ok");
        assert!(r.to_outcome().succeeded());
        r.error = Some("no stream".into());
        assert_eq!(StepValue::outcome(&r), "failed");
    }

    #[test]
    fn job_state_reads_empty_and_partial_json() {
        let s: JobState = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(s, JobState::default());
        let s: JobState =
            serde_json::from_value(serde_json::json!({"sites": {"test": {"temp_id": "x"}}}))
                .unwrap();
        assert_eq!(s.sites["test"].temp_id.as_deref(), Some("x"));
    }
}
