//! Faults with the real `promoter serve` process against the simulator: crashes at every step
//! boundary and inside transfers (the process aborts at a named crash point, as `kill -9`
//! would: `PROMOTER_FAULT_ABORT_AT`), then a restart; 503s for a while; 429 with
//! Retry-After; dropped connections; duplicate notifications; a permanent failure.
//! After each, the final state must be the one an uninterrupted run gives.

#[path = "support/engine_harness.rs"]
mod harness;

use std::time::Duration;

use harness::{Env, in_stream, published, temporaries};
use promoter::sim::Fault;
use promoter::store::JobStatus;

const ABORT: &str = "PROMOTER_FAULT_ABORT_AT";
const WITHIN: Duration = Duration::from_secs(60);
const NAME: &str = "Sales Dashboard";

/// What an uninterrupted run of the standard scenario leaves behind.
struct Expect {
    src: String,
    checksum: String,
    sales: Vec<(String, String)>,
}

/// The standard scenario: "Sales Dashboard" approved to test and prod (Overwrite) into Sales
/// (an app to replace exists) and Everyone (a new app), versioned.
async fn scenario(env: &Env) -> Expect {
    let dev = env.site("dev");
    let src = published(&dev, NAME);
    let checksum = dev.content_checksum(&src.id).await.unwrap();
    let sales = ["test", "prod"]
        .iter()
        .map(|s| {
            (
                s.to_string(),
                in_stream(&env.site(s), "Sales", NAME).remove(0).id,
            )
        })
        .collect();
    Expect {
        src: src.id,
        checksum,
        sales,
    }
}

fn approve(env: &Env, x: &Expect) {
    env.approve(
        &x.src,
        &["test - Overwrite", "prod - Overwrite"],
        &["Sales", "Everyone"],
        &[("PromotionS3Versioning", "True")],
    );
}

/// The end state of an uninterrupted run, checked in full.
async fn assert_uninterrupted_end_state(env: &Env, x: &Expect) {
    let jobs = env.jobs_final(&x.src, 1, WITHIN).await;
    assert_eq!(jobs.len(), 1, "one job");
    assert_eq!(jobs[0].status, JobStatus::Succeeded, "{}", env.logs());
    for (alias, sales_id) in &x.sales {
        let site = env.site(alias);
        let sales = in_stream(&site, "Sales", NAME);
        assert_eq!(sales.len(), 1, "{alias}/Sales: {sales:?}");
        assert_eq!(&sales[0].id, sales_id, "{alias}/Sales kept its id");
        let everyone = in_stream(&site, "Everyone", NAME);
        assert_eq!(everyone.len(), 1, "{alias}/Everyone: {everyone:?}");
        for a in [&sales[0], &everyone[0]] {
            assert_eq!(site.content_checksum(&a.id).await.unwrap(), x.checksum);
        }
        assert!(
            temporaries(&site).is_empty(),
            "{alias}: {:?}",
            temporaries(&site)
        );
        // No unpublished leftovers with the app's name either.
        assert!(
            site.app_by_name(NAME).iter().all(|a| a.published),
            "{alias}: {:?}",
            site.app_by_name(NAME)
        );
    }
    let dev = env.site("dev");
    assert!(dev.app(&x.src).is_none(), "the published source is gone");
    let copies = dev.app_by_name(NAME);
    assert_eq!(copies.len(), 1, "one copy for the owner: {copies:?}");
    assert!(!copies[0].published);
    assert_eq!(copies[0].owner, "CORP\\alice");
    assert!(temporaries(&dev).is_empty());
    // One approval mail and one result mail, never twice.
    let mails = env.mails();
    assert_eq!(mails.len(), 2, "{mails:#?}");
    // The work folder is empty.
    let work = env.sim.dir().join("data").join("work");
    let left: Vec<_> = std::fs::read_dir(&work)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    let versions = env.sim.dir().join("versions").join(&x.src);
    assert!(versions.is_dir());
}

