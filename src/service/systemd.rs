//! systemd: the unit file (from `config/promoter.service`) and `systemctl` for the service
//! actions on Linux.
//!
//! The unit runs `promoter serve`, which stops gracefully on SIGTERM (the unit's `KillSignal`).
//! Where systemd is not running (containers, WSL without systemd), the actions explain how to
//! run Promoter instead of failing obscurely.

use std::path::{Path, PathBuf};

/// The unit template, shipped as `config/promoter.service` (a valid unit with example paths).
pub const TEMPLATE: &str = include_str!("../../config/promoter.service");

/// What goes into a unit.
#[derive(Debug, Clone)]
pub struct UnitSpec<'a> {
    /// The service (and unit) name, for the header comment.
    pub name: &'a str,
    pub description: &'a str,
    /// Absolute path of the promoter executable.
    pub exe: &'a Path,
    /// Absolute path of the configuration file.
    pub config: &'a Path,
    /// `User=`; `None` runs as root (left commented out, with a suggestion).
    pub user: Option<&'a str>,
}

/// Where systemd keeps its state and units. `Default` is the real system.
#[derive(Debug, Clone)]
pub struct Systemd {
    /// Exists only while systemd is PID 1 (what `sd_booted()` checks).
    pub run_dir: PathBuf,
    /// Where administrator units go.
    pub unit_dir: PathBuf,
}

impl Default for Systemd {
    fn default() -> Self {
        Systemd {
            run_dir: PathBuf::from("/run/systemd/system"),
            unit_dir: PathBuf::from("/etc/systemd/system"),
        }
    }
}

impl Systemd {
    /// Whether systemd manages this machine.
    pub fn is_running(&self) -> bool {
        self.run_dir.is_dir()
    }

    /// The unit file for a service name.
    pub fn unit_path(&self, name: &str) -> PathBuf {
        self.unit_dir.join(format!("{name}.service"))
    }
}

/// Renders the unit: the template with `Description=`, `User=` and `ExecStart=` filled in.
pub fn render_unit(spec: &UnitSpec<'_>) -> Result<String, String> {
    if spec.description.contains(['\n', '\r']) {
        return Err("the description must be one line".into());
    }
    if let Some(user) = spec.user {
        validate_user(user)?;
    }
    let exec = format!(
        "{} serve --config {}",
        quote_arg(&path_str(spec.exe)?)?,
        quote_arg(&path_str(spec.config)?)?
    );
    let mut out = format!(
        "# Written by `promoter service install --name {}` (Promoter {}). Running the install\n# again rewrites it; `promoter service uninstall --name {}` removes it.\n",
        spec.name,
        env!("CARGO_PKG_VERSION"),
        spec.name
    );
    for line in TEMPLATE.lines() {
        if line.starts_with("Description=") {
            out.push_str(&format!(
                "Description={}",
                spec.description.replace('%', "%%")
            ));
        } else if line.starts_with("User=") {
            match spec.user {
                Some(user) => out.push_str(&format!("User={user}")),
                None => out.push_str(
                    "# No User=: runs as root. Create a dedicated user (see above) and install\n# again with --account promoter.\n# User=promoter",
                ),
            }
        } else if line.starts_with("ExecStart=") {
            out.push_str(&format!("ExecStart={exec}"));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    Ok(out)
}

fn path_str(path: &Path) -> Result<String, String> {
    path.to_str()
        .map(str::to_string)
        .ok_or_else(|| format!("{} is not valid UTF-8", path.display()))
}

/// A user name systemd accepts in `User=` (also `name@domain` from directory services, or a
/// numeric id).
fn validate_user(user: &str) -> Result<(), String> {
    let ok = !user.is_empty()
        && user.len() <= 64
        && !user.starts_with('-')
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@' | '$'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "--account \"{user}\" is not a user name systemd accepts (letters, digits, '_', '-', '.', '@')"
        ))
    }
}

