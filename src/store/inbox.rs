//! The inbox: every received change, de-duplicated, waiting for evaluation.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{
    Backend, BeginWrite, INBOX_LEASE_MS, InboxEntry, InboxInsert, InboxState, NewInboxRecord,
    Store, StoreError, now_ms, on_read, on_write,
};

/// Inserts a record, or counts it as a duplicate of the entry with the same key. Returns the
/// entry's duplicate count: 0 when the record is new.
const UPSERT: &str = "INSERT INTO inbox (dedupe_key, source, object_type, object_id, change_type, \
     changed_properties, modified_date, payload, received_at, last_seen_at, duplicates, state, \
     claims, note, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, 0, 'pending', 0, '', $9) \
     ON CONFLICT (dedupe_key) DO UPDATE SET duplicates = inbox.duplicates + 1, \
     last_seen_at = excluded.last_seen_at \
     RETURNING duplicates";

const INBOX_COLUMNS: &str = "id, source, object_type, object_id, change_type, changed_properties, \
     modified_date, payload, received_at, last_seen_at, duplicates, state, claims, note, updated_at";

/// A record ready for the database: the record, its dedupe key and its JSON texts.
struct Prepared {
    key: String,
    props: String,
    payload: String,
    record: NewInboxRecord,
}

/// One delivery waiting for the inbox writer.
pub(super) struct InboxWrite {
    rows: Vec<Prepared>,
    reply: oneshot::Sender<Result<InboxInsert, StoreError>>,
}

/// Deliveries committed together at most (group commit).
const MAX_BATCH: usize = 256;

/// Starts the inbox writer: it commits the deliveries that queued up while the previous commit
/// was running in one transaction (one fsync for all of them: group commit), and answers each
/// only after that commit. It ends when every [`Store`] clone is gone.
pub(super) fn spawn_writer(backend: Arc<Backend>) -> mpsc::Sender<InboxWrite> {
    let (tx, mut rx) = mpsc::channel::<InboxWrite>(4096);
    let pools = Pools { backend };
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = rx.recv().await {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(w) => batch.push(w),
                    Err(_) => break,
                }
            }
            let groups: Vec<&[Prepared]> = batch.iter().map(|w| w.rows.as_slice()).collect();
            match write_batch(&pools, &groups).await {
                Ok(outcomes) => {
                    for (w, o) in batch.drain(..).zip(outcomes) {
                        let _ = w.reply.send(Ok(o));
                    }
                }
                Err(e) if batch.len() == 1 => {
                    if let Some(w) = batch.pop() {
                        let _ = w.reply.send(Err(e));
                    }
                }
                Err(_) => {
                    // One delivery may be the cause: give each its own transaction.
                    for w in batch.drain(..) {
                        let r = write_batch(&pools, &[w.rows.as_slice()])
                            .await
                            .map(|o| o.into_iter().next().unwrap_or_default());
                        let _ = w.reply.send(r);
                    }
                }
            }
        }
    });
    tx
}

/// The pools, for the writer task (which must not hold a [`Store`]: that would keep its own
/// queue open forever).
struct Pools {
    backend: Arc<Backend>,
}

/// The upsert query for one prepared record (a macro: the query type differs per backend).
macro_rules! upsert {
    ($p:expr, $now:expr) => {
        sqlx::query_as::<_, (i64,)>(UPSERT)
            .bind($p.key.as_str())
            .bind($p.record.source.as_str())
            .bind($p.record.object_type.as_str())
            .bind($p.record.object_id.as_str())
            .bind($p.record.change_type)
            .bind($p.props.as_str())
            .bind($p.record.modified_date.as_deref())
            .bind($p.payload.as_str())
            .bind($now)
    };
}

