//! Running Promoter as a Windows service (Service Control Manager) or a systemd unit (Linux).
//!
//! - [`host`]: what a service does between "start" and "stopped", the same on every platform:
//!   load the configuration, log to rotating files, run `serve::run` until asked to stop, and
//!   report start-up failures in the log with the console's wording.
//! - `windows` (Windows only): `service install/uninstall/start/stop/status` through the SCM and
//!   the dispatcher the SCM starts (`service run`).
//! - [`systemd`]: the unit file (`config/promoter.service`) and `systemctl` for the same actions.

pub mod host;
pub mod systemd;
#[cfg(windows)]
mod windows;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The service name used when `--name` is not given.
pub const DEFAULT_NAME: &str = "promoter";

/// The description shown in the Services console / `systemctl status` unless `--description`.
pub const DEFAULT_DESCRIPTION: &str =
    "Promoter: promotes Qlik Sense apps between sites (DEV -> TEST -> PROD) with approvals";

/// `promoter service ...` actions.
#[derive(Debug, clap::Subcommand)]
pub enum ServiceAction {
    /// Register the service: Windows Service Control Manager (automatic start, restart on
    /// failure), or a systemd unit on Linux. Run as Administrator / root.
    Install(InstallArgs),
    /// Stop the service if it runs, and remove it.
    Uninstall(NameArg),
    /// Start the service and wait until it runs (or report why it stopped).
    Start(NameArg),
    /// Stop the service gracefully and wait until it has stopped.
    Stop(NameArg),
    /// Show whether the service is installed and running (exit status 0 only when running).
    Status(NameArg),
    /// Entry point used by the Service Control Manager (not for interactive use).
    #[command(hide = true)]
    Run,
}

/// `--name` for the actions on an installed service.
#[derive(Debug, Clone, clap::Args)]
pub struct NameArg {
    /// Service name (several instances need several names).
    #[arg(long, default_value = DEFAULT_NAME)]
    pub name: String,
}

/// Options of `promoter service install`.
#[derive(Debug, Clone, clap::Args)]
pub struct InstallArgs {
    /// Service name (letters, digits, `-`, `_`, `.`).
    #[arg(long, default_value = DEFAULT_NAME)]
    pub name: String,
    /// Account to run as. Windows: `NT SERVICE\<name>` (a virtual account, the default),
    /// `LocalService`, `NetworkService`, `LocalSystem`, or `DOMAIN\user` with --password-env.
    /// Linux: the user in the unit's `User=` (default: root, with a warning).
    #[arg(long)]
    pub account: Option<String>,
    /// Windows: name of an environment variable holding the account's password (only for
    /// real user accounts such as the Qlik service account).
    #[arg(long, value_name = "VAR")]
    pub password_env: Option<String>,
    /// Description shown in the Services console / `systemctl status`.
    #[arg(long)]
    pub description: Option<String>,
    /// Linux: print the systemd unit instead of installing it.
    #[arg(long)]
    pub print: bool,
}

/// Hands the process to the Windows service dispatcher (`promoter service run`, started by the
/// SCM). Elsewhere it explains what to run instead.
pub fn run_dispatcher(config: &Path) -> ExitCode {
    #[cfg(windows)]
    {
        windows::run_dispatcher(config)
    }
    #[cfg(not(windows))]
    {
        eprintln!(
            "error: `promoter service run` is the entry point for the Windows Service Control Manager. \
             Here, run `promoter serve --config {}` (systemd: `promoter service install`)",
            config.display()
        );
        ExitCode::FAILURE
    }
}

/// Runs an interactive `promoter service` action; returns whether it succeeded.
pub async fn run_action(config: &Path, action: ServiceAction) -> anyhow::Result<bool> {
    if let Some(name) = action_name(&action) {
        validate_name(name).map_err(|e| anyhow::anyhow!("--name: {e}"))?;
    }
    if let ServiceAction::Install(args) = &action
        && args.password_env.is_some()
        && args.account.is_none()
    {
        anyhow::bail!(
            "--password-env needs --account: the password belongs to the account the service runs as"
        );
    }
    let config = config.to_path_buf();
    let run = move || -> anyhow::Result<bool> {
        #[cfg(windows)]
        {
            windows::run_action(&config, action)
        }
        #[cfg(not(windows))]
        {
            systemd::run_action(&config, action)
        }
    };
    tokio::task::spawn_blocking(run).await?
}

