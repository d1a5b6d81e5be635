//! Store contract: every store function, on SQLite always and on PostgreSQL when
//! `TEST_POSTGRES_URL` is set (each test in a schema of its own, dropped afterwards).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use chrono::TimeZone;
use promoter::engine::hooks::AuditEvent;
use promoter::store::{
    INBOX_LEASE_MS, InboxState, JobStatus, Lease, NewInboxRecord, NewJob, Store, StoreError,
    SubscriptionRow,
};
use serde_json::json;
use sqlx::Connection;

/// A store on a fresh database; dropping it removes the database.
struct TestDb {
    store: Store,
    _dir: Option<tempfile::TempDir>,
    pg: Option<(String, String)>,
    url: String,
}

impl TestDb {
    async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("promoter.db").display()
        );
        let store = Store::open_url(&url).await.unwrap();
        TestDb {
            store,
            _dir: Some(dir),
            pg: None,
            url,
        }
    }

    async fn postgres(base: &str) -> TestDb {
        let schema = format!("store_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(base).await.unwrap();
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-csearch_path%3D{schema}");
        let store = Store::open_url(&url).await.unwrap();
        TestDb {
            store,
            _dir: None,
            pg: Some((base.to_string(), schema)),
            url,
        }
    }

    async fn drop_db(self) {
        self.store.close().await;
        if let Some((base, schema)) = self.pg {
            let mut conn = sqlx::PgConnection::connect(&base).await.unwrap();
            sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(&mut conn)
                .await
                .unwrap();
        }
    }
}

fn postgres_url() -> Option<String> {
    std::env::var("TEST_POSTGRES_URL")
        .ok()
        .filter(|s| !s.is_empty())
}

/// Generates `sqlite` and `postgres` tests running `$body(store, url)`.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = super::TestDb::sqlite().await;
                    super::$name(&db.store, &db.url).await;
                    db.drop_db().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(base) = super::postgres_url() else {
                        eprintln!("TEST_POSTGRES_URL is not set: PostgreSQL contract skipped");
                        return;
                    };
                    let db = super::TestDb::postgres(&base).await;
                    super::$name(&db.store, &db.url).await;
                    db.drop_db().await;
                }
            )*
        }
    };
}

contract!(
    callback_secret_is_generated_once_and_kept,
    identical_deliveries_collapse_and_are_counted,
    inbox_claims_lease_and_finish,
    concurrent_inbox_claims_never_share_an_entry,
    subscriptions_round_trip,
    jobs_are_created_once_per_key,
    job_claims_follow_status_time_and_app_exclusion,
    concurrent_job_claims_never_share_a_job_or_an_app,
    job_retry_finish_and_state,
    a_runner_whose_lease_was_taken_over_cannot_write,
    steps_and_attempts_are_recorded,
    mappings_effects_and_own_writes,
    audit_events_round_trip,
);

fn record(id: &str, modified: &str, props: &[&str]) -> NewInboxRecord {
    NewInboxRecord {
        source: "update".into(),
        object_type: "App".into(),
        object_id: id.into(),
        change_type: 2,
        changed_properties: props.iter().map(|p| p.to_string()).collect(),
        modified_date: Some(modified.into()),
        payload: json!({"objectID": id, "modifiedDate": modified}),
    }
}

/// Claims the next runnable job as `worker` at `at` (unix ms) and returns its lease.
async fn claim_lease(store: &Store, worker: &str, at: i64, lease_ms: i64) -> Lease {
    store
        .job_claim(worker, at, lease_ms)
        .await
        .unwrap()
        .expect("a job to claim")
        .lease()
        .expect("a claimed job has a lease")
}

fn new_job(key: &str, app: &str) -> NewJob {
    NewJob {
        key: key.into(),
        app_id: app.into(),
        app_name: format!("App {app}"),
        trigger: "update".into(),
        kind: "promote".into(),
        plan: json!({"targets": [{"site": "test"}]}),
    }
}