/// Aborts the promoter at each point in turn (restarting it after each), then lets it finish.
async fn crash_chain(points: &[&str]) {
    let mut env = Env::sim_only().await;
    let x = scenario(&env).await;
    env.spawn_serve(&[(ABORT, points[0])]);
    env.wait_subscribed().await;
    approve(&env, &x);
    for (i, p) in points.iter().enumerate() {
        if i > 0 {
            env.spawn_serve(&[(ABORT, p)]);
        }
        let aborted = env
            .serve
            .as_mut()
            .unwrap()
            .wait_exit(Duration::from_secs(30));
        assert!(aborted, "the promoter did not reach {p}\n{}", env.logs());
    }
    env.spawn_serve(&[]);
    assert_uninterrupted_end_state(&env, &x).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninterrupted_reference_run() {
    let env = Env::start(&[]).await;
    let x = scenario(&env).await;
    approve(&env, &x);
    assert_uninterrupted_end_state(&env, &x).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_around_the_export_and_the_version() {
    crash_chain(&[
        "after:notify:approved",
        "mid-export",
        "after:export:data",
        "before:export:nodata",
        "after:version",
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_around_the_upload_and_the_new_app() {
    crash_chain(&[
        "mid-upload:test",
        "uploaded:test",
        "copied:test",
        "published:test",
        "after:promote:test:Everyone",
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_around_the_replace() {
    crash_chain(&[
        "before:promote:test:Sales",
        "replaced:test",
        "after:promote:test:Sales",
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_around_the_unpublish_and_the_end() {
    crash_chain(&[
        "before:unpublish",
        "source-copied",
        "source-deleted",
        "after:unpublish",
        "after:notify:result",
        "after:cleanup",
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_transfers_are_retried() {
    let env = Env::start(&[]).await;
    let x = scenario(&env).await;
    env.site("dev")
        .set_fault(Fault::DropMidTransfer { count: 1 });
    env.site("test")
        .set_fault(Fault::DropMidTransfer { count: 1 });
    approve(&env, &x);
    assert_uninterrupted_end_state(&env, &x).await;
    let store = env.store().await;
    let job = &store.jobs_list(Some(&x.src), 1).await.unwrap()[0];
    let attempts = store.attempts(&job.id).await.unwrap();
    assert!(
        attempts.iter().filter(|a| a.retryable).count() >= 2,
        "{attempts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_answering_503_for_a_while_then_recovering() {
    let env = Env::start(&[("PROMOTER__PROMOTION__MAX_ATTEMPTS", "30")]).await;
    let x = scenario(&env).await;
    let test = env.site("test");
    test.set_fault(Fault::Status {
        status: 503,
        count: 100_000,
        path_contains: None,
        retry_after: None,
    });
    approve(&env, &x);
    // The job keeps retrying while test is down (waiting, or running its next attempt at this
    // very moment), never giving up.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let store = env.store().await;
    let job = store.jobs_list(Some(&x.src), 1).await.unwrap().remove(0);
    assert!(
        matches!(job.status, JobStatus::Retry | JobStatus::Running),
        "{:?}\n{}",
        job.status,
        env.logs()
    );
    let so_far = store.attempts(&job.id).await.unwrap();
    assert!(
        so_far.iter().filter(|a| a.retryable).count() >= 2,
        "{so_far:?}"
    );
    test.clear_faults();
    assert_uninterrupted_end_state(&env, &x).await;
    let attempts = store.attempts(&job.id).await.unwrap();
    assert!(
        attempts.iter().filter(|a| a.retryable).count() >= 3,
        "{attempts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_on_429_is_honoured() {
    let env = Env::start(&[]).await;
    let x = scenario(&env).await;
    let test = env.site("test");
    test.set_fault(Fault::Status {
        status: 429,
        count: 1,
        path_contains: Some("/qrs/app/upload".into()),
        retry_after: Some(4),
    });
    test.clear_calls();
    approve(&env, &x);
    assert_uninterrupted_end_state(&env, &x).await;
    let uploads: Vec<chrono::DateTime<chrono::Utc>> = test
        .calls()
        .iter()
        .filter(|c| c.method == "POST" && c.path.starts_with("/qrs/app/upload"))
        .map(|c| c.at.parse().unwrap())
        .collect();
    assert_eq!(uploads.len(), 2, "refused once, then accepted");
    let gap = uploads[1] - uploads[0];
    // The configured backoff is at most 2 s here; the server asked for 4.
    assert!(gap >= chrono::Duration::milliseconds(3900), "gap {gap}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_notifications_make_one_job() {
    let env = Env::start(&[]).await;
    let x = scenario(&env).await;
    env.site("dev").set_fault(Fault::DuplicateDeliveries(5));
    approve(&env, &x);
    assert_uninterrupted_end_state(&env, &x).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let store = env.store().await;
    assert_eq!(store.jobs_list(Some(&x.src), 10).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_leaves_the_source_as_it_was() {
    let env = Env::start(&[]).await;
    let dev = env.site("dev");
    let test = env.site("test");
    let src = published(&dev, NAME);
    let target = in_stream(&test, "Sales", NAME).remove(0);
    test.set_fault(Fault::Status {
        status: 400,
        count: 100,
        path_contains: Some("/qrs/app/upload".into()),
        retry_after: None,
    });
    env.approve(&src.id, &["test - Overwrite"], &["Sales"], &[]);
    let jobs = env.jobs_final(&src.id, 1, WITHIN).await;
    assert_eq!(jobs[0].status, JobStatus::Failed, "{}", env.logs());
    assert!(
        jobs[0]
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("400"),
        "{:?}",
        jobs[0].last_error
    );
    let app = dev.app(&src.id).expect("still there");
    assert!(app.published);
    assert_eq!(app.property("PromotionApproval"), ["Approve"]);
    assert_eq!(test.app(&target.id).unwrap(), target);
    assert!(temporaries(&test).is_empty());
    assert!(
        env.mails().iter().any(|m| m.contains("admin@example.com")),
        "the administrators are told"
    );
    let work = env.sim.dir().join("data").join("work");
    assert!(
        std::fs::read_dir(&work)
            .map(|d| d.count() == 0)
            .unwrap_or(true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpublish_that_fails_for_good_removes_its_copy() {
    let env = Env::start(&[]).await;
    let dev = env.site("dev");
    let src = published(&dev, NAME);
    dev.set_fault(Fault::Status {
        status: 403,
        count: 100,
        path_contains: Some(format!("DELETE /qrs/app/{}", src.id)),
        retry_after: None,
    });
    env.approve(&src.id, &["test - Overwrite"], &["Sales"], &[]);
    let jobs = env.jobs_final(&src.id, 1, WITHIN).await;
    assert_eq!(jobs[0].status, JobStatus::Failed, "{}", env.logs());
    let app = dev.app(&src.id).expect("the source is still there");
    assert!(app.published);
    assert_eq!(app.property("PromotionApproval"), ["Approve"]);
    let same_name = dev.app_by_name(NAME);
    assert_eq!(same_name.len(), 1, "no copy left behind: {same_name:?}");
    assert!(temporaries(&dev).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_job_puts_it_back_and_a_restart_finishes_it() {
    let mut env = Env::start(&[]).await;
    let x = scenario(&env).await;
    // Slow target: the job is still running when the promoter is asked to stop.
    env.site("test")
        .set_fault(Fault::Latency(Duration::from_millis(700)));
    approve(&env, &x);
    let store = env.store().await;
    let deadline = std::time::Instant::now() + WITHIN;
    loop {
        let jobs = store.jobs_list(Some(&x.src), 1).await.unwrap();
        if jobs.first().is_some_and(|j| j.status == JobStatus::Running) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", env.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopped = env
        .serve
        .as_mut()
        .unwrap()
        .terminate(Duration::from_secs(20));
    assert!(stopped, "the promoter stops on SIGTERM");
    let job = store.jobs_list(Some(&x.src), 1).await.unwrap().remove(0);
    assert_eq!(job.status, JobStatus::Retry, "put back, resumable");
    env.site("test").clear_faults();
    env.spawn_serve(&[]);
    assert_uninterrupted_end_state(&env, &x).await;
}
