//! Logging: human-readable or JSON lines to the console, or to daily rotating files.
//!
//! A service has no console, so `promoter serve` under a service manager logs to a folder
//! (`logging.folder`, or `<data.dir>/logs`).

use std::path::Path;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

use crate::config::{LogFormat, LoggingSettings};

/// Keeps the background log writer alive; drop it last (it flushes the file).
pub struct LogGuard(#[allow(dead_code)] Option<tracing_appender::non_blocking::WorkerGuard>);

/// Installs the global subscriber. `folder` overrides `settings.folder` (a service always logs to
/// a folder). Quiet defaults for chatty libraries unless the filter names them.
pub fn init(settings: &LoggingSettings, folder: Option<&Path>) -> Result<LogGuard, String> {
    let mut filter = EnvFilter::try_new(&settings.level)
        .map_err(|e| format!("logging.level \"{}\": {e}", settings.level))?;
    for quiet in [
        "sqlx=warn",
        "hyper=warn",
        "rustls=warn",
        "aws=warn",
        "actix_server=warn",
        "tokio_cron_scheduler=warn",
    ] {
        if !settings
            .level
            .contains(quiet.split('=').next().unwrap_or_default())
        {
            filter = filter.add_directive(quiet.parse().map_err(|e| format!("{e}"))?);
        }
    }
    let folder = folder.or(settings.folder.as_deref());
    let (writer, guard, ansi) = match folder {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create the log folder {}: {e}", dir.display()))?;
            let appender = tracing_appender::rolling::Builder::new()
                .rotation(tracing_appender::rolling::Rotation::DAILY)
                .filename_prefix("promoter")
                .filename_suffix("log")
                .max_log_files(settings.max_files.max(1))
                .build(dir)
                .map_err(|e| format!("cannot open a log file in {}: {e}", dir.display()))?;
            let (nb, guard) = tracing_appender::non_blocking(appender);
            (BoxMakeWriter::new(nb), Some(guard), false)
        }
        None => (BoxMakeWriter::new(std::io::stderr), None, true),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi)
        .with_target(false);
    let result = match settings.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    // Already installed (tests, or a second call): keep the first.
    let _ = result;
    Ok(LogGuard(guard))
}

/// Console logging for commands that run before (or without) a valid configuration.
pub fn init_console(level: &str) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