/// Upserts every delivery of `groups` in one transaction; returns what happened to each.
async fn write_batch(
    pools: &Pools,
    groups: &[&[Prepared]],
) -> Result<Vec<InboxInsert>, StoreError> {
    let now = now_ms();
    let mut outcomes = Vec::with_capacity(groups.len());
    on_write!(pools, |pool| {
        let single = match groups {
            [g] if g.len() == 1 => Some(&g[0]),
            _ => None,
        };
        if let Some(p) = single {
            // One record: one statement, atomic by itself (one round trip, one commit).
            let (d,): (i64,) = upsert!(p, now).fetch_one(pool).await?;
            outcomes.push(count(&[d]));
        } else {
            let mut tx = pool.begin_write().await?;
            for g in groups {
                let mut dups = Vec::with_capacity(g.len());
                for p in *g {
                    let (d,): (i64,) = upsert!(p, now).fetch_one(&mut *tx).await?;
                    dups.push(d);
                }
                outcomes.push(count(&dups));
            }
            tx.commit().await?;
        }
    });
    Ok(outcomes)
}

/// New and duplicate counts from the duplicate counters the upserts returned (0 = new).
fn count(duplicates: &[i64]) -> InboxInsert {
    let new = duplicates.iter().filter(|d| **d == 0).count();
    InboxInsert {
        new: u32::try_from(new).unwrap_or(u32::MAX),
        duplicates: u32::try_from(duplicates.len() - new).unwrap_or(u32::MAX),
    }
}

