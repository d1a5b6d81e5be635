//! The durable store: SQLite (embedded default) or PostgreSQL (`postgres://` URL).
//!
//! All SQL of Promoter lives in this module; callers see domain types only ([`types`]).
//! Queries are runtime queries (the crate builds without a database) written once, in SQL both
//! databases understand (`$n` placeholders, `ON CONFLICT`, `RETURNING`), and run on whichever pool
//! is open (the `on_write!`/`on_read!` macros expand the same code for each backend).
//! The contract test `tests/store.rs` runs every function on both databases.
//!
//! Durability: on SQLite the database is in WAL mode with `synchronous = FULL`, so a committed
//! transaction survives a process crash or power loss; every write goes through one connection
//! (SQLite has one writer anyway; queueing in the pool is fairer than SQLite's busy-sleep).
//! Inbox deliveries go through one writer task that commits the deliveries queued up behind a
//! commit together (group commit): one fsync for many acknowledgements under load.

mod error;
mod inbox;
mod jobs;
mod records;
mod types;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::config::Settings;

pub use error::StoreError;
pub use types::*;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// How long an inbox entry claimed by [`Store::inbox_claim`] stays reserved for its worker.
pub const INBOX_LEASE_MS: i64 = 60_000;

/// The durable store. Cloning is cheap (pools are shared).
#[derive(Clone)]
pub struct Store {
    backend: Arc<Backend>,
    /// The inbox writer's queue (group commit).
    inbox: tokio::sync::mpsc::Sender<inbox::InboxWrite>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match &*self.backend {
            Backend::Sqlite { .. } => "Store(SQLite)",
            Backend::Postgres(_) => "Store(PostgreSQL)",
        })
    }
}

enum Backend {
    /// One connection for writes (SQLite has a single writer), a few for reads (WAL readers
    /// never block).
    Sqlite {
        write: SqlitePool,
        read: SqlitePool,
    },
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the pool that takes writes.
macro_rules! on_write {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &*$store.backend {
            $crate::store::Backend::Sqlite { write, .. } => {
                let $pool = write;
                $body
            }
            $crate::store::Backend::Postgres(p) => {
                let $pool = p;
                $body
            }
        }
    };
}

/// Runs `$body` with `$pool` bound to a pool for reads.
macro_rules! on_read {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &*$store.backend {
            $crate::store::Backend::Sqlite { read, .. } => {
                let $pool = read;
                $body
            }
            $crate::store::Backend::Postgres(p) => {
                let $pool = p;
                $body
            }
        }
    };
}

pub(crate) use {on_read, on_write};

/// Begins a write transaction: `BEGIN IMMEDIATE` on SQLite (takes the write lock at once, so a
/// transaction that reads first cannot fail to upgrade), a plain `BEGIN` on PostgreSQL.
pub(crate) trait BeginWrite {
    type Db: sqlx::Database;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>;
    /// A write transaction that no other `begin_serialized(name)` transaction overlaps.
    async fn begin_serialized(
        &self,
        name: &str,
    ) -> Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>;
}

impl BeginWrite for SqlitePool {
    type Db = sqlx::Sqlite;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.begin_with("BEGIN IMMEDIATE").await
    }
    async fn begin_serialized(
        &self,
        _name: &str,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        // SQLite has one writer: an immediate transaction is already serialized.
        self.begin_with("BEGIN IMMEDIATE").await
    }
}

impl BeginWrite for PgPool {
    type Db = sqlx::Postgres;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        self.begin().await
    }
    async fn begin_serialized(
        &self,
        name: &str,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        let mut tx = self.begin().await?;
        // A transaction-scoped advisory lock per schema and purpose: claims never interleave,
        // so two workers cannot take the same row (or two jobs of one app).
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.' || $1))")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }
}

/// Current time, unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// True for URLs that select PostgreSQL.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// The URL with any password replaced, for messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<unparsable database URL>".into(),
    }
}

