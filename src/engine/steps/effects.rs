//! The engine's hooks besides QRS: mail (once per job and kind), versions, the audit trail.
//!
//! The engine decides when; `crate::mail`, `crate::versioning` and `crate::audit` decide how.
//! Mail never blocks a promotion: a retryable mail failure is retried with the job's backoff
//! after the rest of the plan has run, and a permanent one is recorded and skipped.

use std::path::Path;
use std::sync::Arc;

use super::super::executor::{Done, FileRecord, JobRun, StepError};
use super::super::hooks::{AuditEvent, JobFacts, Notice, TargetOutcome, VersionMeta};
use super::super::model::Command;
use crate::config::Settings;
use crate::store::Store;
use crate::versioning::{VersionError, VersionReader, VersionStore};

/// The version store and the audit trail, built once.
#[derive(Clone)]
pub(crate) struct Hooks {
    settings: Arc<Settings>,
    audit: crate::audit::Audit,
    versions: Option<Arc<VersionStore>>,
}

impl Hooks {
    pub async fn new(settings: &Settings, store: Store) -> anyhow::Result<Hooks> {
        let versions = VersionStore::from_settings(settings).await?.map(Arc::new);
        Ok(Hooks {
            audit: crate::audit::Audit::new(settings, store),
            settings: Arc::new(settings.clone()),
            versions,
        })
    }

    /// Appends to the audit trail (store and CSV). Failures are logged, never fatal.
    pub async fn audit(&self, event: &AuditEvent) {
        if let Err(e) = self.audit.record(event).await {
            tracing::warn!(event = %event.event, app = %event.app_id, "cannot write the audit trail: {e:#}");
        }
    }

    /// Whether a version store is configured.
    pub fn versions_enabled(&self) -> bool {
        self.versions.is_some()
    }

    /// Stores the no-data export `path` as a version; returns the version id.
    pub async fn store_version(
        &self,
        meta: &VersionMeta,
        path: &Path,
        size: u64,
    ) -> Result<String, StepError> {
        let Some(versions) = &self.versions else {
            return Err(StepError::fatal("versioning is not configured"));
        };
        let file = tokio::fs::File::open(path).await.map_err(|e| {
            StepError::fatal(format!("cannot read the export {}: {e}", path.display()))
        })?;
        let stored = versions
            .put(meta, file, Some(size))
            .await
            .map_err(version_error)?;
        Ok(stored.version_id)
    }

    /// Opens a stored version for reading; returns the reader and its size when known.
    pub async fn open_version(
        &self,
        app_id: &str,
        version_id: &str,
    ) -> Result<(VersionReader, Option<u64>), StepError> {
        // A restore reads versions whatever `versioning.enabled` says (they may have been
        // stored before it was turned off).
        let built;
        let versions = match &self.versions {
            Some(v) => v.as_ref(),
            None => {
                built = VersionStore::new(&self.settings).await.map_err(|e| {
                    StepError::fatal(format!("the version store cannot be opened: {e:#}"))
                })?;
                &built
            }
        };
        let size = versions
            .get(app_id, version_id)
            .await
            .map_err(version_error)?
            .size;
        let reader = versions
            .open(app_id, version_id)
            .await
            .map_err(version_error)?;
        Ok((reader, Some(size)))
    }
}

fn version_error(e: VersionError) -> StepError {
    if e.is_retryable() {
        StepError::Retry {
            message: e.to_string(),
            retry_after: None,
        }
    } else {
        StepError::Fatal(e.to_string())
    }
}

/// The facts about a job every notice needs; the owner's email is read from QRS (a failure
/// leaves it empty: the mail goes to the fallback recipients).
pub(crate) async fn job_facts(run: &JobRun) -> JobFacts {
    let plan = &run.plan;
    let local = &run.settings().local;
    let mut owner_email = plan.owner.email.clone();
    if owner_email.is_none() && !plan.owner.id.is_empty() {
        match run.local().get_user(&plan.owner.id).await {
            Ok(u) => owner_email = u.email().map(str::to_string),
            Err(e) => tracing::warn!(job = %run.id(), "cannot read the owner's email: {e}"),
        }
    }
    JobFacts {
        job_id: run.id().to_string(),
        app_id: plan.app_id.clone(),
        app_name: plan.app_name.clone(),
        stream: plan.source_stream.as_ref().map(|s| s.name.clone()),
        stream_id: plan.source_stream.as_ref().map(|s| s.id.clone()),
        owner: plan.owner.account(),
        owner_name: plan.owner.name.clone(),
        owner_email,
        approver: plan.approver.clone(),
        source_site: local.alias.clone(),
        source_hub_link: local.app_url(&plan.app_id),
    }
}

