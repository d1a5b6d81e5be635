//! Windows: the Service Control Manager.
//!
//! `service install` registers `"<exe>" service run --config "<absolute config>"` as an
//! own-process service (automatic delayed start, restart on failure, a description). When the
//! SCM starts it, [`run_dispatcher`] hands the main thread to the dispatcher, which calls
//! `service_main` on another thread; that reports StartPending -> Running -> StopPending ->
//! Stopped while [`host::run`] does the work, and turns the Stop control into a cancelled
//! `CancellationToken`, the same graceful path SIGTERM takes in `promoter serve`.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;
use windows_service::service::{
    Service, ServiceAccess, ServiceAction as ScAction, ServiceActionType, ServiceControl,
    ServiceControlAccept, ServiceErrorControl, ServiceExitCode, ServiceFailureActions,
    ServiceFailureResetPeriod, ServiceInfo, ServiceStartType, ServiceState, ServiceStatus,
    ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_service::{define_windows_service, service_dispatcher};

use super::host::{self, Phase};
use super::{DEFAULT_DESCRIPTION, DEFAULT_NAME, InstallArgs, ServiceAction, display_name};
use crate::config::Settings;

/// The configuration path, handed from `main` to the dispatcher's thread.
static CONFIG: OnceLock<PathBuf> = OnceLock::new();

/// How long `service start` / `stop` wait for the service to get there.
const WAIT: Duration = Duration::from_secs(90);

const ERROR_ACCESS_DENIED: i32 = 5;
const ERROR_SERVICE_ALREADY_RUNNING: i32 = 1056;
const ERROR_SERVICE_DOES_NOT_EXIST: i32 = 1060;
const ERROR_SERVICE_NOT_ACTIVE: i32 = 1062;
const ERROR_FAILED_SERVICE_CONTROLLER_CONNECT: i32 = 1063;
const ERROR_SERVICE_MARKED_FOR_DELETE: i32 = 1072;

define_windows_service!(ffi_service_main, service_main);

/// `promoter service run`: connects to the SCM and runs the service until it stops.
pub fn run_dispatcher(config: &Path) -> ExitCode {
    // A service starts in C:\Windows\System32; nothing may depend on that.
    let exe_dir = exe_dir();
    if let Some(dir) = &exe_dir {
        let _ = std::env::set_current_dir(dir);
    }
    let config = match (config.is_absolute(), &exe_dir) {
        (false, Some(dir)) => dir.join(config),
        _ => config.to_path_buf(),
    };
    let _ = CONFIG.set(config);
    match service_dispatcher::start(DEFAULT_NAME, ffi_service_main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(windows_service::Error::Winapi(e))
            if e.raw_os_error() == Some(ERROR_FAILED_SERVICE_CONTROLLER_CONNECT) =>
        {
            eprintln!(
                "error: `promoter service run` is started by the Windows Service Control Manager. \
                 Use `promoter service start`, or `promoter serve --config PATH` in a console"
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!(
                "error: cannot connect to the Service Control Manager: {}",
                describe(&e)
            );
            ExitCode::FAILURE
        }
    }
}

fn exe_dir() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
}

/// Called by the dispatcher on its own thread; `arguments[0]` is the service's name.
fn service_main(arguments: Vec<OsString>) {
    let name = arguments
        .first()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| DEFAULT_NAME.to_string());
    let config = CONFIG.get().cloned().unwrap_or_default();
    let shutdown = CancellationToken::new();
    let on_control = {
        let shutdown = shutdown.clone();
        move |control| match control {
            ServiceControl::Stop | ServiceControl::Shutdown => {
                shutdown.cancel();
                ServiceControlHandlerResult::NoError
            }
            ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
            _ => ServiceControlHandlerResult::NotImplemented,
        }
    };
    let status = match service_control_handler::register(&name, on_control) {
        Ok(s) => s,
        Err(e) => {
            event_log(
                &name,
                &format!(
                    "cannot register with the Service Control Manager: {}",
                    describe(&e)
                ),
            );
            return;
        }
    };
    let set = |state, accept, exit_code, checkpoint, wait_hint| {
        let _ = status.set_service_status(ServiceStatus {
            service_type: ServiceType::OWN_PROCESS,
            current_state: state,
            controls_accepted: accept,
            exit_code,
            checkpoint,
            wait_hint,
            process_id: None,
        });
    };
    log_panics();
    let none = ServiceControlAccept::empty();
    let ok = ServiceExitCode::NO_ERROR;
    let mut report = |phase: Phase| match phase {
        Phase::Starting { checkpoint } => set(
            ServiceState::StartPending,
            none,
            ok,
            checkpoint,
            Duration::from_secs(10),
        ),
        Phase::Running => set(
            ServiceState::Running,
            ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN,
            ok,
            0,
            Duration::ZERO,
        ),
        Phase::Stopping { checkpoint } => set(
            ServiceState::StopPending,
            none,
            ok,
            checkpoint,
            Duration::from_secs(10),
        ),
    };
    let outcome = host::run(&config, shutdown, &mut report);
    if let Some(message) = &outcome.error {
        let where_logged = match &outcome.log_folder {
            Some(f) => format!(" (log: {})", f.display()),
            None => String::new(),
        };
        event_log(&name, &format!("{message}{where_logged}"));
    }
    let exit_code = match outcome.exit_code {
        0 => ServiceExitCode::NO_ERROR,
        code => ServiceExitCode::ServiceSpecific(code),
    };
    set(ServiceState::Stopped, none, exit_code, 0, Duration::ZERO);
}

