//! The QRS client against the simulator, over real mutual TLS.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use promoter::config::Settings;
use promoter::qrs::{
    self, ChangeType, DefinitionRef, Filter, NotificationSpec, QrsClient, QrsErrorKind, QrsReader,
    QrsSites,
};
use promoter::sim::{self, Fault, Sim, SimOptions};

struct Env {
    _dir: tempfile::TempDir,
    sim: Sim,
    settings: Settings,
    sites: QrsSites,
}

async fn env(sites: &[&str]) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim::start(SimOptions::new(dir.path(), sites))
        .await
        .unwrap();
    let settings = Settings::load(&sim.config_path()).unwrap();
    let sites = QrsSites::from_settings(&settings).unwrap();
    Env {
        _dir: dir,
        sim,
        settings,
        sites,
    }
}

fn stream_of(
    data: Vec<u8>,
    chunk: usize,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    let chunks: Vec<Result<Bytes, std::io::Error>> = data
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures_util::stream::iter(chunks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_return_typed_entities() {
    let e = env(&["dev", "test"]).await;
    let dev = e.sites.local();
    let sdev = e.sim.site("dev").unwrap();

    let about = dev.about().await.unwrap();
    assert!(!about.build_version.is_empty());

    let all = dev.apps(None).await.unwrap();
    assert_eq!(all.len(), sdev.apps().len());
    let sales = dev
        .apps(Some(
            &Filter::eq("name", "Sales Dashboard").and(Filter::eq("stream.name", "sales")),
        ))
        .await
        .unwrap();
    assert_eq!(sales.len(), 1);
    let app = &sales[0];
    assert_eq!(app.stream_name(), Some("Sales"));
    assert!(app.published);
    assert!(app.has_tag("Certified"));
    assert_eq!(app.owner.qualified(), "CORP\\alice");
    assert!(!app.modified_date.is_empty());

    let same = dev.get_app(&app.id).await.unwrap();
    assert_eq!(same.id, app.id);
    assert_eq!(same.modified_date, app.modified_date);
    let json = dev.get_app_json(&app.id).await.unwrap();
    assert_eq!(json["id"], app.id.as_str());

    let missing = dev
        .get_app("00000000-0000-4000-8000-000000000042")
        .await
        .unwrap_err();
    assert!(missing.is_not_found(), "{missing}");
    assert!(!missing.retryable());
    assert!(
        dev.find_app("00000000-0000-4000-8000-000000000042")
            .await
            .unwrap()
            .is_none()
    );

    let owner = dev.get_user(&app.owner.id).await.unwrap();
    assert_eq!(owner.email(), Some("alice@example.com"));
    let nomail = dev
        .users(Some(
            &Filter::eq("userDirectory", "CORP").and(Filter::eq("userId", "nomail")),
        ))
        .await
        .unwrap();
    assert_eq!(nomail.len(), 1);
    assert_eq!(nomail[0].email(), None);

    let streams = dev.streams(None).await.unwrap();
    assert!(streams.iter().any(|s| s.name == "Review"));
    let review = dev.streams_named("review").await.unwrap();
    assert_eq!(review.len(), 1);
    assert_eq!(review[0].property_values("EmailAlertOnPublishTo"), ["True"]);
    let by_id = dev.get_stream(&review[0].id).await.unwrap();
    assert_eq!(by_id.name, "Review");

    let tag = dev.find_tag("certified").await.unwrap().unwrap();
    assert_eq!(tag.name, "Certified");
    assert!(dev.find_tag("No such tag").await.unwrap().is_none());

    let defs = dev.custom_property_definitions(None).await.unwrap();
    assert!(defs.iter().any(|d| d.name == "PromoteToServer"));
    let pts = dev
        .find_custom_property_definition("PromoteToServer")
        .await
        .unwrap()
        .unwrap();
    assert!(pts.choice_values.iter().any(|v| v == "test - Overwrite"));

    // Every call carried the configured user; none left the xrfkey in the logged path.
    let calls = sdev.calls();
    assert!(!calls.is_empty());
    assert!(
        calls
            .iter()
            .all(|c| c.user.as_deref() == Some("INTERNAL\\sa_api"))
    );
    e.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_move_between_sites_and_are_changed() {
    let e = env(&["dev", "test"]).await;
    let dev = e.sites.local();
    let test = e.sites.remote("TEST").unwrap();
    let (sdev, stest) = (e.sim.site("dev").unwrap(), e.sim.site("test").unwrap());
    let src = sdev.app_by_name("Big Picture")[0].clone();
    let src_sum = sdev.content_checksum(&src.id).await.unwrap();

    // Stream export -> upload, with progress.
    let seen = Arc::new(AtomicU64::new(0));
    let s2 = seen.clone();
    let progress: qrs::Progress = Arc::new(move |done, _total| {
        s2.store(done, Ordering::Relaxed);
    });
    let up = qrs::transfer(
        &dev.reader(),
        &src.id,
        false,
        test,
        "Big Picture",
        Some(progress),
    )
    .await
    .unwrap();
    assert_eq!(seen.load(Ordering::Relaxed), src.file_size);
    assert!(!up.published);
    assert_eq!(up.owner.qualified(), "INTERNAL\\sa_api");
    assert_eq!(stest.content_checksum(&up.id).await.unwrap(), src_sum);

    // Publish it, then replace a published app with it: the target keeps its id and stream.
    let sales = test.streams_named("Sales").await.unwrap()[0].clone();
    let everyone = test.streams_named("Everyone").await.unwrap()[0].clone();
    let published = test
        .publish_app(&up.id, &everyone.id, Some("Big Picture (published)"))
        .await
        .unwrap();
    assert!(published.published);
    assert_eq!(published.id, up.id);
    assert_eq!(published.name, "Big Picture (published)");
    assert_eq!(published.stream_name(), Some("Everyone"));

    let target = stest.apps_in_stream("Sales")[0].clone();
    let temp = qrs::transfer(&dev.reader(), &src.id, false, test, "temp", None)
        .await
        .unwrap();
    let replaced = test.replace_app(&temp.id, &target.id).await.unwrap();
    assert_eq!(replaced.id, target.id);
    assert_eq!(replaced.stream.as_ref().map(|s| &s.id), Some(&sales.id));
    assert_eq!(stest.content_checksum(&target.id).await.unwrap(), src_sum);
    test.delete_app(&temp.id).await.unwrap();
    assert!(stest.app(&temp.id).is_none());
    let again = test.delete_app(&temp.id).await.unwrap_err();
    assert!(again.is_not_found());

    // Files: download (no data) and upload from disk.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("x.qvf");
    let n = dev
        .download_app_to_file(&src.id, true, &file, None)
        .await
        .unwrap();
    assert_eq!(n, std::fs::metadata(&file).unwrap().len());
    assert!(n > 0);
    let full = dir.path().join("full.qvf");
    let n_full = dev
        .download_app_to_file(&src.id, false, &full, None)
        .await
        .unwrap();
    assert_eq!(n_full, src.file_size);
    let from_file = test
        .upload_app_from_file("from file", &full, None)
        .await
        .unwrap();
    assert_eq!(
        stest.content_checksum(&from_file.id).await.unwrap(),
        src_sum
    );

    // Copy: unpublished, owned by the caller.
    let copy = dev
        .copy_app(&src.id, Some("Big Picture copy"))
        .await
        .unwrap();
    assert_ne!(copy.id, src.id);
    assert!(!copy.published);
    assert_eq!(copy.name, "Big Picture copy");
    assert_eq!(copy.owner.qualified(), "INTERNAL\\sa_api");

    // Reload moves lastReloadTime.
    let before = dev.get_app(&src.id).await.unwrap().last_reload_time;
    tokio::time::sleep(Duration::from_millis(5)).await;
    dev.reload_app(&src.id).await.unwrap();
    let after = dev.get_app(&src.id).await.unwrap().last_reload_time;
    assert_ne!(before, after);

    // Updates: properties, tags, description, owner.
    let pts = dev
        .find_custom_property_definition("PromoteToServer")
        .await
        .unwrap()
        .unwrap();
    let app = dev
        .set_app_property_values(&src.id, &DefinitionRef::from(&pts), &["test - Overwrite"])
        .await
        .unwrap();
    assert_eq!(app.property_values("PromoteToServer"), ["test - Overwrite"]);
    sdev.set_custom_properties(&src.id, &[("PromoteToStream", "Sales")], "CORP\\alice")
        .unwrap();
    let app = dev
        .strip_app_properties(&src.id, &["PromoteToServer", "promotetostream"])
        .await
        .unwrap();
    assert!(app.custom_properties.is_empty());
    assert!(sdev.app(&src.id).unwrap().custom_properties.is_empty());
    let calls_before = sdev.calls().len();
    let unchanged = dev
        .strip_app_properties(&src.id, &["PromoteToServer"])
        .await
        .unwrap();
    assert_eq!(unchanged.modified_date, app.modified_date);
    assert!(
        !sdev.calls()[calls_before..]
            .iter()
            .any(|c| c.method == "PUT"),
        "nothing to change means no PUT"
    );

    let certified = dev.find_tag("Certified").await.unwrap().unwrap();
    dev.add_app_tag(&src.id, &(&certified).into())
        .await
        .unwrap();
    let tag = dev
        .find_or_create_tag("Auto Promote & Reload")
        .await
        .unwrap();
    let tag2 = dev
        .find_or_create_tag("Auto Promote & Reload")
        .await
        .unwrap();
    assert_eq!(tag.id, tag2.id);
    let app = dev.add_app_tag(&src.id, &(&tag).into()).await.unwrap();
    assert!(app.has_tag("auto promote & reload"));
    assert!(app.has_tag("Certified"), "other tags stay");
    let app = dev
        .remove_app_tag(&src.id, "Auto Promote & Reload")
        .await
        .unwrap();
    assert!(!app.has_tag("Auto Promote & Reload"));
    let app = dev
        .set_app_description(&src.id, "App promoted from node: 'dev'")
        .await
        .unwrap();
    assert_eq!(app.description, "App promoted from node: 'dev'");
    let nomail = &dev
        .users(Some(&Filter::eq("userId", "nomail")))
        .await
        .unwrap()[0];
    let app = dev.set_app_owner(&src.id, &nomail.id).await.unwrap();
    assert_eq!(app.owner.user_id, "nomail");
    assert_eq!(sdev.app(&src.id).unwrap().owner, "CORP\\nomail");
    e.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_subscribe_and_delete() {
    let e = env(&["dev", "test"]).await;
    let dev = e.sites.local();
    let sdev = e.sim.site("dev").unwrap();
    let spec = NotificationSpec::new("App")
        .change_type(ChangeType::Update)
        .property("lastReloadTime")
        .filter(Filter::eq("stream.name", "Sales & Co"));
    let handle = dev
        .subscribe(&spec, "http://127.0.0.1:9/app/update?x=1&y=2")
        .await
        .unwrap();
    let subs = sdev.subscriptions();
    assert_eq!(subs.len(), 1);
    let s = &subs[0];
    assert_eq!(s.handle, handle);
    assert!(s.name.eq_ignore_ascii_case("App"));
    assert_eq!(s.change_type.as_deref(), Some("Update"));
    assert_eq!(s.property_name.as_deref(), Some("lastReloadTime"));
    assert_eq!(s.filter.as_deref(), Some("stream.name eq 'Sales & Co'"));
    assert_eq!(s.callback_url, "http://127.0.0.1:9/app/update?x=1&y=2");

    assert!(dev.unsubscribe(&handle).await.unwrap());
    assert!(sdev.subscriptions().is_empty());
    assert!(!dev.unsubscribe(&handle).await.unwrap(), "unknown handle");
    e.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_names_round_trip_through_filters_and_uploads() {
    let e = env(&["dev", "test"]).await;
    let test = e.sites.remote("test").unwrap();
    let stest = e.sim.site("test").unwrap();
    let names = [
        "O'Brien & Sons: Q1 #2 / Forecast",
        "a\\b + c = d?",
        "  spaced  out ",
        "Überblick Logistik – 物流 ✓",
        "100% ''quoted''",
        "x' or name ne 'y",
    ];
    let everyone = test.streams_named("Everyone").await.unwrap()[0].clone();
    for name in names {
        let data: Vec<u8> = name.bytes().cycle().take(100_000).collect();
        let app = test
            .upload_app_stream(name, stream_of(data.clone(), 7000), None)
            .await
            .unwrap();
        assert_eq!(app.name, name);
        let found = test.apps(Some(&Filter::eq("name", name))).await.unwrap();
        assert_eq!(found.len(), 1, "{name}");
        assert_eq!(found[0].id, app.id);

        // A stream with the same awkward name, found by name and used in a dotted filter.
        stest.add_stream(name);
        let stream = test.streams_named(name).await.unwrap();
        assert_eq!(stream.len(), 1, "{name}");
        test.publish_app(&app.id, &stream[0].id, None)
            .await
            .unwrap();
        let in_stream = test
            .apps(Some(
                &Filter::eq("stream.name", name).and(Filter::eq("name", name)),
            ))
            .await
            .unwrap();
        assert_eq!(in_stream.len(), 1, "{name}");

        // Copy with the name, and export it back (the download path holds the name).
        let copy = test.copy_app(&app.id, Some(name)).await.unwrap();
        assert_eq!(copy.name, name);
        let dl = test.export_app(&copy.id, false).await.unwrap();
        assert_eq!(dl.content_length(), Some(data.len() as u64));
        let mut got = Vec::new();
        let mut s = std::pin::pin!(dl.into_stream());
        while let Some(c) = futures_util::StreamExt::next(&mut s).await {
            got.extend_from_slice(&c.unwrap());
        }
        assert_eq!(got, data, "{name}");
        test.publish_app(&copy.id, &everyone.id, Some(&format!("{name} (2)")))
            .await
            .unwrap();
        assert_eq!(
            test.apps(Some(&Filter::eq("name", &format!("{name} (2)"))))
                .await
                .unwrap()
                .len(),
            1
        );
    }
    e.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_update_gets_409_and_is_reapplied() {
    let e = env(&["dev", "test"]).await;
    let dev = e.sites.local();
    let sdev = e.sim.site("dev").unwrap();
    let app = sdev.app_by_name("Work in progress")[0].clone();

    let runs = AtomicU32::new(0);
    let updated = dev
        .update_app(&app.id, |json| {
            if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                // Someone changes the app in the QMC between our read and our write.
                std::thread::sleep(Duration::from_millis(5));
                sdev.set_custom_properties(
                    &app.id,
                    &[("PromotionApproval", "Approve")],
                    "CORP\\alice",
                )
                .unwrap();
            }
            qrs::edit::set_description(json, "ours");
        })
        .await
        .unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(updated.description, "ours");
    assert_eq!(
        updated.property_values("PromotionApproval"),
        ["Approve"],
        "their change survives ours"
    );
    let puts: Vec<u16> = sdev
        .calls()
        .iter()
        .filter(|c| c.method == "PUT")
        .map(|c| c.status)
        .collect();
    assert_eq!(puts, [409, 200]);

    // Someone who keeps changing it wins after conflict_retries re-reads.
    let retries = e.settings.qrs.conflict_retries;
    let runs = AtomicU32::new(0);
    let err = dev
        .update_app(&app.id, |json| {
            runs.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(5));
            sdev.reload(&app.id).unwrap();
            qrs::edit::set_description(json, "never");
        })
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err}");
    assert!(!err.retryable());
    assert_eq!(runs.load(Ordering::SeqCst), retries + 1);
    e.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_say_whether_to_retry() {
    let e = env(&["dev", "test"]).await;
    let dev = e.sites.local();
    let test = e.sites.remote("test").unwrap();
    let sdev = e.sim.site("dev").unwrap();

    sdev.set_fault(Fault::Status {
        status: 503,
        count: 1,
        path_contains: Some("/qrs/about".into()),
        retry_after: None,
    });
    let err = dev.about().await.unwrap_err();
    assert_eq!(err.status_code(), Some(503));
    assert!(err.retryable());
    assert_eq!(err.site(), "dev");
    assert_eq!(err.method(), "GET");
    assert_eq!(err.path(), "/qrs/about");
    assert!(!err.to_string().to_lowercase().contains("xrfkey"));
    dev.about().await.unwrap();

    sdev.set_fault(Fault::Status {
        status: 429,
        count: 1,
        path_contains: None,
        retry_after: Some(7),
    });
    let err = dev
        .apps(Some(&Filter::eq("name", "a b")))
        .await
        .unwrap_err();
    assert!(err.retryable());
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    assert_eq!(err.path(), "/qrs/app/full?filter=name eq 'a b'");

    sdev.set_fault(Fault::Status {
        status: 400,
        count: 1,
        path_contains: Some("publish".into()),
        retry_after: None,
    });
    let app = sdev.app_by_name("Work in progress")[0].clone();
    let stream = dev.streams_named("Sales").await.unwrap()[0].clone();
    let err = dev
        .publish_app(&app.id, &stream.id, None)
        .await
        .unwrap_err();
    assert_eq!(err.status_code(), Some(400));
    assert!(!err.retryable());
    assert_eq!(err.method(), "PUT");
    assert!(err.to_string().contains("site \"dev\": PUT /qrs/app/"));

    // Publishing an already published app is refused by QRS itself: permanent.
    dev.publish_app(&app.id, &stream.id, None).await.unwrap();
    let err = dev
        .publish_app(&app.id, &stream.id, None)
        .await
        .unwrap_err();
    assert!(!err.retryable(), "{err}");

    // An upload dropped half-way is the upload's own retryable error. (Checked before the
    // dropped download: an upload abandoned by that case may reach the target late and would
    // take a fault armed after it.)
    let big = sdev.app_by_name("Big Picture")[0].clone();
    let stest = e.sim.site("test").unwrap();
    stest.set_fault(Fault::DropMidTransfer { count: 1 });
    let err = qrs::transfer(&dev.reader(), &big.id, false, test, "cut upload", None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.kind(),
            QrsErrorKind::Transport(_) | QrsErrorKind::Status { .. }
        ),
        "{err:?}"
    );
    assert!(err.retryable(), "{err}");
    assert_eq!(err.site(), "test");
    assert!(stest.app_by_name("cut upload").is_empty(), "no half app");
    // The next attempt goes through.
    qrs::transfer(&dev.reader(), &big.id, false, test, "cut upload", None)
        .await
        .unwrap();
    assert_eq!(stest.app_by_name("cut upload").len(), 1);

    // A download dropped half-way fails the upload it feeds, as the download's retryable error.
    sdev.set_fault(Fault::DropMidTransfer { count: 1 });
    let err = qrs::transfer(&dev.reader(), &big.id, false, test, "cut download", None)
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), QrsErrorKind::Upstream(_)), "{err:?}");
    assert!(err.retryable(), "{err}");
    assert!(
        stest.app_by_name("cut download").is_empty(),
        "no half app on the target"
    );

    // Too slow: a retryable timeout.
    let mut quick = e.settings.qrs.clone();
    quick.request_timeout_seconds = 1;
    let impatient = QrsReader::new(&e.settings.local, &quick).unwrap();
    sdev.set_fault(Fault::Latency(Duration::from_millis(1500)));
    let err = impatient.about().await.unwrap_err();
    sdev.clear_faults();
    assert!(matches!(err.kind(), QrsErrorKind::Timeout(_)), "{err:?}");
    assert!(err.retryable());
    assert_eq!(
        promoter::check::classify(&err),
        promoter::check::Problem::Timeout
    );

    // Nothing listening: a retryable connection error.
    let mut gone = e.settings.local.clone();
    gone.port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let closed = QrsReader::new(&gone, &e.settings.qrs).unwrap();
    let err = closed.about().await.unwrap_err();
    assert!(matches!(err.kind(), QrsErrorKind::Connect(_)), "{err:?}");
    assert!(err.retryable());
    e.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_another_ca_is_refused() {
    let e = env(&["dev", "test"]).await;
    let dir = tempfile::tempdir().unwrap();
    // dev's root (so the server verifies), test's client identity (signed by test's CA).
    let dev_certs = e.settings.local.certificates.clone();
    let test_certs = e.settings.remotes[0].certificates.clone();
    std::fs::copy(dev_certs.join("root.pem"), dir.path().join("root.pem")).unwrap();
    for f in ["client.pem", "client_key.pem"] {
        std::fs::copy(test_certs.join(f), dir.path().join(f)).unwrap();
    }
    let mut site = e.settings.local.clone();
    site.certificates = dir.path().to_path_buf();
    let client = QrsClient::new(&site, &e.settings.qrs).unwrap();
    let err = client.about().await.unwrap_err();
    assert!(
        matches!(
            err.kind(),
            QrsErrorKind::Connect(_) | QrsErrorKind::Transport(_)
        ),
        "{err:?}"
    );
    assert!(
        !err.retryable(),
        "a refused certificate is permanent: {err}"
    );
    assert!(
        e.sim.site("dev").unwrap().calls().is_empty(),
        "no request got through"
    );

    // The server certificate is checked too: test's root does not vouch for dev's server.
    let mut wrong_root = e.settings.local.clone();
    let dir2 = tempfile::tempdir().unwrap();
    for f in ["client.pem", "client_key.pem"] {
        std::fs::copy(dev_certs.join(f), dir2.path().join(f)).unwrap();
    }
    std::fs::copy(test_certs.join("root.pem"), dir2.path().join("root.pem")).unwrap();
    wrong_root.certificates = dir2.path().to_path_buf();
    let err = QrsReader::new(&wrong_root, &e.settings.qrs)
        .unwrap()
        .about()
        .await
        .unwrap_err();
    assert!(!err.retryable());
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");

    // With verification off the same connection works (the client certificate is right).
    wrong_root.verify_tls = false;
    QrsReader::new(&wrong_root, &e.settings.qrs)
        .unwrap()
        .about()
        .await
        .unwrap();
    e.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_xrfkey_gets_403() {
    let e = env(&["dev", "test"]).await;
    let site = &e.settings.local;
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(qrs::tls::client_config(site).unwrap())
        .build()
        .unwrap();
    let base = format!("https://{}:{}", site.host, site.port);
    let user = "UserDirectory=INTERNAL; UserId=sa_api";

    let send = |query_key: Option<&'static str>, header_key: Option<&'static str>| {
        let mut url = format!("{base}/qrs/about");
        if let Some(k) = query_key {
            url.push_str(&format!("?xrfkey={k}"));
        }
        let mut rb = http.get(url).header("X-Qlik-User", user);
        if let Some(k) = header_key {
            rb = rb.header("X-Qlik-Xrfkey", k);
        }
        rb.send()
    };
    for (q, h) in [
        (Some("abcdefghijklmnop"), Some("abcdefghijklmnoq")),
        (Some("abcdefghijklmnop"), None),
        (None, Some("abcdefghijklmnop")),
    ] {
        let resp = send(q, h).await.unwrap();
        assert_eq!(resp.status().as_u16(), 403, "{q:?} {h:?}");
        assert_eq!(resp.text().await.unwrap(), sim::XSRF_TEXT);
    }
    let ok = send(Some("abcdefghijklmnop"), Some("abcdefghijklmnop"))
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    e.sim.shutdown().await;
}
