//! `promoter serve`: the notification listener, the subscription keeper with its catch-up
//! sweep, and the promotion workers; `promoter subscriptions` and `promoter inbox`.
//!
//! - [`delivery`]: pure validation of callback bodies;
//! - [`listener`]: actix-web server (callbacks, `/health`, `/ready`, `/metrics`);
//! - [`keeper`]: keeps the QRS subscriptions alive and sweeps for missed approvals;
//! - [`metrics`]: the Prometheus registry.

pub mod delivery;
pub mod keeper;
pub mod listener;
pub mod metrics;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::qrs::QrsClient;
use crate::store::{Store, StoreError};

use keeper::{Keeper, KeeperStatus, KeeperTriggers};
use listener::Intake;

/// Runs the listener, the subscription keeper and the workers until SIGTERM/Ctrl-C.
pub async fn run_cli(settings: Settings) -> anyhow::Result<()> {
    let _log = crate::telemetry::init(&settings.logging, None).map_err(anyhow::Error::msg)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signals(shutdown.clone()));
    run(settings, shutdown).await
}

/// Cancels `shutdown` on the first SIGTERM or Ctrl-C; a second one ends the process at once.
async fn stop_on_signals(shutdown: CancellationToken) {
    for n in 0..2 {
        wait_for_signal().await;
        if n == 0 {
            tracing::info!(
                "stopping: finishing deliveries in flight (signal again to stop at once)"
            );
            shutdown.cancel();
        } else {
            tracing::warn!("stopping at once");
            std::process::exit(130);
        }
    }
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!("cannot watch for SIGTERM ({e}); only Ctrl-C stops the service");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

/// Runs until `shutdown` is cancelled (used by the service wrappers and tests).
///
/// Start-up: open (and migrate) the store, waiting while the database is unreachable; bind the
/// listener; start the keeper (subscribe, sweep) and the workers. Stop: the listener finishes
/// the deliveries in flight, the keeper and the workers stop, the store is closed.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    crate::tls::init();
    let settings = Arc::new(settings);
    let Some(store) = open_store(&settings, &shutdown).await? else {
        return Ok(());
    };
    let secret = store.callback_secret().await?;
    let instance = store.installation_id().await?;
    let qrs = QrsClient::new(&settings.local, &settings.qrs).with_context(|| {
        format!(
            "cannot set up the connection to the local site \"{}\"",
            settings.local.alias
        )
    })?;
    let metrics = Arc::new(metrics::Metrics::new());
    let status = Arc::new(KeeperStatus::default());
    let interval = Duration::from_secs(settings.subscriptions.interval_seconds.max(1));
    let sweep_interval = Duration::from_secs(settings.subscriptions.sweep_interval_seconds.max(1));

    let listener = listener::start(
        &settings,
        Intake {
            store: store.clone(),
            metrics: metrics.clone(),
            secret: secret.clone(),
            max_body: settings.listener.max_body_bytes,
            keeper: status.clone(),
            qrs: qrs.reader(),
            interval,
        },
        shutdown.clone(),
    )?;
    let public_base = settings.listener.public_base_url(listener.bound);
    let scheme = if settings.listener.tls_enabled() {
        "https"
    } else {
        "http"
    };
    tracing::info!(
        "listener ready on {scheme}://{}; QRS calls {public_base}/notify/<secret>/app/..., database: {}",
        listener.bound,
        store.backend_name()
    );
    let mut server = tokio::spawn(listener.server);

    let triggers = Arc::new(KeeperTriggers::default());
    let keeper = Keeper::new(
        settings.clone(),
        qrs,
        store.clone(),
        metrics.clone(),
        status,
        keeper::callback_base(&public_base, &secret),
        instance,
    );
    let keeper = tokio::spawn(keeper.run(triggers.clone(), shutdown.clone()));
    let mut scheduler = schedule(&triggers, interval, sweep_interval)
        .await
        .context("cannot start the subscription schedule")?;

    let workers = tokio::spawn(start_workers(
        settings.clone(),
        store.clone(),
        shutdown.clone(),
    ));

    // Run until asked to stop, or until the listener fails.
    let outcome = tokio::select! {
        _ = shutdown.cancelled() => Ok(()),
        r = &mut server => {
            shutdown.cancel();
            match r {
                Ok(Ok(())) => Err(anyhow::anyhow!("the listener stopped unexpectedly")),
                Ok(Err(e)) => Err(anyhow::Error::new(e).context("the listener failed")),
                Err(e) => Err(anyhow::Error::new(e).context("the listener task failed")),
            }
        }
    };
    if let Err(e) = scheduler.shutdown().await {
        tracing::debug!("scheduler shutdown: {e}");
    }
    let grace = Duration::from_secs(30);
    if !server.is_finished() && tokio::time::timeout(grace, &mut server).await.is_err() {
        tracing::warn!("the listener did not stop within {} s", grace.as_secs());
    }
    if tokio::time::timeout(grace, keeper).await.is_err() {
        tracing::warn!(
            "the subscription keeper did not stop within {} s",
            grace.as_secs()
        );
    }
    match tokio::time::timeout(grace, workers).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::error!("the promotion workers failed: {e:#}"),
        Ok(Err(e)) => tracing::error!("the promotion workers task failed: {e}"),
        Err(_) => tracing::warn!(
            "the promotion workers did not stop within {} s; their jobs resume at the next start",
            grace.as_secs()
        ),
    }
    store.close().await;
    tracing::info!("stopped");
    outcome
}