/// Panics go to the log file (a service's stderr goes nowhere).
fn log_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!("panic: {info}");
        previous(info);
    }));
}

/// Writes an error to the Windows event log (Application), source = the service name. Best
/// effort: the log file is the primary record.
fn event_log(source: &str, message: &str) {
    use windows_sys::Win32::System::EventLog::{
        DeregisterEventSource, EVENTLOG_ERROR_TYPE, RegisterEventSourceW, ReportEventW,
    };
    let wide = |s: &str| -> Vec<u16> { s.encode_utf16().chain(std::iter::once(0)).collect() };
    let source = wide(source);
    let text = wide(&format!("Promoter: {message}"));
    // SAFETY: both strings are NUL-terminated UTF-16 buffers that outlive the calls; the handle
    // is checked before use and released.
    unsafe {
        let handle = RegisterEventSourceW(std::ptr::null(), source.as_ptr());
        if handle.is_null() {
            return;
        }
        let strings = [text.as_ptr()];
        ReportEventW(
            handle,
            EVENTLOG_ERROR_TYPE,
            0,
            1,
            std::ptr::null_mut(),
            1,
            0,
            strings.as_ptr(),
            std::ptr::null(),
        );
        DeregisterEventSource(handle);
    }
}

/// `promoter service <action>` on Windows.
pub fn run_action(config: &Path, action: ServiceAction) -> anyhow::Result<bool> {
    match action {
        ServiceAction::Install(args) => install(config, &args),
        ServiceAction::Uninstall(n) => uninstall(&n.name),
        ServiceAction::Start(n) => start(&n.name),
        ServiceAction::Stop(n) => stop(&n.name),
        ServiceAction::Status(n) => status(&n.name),
        ServiceAction::Run => bail!("`promoter service run` is started by the SCM"),
    }
}

