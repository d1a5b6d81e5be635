//! Jobs, their steps and attempts: the promotion engine's durable memory.

use super::{
    AttemptRow, BeginWrite, JobRow, JobStatus, Lease, NewJob, StepRow, Store, StoreError, now_ms,
    on_read, on_write,
};

const JOB_COLUMNS: &str = "id, job_key, app_id, app_name, job_trigger, kind, plan, state, status, \
     claims, next_run_at, lease_owner, lease_until, last_error, created_at, updated_at, finished_at";

const STEP_COLUMNS: &str = "job_id, step_key, detail, outcome, result, started_at, finished_at";

fn json_text(v: &serde_json::Value) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Invalid(e.to_string()))
}

/// The condition under which a runner may write about job `$1`: it still holds the lease
/// `$2` (owner) / `$3` (claim number). Statements using it start their own parameters at `$4`.
macro_rules! lease_held {
    () => {
        "lease_owner = $2 AND claims = $3 AND status = 'running'"
    };
}

/// `sqlx::query($sql)` with the job id and the lease bound as `$1`, `$2`, `$3` (see
/// [`lease_held!`]).
macro_rules! query_held {
    ($sql:expr, $id:expr, $lease:expr) => {
        sqlx::query($sql)
            .bind($id)
            .bind(&$lease.owner)
            .bind(i64::from($lease.claim))
    };
}

