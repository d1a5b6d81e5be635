//! What a service does between "start" and "stopped", independent of the service manager.
//!
//! The Windows dispatcher calls [`run`] on the thread the SCM gives it and maps each [`Phase`]
//! to a service status; tests call it on a plain thread. A service has no console, so
//! everything goes to rotating log files, including the reason it could not start, with the
//! same words `promoter serve` prints on a console.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::{LoggingSettings, Settings};

/// Service-specific exit code for "the configuration could not be loaded" (as `promoter
/// validate` exits 2).
pub const EXIT_CONFIG: u32 = 2;
/// Service-specific exit code for "it started (or tried to) and then failed".
pub const EXIT_FAILED: u32 = 1;
/// Service-specific exit code for "the log folder could not be opened".
pub const EXIT_LOGGING: u32 = 3;

/// How long start-up may take before the service is reported running anyway.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// When the port was already taken before start: how long `serve::run` must live before the
/// service counts as running.
const TAKEN_GRACE: Duration = Duration::from_secs(3);
/// How long background tasks get after `serve::run` has returned.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(5);

/// Progress to report to the service manager. `checkpoint` grows while a phase lasts, which
/// tells the SCM the service is alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Loading the configuration and binding the listener.
    Starting { checkpoint: u32 },
    /// The listener accepts connections.
    Running,
    /// Stop requested; finishing what is in flight.
    Stopping { checkpoint: u32 },
}

/// How the service ended: the exit code to report (0 = clean stop) and, for a failure, the
/// message that was logged (for the Windows event log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub exit_code: u32,
    pub error: Option<String>,
    /// The folder the log was written to, when one could be opened.
    pub log_folder: Option<PathBuf>,
}

/// The folder a service logs to: `logging.folder`, or `<data.dir>/logs`.
pub fn service_log_folder(settings: &Settings) -> PathBuf {
    settings
        .logging
        .folder
        .clone()
        .unwrap_or_else(|| settings.data.dir.join("logs"))
}

/// Where to log when the configuration itself cannot be loaded: read what can be read of it
/// (`logging.folder`, `data.dir`) so the message lands where the administrator will look;
/// `fallback` (the exe's folder + `logs`) when the file cannot be read or parsed at all.
pub fn log_folder_for_broken_config(config: &Path, fallback: &Path) -> PathBuf {
    let text = std::fs::read_to_string(config).ok();
    let dir = config.parent().unwrap_or(Path::new("."));
    log_folder_from_text(text.as_deref(), dir, fallback)
}

fn log_folder_from_text(text: Option<&str>, config_dir: &Path, fallback: &Path) -> PathBuf {
    let Some(value) = text.and_then(|t| toml::from_str::<toml::Table>(t).ok()) else {
        return fallback.to_path_buf();
    };
    let get = |section: &str, key: &str| -> Option<PathBuf> {
        value
            .get(section)?
            .get(key)?
            .as_str()
            .filter(|s| !s.trim().is_empty())
            .map(|s| config_dir.join(s))
    };
    get("logging", "folder")
        .or_else(|| get("data", "dir").map(|d| d.join("logs")))
        .unwrap_or_else(|| config_dir.join("data").join("logs"))
}

/// The address to probe to know the listener is up: `listener.bind`, with an unspecified IP
/// (0.0.0.0, ::) replaced by loopback. `None` for port 0 or an unresolvable bind.
pub fn probe_address(bind: &str) -> Option<SocketAddr> {
    let mut addr = bind
        .parse::<SocketAddr>()
        .ok()
        .or_else(|| bind.to_socket_addrs().ok()?.next())?;
    if addr.port() == 0 {
        return None;
    }
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Some(addr)
}

/// Runs Promoter as a service until `shutdown` is cancelled, reporting progress to `report`.
/// Blocking: it builds its own runtime (the SCM's thread has none). Logging is installed here
/// (process-wide), so call it once per process.
pub fn run(config: &Path, shutdown: CancellationToken, report: &mut dyn FnMut(Phase)) -> Outcome {
    report(Phase::Starting { checkpoint: 1 });
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));

    let settings = match Settings::load(config) {
        Ok(s) => s,
        Err(e) => {
            // Same wording as `promoter serve` on a console (`error: <message>`).
            let message = e.to_string();
            let folder = log_folder_for_broken_config(config, &exe_dir.join("logs"));
            let logged = log_startup_failure(&folder, &message);
            return Outcome {
                exit_code: EXIT_CONFIG,
                error: Some(message),
                log_folder: logged.then_some(folder),
            };
        }
    };
    let folder = service_log_folder(&settings);
    let guard = match crate::telemetry::init(&settings.logging, Some(&folder)) {
        Ok(g) => g,
        Err(e) => {
            return Outcome {
                exit_code: EXIT_LOGGING,
                error: Some(format!(
                    "{e}; the service account needs write access to this folder (logging.folder)"
                )),
                log_folder: None,
            };
        }
    };
    for w in settings.warnings() {
        tracing::warn!("{w}");
    }
    tracing::info!(
        config = %settings.config_path.display(),
        version = env!("CARGO_PKG_VERSION"),
        "Promoter service starting"
    );
    let probe = probe_address(&settings.listener.bind);
    let (exit_code, error) = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => {
            let result = runtime.block_on(supervise(settings, shutdown, probe, report));
            runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
            result
        }
        Err(e) => {
            let message = format!("cannot start the async runtime: {e}");
            tracing::error!("{message}");
            (EXIT_FAILED, Some(message))
        }
    };
    if exit_code == 0 {
        tracing::info!("Promoter service stopped");
    } else {
        tracing::error!(exit_code, "Promoter service stopped after a failure");
    }
    drop(guard); // flushes the log file before the manager is told "stopped"
    Outcome {
        exit_code,
        error,
        log_folder: Some(folder),
    }
}

