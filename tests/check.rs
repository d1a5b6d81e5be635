//! `promoter check` against the simulator: a healthy set-up and the failures an administrator
//! meets (wrong server name, foreign client certificate, wrong root, closed port).

use promoter::check::{self, Problem};
use promoter::config::Settings;
use promoter::qrs::TlsMode;
use promoter::sim::{self, SimOptions};

fn copy_certs(from_client: &std::path::Path, from_root: &std::path::Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["client.pem", "client_key.pem"] {
        std::fs::copy(from_client.join(f), dir.path().join(f)).unwrap();
    }
    std::fs::copy(from_root.join("root.pem"), dir.path().join("root.pem")).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_site_answers() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim::start(SimOptions::new(dir.path(), &["dev", "test", "prod"]))
        .await
        .unwrap();
    let settings = Settings::load(&sim.config_path()).unwrap();
    let reports = check::check_sites(&settings).await;
    assert_eq!(reports.len(), 3);
    assert_eq!(
        reports.iter().map(|r| r.role).collect::<Vec<_>>(),
        ["local", "remote", "remote"]
    );
    for r in &reports {
        assert!(r.ok(), "{r:?}");
        assert_eq!(r.tls, TlsMode::Verified);
        assert!(
            r.version
                .as_deref()
                .is_some_and(|v| !v.is_empty() && v != "?")
        );
    }
    let table = check::render(&reports);
    assert!(table.starts_with("SITE"), "{table}");
    assert_eq!(table.lines().filter(|l| l.ends_with("OK")).count(), 3);
    assert!(check::run(&settings).await.unwrap());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_come_with_hints() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim::start(SimOptions::new(dir.path(), &["dev", "test"]))
        .await
        .unwrap();
    let good = Settings::load(&sim.config_path()).unwrap();
    let dev_certs = good.local.certificates.clone();
    let test_certs = good.remotes[0].certificates.clone();

    // dev presents test's client certificate (another CA): refused by the server.
    let foreign = copy_certs(&test_certs, &dev_certs);
    // test trusts dev's root: test's server certificate is not signed by it.
    let wrong_root = copy_certs(&test_certs, &dev_certs);
    let mut s = good.clone();
    s.local.certificates = foreign.path().to_path_buf();
    s.remotes[0].certificates = wrong_root.path().to_path_buf();
    let reports = check::check_sites(&s).await;
    assert_eq!(
        reports[0].problem,
        Some(Problem::ClientCertRejected),
        "{:?}",
        reports[0]
    );
    let hint = reports[0].hint.as_deref().unwrap();
    assert!(hint.contains("client certificate"), "{hint}");
    assert!(
        hint.contains(&foreign.path().display().to_string()),
        "{hint}"
    );
    assert_eq!(
        reports[1].problem,
        Some(Problem::UnknownIssuer),
        "{:?}",
        reports[1]
    );
    assert!(reports[1].hint.as_deref().unwrap().contains("root.pem"));
    assert!(!check::run(&s).await.unwrap());

    // A closed port and a user QRS refuses.
    let mut s = good.clone();
    s.local.port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let reports = check::check_sites(&s).await;
    assert_eq!(
        reports[0].problem,
        Some(Problem::Refused),
        "{:?}",
        reports[0]
    );
    assert!(reports[0].hint.as_deref().unwrap().contains("4242"));
    assert!(reports[1].ok());
    let table = check::render(&reports);
    assert!(table.contains("FAILED: connection refused"), "{table}");
    assert!(table.contains("hint:"), "{table}");

    // A missing certificate file is reported, not a panic.
    let mut s = good.clone();
    let empty = tempfile::tempdir().unwrap();
    s.remotes[0].certificates = empty.path().to_path_buf();
    let reports = check::check_sites(&s).await;
    assert_eq!(reports[1].problem, Some(Problem::Setup));
    assert!(reports[1].error.as_deref().unwrap().contains("client.pem"));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_for_another_name_suggests_server_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = SimOptions::new(dir.path(), &["dev", "test"]);
    opts.server_name = Some("qlik-central".into());
    let sim = sim::start(opts).await.unwrap();
    let mut settings = Settings::load(&sim.config_path()).unwrap();
    let reports = check::check_sites(&settings).await;
    for r in &reports {
        assert_eq!(
            r.problem,
            Some(Problem::ServerNameMismatch {
                presented: vec!["qlik-central".into()]
            }),
            "{r:?}"
        );
        let hint = r.hint.as_deref().unwrap();
        assert!(hint.contains("server_name = \"qlik-central\""), "{hint}");
    }

    for site in std::iter::once(&mut settings.local).chain(settings.remotes.iter_mut()) {
        site.server_name = Some("qlik-central".into());
    }
    let reports = check::check_sites(&settings).await;
    for r in &reports {
        assert!(r.ok(), "{r:?}");
        assert_eq!(r.tls, TlsMode::VerifiedAs("qlik-central".into()));
    }
    assert!(check::render(&reports).contains("verified as qlik-central"));
    sim.shutdown().await;
}
