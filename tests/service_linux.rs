//! The service round trip on Linux, as systemd runs it: the real binary (`promoter serve`)
//! against simulated sites over mutual TLS, stopped with SIGTERM; start-up failures; the
//! service host the Windows dispatcher uses, driven in-process; `service install --print`.
#![cfg(unix)]

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use promoter::service::host::{self, Phase};
use promoter::sim::{self, Sim, SimOptions};
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_promoter");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(300),
    )
    .is_ok()
}

/// The binary with a clean environment (no `PROMOTER_*` from the developer's shell) and a
/// current directory that holds nothing of Promoter's: nothing may depend on it.
fn promoter(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).current_dir("/");
    for (k, _) in std::env::vars() {
        if k.starts_with("PROMOTER") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// A child process killed (by its pid) if the test ends before it exits.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Running {
    fn exited(&mut self) -> Option<ExitStatus> {
        self.0.try_wait().unwrap()
    }

    fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

async fn start_sim(dir: &Path, port: u16) -> Sim {
    let mut opts = SimOptions::new(dir.join("sim"), &["dev", "test"]);
    opts.listener_bind = Some(format!("127.0.0.1:{port}"));
    sim::start(opts).await.unwrap()
}

async fn get(url: &str) -> Option<(u16, String)> {
    let resp = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().await.ok()?))
}

/// Waits until `check` is true; panics with `what` (and `context()`) after `timeout`.
async fn wait_until<F, Fut>(what: &str, timeout: Duration, context: impl Fn() -> String, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}\n{}", context());
}

