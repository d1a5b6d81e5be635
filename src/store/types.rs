//! The store's domain types: what callers hand in and get back. No SQL here.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::StoreError;

/// A change to record in the inbox: one record of a QRS callback, or an app the catch-up sweep
/// found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewInboxRecord {
    /// Where it came from: `update`, `reload`, `publish` (the callback endpoint) or `sweep`.
    pub source: String,
    /// QRS object type (`App`).
    pub object_type: String,
    /// Object GUID (lower case).
    pub object_id: String,
    /// QRS change type: 1 Add, 2 Update, 3 Delete; 0 for synthetic (sweep) entries.
    pub change_type: i64,
    /// Changed property names as delivered (order does not matter for de-duplication).
    pub changed_properties: Vec<String>,
    /// The record's `modifiedDate` (the app's for sweep entries).
    pub modified_date: Option<String>,
    /// The record as received, for diagnosis.
    pub payload: serde_json::Value,
}

impl NewInboxRecord {
    /// The key identical deliveries share: object, change type, changed properties and
    /// modifiedDate, plus `sweep` for synthetic entries (a sweep never hides a real delivery).
    /// A record without modifiedDate cannot be told apart from a later change, so it gets a
    /// unique key (it is never collapsed).
    pub fn dedupe_key(&self) -> String {
        let mut props: Vec<&str> = self.changed_properties.iter().map(String::as_str).collect();
        props.sort_unstable();
        props.dedup();
        let origin = if self.source == SWEEP_SOURCE {
            "sweep"
        } else {
            "qrs"
        };
        let modified = match &self.modified_date {
            Some(m) => m.clone(),
            None => format!("unknown:{}", uuid::Uuid::new_v4()),
        };
        format!(
            "{origin}|{}|{}|{}|{}|{}",
            self.object_type.to_ascii_lowercase(),
            self.object_id.to_ascii_lowercase(),
            self.change_type,
            props.join(","),
            modified
        )
    }
}

/// `source` of inbox entries the catch-up sweep creates.
pub const SWEEP_SOURCE: &str = "sweep";

/// What [`super::Store::inbox_insert`] did with one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct InboxInsert {
    /// Records that became new inbox entries.
    pub new: u32,
    /// Records that matched an existing entry (its duplicate counter was raised).
    pub duplicates: u32,
}

/// `Display` and `FromStr` for an enum stored by name: its `as_str()` and `ALL` define both, and
/// an unknown name read back from the database is reported as corrupt data.
macro_rules! stored_name {
    ($ty:ident, $what:literal) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = StoreError;
            fn from_str(s: &str) -> Result<Self, StoreError> {
                $ty::ALL
                    .into_iter()
                    .find(|st| st.as_str() == s)
                    .ok_or_else(|| {
                        StoreError::Corrupt(format!(concat!("unknown ", $what, " \"{}\""), s))
                    })
            }
        }
    };
}

/// Where an inbox entry is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InboxState {
    /// Waiting to be evaluated.
    Pending,
    /// Claimed by a worker (until its lease runs out).
    Processing,
    /// Evaluated; a job was created or nothing had to be done.
    Done,
    /// Deliberately not acted on (own write, not an app of interest).
    Ignored,
    /// Evaluation failed for good.
    Failed,
}

impl InboxState {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            InboxState::Pending => "pending",
            InboxState::Processing => "processing",
            InboxState::Done => "done",
            InboxState::Ignored => "ignored",
            InboxState::Failed => "failed",
        }
    }

    /// Every state, in life order.
    pub const ALL: [InboxState; 5] = [
        InboxState::Pending,
        InboxState::Processing,
        InboxState::Done,
        InboxState::Ignored,
        InboxState::Failed,
    ];
}

stored_name!(InboxState, "inbox state");

/// One inbox entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InboxEntry {
    /// Inbox id (increasing).
    pub id: i64,
    /// `update`, `reload`, `publish` or `sweep` (of the first delivery).
    pub source: String,
    /// QRS object type (`App`).
    pub object_type: String,
    /// Object GUID (lower case).
    pub object_id: String,
    /// 1 Add, 2 Update, 3 Delete; 0 sweep.
    pub change_type: i64,
    /// Changed property names, as first delivered.
    pub changed_properties: Vec<String>,
    /// The record's `modifiedDate`, if it had one.
    pub modified_date: Option<String>,
    /// The first delivery's record as received.
    pub payload: serde_json::Value,
    /// First received, unix ms.
    pub received_at: i64,
    /// Last received (duplicates raise it), unix ms.
    pub last_seen_at: i64,
    /// How many identical deliveries followed the first.
    pub duplicates: u32,
    /// Where the entry is in its life.
    pub state: InboxState,
    /// How often it was claimed (more than once: a worker died holding it).
    pub claims: u32,
    /// Outcome note (`inbox_done`).
    pub note: String,
    /// Last change of state, unix ms.
    pub updated_at: i64,
}