impl Store {
    /// Creates a job unless one with the same key exists. Returns its id and whether it was
    /// created now (`false`: the existing job's id).
    pub async fn job_create(&self, job: &NewJob) -> Result<(String, bool), StoreError> {
        let id = uuid::Uuid::new_v4().to_string();
        let plan = json_text(&job.plan)?;
        let now = now_ms();
        let (id, created): (String, bool) = on_write!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let inserted = sqlx::query(
                "INSERT INTO jobs (id, job_key, app_id, app_name, job_trigger, kind, plan, state, \
                 status, claims, next_run_at, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, '{}', 'pending', 0, $8, $8, $8) \
                 ON CONFLICT (job_key) DO NOTHING",
            )
            .bind(&id)
            .bind(&job.key)
            .bind(&job.app_id)
            .bind(&job.app_name)
            .bind(&job.trigger)
            .bind(&job.kind)
            .bind(&plan)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let out = if inserted == 1 {
                (id, true)
            } else {
                let (existing,): (String,) =
                    sqlx::query_as("SELECT id FROM jobs WHERE job_key = $1")
                        .bind(&job.key)
                        .fetch_one(&mut *tx)
                        .await?;
                (existing, false)
            };
            tx.commit().await?;
            out
        });
        Ok((id, created))
    }

    /// One job by id.
    pub async fn job_get(&self, id: &str) -> Result<Option<JobRow>, StoreError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
        let row: Option<JobRaw> = on_read!(self, |pool| sqlx::query_as(&sql)
            .bind(id)
            .fetch_optional(pool)
            .await?);
        row.map(JobRow::try_from).transpose()
    }

    /// One job by its unique key.
    pub async fn job_by_key(&self, key: &str) -> Result<Option<JobRow>, StoreError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE job_key = $1");
        let row: Option<JobRow> = on_read!(self, |pool| {
            let raw: Option<JobRaw> = sqlx::query_as(&sql).bind(key).fetch_optional(pool).await?;
            raw.map(JobRow::try_from).transpose()?
        });
        Ok(row)
    }

    /// The most recent jobs (of one source app, or all), newest first.
    pub async fn jobs_list(
        &self,
        app: Option<&str>,
        limit: u32,
    ) -> Result<Vec<JobRow>, StoreError> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE ($1 IS NULL OR app_id = $1) \
             ORDER BY created_at DESC, id DESC LIMIT $2"
        );
        let rows: Vec<JobRaw> = on_read!(self, |pool| {
            sqlx::query_as(&sql)
                .bind(app)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
        });
        rows.into_iter().map(JobRow::try_from).collect()
    }

    /// Number of jobs in each status (statuses without jobs are left out).
    pub async fn job_counts(&self) -> Result<Vec<(JobStatus, u64)>, StoreError> {
        let rows: Vec<(String, i64)> = on_read!(self, |pool| {
            sqlx::query_as("SELECT status, COUNT(*) FROM jobs GROUP BY status ORDER BY status")
                .fetch_all(pool)
                .await?
        });
        rows.into_iter()
            .map(|(s, n)| Ok((s.parse()?, u64::try_from(n).unwrap_or_default())))
            .collect()
    }

    /// Claims the oldest runnable job for `worker` with a lease until `now_ms + lease_ms`:
    /// pending or retry jobs whose `next_run_at` has come, and running jobs whose lease ran out
    /// (their worker died). Never a job whose app has another job running under a live lease.
    pub async fn job_claim(
        &self,
        worker: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<JobRow>, StoreError> {
        let sql = format!(
            "UPDATE jobs SET status = 'running', lease_owner = $1, lease_until = $3, \
             claims = claims + 1, updated_at = $2 \
             WHERE id = (SELECT j.id FROM jobs j \
                WHERE ((j.status IN ('pending', 'retry') AND j.next_run_at <= $2) \
                       OR (j.status = 'running' AND j.lease_until < $2)) \
                  AND NOT EXISTS (SELECT 1 FROM jobs o WHERE o.app_id = j.app_id \
                       AND o.id <> j.id AND o.status = 'running' AND o.lease_until >= $2) \
                ORDER BY j.created_at, j.id LIMIT 1) \
             RETURNING {JOB_COLUMNS}"
        );
        let row: Option<JobRaw> = on_write!(self, |pool| {
            let mut tx = pool.begin_serialized("job_claim").await?;
            let row = sqlx::query_as(&sql)
                .bind(worker)
                .bind(now_ms)
                .bind(now_ms.saturating_add(lease_ms))
                .fetch_optional(&mut *tx)
                .await?;
            tx.commit().await?;
            row
        });
        row.map(JobRow::try_from).transpose()
    }

    /// Extends a runner's lease on its job. `false`: the job is no longer this runner's (its
    /// lease ran out and it was claimed again, or it finished): stop working on it.
    pub async fn job_renew_lease(
        &self,
        id: &str,
        lease: &Lease,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        let n = on_write!(self, |pool| {
            query_held!(
                concat!(
                    "UPDATE jobs SET lease_until = $4, updated_at = $5 WHERE id = $1 AND ",
                    lease_held!()
                ),
                id,
                lease
            )
            .bind(now_ms.saturating_add(lease_ms))
            .bind(now_ms)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n > 0)
    }

    /// Replaces the job's durable working state (export path, temporary app ids...).
    pub async fn job_set_state(
        &self,
        id: &str,
        lease: &Lease,
        state: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let state = json_text(state)?;
        let n = on_write!(self, |pool| {
            query_held!(
                concat!(
                    "UPDATE jobs SET state = $4, updated_at = $5 WHERE id = $1 AND ",
                    lease_held!()
                ),
                id,
                lease
            )
            .bind(&state)
            .bind(now_ms())
            .execute(pool)
            .await?
            .rows_affected()
        });
        self.held_or_why(id, n).await
    }

    /// Puts the job back to wait until `next_run_ms` after a retryable failure (releases the
    /// lease).
    pub async fn job_retry_at(
        &self,
        id: &str,
        lease: &Lease,
        next_run_ms: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        let n = on_write!(self, |pool| {
            query_held!(
                concat!(
                    "UPDATE jobs SET status = 'retry', next_run_at = $4, last_error = $5, \
                     lease_owner = NULL, lease_until = NULL, updated_at = $6 WHERE id = $1 AND ",
                    lease_held!()
                ),
                id,
                lease
            )
            .bind(next_run_ms)
            .bind(error)
            .bind(now_ms())
            .execute(pool)
            .await?
            .rows_affected()
        });
        self.held_or_why(id, n).await
    }

    /// Ends the job with a final status (releases the lease).
    pub async fn job_finish(
        &self,
        id: &str,
        lease: &Lease,
        status: JobStatus,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        if !status.is_final() {
            return Err(StoreError::Invalid(format!(
                "job_finish needs a final status, not `{status}`"
            )));
        }
        let now = now_ms();
        let n = on_write!(self, |pool| {
            query_held!(
                concat!(
                    "UPDATE jobs SET status = $4, last_error = $5, lease_owner = NULL, \
                     lease_until = NULL, finished_at = $6, updated_at = $6 WHERE id = $1 AND ",
                    lease_held!()
                ),
                id,
                lease
            )
            .bind(status.as_str())
            .bind(error)
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected()
        });
        self.held_or_why(id, n).await
    }

    /// After a write guarded by a lease changed `n` rows: fine, no such job, or the lease is
    /// no longer held.
    async fn held_or_why(&self, id: &str, n: u64) -> Result<(), StoreError> {
        if n > 0 {
            Ok(())
        } else if self.job_get(id).await?.is_none() {
            Err(StoreError::Invalid(format!("no job {id}")))
        } else {
            Err(StoreError::LeaseLost(id.to_string()))
        }
    }

    /// Records that a step started (`running`). Starting a step again resets it.
    pub async fn step_begin(
        &self,
        job_id: &str,
        lease: &Lease,
        step_key: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        let n = on_write!(self, |pool| {
            // SQLite needs the `WHERE` before `ON CONFLICT` in an INSERT ... SELECT.
            query_held!(
                concat!(
                    "INSERT INTO job_steps (job_id, step_key, detail, outcome, result, \
                     started_at) SELECT $1, $4, $5, 'running', 'null', $6 \
                     WHERE EXISTS (SELECT 1 FROM jobs WHERE id = $1 AND ",
                    lease_held!(),
                    ") ON CONFLICT (job_id, step_key) DO UPDATE SET detail = excluded.detail, \
                     outcome = 'running', result = 'null', started_at = excluded.started_at, \
                     finished_at = NULL"
                ),
                job_id,
                lease
            )
            .bind(step_key)
            .bind(detail)
            .bind(now_ms())
            .execute(pool)
            .await?
            .rows_affected()
        });
        self.held_or_why(job_id, n).await
    }

    /// Records a step's outcome (`ok`, `failed`, `skipped`) and result.
    pub async fn step_finish(
        &self,
        job_id: &str,
        lease: &Lease,
        step_key: &str,
        outcome: &str,
        result: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let result = json_text(result)?;
        let n = on_write!(self, |pool| {
            query_held!(
                concat!(
                    "INSERT INTO job_steps (job_id, step_key, detail, outcome, result, \
                     started_at, finished_at) SELECT $1, $4, '', $5, $6, $7, $7 \
                     WHERE EXISTS (SELECT 1 FROM jobs WHERE id = $1 AND ",
                    lease_held!(),
                    ") ON CONFLICT (job_id, step_key) DO UPDATE SET outcome = excluded.outcome, \
                     result = excluded.result, finished_at = excluded.finished_at"
                ),
                job_id,
                lease
            )
            .bind(step_key)
            .bind(outcome)
            .bind(&result)
            .bind(now_ms())
            .execute(pool)
            .await?
            .rows_affected()
        });
        self.held_or_why(job_id, n).await
    }

    /// A step's record, if it was begun or finished (resume skips steps with outcome `ok`).
    pub async fn step_result(
        &self,
        job_id: &str,
        step_key: &str,
    ) -> Result<Option<StepRow>, StoreError> {
        let sql =
            format!("SELECT {STEP_COLUMNS} FROM job_steps WHERE job_id = $1 AND step_key = $2");
        let row: Option<StepRaw> = on_read!(self, |pool| {
            sqlx::query_as(&sql)
                .bind(job_id)
                .bind(step_key)
                .fetch_optional(pool)
                .await?
        });
        row.map(StepRow::try_from).transpose()
    }

    /// Every step of a job, in the order they were started.
    pub async fn steps(&self, job_id: &str) -> Result<Vec<StepRow>, StoreError> {
        let sql = format!(
            "SELECT {STEP_COLUMNS} FROM job_steps WHERE job_id = $1 ORDER BY started_at, step_key"
        );
        let rows: Vec<StepRaw> = on_read!(self, |pool| sqlx::query_as(&sql)
            .bind(job_id)
            .fetch_all(pool)
            .await?);
        rows.into_iter().map(StepRow::try_from).collect()
    }

    /// Records a failed attempt of a step; returns its number (1, 2, ... per job and step).
    pub async fn attempt_record(
        &self,
        job_id: &str,
        step_key: &str,
        error: &str,
        retryable: bool,
    ) -> Result<u32, StoreError> {
        let (n,): (i64,) = on_write!(self, |pool| {
            sqlx::query_as(
                "INSERT INTO job_attempts (job_id, step_key, attempt, error, retryable, at) \
                 SELECT $1, $2, COALESCE(MAX(attempt), 0) + 1, $3, $4, $5 FROM job_attempts \
                 WHERE job_id = $1 AND step_key = $2 \
                 RETURNING attempt",
            )
            .bind(job_id)
            .bind(step_key)
            .bind(error)
            .bind(i64::from(retryable))
            .bind(now_ms())
            .fetch_one(pool)
            .await?
        });
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Every failed attempt of a job, oldest first.
    pub async fn attempts(&self, job_id: &str) -> Result<Vec<AttemptRow>, StoreError> {
        let rows: Vec<(String, String, i64, String, i64, i64)> = on_read!(self, |pool| {
            sqlx::query_as(
                "SELECT job_id, step_key, attempt, error, retryable, at FROM job_attempts \
                 WHERE job_id = $1 ORDER BY id",
            )
            .bind(job_id)
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(
                |(job_id, step_key, attempt, error, retryable, at)| AttemptRow {
                    job_id,
                    step_key,
                    attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
                    error,
                    retryable: retryable != 0,
                    at,
                },
            )
            .collect())
    }
}

#[derive(sqlx::FromRow)]
struct JobRaw {
    id: String,
    job_key: String,
    app_id: String,
    app_name: String,
    job_trigger: String,
    kind: String,
    plan: String,
    state: String,
    status: String,
    claims: i64,
    next_run_at: i64,
    lease_owner: Option<String>,
    lease_until: Option<i64>,
    last_error: Option<String>,
    created_at: i64,
    updated_at: i64,
    finished_at: Option<i64>,
}

impl TryFrom<JobRaw> for JobRow {
    type Error = StoreError;
    fn try_from(r: JobRaw) -> Result<Self, StoreError> {
        let json = |what: &str, text: &str| {
            serde_json::from_str(text)
                .map_err(|e| StoreError::Corrupt(format!("job {} {what}: {e}", r.id)))
        };
        Ok(JobRow {
            plan: json("plan", &r.plan)?,
            state: json("state", &r.state)?,
            status: r.status.parse()?,
            id: r.id,
            key: r.job_key,
            app_id: r.app_id,
            app_name: r.app_name,
            trigger: r.job_trigger,
            kind: r.kind,
            claims: u32::try_from(r.claims).unwrap_or(u32::MAX),
            next_run_at: r.next_run_at,
            lease_owner: r.lease_owner,
            lease_until: r.lease_until,
            last_error: r.last_error,
            created_at: r.created_at,
            updated_at: r.updated_at,
            finished_at: r.finished_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct StepRaw {
    job_id: String,
    step_key: String,
    detail: String,
    outcome: String,
    result: String,
    started_at: i64,
    finished_at: Option<i64>,
}

impl TryFrom<StepRaw> for StepRow {
    type Error = StoreError;
    fn try_from(r: StepRaw) -> Result<Self, StoreError> {
        Ok(StepRow {
            result: serde_json::from_str(&r.result).map_err(|e| {
                StoreError::Corrupt(format!("job {} step {} result: {e}", r.job_id, r.step_key))
            })?,
            job_id: r.job_id,
            step_key: r.step_key,
            detail: r.detail,
            outcome: r.outcome,
            started_at: r.started_at,
            finished_at: r.finished_at,
        })
    }
}
