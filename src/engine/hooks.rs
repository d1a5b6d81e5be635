//! The engine's side effects besides QRS: mail, versions and the audit trail.
//!
//! Contract between the engine (caller) and `mail`, `versioning`, `audit` (implementers).
//! The engine decides *when* (at most once per job and kind, recorded in the store);
//! the implementations decide *how*.

use serde::{Deserialize, Serialize};

/// One target of a promotion, as reported in mail, descriptions and the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetOutcome {
    /// Site alias.
    pub site: String,
    /// Stream name on that site.
    pub stream: String,
    /// Target app id when the target succeeded.
    pub app_id: Option<String>,
    /// Hub link to the target app when it succeeded.
    pub hub_link: Option<String>,
    /// What failed and why, when it failed.
    pub error: Option<String>,
}

/// Facts about a job that every notice needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFacts {
    /// Job id (stable across restarts).
    pub job_id: String,
    /// Source app id on the local site.
    pub app_id: String,
    /// Source app name.
    pub app_name: String,
    /// Source stream name, if published.
    pub stream: Option<String>,
    /// Source stream id, if published.
    pub stream_id: Option<String>,
    /// Owner as `DIRECTORY\userid`.
    pub owner: String,
    /// Owner's display name.
    pub owner_name: String,
    /// Owner's email address from the user attributes, if any.
    pub owner_email: Option<String>,
    /// Who approved or denied (the user that last modified the app), if known.
    pub approver: Option<String>,
    /// Local site alias.
    pub source_site: String,
    /// Hub link to the source app.
    pub source_hub_link: String,
}

/// A message the engine asks to be sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Notice {
    /// An app was published to a stream: ask the stream's approvers to review it.
    PublishReview { job: JobFacts },
    /// The app was approved (sent to the owner before promotion starts).
    Approved {
        job: JobFacts,
        targets: Vec<TargetOutcome>,
    },
    /// The app was denied (sent to the owner).
    Denied { job: JobFacts },
    /// The promotion finished: each target with its outcome (sent to the owner and approvers).
    PromotionResult {
        job: JobFacts,
        targets: Vec<TargetOutcome>,
        version_id: Option<String>,
    },
    /// A job failed for good (sent to the administrators).
    JobFailed { job: JobFacts, reason: String },
}

impl TargetOutcome {
    /// Whether this target was promoted (it has an app id and no error).
    pub fn succeeded(&self) -> bool {
        self.error.is_none() && self.app_id.is_some()
    }
}

impl Notice {
    /// The job the notice is about.
    pub fn job(&self) -> &JobFacts {
        match self {
            Notice::PublishReview { job }
            | Notice::Approved { job, .. }
            | Notice::Denied { job }
            | Notice::PromotionResult { job, .. }
            | Notice::JobFailed { job, .. } => job,
        }
    }

    /// Stable kind name, used for the once-per-job-and-kind marker and the audit trail.
    pub fn kind(&self) -> &'static str {
        match self {
            Notice::PublishReview { .. } => "publish_review",
            Notice::Approved { .. } => "approved",
            Notice::Denied { .. } => "denied",
            Notice::PromotionResult { .. } => "promotion_result",
            Notice::JobFailed { .. } => "job_failed",
        }
    }
}

/// Metadata stored with an app version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionMeta {
    /// Source app id (the key is derived from it, never from the name).
    pub app_id: String,
    /// Source app name.
    pub app_name: String,
    /// Site alias the version was exported from.
    pub site: String,
    /// Source stream name, if any.
    pub stream: Option<String>,
    /// Job id.
    pub job_id: String,
    /// Approver, if known.
    pub approver: Option<String>,
    /// Time of the version, RFC 3339 UTC.
    pub time: String,
}

/// One row of the audit trail (store table `audit_events` and the daily CSV files).
/// Columns, in this order, are fixed: time (UTC), job id, app id, app name, event, site, stream,
/// target app id, actor, outcome, detail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When it happened (UTC).
    pub time: chrono::DateTime<chrono::Utc>,
    /// Job id, when the event belongs to a job.
    pub job_id: Option<String>,
    /// Source app id.
    pub app_id: String,
    /// Source app name.
    pub app_name: String,
    /// Event name, e.g. `decision`, `step`, `email`, `version`, `job_failed`.
    pub event: String,
    /// Site alias the event concerns, or empty.
    pub site: String,
    /// Stream name the event concerns, or empty.
    pub stream: String,
    /// Target app id, or empty.
    pub target_app_id: String,
    /// Who caused it (approver, owner, `promoter`).
    pub actor: String,
    /// `ok`, `failed`, `skipped`, ...
    pub outcome: String,
    /// Free text.
    pub detail: String,
}
