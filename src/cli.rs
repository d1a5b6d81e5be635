//! Command-line interface. Each subcommand is a thin call into its module.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{DEFAULT_CONFIG_PATH, Settings};

#[derive(Debug, Parser)]
#[command(
    name = "promoter",
    version,
    about = "Promotes Qlik Sense apps between sites (DEV -> TEST -> PROD) with approvals"
)]
pub struct Cli {
    /// Configuration file. Relative paths inside it are resolved against its folder.
    #[arg(long, global = true, env = "PROMOTER_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a configuration file and exit non-zero if anything is wrong.
    Validate,
    /// Connect to every configured site (GET /qrs/about) and report version, latency and TLS.
    Check,
    /// Run the listener, the subscription keeper and the promotion workers until stopped.
    Serve,
    /// List the change subscriptions registered on the local site and where QRS will call.
    Subscriptions,
    /// Show recently received changes and their state.
    Inbox {
        /// How many entries to show.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show the plan for an app now, step by step, without writing anything anywhere.
    Plan {
        /// Source app id on the local site.
        #[arg(long)]
        app: String,
    },
    /// Run the promotion workflow for an app now, with progress bars for the transfers.
    Promote {
        /// Source app id on the local site.
        #[arg(long)]
        app: String,
    },
    /// List promotion jobs with their steps, attempts and errors.
    Jobs {
        /// Only jobs for this source app id.
        #[arg(long)]
        app: Option<String>,
    },
    /// Run a complete promotion on simulated sites, narrated, with embedded defaults.
    Demo {
        /// Leave the simulated sites and the listener running for exploring.
        #[arg(long)]
        keep_running: bool,
        /// Folder to work in (default: a new temporary folder).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Run simulated Qlik Sense sites (QRS over mutual TLS) for tests, the demo and exploring.
    Sim {
        /// Folder for the simulator's certificates, generated config and app files.
        #[arg(long)]
        dir: PathBuf,
        /// Comma-separated site aliases; the first is the local (source) site.
        #[arg(long, default_value = "dev,test,prod", value_delimiter = ',')]
        sites: Vec<String>,
        /// Fixture file (JSON) with streams, users, properties and apps to seed every site with.
        #[arg(long)]
        fixture: Option<PathBuf>,
    },
    /// Measure an app transfer (export, download, upload) between two simulated sites.
    Bench {
        /// Size of the simulated app, in MiB.
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
        /// Working folder (default: a temporary folder).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Also promote the app through the engine to this many target sites.
        #[arg(long, default_value_t = 0)]
        promote_sites: u32,
    },
    /// Send a test message with the configured mail settings and explain any failure.
    SendTestEmail {
        /// Recipient address.
        #[arg(long)]
        to: String,
    },
    /// List the stored versions of an app.
    Versions {
        /// Source app id.
        #[arg(long)]
        app: String,
    },
    /// Put a stored version of an app back on a site (recorded, resumable, audited).
    Restore {
        /// Source app id the version was stored for.
        #[arg(long)]
        app: String,
        /// Version id, as `promoter versions` prints it.
        #[arg(long)]
        version: String,
        /// Site alias to restore to.
        #[arg(long)]
        to: String,
        /// Stream name on that site.
        #[arg(long)]
        stream: String,
        /// Replace the app already promoted there (default).
        #[arg(long, conflicts_with = "duplicate")]
        overwrite: bool,
        /// Publish a new app instead of replacing.
        #[arg(long)]
        duplicate: bool,
    },
    /// Print the audit trail from the store.
    History {
        /// Only events for this source app id.
        #[arg(long)]
        app: Option<String>,
        /// How many events to show.
        #[arg(long, default_value_t = 200)]
        limit: u32,
    },
    /// Install, remove, start, stop or query Promoter as a Windows or systemd service.
    Service {
        #[command(subcommand)]
        action: crate::service::ServiceAction,
    },
}

/// Runs the parsed command and turns its outcome into an exit code.
pub fn main(cli: Cli) -> ExitCode {
    crate::tls::init();
    // Under the Windows Service Control Manager the process must hand control to the
    // service dispatcher before any runtime exists.
    if let Command::Service {
        action: crate::service::ServiceAction::Run,
    } = &cli.command
    {
        return crate::service::run_dispatcher(&cli.config);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn code(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = cli.config.as_path();
    match cli.command {
        Command::Validate => validate(config),
        Command::Check => {
            let settings = load(config)?;
            Ok(code(crate::check::run(&settings).await?))
        }
        Command::Serve => {
            let settings = load(config)?;
            crate::serve::run_cli(settings).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Subscriptions => {
            crate::serve::cli_subscriptions(&load(config)?).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Inbox { limit } => {
            crate::serve::cli_inbox(&load(config)?, limit).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan { app } => Ok(code(crate::engine::cli::plan(&load(config)?, &app).await?)),
        Command::Promote { app } => Ok(code(
            crate::engine::cli::promote(&load(config)?, &app).await?,
        )),
        Command::Jobs { app } => {
            crate::engine::cli::jobs(&load(config)?, app.as_deref()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { keep_running, dir } => Ok(code(
            crate::engine::demo::run(dir.as_deref(), keep_running).await?,
        )),
        Command::Sim {
            dir,
            sites,
            fixture,
        } => {
            crate::telemetry::init_console("info");
            crate::sim::run_cli(&dir, &sites, fixture.as_deref()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            size_mib,
            dir,
            promote_sites,
        } => {
            crate::bench::run(size_mib, dir.as_deref(), promote_sites).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::SendTestEmail { to } => Ok(code(
            crate::mail::send_test_email(&load(config)?, &to).await?,
        )),
        Command::Versions { app } => {
            crate::versioning::cli_versions(&load(config)?, &app).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore {
            app,
            version,
            to,
            stream,
            overwrite: _,
            duplicate,
        } => Ok(code(
            crate::engine::cli::restore(&load(config)?, &app, &version, &to, &stream, duplicate)
                .await?,
        )),
        Command::History { app, limit } => {
            crate::audit::cli_history(&load(config)?, app.as_deref(), limit).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Service { action } => Ok(code(crate::service::run_action(config, action).await?)),
    }
}

/// Loads the configuration and prints its start-up warnings.
pub fn load(path: &Path) -> anyhow::Result<Settings> {
    let settings = Settings::load(path)?;
    for w in settings.warnings() {
        eprintln!("warning: {w}");
    }
    Ok(settings)
}

fn validate(path: &Path) -> anyhow::Result<ExitCode> {
    match Settings::load(path) {
        Ok(settings) => {
            for w in settings.warnings() {
                println!("warning: {w}");
            }
            println!(
                "{} is valid: local site \"{}\", {} target site(s): {}",
                settings.config_path.display(),
                settings.local.alias,
                settings.remotes.len(),
                settings.remote_aliases_quoted()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(2))
        }
    }
}

/// Renders a plain-text table: a header row, then one row per item, columns padded to the widest
/// cell (capped at `max_width` characters for the padding; the last column is never padded).
pub fn render_table<const N: usize>(
    header: [&str; N],
    rows: &[[String; N]],
    max_width: usize,
) -> String {
    let mut widths = header.map(|h| h.chars().count());
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count().min(max_width));
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let last = cells.len().saturating_sub(1);
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i == last {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  "));
            }
        }
        out.push('\n');
    };
    line(&header.map(String::from));
    for r in rows {
        line(r);
    }
    out
}