/// Quotes one `ExecStart=` word: `%` (specifiers) and `$` (variables) are doubled; words with
/// anything but plain path characters are double-quoted with `\` and `"` escaped.
pub fn quote_arg(word: &str) -> Result<String, String> {
    if word.chars().any(char::is_control) {
        return Err(format!("{word:?} contains a control character"));
    }
    let doubled = word.replace('%', "%%").replace('$', "$$");
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_alphanumeric() || "/._-+:@=,%$".contains(c));
    if plain {
        Ok(doubled)
    } else {
        Ok(format!(
            "\"{}\"",
            doubled.replace('\\', "\\\\").replace('"', "\\\"")
        ))
    }
}

/// What to tell someone who asked for a service where systemd is not running.
pub fn not_running_message(name: &str, exe: &Path, config: &Path) -> String {
    format!(
        "systemd is not running on this machine (no /run/systemd/system; usual in containers and \
         WSL), so `promoter service` has nothing to talk to.\n\
         Run Promoter in the foreground under your supervisor, or as the container's command:\n\
         \x20   {exe} serve --config {config}\n\
         It stops cleanly on SIGTERM (docker stop, kubectl delete, supervisorctl stop).\n\
         On a machine with systemd, install the unit by hand:\n\
         \x20   {exe} service install --print --name {name} --config {config} > /etc/systemd/system/{name}.service\n\
         \x20   systemctl daemon-reload && systemctl enable --now {name}",
        exe = exe.display(),
        config = config.display(),
    )
}

#[cfg(not(windows))]
pub(crate) use actions::run_action;

#[cfg(not(windows))]
mod actions {
    use std::path::Path;
    use std::process::Command;
    use std::time::Duration;

    use anyhow::{Context, bail};

    use super::{Systemd, UnitSpec, not_running_message, render_unit};
    use crate::config::Settings;
    use crate::service::{DEFAULT_DESCRIPTION, ServiceAction, absolute_config};

    /// `promoter service <action>` on a systemd machine.
    pub(crate) fn run_action(config: &Path, action: ServiceAction) -> anyhow::Result<bool> {
        let systemd = Systemd::default();
        let exe = std::env::current_exe().context("cannot find the path of this executable")?;
        let config = absolute_config(config)?;
        let name = match &action {
            ServiceAction::Install(a) => a.name.clone(),
            ServiceAction::Uninstall(n)
            | ServiceAction::Start(n)
            | ServiceAction::Stop(n)
            | ServiceAction::Status(n) => n.name.clone(),
            ServiceAction::Run => bail!("`promoter service run` is for the Windows SCM"),
        };
        if let ServiceAction::Install(args) = &action {
            if args.password_env.is_some() {
                bail!(
                    "--password-env is for Windows accounts; systemd starts the service as --account without a password"
                );
            }
            let spec = UnitSpec {
                name: &name,
                description: args.description.as_deref().unwrap_or(DEFAULT_DESCRIPTION),
                exe: &exe,
                config: &config,
                user: args.account.as_deref(),
            };
            let unit = render_unit(&spec).map_err(anyhow::Error::msg)?;
            if args.print {
                if let Err(e) = Settings::load(&config) {
                    eprintln!("warning: {e}");
                }
                print!("{unit}");
                return Ok(true);
            }
            if !systemd.is_running() {
                eprintln!("error: {}", not_running_message(&name, &exe, &config));
                return Ok(false);
            }
            return install(&systemd, &name, &unit, &config, args.account.as_deref());
        }
        if !systemd.is_running() {
            eprintln!("error: {}", not_running_message(&name, &exe, &config));
            return Ok(false);
        }
        let unit = format!("{name}.service");
        match action {
            ServiceAction::Uninstall(_) => uninstall(&systemd, &name),
            ServiceAction::Start(_) => {
                if !systemctl(&["start", &unit])? {
                    return Ok(false);
                }
                // Type=simple: `start` returns once the process runs; a bad configuration makes it
                // exit right after, so look again a moment later.
                std::thread::sleep(Duration::from_secs(2));
                let active = quiet_systemctl(&["is-active", "--quiet", &unit]);
                if active {
                    println!("{name} is running (logs: journalctl -u {name} -f)");
                } else {
                    eprintln!(
                        "error: {name} stopped right after starting; the reason: journalctl -u {name} -n 50 --no-pager"
                    );
                }
                Ok(active)
            }
            ServiceAction::Stop(_) => {
                let ok = systemctl(&["stop", &unit])?;
                if ok {
                    println!("{name} stopped");
                }
                Ok(ok)
            }
            ServiceAction::Status(_) => systemctl(&["status", "--no-pager", &unit]),
            ServiceAction::Install(_) | ServiceAction::Run => Ok(false),
        }
    }