impl Store {
    /// Records one delivery: either every record is stored (as a new entry, or as a duplicate
    /// of an identical earlier one) or none is, and it is committed when this returns.
    /// Concurrent deliveries are committed together (group commit).
    pub async fn inbox_insert(
        &self,
        records: &[NewInboxRecord],
    ) -> Result<InboxInsert, StoreError> {
        if records.is_empty() {
            return Ok(InboxInsert::default());
        }
        let rows = records
            .iter()
            .map(|r| {
                Ok(Prepared {
                    key: r.dedupe_key(),
                    props: serde_json::to_string(&r.changed_properties)
                        .map_err(|e| StoreError::Invalid(e.to_string()))?,
                    payload: serde_json::to_string(&r.payload)
                        .map_err(|e| StoreError::Invalid(e.to_string()))?,
                    record: r.clone(),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let (reply, answer) = oneshot::channel();
        let gone = || StoreError::Unavailable("the store is closing".into());
        self.inbox
            .send(InboxWrite { rows, reply })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// Claims up to `limit` entries to evaluate, oldest first: pending ones, and ones whose
    /// worker's lease ([`INBOX_LEASE_MS`]) ran out (it crashed). They become `processing`.
    pub async fn inbox_claim(
        &self,
        limit: u32,
        now_ms: i64,
    ) -> Result<Vec<InboxEntry>, StoreError> {
        let sql = format!(
            "UPDATE inbox SET state = 'processing', lease_until = $2, claims = claims + 1, \
             updated_at = $3 \
             WHERE id IN (SELECT id FROM inbox \
                WHERE state = 'pending' OR (state = 'processing' AND lease_until < $3) \
                ORDER BY id LIMIT $1) \
             RETURNING {INBOX_COLUMNS}"
        );
        let rows: Vec<InboxRaw> = on_write!(self, |pool| {
            let mut tx = pool.begin_serialized("inbox_claim").await?;
            let rows = sqlx::query_as(&sql)
                .bind(i64::from(limit))
                .bind(now_ms + INBOX_LEASE_MS)
                .bind(now_ms)
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            rows
        });
        let mut entries = rows
            .into_iter()
            .map(InboxEntry::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        entries.sort_by_key(|e| e.id);
        Ok(entries)
    }

    /// Records the outcome of evaluating an entry (`Done`, `Ignored`, `Failed`; `Pending` puts it
    /// back for another try).
    pub async fn inbox_done(
        &self,
        id: i64,
        state: InboxState,
        note: &str,
    ) -> Result<(), StoreError> {
        if state == InboxState::Processing {
            return Err(StoreError::Invalid(
                "inbox_done cannot set `processing`; use inbox_claim".into(),
            ));
        }
        let n = on_write!(self, |pool| {
            sqlx::query(
                "UPDATE inbox SET state = $2, note = $3, lease_until = NULL, updated_at = $4 \
                 WHERE id = $1",
            )
            .bind(id)
            .bind(state.as_str())
            .bind(note)
            .bind(now_ms())
            .execute(pool)
            .await?
            .rows_affected()
        });
        if n == 0 {
            return Err(StoreError::Invalid(format!("no inbox entry {id}")));
        }
        Ok(())
    }

    /// The most recent entries, newest first.
    pub async fn inbox_recent(&self, limit: u32) -> Result<Vec<InboxEntry>, StoreError> {
        let sql = format!("SELECT {INBOX_COLUMNS} FROM inbox ORDER BY id DESC LIMIT $1");
        let rows: Vec<InboxRaw> = on_read!(self, |pool| {
            sqlx::query_as(&sql)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
        });
        rows.into_iter().map(InboxEntry::try_from).collect()
    }

    /// One entry by id.
    pub async fn inbox_get(&self, id: i64) -> Result<Option<InboxEntry>, StoreError> {
        let sql = format!("SELECT {INBOX_COLUMNS} FROM inbox WHERE id = $1");
        let row: Option<InboxRaw> = on_read!(self, |pool| {
            sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?
        });
        row.map(InboxEntry::try_from).transpose()
    }

    /// Entries not yet evaluated (pending or processing).
    pub async fn inbox_depth(&self) -> Result<u64, StoreError> {
        let (n,): (i64,) = on_read!(self, |pool| {
            sqlx::query_as("SELECT COUNT(*) FROM inbox WHERE state IN ('pending', 'processing')")
                .fetch_one(pool)
                .await?
        });
        Ok(u64::try_from(n).unwrap_or_default())
    }

    /// Number of entries in each state (states without entries are left out).
    pub async fn inbox_counts(&self) -> Result<Vec<(InboxState, u64)>, StoreError> {
        let rows: Vec<(String, i64)> = on_read!(self, |pool| {
            sqlx::query_as("SELECT state, COUNT(*) FROM inbox GROUP BY state ORDER BY state")
                .fetch_all(pool)
                .await?
        });
        rows.into_iter()
            .map(|(s, n)| Ok((s.parse()?, u64::try_from(n).unwrap_or_default())))
            .collect()
    }
}

#[derive(sqlx::FromRow)]
struct InboxRaw {
    id: i64,
    source: String,
    object_type: String,
    object_id: String,
    change_type: i64,
    changed_properties: String,
    modified_date: Option<String>,
    payload: String,
    received_at: i64,
    last_seen_at: i64,
    duplicates: i64,
    state: String,
    claims: i64,
    note: String,
    updated_at: i64,
}

impl TryFrom<InboxRaw> for InboxEntry {
    type Error = StoreError;
    fn try_from(r: InboxRaw) -> Result<Self, StoreError> {
        Ok(InboxEntry {
            id: r.id,
            source: r.source,
            object_type: r.object_type,
            object_id: r.object_id,
            change_type: r.change_type,
            changed_properties: serde_json::from_str(&r.changed_properties).map_err(|e| {
                StoreError::Corrupt(format!("inbox {} changed_properties: {e}", r.id))
            })?,
            modified_date: r.modified_date,
            payload: serde_json::from_str(&r.payload)
                .map_err(|e| StoreError::Corrupt(format!("inbox {} payload: {e}", r.id)))?,
            received_at: r.received_at,
            last_seen_at: r.last_seen_at,
            duplicates: u32::try_from(r.duplicates).unwrap_or(u32::MAX),
            state: r.state.parse()?,
            claims: u32::try_from(r.claims).unwrap_or(u32::MAX),
            note: r.note,
            updated_at: r.updated_at,
        })
    }
}