/// Runs `serve::run` and turns its life into phases: Running once the listener accepts
/// connections, Stopping (with a growing checkpoint) once stop is requested.
async fn supervise(
    settings: Settings,
    shutdown: CancellationToken,
    probe: Option<SocketAddr>,
    report: &mut dyn FnMut(Phase),
) -> (u32, Option<String>) {
    // Something else already accepting on the port would fool the probe: then only time tells
    // (the listener binds early, so a conflict ends `serve::run` within moments).
    let taken = match probe {
        Some(addr) => connects(addr).await,
        None => false,
    };
    if let (true, Some(addr)) = (taken, probe) {
        tracing::warn!(
            "something already accepts connections on {addr}; Promoter will not be able to listen there if it keeps it"
        );
    }
    let mut task = tokio::spawn(crate::serve::run(settings, shutdown.clone()));
    let started = Instant::now();
    let mut checkpoint = 1;
    let mut running = false;
    let mut stopping = false;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let joined = loop {
        tokio::select! {
            joined = &mut task => break joined,
            _ = shutdown.cancelled(), if !stopping => {
                stopping = true;
                tracing::info!("stop requested; finishing work in flight");
                checkpoint += 1;
                report(Phase::Stopping { checkpoint });
            }
            _ = tick.tick() => {
                if stopping {
                    checkpoint += 1;
                    report(Phase::Stopping { checkpoint });
                } else if !running {
                    let ready = match probe {
                        _ if taken => started.elapsed() > TAKEN_GRACE,
                        Some(addr) => connects(addr).await,
                        None => true,
                    };
                    if ready || started.elapsed() > READY_TIMEOUT {
                        if !ready {
                            tracing::warn!(
                                "the listener did not accept connections within {}s; reporting the service as running anyway",
                                READY_TIMEOUT.as_secs()
                            );
                        }
                        running = true;
                        checkpoint = 0;
                        tracing::info!("Promoter service running");
                        report(Phase::Running);
                    } else {
                        checkpoint += 1;
                        report(Phase::Starting { checkpoint });
                    }
                }
            }
        }
    };
    match joined {
        Ok(Ok(())) if stopping => (0, None),
        Ok(Ok(())) => {
            let message = "the server ended without being asked to stop".to_string();
            tracing::error!("{message}");
            (EXIT_FAILED, Some(message))
        }
        Ok(Err(e)) => {
            let message = format!("{e:#}");
            tracing::error!("{message}");
            (EXIT_FAILED, Some(message))
        }
        Err(e) => {
            let message = format!("the server task failed: {e}");
            tracing::error!("{message}");
            (EXIT_FAILED, Some(message))
        }
    }
}

/// Whether something accepts TCP connections at `addr`.
async fn connects(addr: SocketAddr) -> bool {
    tokio::task::spawn_blocking(move || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
    })
    .await
    .unwrap_or(false)
}

/// Logs a start-up failure to a file in `folder` (created if needed). Returns whether it could.
fn log_startup_failure(folder: &Path, message: &str) -> bool {
    match crate::telemetry::init(&LoggingSettings::default(), Some(folder)) {
        Ok(guard) => {
            tracing::error!("{message}");
            tracing::error!(
                exit_code = EXIT_CONFIG,
                "Promoter service cannot start: fix the configuration (`promoter validate --config PATH` names every problem), then start the service again"
            );
            drop(guard);
            true
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_address_replaces_unspecified_and_skips_port_zero() {
        let cases: &[(&str, Option<&str>)] = &[
            ("127.0.0.1:8585", Some("127.0.0.1:8585")),
            ("0.0.0.0:8585", Some("127.0.0.1:8585")),
            ("[::]:9000", Some("[::1]:9000")),
            ("10.1.2.3:80", Some("10.1.2.3:80")),
            ("127.0.0.1:0", None),
            ("not an address", None),
        ];
        for (bind, want) in cases {
            let want = want.map(|w| w.parse::<SocketAddr>().unwrap());
            assert_eq!(probe_address(bind), want, "{bind}");
        }
    }

    #[test]
    fn broken_config_logs_where_the_config_points() {
        let dir = Path::new("/srv/promoter/config");
        let fallback = Path::new("/opt/promoter/logs");
        let cases: &[(Option<&str>, &str)] = &[
            (None, "/opt/promoter/logs"),
            (Some("this is [not toml"), "/opt/promoter/logs"),
            (Some("[logging]\nfolder = 'L'\n"), "/srv/promoter/config/L"),
            (
                Some("[logging]\nfolder = '/var/log/p'\n[data]\ndir='d'"),
                "/var/log/p",
            ),
            (Some("[data]\ndir = '/var/lib/p'\n"), "/var/lib/p/logs"),
            (Some("[data]\ndir = 'd'\n"), "/srv/promoter/config/d/logs"),
            (
                Some("[local]\nalias = 'dev'\nbogus = 1\n"),
                "/srv/promoter/config/data/logs",
            ),
            (
                Some("[logging]\nfolder = ''\n"),
                "/srv/promoter/config/data/logs",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(
                log_folder_from_text(*text, dir, fallback),
                PathBuf::from(want),
                "{text:?}"
            );
        }
    }
}