impl Store {
    /// Opens the database the settings name (SQLite under `data.dir` by default), creating it on
    /// first start, and applies pending migrations.
    pub async fn open(settings: &Settings) -> Result<Store, StoreError> {
        Store::open_url(&settings.data.database_url()).await
    }

    /// Opens `sqlite://PATH?mode=rwc` or `postgres://...` and applies pending migrations.
    pub async fn open_url(url: &str) -> Result<Store, StoreError> {
        let backend = if is_postgres_url(url) {
            open_postgres(url).await?
        } else if url.starts_with("sqlite:") {
            open_sqlite(url).await?
        } else {
            return Err(StoreError::Open(format!(
                "{} is neither a sqlite:// nor a postgres:// URL",
                redact_url(url)
            )));
        };
        let backend = Arc::new(backend);
        let store = Store {
            inbox: inbox::spawn_writer(backend.clone()),
            backend,
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        match &*self.backend {
            Backend::Sqlite { write, .. } => SQLITE_MIGRATIONS.run(write).await?,
            Backend::Postgres(p) => POSTGRES_MIGRATIONS.run(p).await?,
        }
        Ok(())
    }

    /// `SQLite` or `PostgreSQL`.
    pub fn backend_name(&self) -> &'static str {
        match &*self.backend {
            Backend::Sqlite { .. } => "SQLite",
            Backend::Postgres(_) => "PostgreSQL",
        }
    }

    /// Closes the pools (waits for connections in use to be returned).
    pub async fn close(&self) {
        match &*self.backend {
            Backend::Sqlite { write, read } => {
                write.close().await;
                read.close().await;
            }
            Backend::Postgres(p) => p.close().await,
        }
    }

    /// Checks the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_write!(self, |pool| {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }

    /// A value from the installation-wide `meta` table.
    pub async fn meta_get(&self, name: &str) -> Result<Option<String>, StoreError> {
        let v: Option<(String,)> = on_read!(self, |pool| {
            sqlx::query_as("SELECT value FROM meta WHERE name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await?
        });
        Ok(v.map(|(v,)| v))
    }

    /// Sets a value in the `meta` table.
    pub async fn meta_put(&self, name: &str, value: &str) -> Result<(), StoreError> {
        on_write!(self, |pool| {
            sqlx::query(
                "INSERT INTO meta (name, value, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            )
            .bind(name)
            .bind(value)
            .bind(now_ms())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Returns the stored value, or stores `make()` and returns it if there was none (the first
    /// writer wins when two processes race).
    async fn meta_get_or_init(
        &self,
        name: &str,
        make: impl FnOnce() -> String,
    ) -> Result<String, StoreError> {
        if let Some(v) = self.meta_get(name).await? {
            return Ok(v);
        }
        let candidate = make();
        let v: (String,) = on_write!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            sqlx::query(
                "INSERT INTO meta (name, value, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(&candidate)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
            let v = sqlx::query_as("SELECT value FROM meta WHERE name = $1")
                .bind(name)
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            v
        });
        Ok(v.0)
    }

    /// The secret in the callback URLs (64 random URL-safe characters), generated on first use
    /// and kept with the data, so it survives restarts.
    pub async fn callback_secret(&self) -> Result<String, StoreError> {
        self.meta_get_or_init("callback_secret", || {
            format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            )
        })
        .await
    }

    /// A stable id of this installation (this database), recorded with its subscriptions.
    pub async fn installation_id(&self) -> Result<String, StoreError> {
        self.meta_get_or_init("installation_id", || uuid::Uuid::new_v4().to_string())
            .await
    }

    /// Every stored subscription, oldest first.
    pub async fn subscriptions(&self) -> Result<Vec<SubscriptionRow>, StoreError> {
        let rows: Vec<SubscriptionRaw> = on_read!(self, |pool| {
            sqlx::query_as(
                "SELECT handle, site, kind, object_type, change_type, property_name, callback_url, \
                 instance, created_at, checked_at FROM subscriptions ORDER BY created_at, handle",
            )
            .fetch_all(pool)
            .await?
        });
        Ok(rows.into_iter().map(SubscriptionRow::from).collect())
    }

    /// Stores (or updates, by handle) a subscription.
    pub async fn subscription_save(&self, s: &SubscriptionRow) -> Result<(), StoreError> {
        on_write!(self, |pool| {
            sqlx::query(
                "INSERT INTO subscriptions (handle, site, kind, object_type, change_type, \
                 property_name, callback_url, instance, created_at, checked_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT (handle) DO UPDATE SET site = excluded.site, kind = excluded.kind, \
                 object_type = excluded.object_type, change_type = excluded.change_type, \
                 property_name = excluded.property_name, callback_url = excluded.callback_url, \
                 instance = excluded.instance, checked_at = excluded.checked_at",
            )
            .bind(&s.handle)
            .bind(&s.site)
            .bind(&s.kind)
            .bind(&s.object_type)
            .bind(&s.change_type)
            .bind(&s.property_name)
            .bind(&s.callback_url)
            .bind(&s.instance)
            .bind(s.created_at)
            .bind(s.checked_at)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Forgets a subscription; returns whether it was stored.
    pub async fn subscription_delete(&self, handle: &str) -> Result<bool, StoreError> {
        let n = on_write!(self, |pool| {
            sqlx::query("DELETE FROM subscriptions WHERE handle = $1")
                .bind(handle)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(n > 0)
    }

    /// Marks every stored subscription of `site` as confirmed at `at_ms`.
    pub async fn subscriptions_checked(&self, site: &str, at_ms: i64) -> Result<(), StoreError> {
        on_write!(self, |pool| {
            sqlx::query("UPDATE subscriptions SET checked_at = $2 WHERE site = $1")
                .bind(site)
                .bind(at_ms)
                .execute(pool)
                .await?;
        });
        Ok(())
    }
}

#[derive(sqlx::FromRow)]
struct SubscriptionRaw {
    handle: String,
    site: String,
    kind: String,
    object_type: String,
    change_type: String,
    property_name: Option<String>,
    callback_url: String,
    instance: String,
    created_at: i64,
    checked_at: i64,
}

impl From<SubscriptionRaw> for SubscriptionRow {
    fn from(r: SubscriptionRaw) -> Self {
        SubscriptionRow {
            handle: r.handle,
            site: r.site,
            kind: r.kind,
            object_type: r.object_type,
            change_type: r.change_type,
            property_name: r.property_name,
            callback_url: r.callback_url,
            instance: r.instance,
            created_at: r.created_at,
            checked_at: r.checked_at,
        }
    }
}

async fn open_sqlite(url: &str) -> Result<Backend, StoreError> {
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|e| StoreError::Open(format!("{}: {e}", redact_url(url))))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true);
    let file = options.get_filename().to_path_buf();
    if let Some(dir) = file.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Open(format!(
                "cannot create the data folder {}: {e}",
                dir.display()
            ))
        })?;
    }
    let write = SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options.clone())
        .await
        .map_err(|e| open_error(&file.display().to_string(), e))?;
    let read = SqlitePoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options)
        .await
        .map_err(|e| open_error(&file.display().to_string(), e))?;
    Ok(Backend::Sqlite { write, read })
}

async fn open_postgres(url: &str) -> Result<Backend, StoreError> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| StoreError::Open(format!("{}: {e}", redact_url(url))))?
        .application_name("promoter");
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .map_err(|e| open_error(&redact_url(url), e))?;
    Ok(Backend::Postgres(pool))
}

fn open_error(what: &str, e: sqlx::Error) -> StoreError {
    match StoreError::from(e) {
        StoreError::Unavailable(m) => StoreError::Unavailable(format!("{what}: {m}")),
        other => StoreError::Open(format!("{what}: {other}")),
    }
}