/// Sends `notice` once per job and kind: an effect marker is checked before and written after.
/// Returns what happened, for the step record.
async fn send_once(run: &JobRun, notice: Notice) -> Result<Done, StepError> {
    let Some(mailer) = run.engine.mailer() else {
        return Ok(Done::skipped("email is off"));
    };
    let kind = notice.kind();
    let effect = format!("mail:{kind}");
    if let Some(v) = run.store().effect_get(run.id(), &effect).await? {
        return Ok(Done::ok(format!("already sent ({v})")));
    }
    let ctx = mailer.context(notice.job());
    let mut ev = run.event("email", "ok", kind);
    match mailer.send(&notice, &ctx).await {
        Ok(sent) => {
            let record = serde_json::json!({
                "message_id": sent.message_id,
                "recipients": sent.recipients,
            });
            run.store().effect_put(run.id(), &effect, &record).await?;
            ev.detail = format!("{kind} to {}", sent.recipients.join(", "));
            run.engine.audit(ev).await;
            Ok(
                Done::ok(format!("sent to {}", sent.recipients.join(", ")))
                    .with_id(sent.message_id),
            )
        }
        Err(e) if e.is_no_recipients() => {
            ev.outcome = "skipped".into();
            ev.detail = e.to_string();
            run.engine.audit(ev).await;
            Ok(Done::skipped(e.to_string()))
        }
        Err(e) => {
            ev.outcome = if e.is_retryable() {
                "retrying"
            } else {
                "failed"
            }
            .into();
            ev.detail = format!("{kind}: {e}");
            run.engine.audit(ev).await;
            Err(e.into())
        }
    }
}

/// The notice a `Notify*` command sends, or why none is due.
async fn notice_for(run: &JobRun, cmd: &Command) -> Result<Result<Notice, String>, StepError> {
    let job = run.facts().await.clone();
    Ok(Ok(match cmd {
        Command::NotifyApproved => Notice::Approved {
            job,
            targets: run
                .plan
                .targets
                .iter()
                .map(|t| TargetOutcome {
                    site: t.site.clone(),
                    stream: t.stream.clone(),
                    app_id: None,
                    hub_link: None,
                    error: None,
                })
                .collect(),
        },
        Command::NotifyDenied => Notice::Denied { job },
        Command::NotifyPublishReview => {
            let Some(stream) = &run.plan.source_stream else {
                return Ok(Err("the app is not published".into()));
            };
            let prop = &run.settings().properties.email_alert_on_publish;
            let s = run.local().get_stream(&stream.id).await?;
            if prop.trim().is_empty() || s.property_values(prop).is_empty() {
                return Ok(Err(format!(
                    "stream \"{}\" does not carry the {prop} property",
                    stream.name
                )));
            }
            Notice::PublishReview { job }
        }
        Command::NotifyResult => Notice::PromotionResult {
            job,
            targets: run
                .target_records()
                .await?
                .iter()
                .map(|r| r.to_outcome())
                .collect(),
            version_id: run.version_id().await?,
        },
        other => return Ok(Err(format!("{} is not a notice", other.step_key()))),
    }))
}

/// `Notify*`: sends the notice once. Never fails the job: a retryable failure is retried
/// after the rest of the plan, a permanent one is recorded.
pub(crate) async fn notify(run: &JobRun, cmd: &Command) -> Result<(), StepError> {
    let key = cmd.step_key();
    let r = run
        .step(&key, &cmd.to_string(), async {
            match notice_for(run, cmd).await? {
                Ok(n) => send_once(run, n).await,
                Err(why) => Ok(Done::skipped(why)),
            }
        })
        .await;
    match r {
        Ok(_) => Ok(()),
        Err(StepError::Cancelled) => Err(StepError::Cancelled),
        Err(e @ StepError::Retry { .. }) => {
            run.defer(e);
            Ok(())
        }
        Err(StepError::Fatal(m)) => {
            tracing::warn!(job = %run.id(), step = %key, "no mail: {m}");
            Ok(())
        }
    }
}

/// The failure alert to the administrators, once per job (best effort).
pub(crate) async fn notify_job_failed(run: &JobRun, reason: &str) {
    let job = run.facts().await.clone();
    let notice = Notice::JobFailed {
        job,
        reason: reason.to_string(),
    };
    let r = run
        .step(
            "notify:job_failed",
            "email the administrators that the job failed",
            async { send_once(run, notice).await },
        )
        .await;
    if let Err(e) = r {
        tracing::warn!(job = %run.id(), "the failure alert was not sent: {}", e.message());
    }
}

/// `StoreVersion`: stores the no-data export as a version.
pub(crate) async fn store_version(run: &JobRun) -> Result<(), StepError> {
    let cmd = Command::StoreVersion;
    run.step(&cmd.step_key(), &cmd.to_string(), async {
        if !run.engine.hooks().versions_enabled() {
            return Ok(Done::skipped("versioning is not configured"));
        }
        let export_key = Command::ExportSource { skip_data: true }.step_key();
        super::transfer::export(run, true).await?;
        let file: FileRecord = run
            .recorded(&export_key)
            .await?
            .ok_or_else(|| StepError::fatal("no export without data to version"))?;
        let plan = &run.plan;
        let meta = VersionMeta {
            app_id: plan.app_id.clone(),
            app_name: plan.app_name.clone(),
            site: run.settings().local.alias.clone(),
            stream: plan.source_stream.as_ref().map(|s| s.name.clone()),
            job_id: run.id().to_string(),
            approver: plan.approver.clone(),
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        let vid = run
            .engine
            .hooks()
            .store_version(&meta, &file.path, file.bytes)
            .await?;
        let mut ev = run.event(
            "version",
            "ok",
            format!("version {vid} ({} bytes)", file.bytes),
        );
        ev.actor = plan.approver.clone().unwrap_or_else(|| "promoter".into());
        run.engine.audit(ev).await;
        Ok(Done::ok(format!("stored version {vid}")).with_id(vid))
    })
    .await?;
    Ok(())
}