    fn install(
        systemd: &Systemd,
        name: &str,
        unit: &str,
        config: &Path,
        account: Option<&str>,
    ) -> anyhow::Result<bool> {
        Settings::load(config).map_err(|e| {
            anyhow::anyhow!(
                "{e}\nFix the configuration before installing the service (`promoter validate --config {}`)",
                config.display()
            )
        })?;
        if let Some(w) = crate::service::env_override_warning(std::env::vars().map(|(k, _)| k)) {
            eprintln!("warning: {w}");
        }
        if let Some(user) = account
            && !quiet_command("id", &["-u", user])
        {
            eprintln!(
                "warning: user \"{user}\" does not exist here; create it before starting: useradd --system --home-dir /var/lib/promoter --shell /usr/sbin/nologin {user}"
            );
        }
        let path = systemd.unit_path(name);
        let existed = path.exists();
        if let Err(e) = std::fs::write(&path, unit) {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                bail!(
                    "cannot write {}: permission denied; run the install as root (sudo)",
                    path.display()
                );
            }
            bail!("cannot write {}: {e}", path.display());
        }
        if !systemctl(&["daemon-reload"])? || !systemctl(&["enable", &format!("{name}.service")])? {
            return Ok(false);
        }
        println!(
            "{} {}: {} (enabled at boot)",
            if existed { "Updated" } else { "Installed" },
            name,
            path.display()
        );
        if account.is_none() {
            eprintln!(
                "warning: the service runs as root; a dedicated user is safer: useradd --system --home-dir /var/lib/promoter --shell /usr/sbin/nologin promoter, give it the data folder, then install again with --account promoter"
            );
        }
        println!(
            "Start it: promoter service start --name {name}   (logs: journalctl -u {name} -f)"
        );
        Ok(true)
    }

    fn uninstall(systemd: &Systemd, name: &str) -> anyhow::Result<bool> {
        let path = systemd.unit_path(name);
        if !path.exists() {
            eprintln!(
                "error: {name} is not installed ({} does not exist)",
                path.display()
            );
            return Ok(false);
        }
        // Stops it too; failure (never started, already disabled) does not matter here.
        let _ = systemctl(&["disable", "--now", &format!("{name}.service")]);
        std::fs::remove_file(&path)
            .with_context(|| format!("cannot remove {} (run as root)", path.display()))?;
        let ok = systemctl(&["daemon-reload"])?;
        println!("Removed {name} ({})", path.display());
        Ok(ok)
    }

    /// Runs `systemctl`, its output going to ours; whether it succeeded.
    fn systemctl(args: &[&str]) -> anyhow::Result<bool> {
        let status = Command::new("systemctl")
            .args(args)
            .status()
            .context("cannot run systemctl")?;
        if !status.success() {
            eprintln!("error: systemctl {} failed ({status})", args.join(" "));
        }
        Ok(status.success())
    }

    fn quiet_systemctl(args: &[&str]) -> bool {
        quiet_command("systemctl", args)
    }

    fn quiet_command(program: &str, args: &[&str]) -> bool {
        Command::new(program)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(exe: &'a Path, config: &'a Path, user: Option<&'a str>) -> UnitSpec<'a> {
        UnitSpec {
            name: "promoter",
            description: "Promoter 100% ready",
            exe,
            config,
            user,
        }
    }

    fn value<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .collect()
    }

    #[test]
    fn template_has_each_key_it_fills_once() {
        for key in [
            "Description",
            "User",
            "ExecStart",
            "KillSignal",
            "Restart",
            "TimeoutStopSec",
        ] {
            assert_eq!(value(TEMPLATE, key).len(), 1, "{key}");
        }
        assert_eq!(value(TEMPLATE, "KillSignal"), ["SIGTERM"]);
        assert_eq!(value(TEMPLATE, "Restart"), ["on-failure"]);
    }

    #[test]
    fn unit_has_absolute_paths_user_and_graceful_stop() {
        let unit = render_unit(&spec(
            Path::new("/opt/promoter/bin/promoter"),
            Path::new("/etc/promoter/promoter.toml"),
            Some("qlik"),
        ))
        .unwrap();
        assert_eq!(
            value(&unit, "ExecStart"),
            ["/opt/promoter/bin/promoter serve --config /etc/promoter/promoter.toml"]
        );
        assert_eq!(value(&unit, "User"), ["qlik"]);
        assert_eq!(value(&unit, "Description"), ["Promoter 100%% ready"]);
        assert_eq!(value(&unit, "KillSignal"), ["SIGTERM"]);
        assert_eq!(value(&unit, "Restart"), ["on-failure"]);
        assert_eq!(value(&unit, "WantedBy"), ["multi-user.target"]);
    }

    #[test]
    fn without_a_user_the_unit_runs_as_root_and_says_so() {
        let unit = render_unit(&spec(Path::new("/p"), Path::new("/c.toml"), None)).unwrap();
        assert!(value(&unit, "User").is_empty());
        assert!(unit.contains("# User=promoter"));
        assert!(unit.contains("runs as root"));
    }

    #[test]
    fn odd_paths_are_quoted() {
        let unit = render_unit(&spec(
            Path::new("/opt/my apps/promoter"),
            Path::new("/etc/p$x/50%/a\"b.toml"),
            None,
        ))
        .unwrap();
        assert_eq!(
            value(&unit, "ExecStart"),
            [r#""/opt/my apps/promoter" serve --config "/etc/p$$x/50%%/a\"b.toml""#]
        );
    }

    #[test]
    fn bad_inputs_are_refused() {
        let exe = Path::new("/p");
        let cfg = Path::new("/c");
        assert!(render_unit(&spec(exe, cfg, Some("root\nExecStartPre=/bin/sh"))).is_err());
        assert!(render_unit(&spec(exe, cfg, Some("a b"))).is_err());
        assert!(render_unit(&spec(exe, cfg, Some(""))).is_err());
        let mut s = spec(exe, cfg, None);
        s.description = "two\nlines";
        assert!(render_unit(&s).is_err());
        assert!(render_unit(&spec(Path::new("/a\nb"), cfg, None)).is_err());
    }

    #[test]
    fn quoting() {
        let cases = [
            ("/usr/bin/promoter", "/usr/bin/promoter"),
            ("a b", "\"a b\""),
            ("100%", "100%%"),
            ("$HOME", "$$HOME"),
            ("back\\slash", "\"back\\\\slash\""),
            ("", "\"\""),
        ];
        for (word, want) in cases {
            assert_eq!(quote_arg(word).unwrap(), want, "{word}");
        }
    }

    #[test]
    fn detects_systemd_by_its_runtime_folder() {
        let dir = tempfile::tempdir().unwrap();
        let sd = Systemd {
            run_dir: dir.path().join("system"),
            unit_dir: dir.path().join("units"),
        };
        assert!(!sd.is_running());
        std::fs::create_dir(dir.path().join("system")).unwrap();
        assert!(sd.is_running());
        assert_eq!(sd.unit_path("p2"), dir.path().join("units/p2.service"));
    }

    #[test]
    fn not_running_message_gives_the_manual_steps() {
        let m = not_running_message("p", Path::new("/bin/promoter"), Path::new("/etc/p.toml"));
        assert!(m.contains("systemd is not running"));
        assert!(m.contains("/bin/promoter serve --config /etc/p.toml"));
        assert!(m.contains("SIGTERM"));
        assert!(m.contains("> /etc/systemd/system/p.service"));
        assert!(m.contains("systemctl daemon-reload && systemctl enable --now p"));
    }
}
