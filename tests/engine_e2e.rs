//! The promotion engine end to end: simulated dev/test/prod sites (in this process, over
//! mutual TLS) and the real `promoter serve` process, driven as an approver in the QMC would.
//! Every test has its own sites, folder and database, so they run in parallel.

#[path = "support/engine_harness.rs"]
mod harness;

use std::time::Duration;

use harness::{APPROVER, Env, in_stream, published, temporaries};
use promoter::store::JobStatus;

const WITHIN: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_overwrite_replaces_the_target_in_place() {
    let env = Env::start(&[]).await;
    let (dev, test) = (env.site("dev"), env.site("test"));
    let src = published(&dev, "Sales Dashboard");
    let target = in_stream(&test, "Sales", "Sales Dashboard").remove(0);
    let checksum = dev.content_checksum(&src.id).await.unwrap();

    env.approve(&src.id, &["test - Overwrite"], &["Sales"], &[]);
    let jobs = env.jobs_final(&src.id, 1, WITHIN).await;
    assert_eq!(jobs[0].status, JobStatus::Succeeded, "{}", env.logs());

    // The target kept its id and got the source's content.
    let now = in_stream(&test, "Sales", "Sales Dashboard");
    assert_eq!(now.len(), 1, "{now:?}");
    assert_eq!(now[0].id, target.id);
    assert_eq!(test.content_checksum(&target.id).await.unwrap(), checksum);
    assert!(now[0].description.contains("dev"), "{}", now[0].description);
    assert!(
        now[0].description.contains(APPROVER),
        "{}",
        now[0].description
    );
    assert!(
        now[0].description.contains("CORP\\alice"),
        "{}",
        now[0].description
    );
    assert!(temporaries(&test).is_empty());
    // prod was not a target.
    assert_ne!(
        env.site("prod")
            .apps_in_stream("Sales")
            .iter()
            .find(|a| a.name == "Sales Dashboard")
            .map(|a| a.modified_by.clone()),
        None
    );

    // The source was unpublished (auto_unpublish is the default): a copy went back to the
    // owner without the promotion properties, and the published app is gone.
    assert!(dev.app(&src.id).is_none());
    let copies: Vec<_> = dev
        .app_by_name("Sales Dashboard")
        .into_iter()
        .filter(|a| !a.published)
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(copies[0].owner, "CORP\\alice");
    assert!(copies[0].property("PromotionApproval").is_empty());
    assert!(copies[0].property("PromoteToServer").is_empty());
    assert!(temporaries(&dev).is_empty());

    // The engine's own writes started nothing else.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let store = env.store().await;
    assert_eq!(store.jobs_list(None, 100).await.unwrap().len(), 1);
    // Mail: approval and result.
    let mails = env.mails();
    assert!(mails.len() >= 2, "{mails:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_duplicate_publishes_a_new_app() {
    let env = Env::start(&[]).await;
    let (dev, test) = (env.site("dev"), env.site("test"));
    let src = published(&dev, "Sales Dashboard");
    let old = in_stream(&test, "Sales", "Sales Dashboard").remove(0);
    let checksum = dev.content_checksum(&src.id).await.unwrap();

    env.approve(&src.id, &["test - Duplicate"], &["Sales"], &[]);
    let jobs = env.jobs_final(&src.id, 1, WITHIN).await;
    assert_eq!(jobs[0].status, JobStatus::Succeeded, "{}", env.logs());

    let now = in_stream(&test, "Sales", "Sales Dashboard");
    assert_eq!(now.len(), 2, "{now:?}");
    let new = now.iter().find(|a| a.id != old.id).unwrap();
    assert_eq!(test.content_checksum(&new.id).await.unwrap(), checksum);
    assert_ne!(test.content_checksum(&old.id).await.unwrap(), checksum);
    assert!(temporaries(&test).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sites_two_streams_with_one_export_and_one_upload_per_site() {
    let env = Env::start(&[]).await;
    let dev = env.site("dev");
    let src = published(&dev, "Sales Dashboard");
    let checksum = dev.content_checksum(&src.id).await.unwrap();
    let before: Vec<String> = ["test", "prod"]
        .iter()
        .map(|s| {
            in_stream(&env.site(s), "Sales", "Sales Dashboard")
                .remove(0)
                .id
        })
        .collect();
    for s in env.sim.sites() {
        s.clear_calls();
    }

    env.approve(
        &src.id,
        &["test - Overwrite", "prod - Overwrite"],
        &["Sales", "Everyone"],
        &[("PromotionS3Versioning", "True")],
    );
    let jobs = env.jobs_final(&src.id, 1, WITHIN).await;
    assert_eq!(jobs[0].status, JobStatus::Succeeded, "{}", env.logs());

    for (i, alias) in ["test", "prod"].iter().enumerate() {
        let site = env.site(alias);
        let sales = in_stream(&site, "Sales", "Sales Dashboard");
        assert_eq!(sales.len(), 1);
        assert_eq!(sales[0].id, before[i], "{alias}: the Sales app kept its id");
        let everyone = in_stream(&site, "Everyone", "Sales Dashboard");
        assert_eq!(everyone.len(), 1, "{alias}: one new app in Everyone");
        for a in [&sales[0], &everyone[0]] {
            assert_eq!(site.content_checksum(&a.id).await.unwrap(), checksum);
            assert!(a.description.contains("Version ID:"), "{}", a.description);
        }
        assert!(temporaries(&site).is_empty());
        let uploads = site
            .calls()
            .iter()
            .filter(|c| c.method == "POST" && c.path.starts_with("/qrs/app/upload"))
            .count();
        assert_eq!(uploads, 1, "{alias}: one upload for both streams");
    }
    // One export with data, one without (the version), nothing per site.
    let exports: Vec<String> = dev
        .calls()
        .iter()
        .filter(|c| c.method == "POST" && c.path.contains("/export/"))
        .map(|c| c.path.clone())
        .collect();
    assert_eq!(exports.len(), 2, "{exports:?}");
    assert_eq!(
        exports
            .iter()
            .filter(|p| p.contains("skipData=true"))
            .count(),
        1
    );
    // The version is on disk, keyed by the source app id.
    let versions = env.sim.dir().join("versions").join(&src.id);
    assert!(versions.is_dir(), "{}", versions.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_stream_fails_only_its_target() {
    let env = Env::start(&[]).await;
    let dev = env.site("dev");
    let name = "Budget 100% + Plan?";
    let src = published(&dev, name);
    // Finance exists on test but not on prod.
    env.approve(
        &src.id,
        &["test - Overwrite", "prod - Overwrite"],
        &["Finance"],
        &[],
    );
    let jobs = env.jobs_final(&src.id, 1, WITHIN).await;
    assert_eq!(jobs[0].status, JobStatus::PartiallyFailed, "{}", env.logs());
    let err = jobs[0].last_error.clone().unwrap_or_default();
    assert!(err.contains("prod") && err.contains("Finance"), "{err}");

    assert_eq!(in_stream(&env.site("test"), "Finance", name).len(), 1);
    assert!(temporaries(&env.site("test")).is_empty());
    assert!(temporaries(&env.site("prod")).is_empty());
    // The source is left as it was, properties and all, for an administrator to retry.
    let still = dev.app(&src.id).unwrap();
    assert!(still.published);
    assert_eq!(still.property("PromotionApproval"), ["Approve"]);
    // The administrators were told.
    assert!(
        env.mails().iter().any(|m| m.contains("admin@example.com")),
        "no failure alert"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_unpublishes_without_promoting() {
    let env = Env::start(&[]).await;
    let (dev, test) = (env.site("dev"), env.site("test"));
    let src = published(&dev, "Sales Dashboard");
    let target = in_stream(&test, "Sales", "Sales Dashboard").remove(0);
    dev.set_custom_properties(
        &src.id,
        &[
            ("PromoteToServer", "test - Overwrite"),
            ("PromoteToStream", "Sales"),
            ("PromotionApproval", "Deny"),
        ],
        APPROVER,
    )
    .unwrap();
    let jobs = env.jobs_final(&src.id, 1, WITHIN).await;
    assert_eq!(jobs[0].status, JobStatus::Succeeded, "{}", env.logs());
    assert_eq!(jobs[0].kind, "deny");
    assert!(dev.app(&src.id).is_none(), "the published app is deleted");
    let copy = dev
        .app_by_name("Sales Dashboard")
        .into_iter()
        .find(|a| !a.published)
        .expect("a copy for the owner");
    assert_eq!(copy.owner, "CORP\\alice");
    assert_eq!(
        test.app(&target.id).unwrap(),
        target,
        "the target is untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_without_unpublish_strips_the_properties() {
    let env = Env::start(&[("PROMOTER__PROMOTION__AUTO_UNPUBLISH", "false")]).await;
    let dev = env.site("dev");
    let src = published(&dev, "Sales Dashboard");
    dev.set_custom_properties(
        &src.id,
        &[
            ("PromoteToServer", "test - Overwrite"),
            ("PromoteToStream", "Sales"),
            ("PromotionApproval", "Deny"),
        ],
        APPROVER,
    )
    .unwrap();
    let jobs = env.jobs_final(&src.id, 1, WITHIN).await;
    assert_eq!(jobs[0].status, JobStatus::Succeeded, "{}", env.logs());
    let app = dev.app(&src.id).unwrap();
    assert!(app.published, "still published");
    for p in ["PromoteToServer", "PromoteToStream", "PromotionApproval"] {
        assert!(app.property(p).is_empty(), "{p} was stripped");
    }
    // The strip came back as a notification; it started nothing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let store = env.store().await;
    assert_eq!(store.jobs_list(Some(&src.id), 10).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_on_reload_tags_then_promotes_after_each_reload() {
    let env = Env::start(&[("PROMOTER__PROMOTION__PROMOTE_ON_RELOAD", "true")]).await;
    let (dev, test) = (env.site("dev"), env.site("test"));
    let src = published(&dev, "Sales Dashboard");
    let target = in_stream(&test, "Sales", "Sales Dashboard").remove(0);
    dev.set_custom_properties(
        &src.id,
        &[
            ("PromoteToServer", "test - Overwrite"),
            ("PromoteToStream", "Sales"),
            ("PromoteOnReload", "True"),
        ],
        APPROVER,
    )
    .unwrap();
    // First the tag (created, as the fixture has no such tag), nothing promoted.
    let jobs = env.jobs_final(&src.id, 1, WITHIN).await;
    assert_eq!(jobs[0].kind, "tag_for_reload");
    assert!(
        dev.app(&src.id)
            .unwrap()
            .tags
            .contains(&"PromoteOnReload".to_string())
    );
    assert_eq!(
        test.app(&target.id).unwrap().modified_date,
        target.modified_date
    );

    // Each reload promotes again, into the same target app; the source stays as it is.
    for n in 2..=3 {
        dev.reload(&src.id).unwrap();
        let jobs = env.jobs_final(&src.id, n, WITHIN).await;
        let last = jobs.last().unwrap();
        assert_eq!(last.kind, "reload_promote");
        assert_eq!(last.status, JobStatus::Succeeded, "{}", env.logs());
        let checksum = dev.content_checksum(&src.id).await.unwrap();
        let now = in_stream(&test, "Sales", "Sales Dashboard");
        assert_eq!(now.len(), 1);
        assert_eq!(now[0].id, target.id);
        assert_eq!(test.content_checksum(&target.id).await.unwrap(), checksum);
        let app = dev.app(&src.id).unwrap();
        assert!(app.published);
        assert_eq!(app.property("PromoteOnReload"), ["True"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_promote_runs_now_and_jobs_lists_it() {
    let env = Env::sim_only().await;
    let (dev, test) = (env.site("dev"), env.site("test"));
    let src = published(&dev, "Sales Dashboard");
    let target = in_stream(&test, "Sales", "Sales Dashboard").remove(0);
    let checksum = dev.content_checksum(&src.id).await.unwrap();
    // Approved while no promoter was running.
    env.approve(&src.id, &["test - Overwrite"], &["Sales"], &[]);

    let out = env
        .command(&[])
        .args(["promote", "--app", &src.id])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("SUCCEEDED"), "{stdout}");
    assert_eq!(test.content_checksum(&target.id).await.unwrap(), checksum);
    assert!(dev.app(&src.id).is_none());

    let out = env
        .command(&[])
        .args(["jobs", "--app", &src.id])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for key in ["export:data", "promote:test:Sales", "unpublish", "cleanup"] {
        assert!(listing.contains(key), "{key} missing from:\n{listing}");
    }

    // Nothing to do any more: the app is gone.
    let out = env
        .command(&[])
        .args(["promote", "--app", &src.id])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_with_quotes_slashes_and_unicode() {
    let env = Env::start(&[("PROMOTER__PROMOTION__AUTO_UNPUBLISH", "false")]).await;
    let (dev, test) = (env.site("dev"), env.site("test"));
    for name in [
        "O'Brien & Sons: Q1 #2 / Forecast",
        "Überblick Logistik – 物流 ✓",
    ] {
        let src = published(&dev, name);
        let checksum = dev.content_checksum(&src.id).await.unwrap();
        env.approve(&src.id, &["test - Overwrite"], &["Sales"], &[]);
        let jobs = env.jobs_final(&src.id, 1, WITHIN).await;
        assert_eq!(
            jobs[0].status,
            JobStatus::Succeeded,
            "{name}: {}",
            env.logs()
        );
        let now = in_stream(&test, "Sales", name);
        assert_eq!(now.len(), 1, "{name}");
        assert_eq!(test.content_checksum(&now[0].id).await.unwrap(), checksum);
        // Kept published, properties stripped.
        let app = dev.app(&src.id).unwrap();
        assert!(app.published && app.property("PromotionApproval").is_empty());

        // A second approval overwrites the app promoted the first time (the mapping).
        env.approve(&src.id, &["test - Overwrite"], &["Sales"], &[]);
        env.jobs_final(&src.id, 2, WITHIN).await;
        let again = in_stream(&test, "Sales", name);
        assert_eq!(again.len(), 1, "{name}");
        assert_eq!(again[0].id, now[0].id);
    }
    assert!(temporaries(&test).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_apps_approved_at_the_same_moment() {
    let env = Env::start(&[]).await;
    let (dev, test) = (env.site("dev"), env.site("test"));
    let ids: Vec<(String, String)> = (0..20)
        .map(|i| {
            let name = format!("Batch app {i:02}");
            let id = dev
                .add_app(&name, 32 * 1024, "CORP\\alice", Some("Sales"))
                .unwrap();
            (id, name)
        })
        .collect();
    for (id, _) in &ids {
        env.approve(
            id,
            &["test - Overwrite", "prod - Duplicate"],
            &["Sales"],
            &[],
        );
    }
    for (id, name) in &ids {
        let jobs = env.jobs_final(id, 1, Duration::from_secs(120)).await;
        assert_eq!(
            jobs[0].status,
            JobStatus::Succeeded,
            "{name}: {}",
            env.logs()
        );
        assert_eq!(in_stream(&test, "Sales", name).len(), 1, "{name} on test");
        assert_eq!(
            in_stream(&env.site("prod"), "Sales", name).len(),
            1,
            "{name} on prod"
        );
        assert!(dev.app(id).is_none());
    }
    assert!(temporaries(&test).is_empty());
    assert!(temporaries(&env.site("prod")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_to_a_review_stream_alerts_its_approvers() {
    let mut env = Env::sim_only().await;
    let csv = env.sim.dir().join("approvers.csv");
    std::fs::write(&csv, "stream,email\nReview,approver@example.com\n").unwrap();
    let csv = csv.display().to_string();
    env.spawn_serve(&[("PROMOTER__EMAIL__APPROVERS_CSV", csv.as_str())]);
    env.wait_subscribed().await;
    let dev = env.site("dev");
    let app = dev
        .app_by_name("Work in progress")
        .into_iter()
        .next()
        .unwrap();
    dev.publish_as(&app.id, "Review", "CORP\\alice").unwrap();
    let jobs = env.jobs_final(&app.id, 1, WITHIN).await;
    assert_eq!(jobs[0].kind, "publish_review");
    assert_eq!(jobs[0].status, JobStatus::Succeeded, "{}", env.logs());
    let mails = env.mails();
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert!(mails[0].contains("approver@example.com"), "{}", mails[0]);
    // Nothing was promoted anywhere.
    assert!(in_stream(&env.site("test"), "Review", "Work in progress").is_empty());
}

#[test]
fn the_demo_promotes_and_says_where_to_look() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(harness::BIN)
        .args(["demo", "--dir"])
        .arg(dir.path())
        .env_remove("PROMOTER_CONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("SUCCEEDED"), "{stdout}");
    for what in ["mail", "versions", "audit", "promoter.db"] {
        assert!(stdout.contains(what), "{what} missing from:\n{stdout}");
    }
    let mails = std::fs::read_dir(dir.path().join("mail")).unwrap().count();
    assert_eq!(mails, 2, "approval and result mail");
    assert!(
        std::fs::read_dir(dir.path().join("versions"))
            .unwrap()
            .count()
            >= 1
    );
}