fn action_name(action: &ServiceAction) -> Option<&str> {
    match action {
        ServiceAction::Install(a) => Some(&a.name),
        ServiceAction::Uninstall(n)
        | ServiceAction::Start(n)
        | ServiceAction::Stop(n)
        | ServiceAction::Status(n) => Some(&n.name),
        ServiceAction::Run => None,
    }
}

/// A service name both the SCM and systemd accept without quoting: 1..=64 of `A-Z a-z 0-9 - _ .`,
/// not starting with `.` or `-`.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!(
            "\"{name}\" must be 1 to 64 characters long (letters, digits, '-', '_', '.')"
        ));
    }
    if name.starts_with(['.', '-']) {
        return Err(format!("\"{name}\" must not start with '.' or '-'"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "\"{name}\" contains '{c}'; use only letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

/// The configuration path a service is registered with: absolute, without depending on the
/// current directory later. A relative path is taken relative to the current directory *now*
/// (where the administrator typed it).
pub fn absolute_config(config: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(config)
        .map_err(|e| anyhow::anyhow!("cannot make {} absolute: {e}", config.display()))
}

/// A warning when `PROMOTER__*` overrides are set in the installing shell: the service will
/// not see them (it gets the machine's environment, not this shell's).
pub fn env_override_warning(names: impl IntoIterator<Item = String>) -> Option<String> {
    let mut names: Vec<String> = names
        .into_iter()
        .filter(|n| n.starts_with("PROMOTER__"))
        .collect();
    if names.is_empty() {
        return None;
    }
    names.sort();
    Some(format!(
        "{} set in this shell; the service will not see it. Put the setting in the configuration file, or set it for the service (Windows: a machine-wide variable, `setx /M NAME VALUE`, then restart the service; systemd: Environment= or EnvironmentFile= in the unit)",
        names.join(", ")
    ))
}

/// The display name the Services console shows for a service name.
pub fn display_name(name: &str) -> String {
    if name == DEFAULT_NAME {
        "Promoter".to_string()
    } else {
        format!("Promoter ({name})")
    }
}

/// The account a Windows service is created with; `None` means LocalSystem. Without
/// `--account`: the virtual account `NT SERVICE\<name>` (no password, its own identity for
/// file permissions). Short names: `LocalService`, `NetworkService`, `LocalSystem`. A bare
/// user name is a local account (`.\user`).
pub fn windows_account(name: &str, account: Option<&str>) -> Option<String> {
    let Some(account) = account.map(str::trim) else {
        return Some(format!("NT SERVICE\\{name}"));
    };
    match account.to_ascii_lowercase().as_str() {
        "localsystem" | "system" | "nt authority\\system" | ".\\localsystem" => None,
        "localservice" | "nt authority\\localservice" => Some("NT AUTHORITY\\LocalService".into()),
        "networkservice" | "nt authority\\networkservice" => {
            Some("NT AUTHORITY\\NetworkService".into())
        }
        _ if account.contains('\\') || account.contains('@') => Some(account.to_string()),
        _ => Some(format!(".\\{account}")),
    }
}

/// Whether an account (as [`windows_account`] returns it) is built in (no password).
pub fn is_builtin_account(account: Option<&str>) -> bool {
    account.is_none_or(|a| {
        let a = a.to_ascii_lowercase();
        a.starts_with("nt authority\\") || a.starts_with("nt service\\")
    })
}

/// The arguments the SCM starts the exe with.
pub fn launch_arguments(config: &Path) -> Vec<String> {
    vec![
        "service".into(),
        "run".into(),
        "--config".into(),
        config.to_string_lossy().into_owned(),
    ]
}

/// The `--config` value in a registered Windows command line (quoted the way
/// `CommandLineToArgvW` reads it).
pub fn config_from_command_line(command_line: &str) -> Option<PathBuf> {
    let args = split_command_line(command_line);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    None
}

/// Splits a Windows command line by the `CommandLineToArgvW` rules (quotes, and backslashes
/// that escape quotes).
fn split_command_line(line: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut current = String::new();
    let mut in_arg = false;
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let mut n = 1;
                while chars.peek() == Some(&'\\') {
                    chars.next();
                    n += 1;
                }
                in_arg = true;
                if chars.peek() == Some(&'"') {
                    current.push_str(&"\\".repeat(n / 2));
                    if n % 2 == 1 {
                        chars.next();
                        current.push('"');
                    }
                } else {
                    current.push_str(&"\\".repeat(n));
                }
            }
            '"' => {
                in_arg = true;
                if quoted && chars.peek() == Some(&'"') {
                    chars.next();
                    current.push('"');
                } else {
                    quoted = !quoted;
                }
            }
            c if c.is_whitespace() && !quoted => {
                if in_arg {
                    args.push(std::mem::take(&mut current));
                    in_arg = false;
                }
            }
            c => {
                in_arg = true;
                current.push(c);
            }
        }
    }
    if in_arg {
        args.push(current);
    }
    args
}

