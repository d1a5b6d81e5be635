//! Shared by `engine_e2e.rs` and `engine_faults.rs`: simulated dev/test/prod sites in this
//! process, the real `promoter serve` as a child process, and the store it writes, read here.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use promoter::sim::{self, Sim, SimApp, SimOptions, SimSite};
use promoter::store::{JobRow, Store};

pub const APPROVER: &str = "INTERNAL\\approver";
pub const BIN: &str = env!("CARGO_BIN_EXE_promoter");

/// Environment for every `promoter` child: fast subscription checks and retries.
pub const FAST: &[(&str, &str)] = &[
    ("PROMOTER__SUBSCRIPTIONS__INTERVAL_SECONDS", "1"),
    ("PROMOTER__SUBSCRIPTIONS__SWEEP_INTERVAL_SECONDS", "3600"),
    ("PROMOTER__PROMOTION__RETRY_INITIAL_SECONDS", "1"),
    ("PROMOTER__PROMOTION__RETRY_MAX_SECONDS", "2"),
    ("PROMOTER__PROMOTION__LEASE_SECONDS", "3"),
    ("PROMOTER__LOGGING__LEVEL", "info,promoter=debug"),
];

/// A running `promoter serve`; killed (`kill -9`) when dropped.
pub struct Serve {
    child: Child,
}

impl Serve {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9` and wait.
    pub fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process has exited (e.g. aborted at a crash point).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits up to `within` for the process to exit by itself.
    pub fn wait_exit(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.exited() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// SIGTERM and wait for the exit.
    pub fn terminate(&mut self, within: Duration) -> bool {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        self.wait_exit(within)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill_9();
    }
}

/// Simulated sites plus a promoter.
pub struct Env {
    pub sim: Sim,
    pub serve: Option<Serve>,
    _dir: tempfile::TempDir,
}

impl Env {
    /// Starts dev/test/prod and `promoter serve` with `extra` environment, waiting until the
    /// promoter has subscribed on dev.
    pub async fn start(extra: &[(&str, &str)]) -> Env {
        let mut env = Env::sim_only().await;
        env.spawn_serve(extra);
        env.wait_subscribed().await;
        env
    }

    /// Starts dev/test/prod only.
    pub async fn sim_only() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let sim = sim::start(SimOptions::new(
            dir.path().join("sim"),
            &["dev", "test", "prod"],
        ))
        .await
        .unwrap();
        Env {
            sim,
            serve: None,
            _dir: dir,
        }
    }

    pub fn site(&self, alias: &str) -> SimSite {
        self.sim.site(alias).unwrap()
    }

    pub fn config(&self) -> PathBuf {
        self.sim.config_path()
    }

    /// A `promoter` command with the config and the fast settings.
    pub fn command(&self, extra: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config").arg(self.config());
        for (k, v) in FAST.iter().chain(extra) {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts (or restarts) `promoter serve`.
    pub fn spawn_serve(&mut self, extra: &[(&str, &str)]) {
        if let Some(mut old) = self.serve.take() {
            old.kill_9();
        }
        let mut cmd = self.command(extra);
        cmd.arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.serve = Some(Serve {
            child: cmd.spawn().unwrap(),
        });
    }

    /// Waits until dev holds the promoter's subscriptions.
    pub async fn wait_subscribed(&self) {
        let dev = self.site("dev");
        eventually(
            "the promoter subscribes on dev",
            Duration::from_secs(30),
            || (dev.subscriptions().len() >= 3).then_some(()),
            || self.logs(),
        )
        .await;
    }

    /// The store the promoter writes (SQLite in the simulator folder).
    pub async fn store(&self) -> Store {
        let db = self.sim.dir().join("data").join("promoter.db");
        for _ in 0..100 {
            if db.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Store::open_url(&format!("sqlite://{}?mode=rwc", db.display()))
            .await
            .unwrap()
    }

    /// Everything the promoter logged.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(dir) = std::fs::read_dir(self.sim.dir().join("logs")) {
            let mut files: Vec<_> = dir.flatten().map(|e| e.path()).collect();
            files.sort();
            for f in files {
                out.push_str(&std::fs::read_to_string(f).unwrap_or_default());
            }
        }
        let tail: String = out
            .lines()
            .rev()
            .take(120)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        tail
    }

    /// Files written by the mail file transport.
    pub fn mails(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(dir) = std::fs::read_dir(self.sim.dir().join("mail")) {
            for e in dir.flatten() {
                out.push(std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        out
    }

    /// Waits until `n` jobs of `app_id` exist and all are final; returns them, oldest first.
    pub async fn jobs_final(&self, app_id: &str, n: usize, within: Duration) -> Vec<JobRow> {
        let store = self.store().await;
        let deadline = Instant::now() + within;
        loop {
            let mut jobs = store.jobs_list(Some(app_id), 100).await.unwrap();
            if jobs.len() >= n && jobs.iter().all(|j| j.status.is_final()) {
                jobs.reverse();
                return jobs;
            }
            if Instant::now() > deadline {
                let mut desc = String::new();
                for j in &jobs {
                    desc.push_str(&format!(
                        "{} {} {:?} {}\n",
                        j.id,
                        j.kind,
                        j.status,
                        j.last_error.clone().unwrap_or_default()
                    ));
                    for s in store.steps(&j.id).await.unwrap() {
                        desc.push_str(&format!("   {} {} {}\n", s.step_key, s.outcome, s.result));
                    }
                }
                for e in store.inbox_recent(40).await.unwrap() {
                    if e.object_id == app_id {
                        desc.push_str(&format!(
                            "inbox {} {} {:?} {:?} {}\n",
                            e.id, e.source, e.modified_date, e.state, e.note
                        ));
                    }
                }
                for a in store.audit_list(Some(app_id), 40).await.unwrap() {
                    desc.push_str(&format!("audit {} {} {}\n", a.event, a.outcome, a.detail));
                }
                panic!(
                    "expected {n} final job(s) of {app_id} within {within:?}; have:\n{desc}\nlogs:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sets the approval properties on a dev app as the approver would in the QMC.
    pub fn approve(
        &self,
        app_id: &str,
        servers: &[&str],
        streams: &[&str],
        extra: &[(&str, &str)],
    ) {
        let mut props: Vec<(&str, &str)> = Vec::new();
        for s in servers {
            props.push(("PromoteToServer", s));
        }
        for s in streams {
            props.push(("PromoteToStream", s));
        }
        props.extend_from_slice(extra);
        props.push(("PromotionApproval", "Approve"));
        self.site("dev")
            .set_custom_properties(app_id, &props, APPROVER)
            .unwrap();
    }
}

/// The published dev app with this name.
pub fn published(site: &SimSite, name: &str) -> SimApp {
    site.app_by_name(name)
        .into_iter()
        .find(|a| a.published)
        .unwrap_or_else(|| panic!("no published app \"{name}\" on {}", site.alias()))
}

/// Apps named `name` published in `stream`.
pub fn in_stream(site: &SimSite, stream: &str, name: &str) -> Vec<SimApp> {
    site.apps_in_stream(stream)
        .into_iter()
        .filter(|a| a.name == name)
        .collect()
}

/// Apps whose name marks them as the promoter's temporary uploads.
pub fn temporaries(site: &SimSite) -> Vec<SimApp> {
    site.apps()
        .into_iter()
        .filter(|a| a.name.starts_with("__promoter_tmp_"))
        .collect()
}

/// Polls `f` until it gives a value; panics after `within` with `context()`.
pub async fn eventually<T>(
    what: &str,
    within: Duration,
    mut f: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting until {what}\n{}", context());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