async fn callback_secret_is_generated_once_and_kept(store: &Store, url: &str) {
    let secret = store.callback_secret().await.unwrap();
    assert!(secret.len() >= 32, "{secret}");
    assert!(
        secret
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    );
    assert_eq!(store.callback_secret().await.unwrap(), secret);
    let id = store.installation_id().await.unwrap();
    // Another process opening the same database sees the same values.
    let again = Store::open_url(url).await.unwrap();
    assert_eq!(again.callback_secret().await.unwrap(), secret);
    assert_eq!(again.installation_id().await.unwrap(), id);
    again.meta_put("keeper.last_check", "123").await.unwrap();
    assert_eq!(
        store
            .meta_get("keeper.last_check")
            .await
            .unwrap()
            .as_deref(),
        Some("123")
    );
    assert_eq!(store.meta_get("nothing").await.unwrap(), None);
    again.close().await;
    store.ping().await.unwrap();
}

async fn identical_deliveries_collapse_and_are_counted(store: &Store, _url: &str) {
    let app = "0b5a4b7e-7d8b-4d4e-9e52-4a5e3a0c0d11";
    let first = record(app, "2024-11-19T07:37:20.156Z", &["modifiedDate", "name"]);
    let r = store
        .inbox_insert(std::slice::from_ref(&first))
        .await
        .unwrap();
    assert_eq!((r.new, r.duplicates), (1, 0));
    for _ in 0..99 {
        let r = store
            .inbox_insert(std::slice::from_ref(&first))
            .await
            .unwrap();
        assert_eq!((r.new, r.duplicates), (0, 1));
    }
    // Same change with the properties in another order, delivered to another endpoint: the same.
    let mut reordered = record(app, "2024-11-19T07:37:20.156Z", &["name", "modifiedDate"]);
    reordered.source = "publish".into();
    // Within one delivery: one new record, one duplicate of it, one duplicate of the first.
    let later = record(app, "2024-11-19T07:40:00.000Z", &["modifiedDate"]);
    let r = store
        .inbox_insert(&[later.clone(), later.clone(), reordered])
        .await
        .unwrap();
    assert_eq!((r.new, r.duplicates), (1, 2));
    // A sweep finding the app never hides (nor is hidden by) a real delivery.
    let mut sweep = later.clone();
    sweep.source = "sweep".into();
    assert_eq!(store.inbox_insert(&[sweep]).await.unwrap().new, 1);
    // No modifiedDate: never collapsed.
    let mut undated = later.clone();
    undated.modified_date = None;
    assert_eq!(
        store
            .inbox_insert(&[undated.clone(), undated])
            .await
            .unwrap()
            .new,
        2
    );
    assert_eq!(store.inbox_insert(&[]).await.unwrap().new, 0);

    let recent = store.inbox_recent(10).await.unwrap();
    assert_eq!(recent.len(), 5);
    assert!(recent.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    let oldest = recent.last().unwrap();
    assert_eq!(oldest.duplicates, 100);
    assert_eq!(oldest.source, "update");
    assert_eq!(oldest.object_id, app);
    assert_eq!(oldest.changed_properties, vec!["modifiedDate", "name"]);
    assert_eq!(
        oldest.modified_date.as_deref(),
        Some("2024-11-19T07:37:20.156Z")
    );
    assert_eq!(oldest.payload["objectID"], app);
    assert_eq!(oldest.state, InboxState::Pending);
    assert!(oldest.last_seen_at >= oldest.received_at);
    assert_eq!(recent[recent.len() - 2].duplicates, 1);
    assert_eq!(store.inbox_depth().await.unwrap(), 5);
    assert_eq!(
        store.inbox_counts().await.unwrap(),
        vec![(InboxState::Pending, 5)]
    );
    assert_eq!(store.inbox_recent(2).await.unwrap().len(), 2);
}

async fn inbox_claims_lease_and_finish(store: &Store, _url: &str) {
    let records: Vec<_> = (0..5)
        .map(|i| record(&format!("app-{i}"), "2024-01-01T00:00:00.000Z", &[]))
        .collect();
    store.inbox_insert(&records).await.unwrap();
    let now = 1_000_000;
    let first = store.inbox_claim(3, now).await.unwrap();
    assert_eq!(
        first
            .iter()
            .map(|e| e.object_id.as_str())
            .collect::<Vec<_>>(),
        vec!["app-0", "app-1", "app-2"]
    );
    assert!(
        first
            .iter()
            .all(|e| e.state == InboxState::Processing && e.claims == 1)
    );
    let second = store.inbox_claim(10, now).await.unwrap();
    assert_eq!(second.len(), 2);
    assert!(store.inbox_claim(10, now + 1).await.unwrap().is_empty());
    // Claimed entries still count as depth until they are done.
    assert_eq!(store.inbox_depth().await.unwrap(), 5);

    store
        .inbox_done(first[0].id, InboxState::Done, "job 1 created")
        .await
        .unwrap();
    store
        .inbox_done(first[1].id, InboxState::Ignored, "own write")
        .await
        .unwrap();
    store
        .inbox_done(first[2].id, InboxState::Failed, "no such app")
        .await
        .unwrap();
    assert!(matches!(
        store
            .inbox_done(first[2].id, InboxState::Processing, "")
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.inbox_done(999_999, InboxState::Done, "").await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(store.inbox_depth().await.unwrap(), 2);
    let done = store.inbox_get(first[0].id).await.unwrap().unwrap();
    assert_eq!(
        (done.state, done.note.as_str()),
        (InboxState::Done, "job 1 created")
    );
    assert!(store.inbox_get(999_999).await.unwrap().is_none());

    // The worker holding the other two died: after the lease they are claimable again.
    assert!(
        store
            .inbox_claim(10, now + INBOX_LEASE_MS)
            .await
            .unwrap()
            .is_empty()
    );
    let again = store
        .inbox_claim(10, now + INBOX_LEASE_MS + 1)
        .await
        .unwrap();
    assert_eq!(
        again.iter().map(|e| e.id).collect::<Vec<_>>(),
        second.iter().map(|e| e.id).collect::<Vec<_>>()
    );
    assert!(again.iter().all(|e| e.claims == 2));
    // Putting one back makes it pending.
    store
        .inbox_done(again[0].id, InboxState::Pending, "retry later")
        .await
        .unwrap();
    assert_eq!(
        store
            .inbox_claim(10, now + INBOX_LEASE_MS + 2)
            .await
            .unwrap()[0]
            .id,
        again[0].id
    );
    let counts = store.inbox_counts().await.unwrap();
    for (state, n) in [
        (InboxState::Done, 1),
        (InboxState::Ignored, 1),
        (InboxState::Failed, 1),
        (InboxState::Processing, 2),
    ] {
        assert!(counts.contains(&(state, n)), "{counts:?}");
    }
}

async fn concurrent_inbox_claims_never_share_an_entry(store: &Store, _url: &str) {
    let records: Vec<_> = (0..60)
        .map(|i| record(&format!("app-{i}"), "2024-01-01T00:00:00.000Z", &[]))
        .collect();
    store.inbox_insert(&records).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let batch = store.inbox_claim(4, 5_000).await.unwrap();
                if batch.is_empty() {
                    return mine;
                }
                mine.extend(batch.into_iter().map(|e| e.id));
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 60);
    assert_eq!(unique.len(), 60);
}

async fn subscriptions_round_trip(store: &Store, _url: &str) {
    let mut s = SubscriptionRow {
        handle: "h-1".into(),
        site: "dev".into(),
        kind: "update".into(),
        object_type: "App".into(),
        change_type: "Update".into(),
        property_name: None,
        callback_url: "http://127.0.0.1:8585/notify/secret/app/update".into(),
        instance: "inst".into(),
        created_at: 10,
        checked_at: 10,
    };
    store.subscription_save(&s).await.unwrap();
    let mut reload = s.clone();
    reload.handle = "h-2".into();
    reload.kind = "reload".into();
    reload.property_name = Some("lastReloadTime".into());
    reload.created_at = 20;
    store.subscription_save(&reload).await.unwrap();
    assert_eq!(
        store.subscriptions().await.unwrap(),
        vec![s.clone(), reload.clone()]
    );
    s.callback_url = "http://other/notify".into();
    store.subscription_save(&s).await.unwrap();
    store.subscriptions_checked("dev", 99).await.unwrap();
    let rows = store.subscriptions().await.unwrap();
    assert_eq!(rows[0].callback_url, "http://other/notify");
    assert!(rows.iter().all(|r| r.checked_at == 99));
    assert!(store.subscription_delete("h-1").await.unwrap());
    assert!(!store.subscription_delete("h-1").await.unwrap());
    assert_eq!(store.subscriptions().await.unwrap().len(), 1);
}

async fn jobs_are_created_once_per_key(store: &Store, _url: &str) {
    let (id, created) = store.job_create(&new_job("a|update|1", "a")).await.unwrap();
    assert!(created);
    assert!(uuid::Uuid::parse_str(&id).is_ok());
    let (again, created) = store.job_create(&new_job("a|update|1", "a")).await.unwrap();
    assert_eq!((again.as_str(), created), (id.as_str(), false));
    let (other, created) = store.job_create(&new_job("a|update|2", "a")).await.unwrap();
    assert!(created && other != id);
    store.job_create(&new_job("b|update|1", "b")).await.unwrap();

    let job = store.job_get(&id).await.unwrap().unwrap();
    assert_eq!(job.key, "a|update|1");
    assert_eq!(job.app_id, "a");
    assert_eq!(job.app_name, "App a");
    assert_eq!(job.trigger, "update");
    assert_eq!(job.kind, "promote");
    assert_eq!(job.plan, json!({"targets": [{"site": "test"}]}));
    assert_eq!(job.state, json!({}));
    assert_eq!(job.status, JobStatus::Pending);
    assert_eq!((job.claims, job.lease_owner.clone()), (0, None));
    assert!(job.finished_at.is_none());
    assert_eq!(
        store.job_by_key("a|update|1").await.unwrap().unwrap().id,
        id
    );
    assert!(store.job_get("nope").await.unwrap().is_none());

    assert_eq!(store.jobs_list(None, 10).await.unwrap().len(), 3);
    assert_eq!(store.jobs_list(Some("a"), 10).await.unwrap().len(), 2);
    assert_eq!(store.jobs_list(Some("a"), 1).await.unwrap().len(), 1);
    assert!(store.jobs_list(Some("zzz"), 10).await.unwrap().is_empty());
    assert_eq!(
        store.job_counts().await.unwrap(),
        vec![(JobStatus::Pending, 3)]
    );
}

async fn job_claims_follow_status_time_and_app_exclusion(store: &Store, _url: &str) {
    let (a1, _) = store.job_create(&new_job("a1", "a")).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let (a2, _) = store.job_create(&new_job("a2", "a")).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let (b1, _) = store.job_create(&new_job("b1", "b")).await.unwrap();
    let now = chrono::Utc::now().timestamp_millis() + 10;
    let lease = 30_000;

    let first = store.job_claim("w1", now, lease).await.unwrap().unwrap();
    assert_eq!(first.id, a1, "oldest first");
    assert_eq!(first.status, JobStatus::Running);
    assert_eq!(first.lease_owner.as_deref(), Some("w1"));
    assert_eq!(first.lease_until, Some(now + lease));
    assert_eq!(first.claims, 1);
    // a2 waits for a1 (same app): b1 is next.
    let second = store.job_claim("w2", now, lease).await.unwrap().unwrap();
    assert_eq!(second.id, b1);
    assert!(store.job_claim("w3", now, lease).await.unwrap().is_none());

    // Renewing: only the holder, only while running.
    let held = first.lease().unwrap();
    assert!(
        store
            .job_renew_lease(&a1, &held, now + 1000, lease)
            .await
            .unwrap()
    );
    let other = Lease {
        owner: "w2".into(),
        ..held.clone()
    };
    assert!(
        !store
            .job_renew_lease(&a1, &other, now + 1000, lease)
            .await
            .unwrap()
    );
    // w1 dies: after its lease a1 is taken over (not a2, which is newer).
    let expired = now + 1000 + lease + 1;
    let taken = store
        .job_claim("w3", expired, lease)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(taken.id, a1);
    assert_eq!(
        (taken.claims, taken.lease_owner.as_deref()),
        (2, Some("w3"))
    );
    assert!(
        !store
            .job_renew_lease(&a1, &held, expired, lease)
            .await
            .unwrap()
    );
    // b1's lease also ran out: it is next, then nothing (a2 still waits for a1).
    assert_eq!(
        store
            .job_claim("w4", expired, lease)
            .await
            .unwrap()
            .unwrap()
            .id,
        b1
    );
    assert!(
        store
            .job_claim("w5", expired, lease)
            .await
            .unwrap()
            .is_none()
    );
    store
        .job_finish(&a1, &taken.lease().unwrap(), JobStatus::Succeeded, None)
        .await
        .unwrap();
    assert_eq!(
        store
            .job_claim("w5", expired, lease)
            .await
            .unwrap()
            .unwrap()
            .id,
        a2
    );
}

async fn concurrent_job_claims_never_share_a_job_or_an_app(store: &Store, _url: &str) {
    // 8 apps with 3 jobs each; 6 workers claim and finish until nothing is left.
    for app in 0..8 {
        for n in 0..3 {
            store
                .job_create(&new_job(&format!("{app}-{n}"), &format!("app-{app}")))
                .await
                .unwrap();
        }
    }
    let running = Arc::new(std::sync::Mutex::new(HashSet::<String>::new()));
    let mut tasks = Vec::new();
    for w in 0..6 {
        let store = store.clone();
        let running = running.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            let mut idle = 0;
            while idle < 20 {
                let now = chrono::Utc::now().timestamp_millis() + 1000;
                match store
                    .job_claim(&format!("w{w}"), now, 60_000)
                    .await
                    .unwrap()
                {
                    Some(job) => {
                        idle = 0;
                        assert!(
                            running.lock().unwrap().insert(job.app_id.clone()),
                            "two jobs of {} at once",
                            job.app_id
                        );
                        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                        running.lock().unwrap().remove(&job.app_id);
                        store
                            .job_finish(&job.id, &job.lease().unwrap(), JobStatus::Succeeded, None)
                            .await
                            .unwrap();
                        done.push(job.id);
                    }
                    None => {
                        idle += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    }
                }
            }
            done
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!((all.len(), unique.len()), (24, 24));
    assert_eq!(
        store.job_counts().await.unwrap(),
        vec![(JobStatus::Succeeded, 24)]
    );
}

async fn job_retry_finish_and_state(store: &Store, _url: &str) {
    let (id, _) = store.job_create(&new_job("k", "a")).await.unwrap();
    let now = chrono::Utc::now().timestamp_millis() + 10;
    let held = claim_lease(store, "w", now, 1000).await;
    store
        .job_set_state(
            &id,
            &held,
            &json!({"export_path": "/tmp/x.qvf", "temp": ["t1"]}),
        )
        .await
        .unwrap();
    store
        .job_retry_at(&id, &held, now + 5000, "QRS unavailable")
        .await
        .unwrap();
    let job = store.job_get(&id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Retry);
    assert_eq!(job.next_run_at, now + 5000);
    assert_eq!(job.last_error.as_deref(), Some("QRS unavailable"));
    assert_eq!((job.lease_owner, job.lease_until), (None, None));
    assert_eq!(job.state["export_path"], "/tmp/x.qvf");
    assert!(
        store
            .job_claim("w", now + 4999, 1000)
            .await
            .unwrap()
            .is_none()
    );
    let again = store
        .job_claim("w", now + 5000, 1000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((again.id.as_str(), again.claims), (id.as_str(), 2));
    assert_eq!(again.state["temp"], json!(["t1"]));
    let held = again.lease().unwrap();

    assert!(matches!(
        store.job_finish(&id, &held, JobStatus::Running, None).await,
        Err(StoreError::Invalid(_))
    ));
    store
        .job_finish(
            &id,
            &held,
            JobStatus::PartiallyFailed,
            Some("prod: upload refused"),
        )
        .await
        .unwrap();
    let job = store.job_get(&id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::PartiallyFailed);
    assert_eq!(job.last_error.as_deref(), Some("prod: upload refused"));
    assert!(job.finished_at.is_some() && job.lease_owner.is_none());
    // Finished jobs are never claimed again.
    assert!(
        store
            .job_claim("w", now + 10_000_000, 1000)
            .await
            .unwrap()
            .is_none()
    );
    for missing in [
        store
            .job_finish("nope", &held, JobStatus::Failed, None)
            .await,
        store.job_retry_at("nope", &held, 0, "").await,
        store.job_set_state("nope", &held, &json!({})).await,
    ] {
        assert!(matches!(missing, Err(StoreError::Invalid(_))));
    }
}

/// A runner that stalled past its lease (the job was claimed again, here even by the same
/// worker name, as two runners of one process would) can neither record steps, state or an
/// outcome nor release the job; the new holder can.
async fn a_runner_whose_lease_was_taken_over_cannot_write(store: &Store, _url: &str) {
    let (id, _) = store.job_create(&new_job("k", "a")).await.unwrap();
    let now = chrono::Utc::now().timestamp_millis() + 10;
    let stale = claim_lease(store, "w", now, 1000).await;
    store
        .step_begin(&id, &stale, "export", "export app a")
        .await
        .unwrap();
    let fresh = claim_lease(store, "w", now + 1001, 1000).await;
    assert_ne!(stale, fresh);
    let lost = |r: Result<(), StoreError>| matches!(r, Err(StoreError::LeaseLost(_)));
    assert!(lost(
        store.step_begin(&id, &stale, "upload:test", "upload").await
    ));
    assert!(lost(
        store
            .step_finish(&id, &stale, "export", "ok", &json!({"path": "/stale"}))
            .await
    ));
    assert!(lost(
        store.job_set_state(&id, &stale, &json!({"x": 1})).await
    ));
    assert!(lost(
        store.job_retry_at(&id, &stale, now, "interrupted").await
    ));
    assert!(lost(
        store
            .job_finish(&id, &stale, JobStatus::Succeeded, None)
            .await
    ));
    assert!(
        !store
            .job_renew_lease(&id, &stale, now + 1002, 1000)
            .await
            .unwrap()
    );
    // Nothing the stale runner tried is recorded; the job is still the new holder's.
    assert!(
        store
            .step_result(&id, "upload:test")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store
            .step_result(&id, "export")
            .await
            .unwrap()
            .unwrap()
            .outcome,
        "running"
    );
    let job = store.job_get(&id).await.unwrap().unwrap();
    assert_eq!((job.status, job.state), (JobStatus::Running, json!({})));
    store
        .step_finish(&id, &fresh, "export", "ok", &json!({"path": "/x"}))
        .await
        .unwrap();
    store
        .job_finish(&id, &fresh, JobStatus::Succeeded, None)
        .await
        .unwrap();
    // A finished job takes no more writes from anyone.
    assert!(lost(store.step_begin(&id, &fresh, "mail", "mail").await));
}

async fn steps_and_attempts_are_recorded(store: &Store, _url: &str) {
    let (id, _) = store.job_create(&new_job("k", "a")).await.unwrap();
    let now = chrono::Utc::now().timestamp_millis() + 10;
    let held = claim_lease(store, "w", now, 60_000).await;
    assert!(store.step_result(&id, "export").await.unwrap().is_none());
    store
        .step_begin(&id, &held, "export", "export app a")
        .await
        .unwrap();
    let s = store.step_result(&id, "export").await.unwrap().unwrap();
    assert_eq!(
        (s.outcome.as_str(), s.detail.as_str()),
        ("running", "export app a")
    );
    assert_eq!(s.result, serde_json::Value::Null);
    assert!(s.finished_at.is_none());
    store
        .step_finish(&id, &held, "export", "ok", &json!({"path": "/x"}))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    store
        .step_begin(&id, &held, "upload:test", "upload")
        .await
        .unwrap();
    store
        .step_finish(
            &id,
            &held,
            "upload:test",
            "failed",
            &json!({"error": "413"}),
        )
        .await
        .unwrap();
    // Finishing a step that was never begun records it too.
    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    store
        .step_finish(&id, &held, "mail", "skipped", &json!(null))
        .await
        .unwrap();
    let s = store.step_result(&id, "export").await.unwrap().unwrap();
    assert_eq!(
        (s.outcome.as_str(), s.result["path"].as_str()),
        ("ok", Some("/x"))
    );
    assert!(s.finished_at.is_some());
    let steps = store.steps(&id).await.unwrap();
    assert_eq!(
        steps
            .iter()
            .map(|s| (s.step_key.as_str(), s.outcome.as_str()))
            .collect::<Vec<_>>(),
        vec![
            ("export", "ok"),
            ("upload:test", "failed"),
            ("mail", "skipped")
        ]
    );
    // Beginning again resets the step.
    store
        .step_begin(&id, &held, "upload:test", "upload again")
        .await
        .unwrap();
    let s = store
        .step_result(&id, "upload:test")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((s.outcome.as_str(), s.finished_at), ("running", None));

    assert_eq!(
        store
            .attempt_record(&id, "upload:test", "timeout", true)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .attempt_record(&id, "upload:test", "413", false)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store
            .attempt_record(&id, "export", "busy", true)
            .await
            .unwrap(),
        1
    );
    let attempts = store.attempts(&id).await.unwrap();
    assert_eq!(
        attempts
            .iter()
            .map(|a| (
                a.step_key.as_str(),
                a.attempt,
                a.error.as_str(),
                a.retryable
            ))
            .collect::<Vec<_>>(),
        vec![
            ("upload:test", 1, "timeout", true),
            ("upload:test", 2, "413", false),
            ("export", 1, "busy", true)
        ]
    );
    assert!(store.attempts("other").await.unwrap().is_empty());
    assert!(store.steps("other").await.unwrap().is_empty());
}

async fn mappings_effects_and_own_writes(store: &Store, _url: &str) {
    assert_eq!(store.mapping_get("src", "test", "s1").await.unwrap(), None);
    store.mapping_put("src", "test", "s1", "t1").await.unwrap();
    store.mapping_put("src", "prod", "s1", "p1").await.unwrap();
    store.mapping_put("src", "test", "s2", "t2").await.unwrap();
    assert_eq!(
        store
            .mapping_get("src", "test", "s1")
            .await
            .unwrap()
            .as_deref(),
        Some("t1")
    );
    store.mapping_put("src", "test", "s1", "t1b").await.unwrap();
    assert_eq!(
        store
            .mapping_get("src", "test", "s1")
            .await
            .unwrap()
            .as_deref(),
        Some("t1b")
    );
    assert_eq!(
        store
            .mapping_get("src", "prod", "s1")
            .await
            .unwrap()
            .as_deref(),
        Some("p1")
    );

    assert_eq!(store.effect_get("j", "mail:approved").await.unwrap(), None);
    assert!(
        store
            .effect_put("j", "mail:approved", &json!({"message_id": "m1"}))
            .await
            .unwrap()
    );
    assert!(
        !store
            .effect_put("j", "mail:approved", &json!({"message_id": "m2"}))
            .await
            .unwrap()
    );
    assert_eq!(
        store.effect_get("j", "mail:approved").await.unwrap(),
        Some(json!({"message_id": "m1"}))
    );
    assert_eq!(store.effect_get("j2", "mail:approved").await.unwrap(), None);

    let md = "2024-11-19T07:37:20.156Z";
    assert!(!store.own_write_seen("app", md).await.unwrap());
    store.own_write_put("app", md).await.unwrap();
    store.own_write_put("app", md).await.unwrap();
    assert!(store.own_write_seen("app", md).await.unwrap());
    assert!(
        !store
            .own_write_seen("app", "2024-11-19T07:37:20.157Z")
            .await
            .unwrap()
    );
    assert!(!store.own_write_seen("other", md).await.unwrap());
}

async fn audit_events_round_trip(store: &Store, _url: &str) {
    let event = |n: i64, app: &str| AuditEvent {
        time: chrono::Utc
            .timestamp_millis_opt(1_700_000_000_000 + n)
            .unwrap(),
        job_id: (n % 2 == 0).then(|| format!("job-{n}")),
        app_id: app.into(),
        app_name: "Sales, \"Q1\"".into(),
        event: "step".into(),
        site: "test".into(),
        stream: "Finance".into(),
        target_app_id: String::new(),
        actor: "INTERNAL\\approver".into(),
        outcome: "ok".into(),
        detail: format!("event {n}"),
    };
    let events: Vec<_> = (0..5)
        .map(|n| event(n, if n < 3 { "a" } else { "b" }))
        .collect();
    for e in &events {
        store.audit_append(e).await.unwrap();
    }
    assert_eq!(store.audit_list(None, 100).await.unwrap(), events);
    assert_eq!(store.audit_list(Some("a"), 100).await.unwrap(), events[..3]);
    // The most recent ones, oldest first.
    assert_eq!(store.audit_list(None, 2).await.unwrap(), events[3..]);
    assert!(store.audit_list(Some("c"), 10).await.unwrap().is_empty());
}

#[test]
fn migration_trees_have_the_same_versions() {
    let names = |tree: &str| -> Vec<String> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(tree);
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let sqlite = names("sqlite");
    assert!(!sqlite.is_empty());
    assert_eq!(sqlite, names("postgres"));
    for n in &sqlite {
        let (version, rest) = n.split_once('_').unwrap();
        assert!(
            version.len() == 4 && version.bytes().all(|b| b.is_ascii_digit()),
            "{n}"
        );
        assert!(rest.ends_with(".sql"), "{n}");
    }
}

#[tokio::test]
async fn sqlite_database_is_created_under_the_data_folder_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    for site in ["dev", "test"] {
        let certs = dir.path().join("certificates").join(site);
        std::fs::create_dir_all(&certs).unwrap();
        for f in ["client.pem", "client_key.pem", "root.pem"] {
            std::fs::write(certs.join(f), "").unwrap();
        }
    }
    let config = dir.path().join("promoter.toml");
    std::fs::write(
        &config,
        "[data]\ndir = \"state/nested\"\n\
         [local]\nalias = \"dev\"\nhost = \"localhost\"\ncertificates = \"certificates/dev\"\n\
         [[remote]]\nalias = \"test\"\nhost = \"localhost\"\ncertificates = \"certificates/test\"\n",
    )
    .unwrap();
    let settings = promoter::config::Settings::load_with_env(&config, false).unwrap();
    let store = Store::open(&settings).await.unwrap();
    let db = dir.path().join("state/nested/promoter.db");
    assert!(db.is_file());
    assert_eq!(store.backend_name(), "SQLite");
    store.callback_secret().await.unwrap();
    store.close().await;

    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let (versions,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(versions >= 1);
}

#[tokio::test]
async fn unreachable_database_is_retryable_and_bad_urls_are_not() {
    // A port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let err = Store::open_url(&format!("postgres://promoter:hunter2@127.0.0.1:{port}/x"))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    let err = Store::open_url("mysql://localhost/x").await.unwrap_err();
    assert!(!err.is_retryable());
    assert!(matches!(err, StoreError::Open(_)), "{err}");
    let err = Store::open_url("sqlite:///proc/no/such/dir/promoter.db?mode=rwc")
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err}");
}