fn install(config: &Path, args: &InstallArgs) -> anyhow::Result<bool> {
    let exe = std::env::current_exe().context("cannot find the path of this executable")?;
    let config = super::absolute_config(config)?;
    let settings = Settings::load(&config).map_err(|e| {
        anyhow::anyhow!(
            "{e}\nFix the configuration before installing the service (`promoter validate --config \"{}\"`)",
            config.display()
        )
    })?;
    for w in settings.warnings() {
        eprintln!("warning: {w}");
    }
    if let Some(w) = super::env_override_warning(std::env::vars().map(|(k, _)| k)) {
        eprintln!("warning: {w}");
    }
    let account = super::windows_account(&args.name, args.account.as_deref());
    let password = match &args.password_env {
        Some(var) => Some(std::env::var_os(var).with_context(|| {
            format!("--password-env {var}: that environment variable is not set")
        })?),
        None => None,
    };
    let builtin = super::is_builtin_account(account.as_deref());
    if password.is_some() && builtin {
        bail!(
            "--password-env is only for user accounts; built-in and virtual accounts have no password"
        );
    }
    if password.is_none() && !builtin && !account.as_deref().is_some_and(|a| a.ends_with('$')) {
        eprintln!(
            "warning: {} is a user account but no --password-env was given; the service will fail to log on unless it is a group managed service account",
            account.as_deref().unwrap_or_default()
        );
    }
    for dir in [&settings.data.dir, &host::service_log_folder(&settings)] {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("warning: cannot create {}: {e}", dir.display());
        }
    }
    let info = ServiceInfo {
        name: OsString::from(&args.name),
        display_name: OsString::from(display_name(&args.name)),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: exe.clone(),
        launch_arguments: super::launch_arguments(&config)
            .into_iter()
            .map(OsString::from)
            .collect(),
        dependencies: vec![],
        account_name: account.as_ref().map(OsString::from),
        account_password: password,
    };
    let manager = manager(ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE)?;
    let access = ServiceAccess::QUERY_CONFIG
        | ServiceAccess::CHANGE_CONFIG
        | ServiceAccess::QUERY_STATUS
        | ServiceAccess::START;
    let (service, existed) = match manager.open_service(&args.name, access) {
        Ok(service) => {
            service
                .change_config(&info)
                .map_err(|e| scm_error(e, &args.name, "update"))?;
            (service, true)
        }
        Err(_) => (
            manager
                .create_service(&info, access)
                .map_err(|e| scm_error(e, &args.name, "create"))?,
            false,
        ),
    };
    let description = args.description.as_deref().unwrap_or(DEFAULT_DESCRIPTION);
    if let Err(e) = service.set_description(description) {
        eprintln!("warning: cannot set the description: {}", describe(&e));
    }
    configure_recovery(&service);
    // Start after the Qlik services at boot (the subscription keeper retries anyway).
    if let Err(e) = service.set_delayed_auto_start(true) {
        eprintln!(
            "warning: cannot set delayed automatic start: {}",
            describe(&e)
        );
    }
    println!(
        "{} service \"{}\" ({}):\n  command: \"{}\" {}\n  account: {}\n  start:   automatic (delayed), restarts on failure",
        if existed { "Updated" } else { "Installed" },
        args.name,
        display_name(&args.name),
        exe.display(),
        super::launch_arguments(&config)
            .iter()
            .map(|a| if a.contains(' ') {
                format!("\"{a}\"")
            } else {
                a.clone()
            })
            .collect::<Vec<_>>()
            .join(" "),
        account.as_deref().unwrap_or("LocalSystem"),
    );
    let log = host::service_log_folder(&settings);
    println!(
        "  logs:    {}\n{}{} promoter service start --name {}",
        log.display(),
        super::access_hint(
            account.as_deref(),
            &config,
            &settings.data.dir,
            &log,
            &settings
                .sites()
                .map(|s| s.certificates.clone())
                .collect::<Vec<_>>()
        ),
        if existed {
            "A running service keeps its old settings until restarted: promoter service stop, then"
        } else {
            "Start it:"
        },
        args.name
    );
    Ok(true)
}

/// Restart after 10 s, 30 s, then 60 s; forget failures after a day. Also on a non-zero exit
/// code (a clean process exit after a failure), not only on crashes.
fn configure_recovery(service: &Service) {
    let restart = |secs| ScAction {
        action_type: ServiceActionType::Restart,
        delay: Duration::from_secs(secs),
    };
    let actions = ServiceFailureActions {
        reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(24 * 3600)),
        reboot_msg: None,
        command: None,
        actions: Some(vec![restart(10), restart(30), restart(60)]),
    };
    if let Err(e) = service.update_failure_actions(actions) {
        eprintln!(
            "warning: cannot set the recovery actions (restart on failure): {}",
            describe(&e)
        );
    }
    if let Err(e) = service.set_failure_actions_on_non_crash_failures(true) {
        eprintln!(
            "warning: cannot enable recovery on non-crash failures: {}",
            describe(&e)
        );
    }
}

fn uninstall(name: &str) -> anyhow::Result<bool> {
    let manager = manager(ServiceManagerAccess::CONNECT)?;
    let service = manager
        .open_service(
            name,
            ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE,
        )
        .map_err(|e| scm_error(e, name, "open"))?;
    let state = service
        .query_status()
        .map_err(|e| scm_error(e, name, "query"))?
        .current_state;
    if state != ServiceState::Stopped {
        println!("Stopping {name} ...");
        if !stop_and_wait(&service, name)? {
            bail!("{name} did not stop; it was not removed");
        }
    }
    service.delete().map_err(|e| scm_error(e, name, "delete"))?;
    println!("Removed service \"{name}\"");
    Ok(true)
}