/// A change subscription registered on a site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubscriptionRow {
    /// The handle QRS returned.
    pub handle: String,
    /// Site alias.
    pub site: String,
    /// `update`, `reload` or `publish`.
    pub kind: String,
    /// QRS object type (`App`).
    pub object_type: String,
    /// QRS change type (`Update`).
    pub change_type: String,
    /// `propertyName` restriction, if any.
    pub property_name: Option<String>,
    /// Where QRS calls (contains the callback secret).
    pub callback_url: String,
    /// Installation id of the Promoter that registered it.
    pub instance: String,
    /// Registered, unix ms.
    pub created_at: i64,
    /// Last confirmed present, unix ms.
    pub checked_at: i64,
}

/// A job to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewJob {
    /// Unique key (app + trigger + modifiedDate): creating the same job twice returns the first.
    pub key: String,
    /// Source app id.
    pub app_id: String,
    /// Source app name.
    pub app_name: String,
    /// What caused it (`update`, `reload`, `publish`, `sweep`, `cli`...).
    pub trigger: String,
    /// `promote`, `deny`, `restore`, ...
    pub kind: String,
    /// The engine's plan.
    pub plan: serde_json::Value,
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Created, waiting for a worker.
    Pending,
    /// Claimed by a worker holding a lease.
    Running,
    /// Waiting for `next_run_at` after a retryable failure.
    Retry,
    Succeeded,
    Failed,
    /// Some targets succeeded, some failed for good.
    PartiallyFailed,
    /// Nothing to do.
    Skipped,
}

impl JobStatus {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Retry => "retry",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::PartiallyFailed => "partially_failed",
            JobStatus::Skipped => "skipped",
        }
    }

    /// True for the statuses a job ends in.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded
                | JobStatus::Failed
                | JobStatus::PartiallyFailed
                | JobStatus::Skipped
        )
    }

    /// Every status.
    pub const ALL: [JobStatus; 7] = [
        JobStatus::Pending,
        JobStatus::Running,
        JobStatus::Retry,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::PartiallyFailed,
        JobStatus::Skipped,
    ];
}

stored_name!(JobStatus, "job status");

/// A stored job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobRow {
    /// UUID.
    pub id: String,
    /// Unique key (app + trigger + modifiedDate).
    pub key: String,
    /// Source app id.
    pub app_id: String,
    /// Source app name.
    pub app_name: String,
    /// What caused it (`update`, `reload`, `publish`, `sweep`, `cli`...).
    pub trigger: String,
    /// `promote`, `deny`, `restore`, ...
    pub kind: String,
    /// The engine's plan.
    pub plan: serde_json::Value,
    /// Durable working state (`job_set_state`), `{}` at first.
    pub state: serde_json::Value,
    /// Where the job is.
    pub status: JobStatus,
    /// How often it was claimed.
    pub claims: u32,
    /// Earliest next run, unix ms.
    pub next_run_at: i64,
    /// The worker holding the job, while running.
    pub lease_owner: Option<String>,
    /// When that worker's lease runs out, unix ms.
    pub lease_until: Option<i64>,
    /// The last failure (retry) or the final one.
    pub last_error: Option<String>,
    /// Created, unix ms.
    pub created_at: i64,
    /// Last changed, unix ms.
    pub updated_at: i64,
    /// Finished, unix ms.
    pub finished_at: Option<i64>,
}

/// A runner's hold on a claimed job: the worker that claimed it and the claim number. Every
/// write a runner makes about its job carries the lease; once the lease ran out and the job was
/// claimed again (by another process, or by another runner of the same process), the old
/// lease is stale and the store refuses its writes with [`StoreError::LeaseLost`], so a runner
/// that stalled past its lease cannot record steps, state or an outcome over the new one.
///
/// [`StoreError::LeaseLost`]: super::StoreError::LeaseLost
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The worker name given to [`Store::job_claim`](super::Store::job_claim).
    pub owner: String,
    /// The job's claim count when it was claimed.
    pub claim: u32,
}

impl JobRow {
    /// The lease of a running job, as claimed (`None` when the job is not running).
    pub fn lease(&self) -> Option<Lease> {
        match (&self.status, &self.lease_owner) {
            (JobStatus::Running, Some(owner)) => Some(Lease {
                owner: owner.clone(),
                claim: self.claims,
            }),
            _ => None,
        }
    }
}

/// One step of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepRow {
    /// The job.
    pub job_id: String,
    /// The step (unique within the job).
    pub step_key: String,
    /// What the step does, in words.
    pub detail: String,
    /// `running`, `ok`, `failed` or `skipped`.
    pub outcome: String,
    /// What the step produced (`null` until finished).
    pub result: serde_json::Value,
    /// Begun, unix ms.
    pub started_at: i64,
    /// Finished, unix ms.
    pub finished_at: Option<i64>,
}

/// One failed attempt of a step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttemptRow {
    /// The job.
    pub job_id: String,
    /// The step (unique within the job).
    pub step_key: String,
    /// 1, 2, ... per job and step.
    pub attempt: u32,
    /// What failed.
    pub error: String,
    /// Whether another attempt could succeed.
    pub retryable: bool,
    /// Unix ms.
    pub at: i64,
}