/// The promotion workers.
async fn start_workers(
    settings: Arc<Settings>,
    store: Store,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    crate::engine::run_workers(settings, store, shutdown).await
}

/// Opens the store, waiting (with backoff, logged once) while the database is unreachable.
/// `None`: stopped before it became reachable.
async fn open_store(
    settings: &Settings,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Store>> {
    let mut failures = 0u32;
    loop {
        match Store::open(settings).await {
            Ok(s) => {
                if failures > 0 {
                    tracing::info!("the database is reachable again");
                }
                return Ok(Some(s));
            }
            Err(e @ StoreError::Unavailable(_)) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!("{e}; retrying with backoff until it answers");
                }
                let wait = keeper::backoff(failures, Duration::from_secs(30));
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Two repeated jobs: a subscription check every `interval`, a sweep every `sweep_interval`.
async fn schedule(
    triggers: &Arc<KeeperTriggers>,
    interval: Duration,
    sweep_interval: Duration,
) -> anyhow::Result<JobScheduler> {
    let scheduler = JobScheduler::new().await?;
    let t = triggers.clone();
    scheduler
        .add(Job::new_repeated_async(interval, move |_, _| {
            let t = t.clone();
            Box::pin(async move { t.check.notify_one() })
        })?)
        .await?;
    let t = triggers.clone();
    scheduler
        .add(Job::new_repeated_async(sweep_interval, move |_, _| {
            let t = t.clone();
            Box::pin(async move { t.sweep.notify_one() })
        })?)
        .await?;
    scheduler.start().await?;
    Ok(scheduler)
}

fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| {
            d.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_else(|| "-".into())
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.clone()));
        out.push('\n');
    }
    out
}

/// `promoter subscriptions`.
pub async fn cli_subscriptions(settings: &Settings) -> anyhow::Result<()> {
    let store = Store::open(settings).await?;
    let subs = store.subscriptions().await?;
    let last = store
        .meta_get(keeper::LAST_CHECK_KEY)
        .await?
        .and_then(|v| v.parse::<i64>().ok());
    if subs.is_empty() {
        println!(
            "No subscriptions are registered. `promoter serve` registers them on the local site \"{}\" ({}).",
            settings.local.alias, settings.local.host
        );
    } else {
        let rows: Vec<Vec<String>> = subs
            .iter()
            .map(|s| {
                vec![
                    s.site.clone(),
                    s.kind.clone(),
                    format!(
                        "{} {}{}",
                        s.object_type,
                        s.change_type,
                        s.property_name
                            .as_deref()
                            .map(|p| format!(" ({p})"))
                            .unwrap_or_default()
                    ),
                    s.handle.clone(),
                    time(s.created_at),
                    s.callback_url.clone(),
                ]
            })
            .collect();
        print!(
            "{}",
            table(
                &[
                    "SITE",
                    "KIND",
                    "CHANGES",
                    "HANDLE",
                    "REGISTERED",
                    "QRS CALLS"
                ],
                &rows
            )
        );
    }
    match last {
        Some(t) => println!("Last successful subscription check: {}", time(t)),
        None => println!("No successful subscription check yet."),
    }
    println!(
        "The callback URLs carry a secret: share them only with the Qlik Sense server. It is kept in the database ({}).",
        store.backend_name()
    );
    store.close().await;
    Ok(())
}

/// `promoter inbox`.
pub async fn cli_inbox(settings: &Settings, limit: u32) -> anyhow::Result<()> {
    let store = Store::open(settings).await?;
    let entries = store.inbox_recent(limit).await?;
    let counts = store.inbox_counts().await?;
    if entries.is_empty() {
        println!("The inbox is empty: no change has been received yet.");
    } else {
        let change = |c: i64| match c {
            0 => "sweep",
            1 => "add",
            2 => "update",
            3 => "delete",
            _ => "?",
        };
        let rows: Vec<Vec<String>> = entries
            .iter()
            .map(|e| {
                vec![
                    e.id.to_string(),
                    time(e.received_at),
                    e.source.clone(),
                    e.object_id.clone(),
                    change(e.change_type).to_string(),
                    e.changed_properties.join(","),
                    e.modified_date.clone().unwrap_or_default(),
                    e.duplicates.to_string(),
                    e.state.to_string(),
                    e.note.clone(),
                ]
            })
            .collect();
        print!(
            "{}",
            table(
                &[
                    "ID",
                    "RECEIVED",
                    "SOURCE",
                    "APP",
                    "CHANGE",
                    "PROPERTIES",
                    "MODIFIED",
                    "DUPS",
                    "STATE",
                    "NOTE"
                ],
                &rows
            )
        );
    }
    if !counts.is_empty() {
        println!(
            "Totals: {}",
            counts
                .iter()
                .map(|(s, n)| format!("{s} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    store.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["A", "LONGER"],
            &[
                vec!["wide cell".into(), "x".into()],
                vec!["b".into(), "".into()],
            ],
        );
        assert_eq!(t, "A          LONGER\nwide cell  x\nb\n");
    }
}