fn start(name: &str) -> anyhow::Result<bool> {
    let manager = manager(ServiceManagerAccess::CONNECT)?;
    let service = manager
        .open_service(
            name,
            ServiceAccess::QUERY_STATUS | ServiceAccess::START | ServiceAccess::QUERY_CONFIG,
        )
        .map_err(|e| scm_error(e, name, "open"))?;
    match service.start::<&OsStr>(&[]) {
        Ok(()) => {}
        Err(windows_service::Error::Winapi(e))
            if e.raw_os_error() == Some(ERROR_SERVICE_ALREADY_RUNNING) =>
        {
            println!("{name} is already running");
            return Ok(true);
        }
        Err(e) => return Err(scm_error(e, name, "start")),
    }
    let status = wait_while(&service, name, ServiceState::StartPending)?;
    match status.current_state {
        ServiceState::Running => {
            println!("{name} is running{}", pid(&status));
            Ok(true)
        }
        state => {
            eprintln!(
                "error: {name} did not start: {} ({}). {}",
                state_name(state),
                exit_code_text(&status.exit_code),
                where_are_the_logs(&service)
            );
            Ok(false)
        }
    }
}

fn stop(name: &str) -> anyhow::Result<bool> {
    let manager = manager(ServiceManagerAccess::CONNECT)?;
    let service = manager
        .open_service(
            name,
            ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::QUERY_CONFIG,
        )
        .map_err(|e| scm_error(e, name, "open"))?;
    stop_and_wait(&service, name)
}

fn stop_and_wait(service: &Service, name: &str) -> anyhow::Result<bool> {
    match service.stop() {
        Ok(_) => {}
        Err(windows_service::Error::Winapi(e))
            if e.raw_os_error() == Some(ERROR_SERVICE_NOT_ACTIVE) =>
        {
            println!("{name} is not running");
            return Ok(true);
        }
        Err(e) => return Err(scm_error(e, name, "stop")),
    }
    let status = wait_while(service, name, ServiceState::StopPending)?;
    if status.current_state != ServiceState::Stopped {
        // Seen under Wine: the state can read Running for a moment after the control.
        let status = wait_while(service, name, ServiceState::Running)?;
        let status = wait_while_status(service, name, status, ServiceState::StopPending)?;
        if status.current_state != ServiceState::Stopped {
            eprintln!(
                "error: {name} did not stop within {}s (state {})",
                WAIT.as_secs(),
                state_name(status.current_state)
            );
            return Ok(false);
        }
    }
    println!("{name} stopped ({})", exit_code_text(&status.exit_code));
    Ok(true)
}

fn status(name: &str) -> anyhow::Result<bool> {
    let manager = manager(ServiceManagerAccess::CONNECT)?;
    let service = match manager.open_service(
        name,
        ServiceAccess::QUERY_STATUS | ServiceAccess::QUERY_CONFIG,
    ) {
        Ok(s) => s,
        Err(windows_service::Error::Winapi(e))
            if e.raw_os_error() == Some(ERROR_SERVICE_DOES_NOT_EXIST) =>
        {
            println!("{name}: not installed (promoter service install --name {name})");
            return Ok(false);
        }
        Err(e) => return Err(scm_error(e, name, "open")),
    };
    let status = service
        .query_status()
        .map_err(|e| scm_error(e, name, "query"))?;
    println!(
        "{name}: {}{}",
        state_name(status.current_state),
        pid(&status)
    );
    if status.current_state == ServiceState::Stopped {
        println!("  last exit: {}", exit_code_text(&status.exit_code));
    }
    if let Ok(cfg) = service.query_config() {
        println!(
            "  command: {}\n  account: {}\n  start:   {:?}",
            cfg.executable_path.display(),
            cfg.account_name
                .as_ref()
                .map(|a| a.to_string_lossy().into_owned())
                .unwrap_or_else(|| "LocalSystem".into()),
            cfg.start_type
        );
    }
    println!("  {}", where_are_the_logs(&service));
    Ok(status.current_state == ServiceState::Running)
}