/// The sum of `promoter_deliveries_received_total` over its labels.
async fn deliveries(port: u16) -> f64 {
    let Some((200, text)) = get(&format!("http://127.0.0.1:{port}/metrics")).await else {
        return -1.0;
    };
    text.lines()
        .filter(|l| l.starts_with("promoter_deliveries_received_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn read_all(dir: &Path) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        out.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
    }
    out
}

/// Waits until the service is up (health), subscribed on the simulated DEV site, and a change
/// made there (custom properties, as a QMC user would) has been delivered to it.
async fn change_reaches_the_service(sim: &Sim, port: u16, context: impl Fn() -> String) -> String {
    let health = format!("http://127.0.0.1:{port}/health");
    wait_until(
        "/health to answer 200",
        Duration::from_secs(30),
        &context,
        || async { matches!(get(&health).await, Some((200, _))) },
    )
    .await;
    let dev = sim.site("dev").unwrap();
    wait_until(
        "the service to subscribe on the DEV site",
        Duration::from_secs(30),
        &context,
        || async {
            dev.subscriptions()
                .iter()
                .any(|s| s.callback_url.contains(&format!("127.0.0.1:{port}")))
        },
    )
    .await;
    let before = deliveries(port).await;
    assert!(before >= 0.0, "/metrics does not answer");
    let app = dev.apps().first().expect("the fixture has apps").id.clone();
    dev.set_custom_properties(
        &app,
        &[("PromoteToServer", "test - Overwrite")],
        "CORP\\alice",
    )
    .unwrap();
    wait_until(
        "the change notification to be acknowledged (promoter_deliveries_received_total)",
        Duration::from_secs(20),
        &context,
        || async { deliveries(port).await > before },
    )
    .await;
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_round_trip_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let sim = start_sim(dir.path(), port).await;
    let config = sim.config_path();
    let out = dir.path().join("serve.out");
    let mut child = Running(
        promoter(&["serve", "--config", config.to_str().unwrap()])
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(dir.path().join("serve.err")).unwrap())
            .spawn()
            .unwrap(),
    );
    let logs = sim.dir().join("logs");
    let err_file = dir.path().join("serve.err");
    let context = || {
        format!(
            "stderr:\n{}\nlog:\n{}",
            std::fs::read_to_string(&err_file).unwrap_or_default(),
            read_all(&logs)
        )
    };
    let app = change_reaches_the_service(&sim, port, &context).await;

    // The change is in the inbox, from QRS (not from the catch-up sweep).
    let inbox = promoter(&["inbox", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let inbox = String::from_utf8_lossy(&inbox.stdout).into_owned();
    assert!(
        inbox
            .lines()
            .any(|l| l.contains(&app) && !l.contains(" sweep ")),
        "{app} not in the inbox as a delivery:\n{inbox}"
    );

    let started = Instant::now();
    kill(Pid::from_raw(child.0.id() as i32), Signal::SIGTERM).unwrap();
    let status = child.wait_exit(Duration::from_secs(30));
    let status =
        status.unwrap_or_else(|| panic!("still running 30 s after SIGTERM\n{}", context()));
    assert_eq!(status.code(), Some(0), "exit after SIGTERM\n{}", context());
    assert!(!port_open(port), "port {port} still open after exit");
    eprintln!("stopped {:?} after SIGTERM", started.elapsed());
    assert!(
        read_all(&logs).contains("stopped"),
        "the log does not record the stop:\n{}",
        read_all(&logs)
    );
    sim.shutdown().await;
}

/// A configuration whose certificate folders do not exist (as before the QMC export).
fn broken_config(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let config = dir.join("promoter.toml");
    std::fs::write(
        &config,
        "[local]\nalias = \"dev\"\nhost = \"localhost\"\ncertificates = \"certs/dev\"\n\n\
         [[remote]]\nalias = \"test\"\nhost = \"localhost\"\ncertificates = \"certs/test\"\n\n\
         [logging]\nfolder = \"logs\"\n",
    )
    .unwrap();
    config
}

#[test]
fn broken_configuration_stops_serve_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let config = broken_config(dir.path());
    let started = Instant::now();
    let out = promoter(&["serve", "--config", config.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let missing = dir.path().join("certs/dev/client.pem");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains("`local.certificates`"), "{stderr}");
    assert!(
        stderr.contains(&format!("{} is missing", missing.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains("export the certificates from the QMC"),
        "{stderr}"
    );
}

/// The service host (what the Windows dispatcher runs) on a plain thread: a broken
/// configuration ends it with exit code 2 and the console's wording in the log file; a taken
/// port with exit code 1; a good configuration goes Starting -> Running, serves, and on stop
/// goes Stopping -> exit code 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_host_reports_phases_and_logs_startup_failures() {
    let dir = tempfile::tempdir().unwrap();

    // Broken configuration.
    let broken = broken_config(&dir.path().join("broken"));
    let console = promoter(&["serve", "--config", broken.to_str().unwrap()])
        .output()
        .unwrap();
    let console = String::from_utf8_lossy(&console.stderr).into_owned();
    let mut phases = Vec::new();
    let outcome = host::run(&broken, CancellationToken::new(), &mut |p| phases.push(p));
    assert_eq!(outcome.exit_code, host::EXIT_CONFIG);
    assert_eq!(phases, [Phase::Starting { checkpoint: 1 }]);
    let message = outcome.error.unwrap();
    assert_eq!(console.trim_end(), format!("error: {message}"));
    let log_dir = dir.path().join("broken/logs");
    assert_eq!(outcome.log_folder.as_deref(), Some(log_dir.as_path()));
    let log = read_all(&log_dir);
    for line in message.lines() {
        assert!(log.contains(line), "{line:?} not in the log:\n{log}");
    }
    assert!(log.contains("promoter validate --config"), "{log}");

    let port = free_port();
    let sim = start_sim(dir.path(), port).await;
    let config = sim.config_path();

    // The port is taken: the service stops with exit code 1 and the listener's reason.
    let taken = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let (outcome, phases) = {
        let config = config.clone();
        std::thread::spawn(move || {
            let mut phases = Vec::new();
            let outcome = host::run(&config, CancellationToken::new(), &mut |p| phases.push(p));
            (outcome, phases)
        })
        .join()
        .unwrap()
    };
    drop(taken);
    assert_eq!(outcome.exit_code, host::EXIT_FAILED, "{outcome:?}");
    let message = outcome.error.unwrap();
    assert!(
        message.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{message}"
    );
    assert!(
        phases.iter().all(|p| matches!(p, Phase::Starting { .. })),
        "{phases:?}"
    );

    // Good configuration, stopped through the token (the SCM's Stop control).
    let shutdown = CancellationToken::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let thread = {
        let (shutdown, seen) = (shutdown.clone(), seen.clone());
        std::thread::spawn(move || {
            host::run(&config, shutdown, &mut |p| seen.lock().unwrap().push(p))
        })
    };
    change_reaches_the_service(&sim, port, || format!("phases: {:?}", seen.lock().unwrap())).await;
    wait_until(
        "the host to report Running",
        Duration::from_secs(30),
        || format!("phases: {:?}", seen.lock().unwrap()),
        || async { seen.lock().unwrap().last() == Some(&Phase::Running) },
    )
    .await;
    shutdown.cancel();
    let outcome = tokio::task::spawn_blocking(move || thread.join().unwrap())
        .await
        .unwrap();
    assert_eq!(outcome.exit_code, 0, "{outcome:?}");
    assert_eq!(outcome.error, None);
    assert!(
        !port_open(port),
        "port {port} still open after the host returned"
    );
    let phases = seen.lock().unwrap().clone();
    assert_eq!(phases.first(), Some(&Phase::Starting { checkpoint: 1 }));
    let running = phases.iter().position(|p| *p == Phase::Running).unwrap();
    let stopping = phases
        .iter()
        .position(|p| matches!(p, Phase::Stopping { .. }))
        .unwrap();
    assert!(running < stopping, "{phases:?}");
    assert!(
        phases[..running]
            .iter()
            .all(|p| matches!(p, Phase::Starting { .. })),
        "{phases:?}"
    );
    assert!(
        phases[stopping..]
            .iter()
            .all(|p| matches!(p, Phase::Stopping { .. })),
        "{phases:?}"
    );
    sim.shutdown().await;
}

#[test]
fn service_install_prints_a_unit_with_absolute_paths() {
    let dir = tempfile::tempdir().unwrap();
    let out = promoter(&[
        "service",
        "install",
        "--print",
        "--name",
        "promoter-test",
        "--account",
        "qlik",
        "--config",
        "promoter.toml",
    ])
    .current_dir(dir.path())
    .output()
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let unit = String::from_utf8_lossy(&out.stdout);
    let exec = format!(
        "ExecStart={BIN} serve --config {}",
        dir.path().join("promoter.toml").display()
    );
    assert!(unit.lines().any(|l| l == exec), "{exec} not in:\n{unit}");
    assert!(unit.lines().any(|l| l == "User=qlik"), "{unit}");
    assert!(unit.lines().any(|l| l == "KillSignal=SIGTERM"), "{unit}");
    assert!(unit.lines().any(|l| l == "Restart=on-failure"), "{unit}");
    assert!(unit.contains("--name promoter-test"), "{unit}");
    // The configuration does not exist: printed anyway, with the reason as a warning.
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning: cannot read"));

    let run = promoter(&["service", "run"]).output().unwrap();
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("promoter serve --config"));
}
