//! `promoter plan --app ID` (the real binary) against the simulator: the printed plan, and proof
//! that nothing was written (only GETs reached any site, no database was created).

use std::path::Path;
use std::process::Output;

use promoter::sim::{self, Sim, SimOptions};

const BIN: &str = env!("CARGO_BIN_EXE_promoter");
const APPROVER: &str = "INTERNAL\\approver";

async fn run_plan(config: &Path, app: &str) -> Output {
    let config = config.to_path_buf();
    let app = app.to_string();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .args(["plan", "--app", &app])
            .env_remove("PROMOTER_CONFIG")
            .env("NO_COLOR", "1")
            .output()
            .expect("run promoter plan")
    })
    .await
    .expect("join")
}

fn text(o: &Output) -> String {
    format!(
        "{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn local_app(sim: &Sim, name: &str) -> String {
    let dev = sim.site("dev").expect("dev");
    let apps = dev.app_by_name(name);
    assert_eq!(apps.len(), 1, "one local app named {name}");
    apps[0].id.clone()
}

fn assert_only_reads(sim: &Sim) {
    for site in sim.sites() {
        let writes: Vec<String> = site
            .calls()
            .into_iter()
            .filter(|c| c.method != "GET")
            .map(|c| format!("{} {}", c.method, c.path))
            .collect();
        assert!(
            writes.is_empty(),
            "site {} saw non-GET calls: {writes:?}",
            site.alias()
        );
    }
    assert!(
        !sim.dir().join("data").join("promoter.db").exists(),
        "plan must not create the database"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_prints_steps_and_resolved_targets_without_writing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let sim = sim::start(SimOptions::new(
        tmp.path().join("sim"),
        &["dev", "test", "prod"],
    ))
    .await
    .expect("start the simulator");
    let dev = sim.site("dev").expect("dev");
    let test = sim.site("test").expect("test");
    let prod = sim.site("prod").expect("prod");

    // Approve "Sales Dashboard" for two sites and two streams, as an approver in the QMC.
    let sales = local_app(&sim, "Sales Dashboard");
    dev.set_custom_properties(
        &sales,
        &[
            ("PromoteToServer", "test - Overwrite"),
            ("PromoteToServer", "prod - Duplicate"),
            ("PromoteToStream", "Sales"),
            ("PromoteToStream", "Finance"),
            ("PromotionApproval", "Approve"),
        ],
        APPROVER,
    )
    .expect("set properties");
    let before = dev.app(&sales).expect("source app");
    let target = test
        .apps_in_stream("Sales")
        .into_iter()
        .find(|a| a.name == "Sales Dashboard")
        .expect("the earlier copy on test");
    let prod_sales = prod.streams().into_iter().any(|s| s == "Sales");
    assert!(prod_sales, "prod has a Sales stream");
    for s in sim.sites() {
        s.clear_calls();
    }

    let out = run_plan(&sim.config_path(), &sales).await;
    let printed = text(&out);
    assert!(out.status.success(), "{printed}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for expected in [
        format!("App \"Sales Dashboard\" ({sales}) on site \"dev\""),
        "owner: CORP\\alice (alice@example.com)".to_string(),
        "published in stream \"Sales\"".to_string(),
        "Decision: promote (trigger: manual)".to_string(),
        "decided by: INTERNAL\\approver".to_string(),
        format!(
            "  - test / \"Sales\" (Overwrite): replaces app {} in place (it keeps its id)",
            target.id
        ),
        "  - test / \"Finance\" (Overwrite): publishes a new app (no published app named \"Sales Dashboard\" in the stream)".to_string(),
        "  - prod / \"Finance\" (Duplicate): stream \"Finance\" does not exist on site \"prod\"".to_string(),
        "  - prod / \"Sales\" (Duplicate): publishes a new app into stream".to_string(),
    ] {
        assert!(stdout.contains(&expected), "missing {expected:?} in:\n{printed}");
    }
    // The steps, in order, with their keys.
    let keys: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.trim_end().strip_suffix(']'))
        .filter_map(|l| l.rsplit_once("  [").map(|(_, k)| k))
        .collect();
    assert_eq!(
        keys,
        [
            "notify:approved",
            "export:data",
            "promote:test:Finance",
            "promote:test:Sales",
            "promote:prod:Finance",
            "promote:prod:Sales",
            "unpublish",
            "notify:result",
            "cleanup",
        ],
        "{printed}"
    );
    assert!(stdout.contains("Dry run: nothing was written"), "{printed}");

    // Nothing changed: only GETs reached any site, the app is as it was, no database.
    assert!(
        !dev.calls().is_empty() && !test.calls().is_empty() && !prod.calls().is_empty(),
        "plan reads every site it resolves targets on"
    );
    assert_only_reads(&sim);
    assert_eq!(dev.app(&sales).expect("source app"), before);

    // A denial: no targets, unpublish (auto_unpublish is on by default).
    let obrien = local_app(&sim, "O'Brien & Sons: Q1 #2 / Forecast");
    dev.set_custom_properties(&obrien, &[("PromotionApproval", "Deny")], APPROVER)
        .expect("set properties");
    let out = run_plan(&sim.config_path(), &obrien).await;
    let printed = text(&out);
    assert!(out.status.success(), "{printed}");
    assert!(
        printed.contains("Decision: deny (trigger: manual)"),
        "{printed}"
    );
    assert!(printed.contains("[notify:denied]"), "{printed}");
    assert!(printed.contains("[unpublish]"), "{printed}");
    assert!(!printed.contains("[promote:"), "{printed}");

    // Nothing to do: exit code 1 and the reason.
    let big = local_app(&sim, "Big Picture");
    let out = run_plan(&sim.config_path(), &big).await;
    let printed = text(&out);
    assert_eq!(out.status.code(), Some(1), "{printed}");
    assert!(
        printed.contains("Nothing to do: the app has no promotion properties"),
        "{printed}"
    );

    // An app that does not exist: a clear error, non-zero.
    let out = run_plan(&sim.config_path(), "00000000-0000-0000-0000-000000000000").await;
    let printed = text(&out);
    assert!(!out.status.success(), "{printed}");
    assert!(printed.contains("cannot read app"), "{printed}");

    assert_only_reads(&sim);
    sim.shutdown().await;
}