/// The OS error behind a windows-service error (its `Display` says only "IO error in winapi
/// call").
fn describe(e: &windows_service::Error) -> String {
    match e {
        windows_service::Error::Winapi(io) => io.to_string(),
        other => other.to_string(),
    }
}

fn manager(access: ServiceManagerAccess) -> anyhow::Result<ServiceManager> {
    ServiceManager::local_computer(None::<&str>, access).map_err(|e| match e {
        windows_service::Error::Winapi(ref io) if io.raw_os_error() == Some(ERROR_ACCESS_DENIED) => {
            anyhow::anyhow!(
                "cannot open the Service Control Manager: access denied; run this from an elevated (Run as administrator) prompt"
            )
        }
        e => anyhow::anyhow!("cannot open the Service Control Manager: {}", describe(&e)),
    })
}

/// An SCM error in words, with what to do about the usual ones.
fn scm_error(e: windows_service::Error, name: &str, what: &str) -> anyhow::Error {
    let code = match &e {
        windows_service::Error::Winapi(io) => io.raw_os_error(),
        _ => None,
    };
    match code {
        Some(ERROR_ACCESS_DENIED) => anyhow::anyhow!(
            "cannot {what} service \"{name}\": access denied; run this from an elevated (Run as administrator) prompt"
        ),
        Some(ERROR_SERVICE_DOES_NOT_EXIST) => anyhow::anyhow!(
            "service \"{name}\" is not installed (promoter service install --name {name})"
        ),
        Some(ERROR_SERVICE_MARKED_FOR_DELETE) => anyhow::anyhow!(
            "service \"{name}\" is being removed; close the Services console (services.msc) and try again"
        ),
        _ => anyhow::anyhow!("cannot {what} service \"{name}\": {}", describe(&e)),
    }
}

fn wait_while(service: &Service, name: &str, state: ServiceState) -> anyhow::Result<ServiceStatus> {
    let status = service
        .query_status()
        .map_err(|e| scm_error(e, name, "query"))?;
    wait_while_status(service, name, status, state)
}

/// Polls until the state is no longer `state` (or [`WAIT`] has passed).
fn wait_while_status(
    service: &Service,
    name: &str,
    mut status: ServiceStatus,
    state: ServiceState,
) -> anyhow::Result<ServiceStatus> {
    let deadline = Instant::now() + WAIT;
    while status.current_state == state && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        status = service
            .query_status()
            .map_err(|e| scm_error(e, name, "query"))?;
    }
    Ok(status)
}

fn pid(status: &ServiceStatus) -> String {
    status
        .process_id
        .map(|p| format!(" (pid {p})"))
        .unwrap_or_default()
}

fn state_name(state: ServiceState) -> &'static str {
    match state {
        ServiceState::Stopped => "stopped",
        ServiceState::StartPending => "starting",
        ServiceState::StopPending => "stopping",
        ServiceState::Running => "running",
        ServiceState::ContinuePending => "continuing",
        ServiceState::PausePending => "pausing",
        ServiceState::Paused => "paused",
    }
}

fn exit_code_text(code: &ServiceExitCode) -> String {
    match code {
        ServiceExitCode::Win32(0) => "exit code 0".into(),
        ServiceExitCode::Win32(c) => format!("Windows error {c}"),
        ServiceExitCode::ServiceSpecific(c) => {
            format!("exit code {c}: {}", super::exit_code_meaning(*c))
        }
    }
}

/// "Logs: <folder>" from the service's registered command line, when it can be read.
fn where_are_the_logs(service: &Service) -> String {
    let config = service
        .query_config()
        .ok()
        .and_then(|c| super::config_from_command_line(&c.executable_path.to_string_lossy()));
    match config {
        Some(config) => {
            let folder = match Settings::load(&config) {
                Ok(s) => host::service_log_folder(&s),
                Err(_) => host::log_folder_for_broken_config(
                    &config,
                    &exe_dir().unwrap_or_default().join("logs"),
                ),
            };
            format!(
                "Logs: {} (and the Windows event log, Application)",
                folder.display()
            )
        }
        None => "Logs: see logging.folder in the configuration".into(),
    }
}
