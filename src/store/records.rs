//! App mappings, once-per-job effects, own writes and the audit trail.

use chrono::TimeZone;

use super::{Store, StoreError, now_ms, on_read, on_write};
use crate::engine::hooks::AuditEvent;

/// Own-write markers older than this are removed (their notification arrived long ago).
const OWN_WRITE_KEEP_MS: i64 = 7 * 24 * 3600 * 1000;

impl Store {
    /// The app a source app was promoted to on `site` in stream `stream_id`, if any.
    pub async fn mapping_get(
        &self,
        source_app_id: &str,
        site: &str,
        stream_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> = on_read!(self, |pool| {
            sqlx::query_as(
                "SELECT target_app_id FROM app_mappings \
                 WHERE source_app_id = $1 AND site = $2 AND stream_id = $3",
            )
            .bind(source_app_id)
            .bind(site)
            .bind(stream_id)
            .fetch_optional(pool)
            .await?
        });
        Ok(row.map(|(t,)| t))
    }

    /// Records (or replaces) where a source app went on `site` in stream `stream_id`.
    pub async fn mapping_put(
        &self,
        source_app_id: &str,
        site: &str,
        stream_id: &str,
        target_app_id: &str,
    ) -> Result<(), StoreError> {
        on_write!(self, |pool| {
            sqlx::query(
                "INSERT INTO app_mappings (source_app_id, site, stream_id, target_app_id, updated_at) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (source_app_id, site, stream_id) DO UPDATE SET \
                 target_app_id = excluded.target_app_id, updated_at = excluded.updated_at",
            )
            .bind(source_app_id)
            .bind(site)
            .bind(stream_id)
            .bind(target_app_id)
            .bind(now_ms())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// The value recorded for a once-per-job effect, if it happened.
    pub async fn effect_get(
        &self,
        job_id: &str,
        key: &str,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        let row: Option<(String,)> = on_read!(self, |pool| {
            sqlx::query_as("SELECT value FROM job_effects WHERE job_id = $1 AND effect_key = $2")
                .bind(job_id)
                .bind(key)
                .fetch_optional(pool)
                .await?
        });
        row.map(|(v,)| {
            serde_json::from_str(&v)
                .map_err(|e| StoreError::Corrupt(format!("job {job_id} effect {key}: {e}")))
        })
        .transpose()
    }

    /// Records a once-per-job effect. `false`: it was already recorded (the first value stays).
    pub async fn effect_put(
        &self,
        job_id: &str,
        key: &str,
        value: &serde_json::Value,
    ) -> Result<bool, StoreError> {
        let value = serde_json::to_string(value).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let n = on_write!(self, |pool| {
            sqlx::query(
                "INSERT INTO job_effects (job_id, effect_key, value, created_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (job_id, effect_key) DO NOTHING",
            )
            .bind(job_id)
            .bind(key)
            .bind(&value)
            .bind(now_ms())
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n == 1)
    }

    /// Appends an audit event (time kept to the millisecond).
    pub async fn audit_append(&self, e: &AuditEvent) -> Result<(), StoreError> {
        on_write!(self, |pool| {
            sqlx::query(
                "INSERT INTO audit_events (event_time, job_id, app_id, app_name, event, site, \
                 stream, target_app_id, actor, outcome, detail) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(e.time.timestamp_millis())
            .bind(&e.job_id)
            .bind(&e.app_id)
            .bind(&e.app_name)
            .bind(&e.event)
            .bind(&e.site)
            .bind(&e.stream)
            .bind(&e.target_app_id)
            .bind(&e.actor)
            .bind(&e.outcome)
            .bind(&e.detail)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// The most recent `limit` audit events (of one source app, or all), oldest first.
    pub async fn audit_list(
        &self,
        app: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let rows: Vec<AuditRaw> = on_read!(self, |pool| {
            sqlx::query_as(
                "SELECT id, event_time, job_id, app_id, app_name, event, site, stream, \
                 target_app_id, actor, outcome, detail FROM audit_events \
                 WHERE ($1 IS NULL OR app_id = $1) ORDER BY id DESC LIMIT $2",
            )
            .bind(app)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
        });
        let mut events = rows
            .into_iter()
            .map(AuditEvent::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        events.reverse();
        Ok(events)
    }

    /// Records that the engine itself changed `app_id`, producing `modified_date`: the change
    /// notification this causes is to be ignored.
    pub async fn own_write_put(&self, app_id: &str, modified_date: &str) -> Result<(), StoreError> {
        let now = now_ms();
        on_write!(self, |pool| {
            sqlx::query(
                "INSERT INTO own_writes (app_id, modified_date, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (app_id, modified_date) DO NOTHING",
            )
            .bind(app_id)
            .bind(modified_date)
            .bind(now)
            .execute(pool)
            .await?;
            sqlx::query("DELETE FROM own_writes WHERE created_at < $1")
                .bind(now - OWN_WRITE_KEEP_MS)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// True when `(app_id, modified_date)` was produced by the engine itself.
    pub async fn own_write_seen(
        &self,
        app_id: &str,
        modified_date: &str,
    ) -> Result<bool, StoreError> {
        let row: Option<(i64,)> = on_read!(self, |pool| {
            sqlx::query_as(
                "SELECT created_at FROM own_writes WHERE app_id = $1 AND modified_date = $2",
            )
            .bind(app_id)
            .bind(modified_date)
            .fetch_optional(pool)
            .await?
        });
        Ok(row.is_some())
    }
}

#[derive(sqlx::FromRow)]
struct AuditRaw {
    id: i64,
    event_time: i64,
    job_id: Option<String>,
    app_id: String,
    app_name: String,
    event: String,
    site: String,
    stream: String,
    target_app_id: String,
    actor: String,
    outcome: String,
    detail: String,
}

impl TryFrom<AuditRaw> for AuditEvent {
    type Error = StoreError;
    fn try_from(r: AuditRaw) -> Result<Self, StoreError> {
        let time = chrono::Utc
            .timestamp_millis_opt(r.event_time)
            .single()
            .ok_or_else(|| StoreError::Corrupt(format!("audit event {} time", r.id)))?;
        Ok(AuditEvent {
            time,
            job_id: r.job_id,
            app_id: r.app_id,
            app_name: r.app_name,
            event: r.event,
            site: r.site,
            stream: r.stream,
            target_app_id: r.target_app_id,
            actor: r.actor,
            outcome: r.outcome,
            detail: r.detail,
        })
    }
}
