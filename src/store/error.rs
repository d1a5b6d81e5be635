//! Store errors: retryable (the database is unreachable or busy) or permanent.

/// Why a store call failed. [`StoreError::is_retryable`] tells a caller whether trying again
/// later can help.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database is unreachable, restarting, overloaded or busy. Try again later.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The database refused the statement (constraint, syntax, types). Retrying will not help.
    #[error("database error: {0}")]
    Database(String),
    /// The database could not be opened (bad URL, unwritable folder, authentication).
    #[error("cannot open the database: {0}")]
    Open(String),
    /// The schema could not be brought up to date.
    #[error(
        "cannot update the database schema: {0}. Is the database used by a newer Promoter version?"
    )]
    Migrate(String),
    /// A stored value cannot be read back (JSON, enum text).
    #[error("stored data cannot be read: {0}")]
    Corrupt(String),
    /// The caller asked for something the store does not accept.
    #[error("invalid store request: {0}")]
    Invalid(String),
    /// The job's lease ran out and the job was claimed again: this worker must stop working on
    /// it (the new holder carries on from the recorded steps).
    #[error(
        "job {0} was taken over by another worker after this one's lease ran out (promotion.lease_seconds)"
    )]
    LeaseLost(String),
}

impl StoreError {
    /// True when the same call may succeed later (connection lost, pool exhausted, database busy
    /// or locked, serialization conflict).
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match &e {
            E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed => {
                StoreError::Unavailable(e.to_string())
            }
            E::Protocol(_) => StoreError::Unavailable(e.to_string()),
            E::Database(db) => {
                let postgres = db
                    .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .is_some();
                let code = db.code().unwrap_or_default();
                let retry = if postgres {
                    retryable_sqlstate(&code)
                } else {
                    retryable_sqlite_code(&code)
                };
                if retry {
                    StoreError::Unavailable(e.to_string())
                } else {
                    StoreError::Database(e.to_string())
                }
            }
            E::ColumnDecode { .. } | E::Decode(_) => StoreError::Corrupt(e.to_string()),
            E::Migrate(_) => StoreError::Migrate(e.to_string()),
            _ => StoreError::Database(e.to_string()),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        match e {
            sqlx::migrate::MigrateError::Execute(inner) => match StoreError::from(inner) {
                StoreError::Unavailable(m) => StoreError::Unavailable(m),
                other => StoreError::Migrate(other.to_string()),
            },
            other => StoreError::Migrate(other.to_string()),
        }
    }
}

/// SQLite result codes (possibly extended) that mean "try again": SQLITE_BUSY (5),
/// SQLITE_LOCKED (6), SQLITE_IOERR (10), SQLITE_PROTOCOL (15) and their extended codes (primary
/// code in the low byte).
fn retryable_sqlite_code(code: &str) -> bool {
    code.parse::<i64>()
        .is_ok_and(|n| matches!(n & 0xff, 5 | 6 | 10 | 15))
}

/// PostgreSQL SQLSTATEs that mean "try again": 08xxx connection exception, 40001 serialization
/// failure, 40P01 deadlock, 53xxx insufficient resources, 57P0x shutdown / cannot connect now.
fn retryable_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || code == "40001"
        || code == "40P01"
        || code.starts_with("53")
        || code.starts_with("57P")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_classified() {
        for (code, retry) in [
            ("5", true),
            ("517", true),
            ("6", true),
            ("19", false),
            ("2067", false),
        ] {
            assert_eq!(retryable_sqlite_code(code), retry, "{code}");
        }
        for (code, retry) in [
            ("08006", true),
            ("40001", true),
            ("40P01", true),
            ("57P01", true),
            ("53300", true),
            ("23505", false),
            ("42P01", false),
        ] {
            assert_eq!(retryable_sqlstate(code), retry, "{code}");
        }
    }

    #[test]
    fn pool_timeouts_are_retryable_and_decoding_is_not() {
        assert!(StoreError::from(sqlx::Error::PoolTimedOut).is_retryable());
        assert!(!StoreError::from(sqlx::Error::RowNotFound).is_retryable());
        assert!(!StoreError::Corrupt("x".into()).is_retryable());
    }
}