/// What a service-specific exit code means (see [`host`]).
pub fn exit_code_meaning(code: u32) -> &'static str {
    match code {
        0 => "stopped cleanly",
        host::EXIT_FAILED => "failed while running; the reason is in the log",
        host::EXIT_CONFIG => "the configuration could not be loaded; the reason is in the log",
        host::EXIT_LOGGING => {
            "the log folder could not be opened; the reason is in the Windows event log"
        }
        _ => "unknown",
    }
}

/// The `icacls` commands that give a service account what it needs: read the configuration
/// and certificates, write the data and log folders. Empty for LocalSystem.
pub fn access_hint(
    account: Option<&str>,
    config: &Path,
    data_dir: &Path,
    log_dir: &Path,
    certificates: &[PathBuf],
) -> String {
    let Some(account) = account else {
        return String::new();
    };
    let mut read: Vec<&Path> = Vec::new();
    if let Some(dir) = config.parent() {
        read.push(dir);
    }
    for c in certificates {
        if !read.iter().any(|r| c.starts_with(r)) {
            read.push(c);
        }
    }
    let mut write: Vec<&Path> = vec![data_dir];
    if !log_dir.starts_with(data_dir) {
        write.push(log_dir);
    }
    let mut out = format!(
        "  {account} needs to read the configuration and certificates and write the data and log\n  folders. If it cannot yet (run in an elevated prompt):\n"
    );
    for dir in read {
        out.push_str(&format!(
            "    icacls \"{}\" /grant \"{account}:(OI)(CI)RX\"\n",
            dir.display()
        ));
    }
    for dir in write {
        out.push_str(&format!(
            "    icacls \"{}\" /grant \"{account}:(OI)(CI)M\"\n",
            dir.display()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_are_checked() {
        for ok in ["promoter", "promoter-prod", "Promoter_2", "a.b", "x"] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
        let long = "a".repeat(65);
        for (bad, why) in [
            ("", "1 to 64"),
            (long.as_str(), "1 to 64"),
            ("-x", "must not start"),
            (".x", "must not start"),
            ("pro moter", "contains ' '"),
            ("a/b", "contains '/'"),
            ("a\\b", "contains '\\'"),
            ("é", "contains 'é'"),
        ] {
            let err = validate_name(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn windows_accounts() {
        let cases: &[(Option<&str>, Option<&str>, bool)] = &[
            (None, Some("NT SERVICE\\promoter"), true),
            (Some("LocalSystem"), None, true),
            (Some("NT AUTHORITY\\SYSTEM"), None, true),
            (
                Some("localservice"),
                Some("NT AUTHORITY\\LocalService"),
                true,
            ),
            (
                Some("NetworkService"),
                Some("NT AUTHORITY\\NetworkService"),
                true,
            ),
            (Some("NT SERVICE\\other"), Some("NT SERVICE\\other"), true),
            (Some("CORP\\qliksvc"), Some("CORP\\qliksvc"), false),
            (
                Some("qliksvc@corp.example"),
                Some("qliksvc@corp.example"),
                false,
            ),
            (Some("qliksvc"), Some(".\\qliksvc"), false),
            (Some("CORP\\gmsa$"), Some("CORP\\gmsa$"), false),
        ];
        for (given, want, builtin) in cases {
            let got = windows_account("promoter", *given);
            assert_eq!(got.as_deref(), *want, "{given:?}");
            assert_eq!(is_builtin_account(got.as_deref()), *builtin, "{given:?}");
        }
    }

    #[test]
    fn the_registered_command_line_gives_back_the_config() {
        let cases: &[(&str, Option<&str>)] = &[
            (
                r#""C:\Program Files\Promoter\promoter.exe" service run --config "C:\Program Files\Promoter\config\promoter.toml""#,
                Some(r"C:\Program Files\Promoter\config\promoter.toml"),
            ),
            (
                r"C:\Promoter\promoter.exe service run --config C:\Promoter\promoter.toml",
                Some(r"C:\Promoter\promoter.toml"),
            ),
            (
                r#"p.exe --config="D:\a b\c.toml" service run"#,
                Some(r"D:\a b\c.toml"),
            ),
            (r#"p.exe --config "C:\dir\\" x"#, Some(r"C:\dir\")),
            (r#"p.exe --config "a\"b""#, Some(r#"a"b"#)),
            ("p.exe service run", None),
            ("p.exe --config", None),
        ];
        for (line, want) in cases {
            assert_eq!(
                config_from_command_line(line),
                want.map(PathBuf::from),
                "{line}"
            );
        }
        let args = launch_arguments(Path::new("/etc/p.toml"));
        assert_eq!(args, ["service", "run", "--config", "/etc/p.toml"]);
    }

    #[test]
    fn access_hint_names_each_folder_once() {
        assert_eq!(
            access_hint(
                None,
                Path::new("/c/p.toml"),
                Path::new("/d"),
                Path::new("/d/logs"),
                &[]
            ),
            ""
        );
        let hint = access_hint(
            Some("NT SERVICE\\promoter"),
            Path::new("/p/config/promoter.toml"),
            Path::new("/p/data"),
            Path::new("/p/data/logs"),
            &[
                PathBuf::from("/p/config/certs/dev"),
                PathBuf::from("/p/certs/test"),
            ],
        );
        let lines: Vec<&str> = hint.lines().filter(|l| l.contains("icacls")).collect();
        assert_eq!(
            lines,
            [
                r#"    icacls "/p/config" /grant "NT SERVICE\promoter:(OI)(CI)RX""#,
                r#"    icacls "/p/certs/test" /grant "NT SERVICE\promoter:(OI)(CI)RX""#,
                r#"    icacls "/p/data" /grant "NT SERVICE\promoter:(OI)(CI)M""#,
            ]
        );
    }

    #[test]
    fn exit_codes_are_explained() {
        for code in [0, host::EXIT_FAILED, host::EXIT_CONFIG, host::EXIT_LOGGING] {
            assert_ne!(exit_code_meaning(code), "unknown", "{code}");
        }
        assert_eq!(exit_code_meaning(99), "unknown");
    }

    #[test]
    fn install_warns_about_shell_only_overrides() {
        assert_eq!(env_override_warning(["PATH".to_string()]), None);
        let w = env_override_warning([
            "PROMOTER__LISTENER__BIND".to_string(),
            "PROMOTER_CONFIG".to_string(),
            "HOME".to_string(),
        ])
        .unwrap();
        assert!(
            w.starts_with("PROMOTER__LISTENER__BIND set in this shell"),
            "{w}"
        );
        assert!(!w.contains("PROMOTER_CONFIG"), "{w}");
    }

    #[test]
    fn display_names() {
        assert_eq!(display_name("promoter"), "Promoter");
        assert_eq!(display_name("promoter-test"), "Promoter (promoter-test)");
    }

    #[test]
    fn absolute_config_does_not_keep_relative_paths() {
        let p = absolute_config(Path::new("config/promoter.toml")).unwrap();
        assert!(p.is_absolute());
        assert!(p.ends_with("config/promoter.toml"));
    }
}
