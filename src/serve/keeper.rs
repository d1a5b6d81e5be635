//! The subscription keeper and the catch-up sweep.
//!
//! QRS forgets change subscriptions when it restarts, and it has no call to list them. So every
//! check (every `subscriptions.interval_seconds`, from a tokio-cron-scheduler job) the keeper:
//! 1. asks `GET /qrs/about` (a failure starts an outage: logged once, retried with backoff, and
//!    the subscriptions are renewed as soon as QRS answers again);
//! 2. renews each subscription: registers a new one, then deletes the one it replaces, so none
//!    accumulate and none is missing for a moment. QRS not knowing the old handle means it had
//!    been lost;
//! 3. sweeps the local site for apps whose approval property is set, and enqueues them into the
//!    inbox, whenever events may have been missed: at start, after an outage, after a restart
//!    (`/qrs/about` answering differently), after a lost subscription, and every
//!    `sweep_interval_seconds`.
//!
//! Handles are kept in the store. A graceful stop deletes them on QRS; at start the handles an
//! earlier run left (after a crash) are deleted.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;
use crate::config::Settings;
use crate::qrs::{ChangeType, Filter, NotificationSpec, QrsClient};
use crate::store::{NewInboxRecord, SWEEP_SOURCE, Store, SubscriptionRow};

/// `meta` key holding the time (unix ms) of the last successful check, for `promoter subscriptions`.
pub const LAST_CHECK_KEY: &str = "keeper.last_check_ms";

/// What the listener's `/ready` reads about the keeper.
#[derive(Debug, Default)]
pub struct KeeperStatus {
    /// Unix ms of the last successful check; 0 = never.
    last_success_ms: AtomicI64,
}

impl KeeperStatus {
    /// The last successful check, unix ms.
    pub fn last_success_ms(&self) -> Option<i64> {
        match self.last_success_ms.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }
}

/// Wakes the keeper: a check is due, or a sweep is due.
#[derive(Debug, Default)]
pub struct KeeperTriggers {
    /// A subscription check is due.
    pub check: Notify,
    /// A catch-up sweep is due.
    pub sweep: Notify,
}

/// One subscription the keeper maintains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// `update`, `reload` or `publish` (also the callback endpoint).
    pub kind: &'static str,
    /// What QRS is asked to notify.
    pub spec: NotificationSpec,
}

/// The subscriptions Promoter needs: every app update, and (as hints for the engine) app
/// reloads (`lastReloadTime`) and publishes (`publishTime`).
pub fn wanted() -> Vec<Wanted> {
    let app_update = || NotificationSpec::new("App").change_type(ChangeType::Update);
    vec![
        Wanted {
            kind: "update",
            spec: app_update(),
        },
        Wanted {
            kind: "reload",
            spec: app_update().property("lastReloadTime"),
        },
        Wanted {
            kind: "publish",
            spec: app_update().property("publishTime"),
        },
    ]
}

/// Delay before retry number `failures` (1, 2, ...): 1 s doubling, at most `cap`.
pub fn backoff(failures: u32, cap: Duration) -> Duration {
    let secs = 1u64 << failures.saturating_sub(1).min(16);
    Duration::from_secs(secs)
        .min(cap)
        .max(Duration::from_millis(200))
}

/// Why events may have been missed since the last check (pure).
pub fn gap_reason(
    first_check: bool,
    outage_ended: bool,
    previous_about: Option<&str>,
    about: &str,
    lost_handles: usize,
) -> Option<String> {
    if first_check {
        Some("start".into())
    } else if outage_ended {
        Some("the local site was unreachable".into())
    } else if previous_about.is_some_and(|p| p != about) {
        Some("the local site restarted (/qrs/about changed)".into())
    } else if lost_handles > 0 {
        Some(format!(
            "the local site had forgotten {lost_handles} subscription(s)"
        ))
    } else {
        None
    }
}

/// `<public base>/notify/<secret>/app`: the callback URLs are this plus `/update`, `/reload`,
/// `/publish`.
pub fn callback_base(public_base: &str, secret: &str) -> String {
    format!("{}/notify/{secret}/app", public_base.trim_end_matches('/'))
}

/// The keeper's state between checks.
pub struct Keeper {
    settings: Arc<Settings>,
    qrs: QrsClient,
    store: Store,
    metrics: Arc<Metrics>,
    status: Arc<KeeperStatus>,
    /// `<public base>/notify/<secret>/app` (a secret: never logged).
    callback_base: String,
    instance: String,
    checks: u64,
    previous_about: Option<String>,
    outage: Option<Outage>,
    sweep_due: bool,
}

struct Outage {
    since: Instant,
    failures: u32,
}

impl Keeper {
    /// A keeper for the local site. `callback_base` is [`callback_base`]'s answer: where QRS
    /// reaches the listener.
    pub fn new(
        settings: Arc<Settings>,
        qrs: QrsClient,
        store: Store,
        metrics: Arc<Metrics>,
        status: Arc<KeeperStatus>,
        callback_base: String,
        instance: String,
    ) -> Keeper {
        Keeper {
            settings,
            qrs,
            store,
            metrics,
            status,
            callback_base,
            instance,
            checks: 0,
            previous_about: None,
            outage: None,
            sweep_due: true,
        }
    }

    fn interval(&self) -> Duration {
        Duration::from_secs(self.settings.subscriptions.interval_seconds.max(1))
    }

    /// Runs checks and sweeps until `shutdown`: one at once, then whenever `triggers` fire,
    /// and after failures with backoff.
    pub async fn run(mut self, triggers: Arc<KeeperTriggers>, shutdown: CancellationToken) {
        let mut check_due = true;
        while !shutdown.is_cancelled() {
            let ok = if check_due {
                self.check().await
            } else {
                self.sweep_if_due().await
            };
            let retry_in = (!ok).then(|| {
                let failures = self.outage.as_ref().map_or(1, |o| o.failures);
                backoff(failures, self.interval().min(Duration::from_secs(30)))
            });
            let retry = async {
                match retry_in {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = triggers.check.notified() => check_due = true,
                _ = triggers.sweep.notified() => {
                    self.sweep_due = true;
                    check_due = false;
                }
                _ = retry => check_due = true,
            }
        }
        // QRS would otherwise keep calling a listener that is gone. Handles that cannot be
        // deleted now stay in the store and are deleted at the next start.
        if tokio::time::timeout(Duration::from_secs(5), self.unsubscribe_all())
            .await
            .is_err()
        {
            tracing::debug!("unsubscribing at shutdown took too long; the next start cleans up");
        }
        tracing::debug!("subscription keeper stopped");
    }

    /// Deletes this site's subscriptions (at shutdown).
    async fn unsubscribe_all(&self) {
        let site = self.qrs.alias();
        let Ok(stored) = self.store.subscriptions().await else {
            return;
        };
        for s in stored.iter().filter(|s| s.site.eq_ignore_ascii_case(site)) {
            match self.qrs.unsubscribe(&s.handle).await {
                Ok(_) => {
                    let _ = self.store.subscription_delete(&s.handle).await;
                }
                Err(e) => {
                    tracing::debug!("cannot delete subscription {} at shutdown: {e}", s.handle);
                }
            }
        }
    }

    /// One check: about, renew, sweep when events may have been missed. Returns whether it
    /// fully succeeded.
    pub async fn check(&mut self) -> bool {
        self.metrics.subscription_checks.inc();
        let first = self.checks == 0;
        self.checks += 1;
        let about = match self.qrs.get_json::<Value>(&["qrs", "about"], &[]).await {
            Ok(v) => v.to_string(),
            Err(e) => {
                self.failed(&format!("GET /qrs/about failed: {e}"));
                return false;
            }
        };
        let lost = match self.renew().await {
            Ok(lost) => lost,
            Err(e) => {
                self.failed(&e);
                return false;
            }
        };
        let outage_ended = match self.outage.take() {
            Some(o) => {
                tracing::info!(
                    site = %self.qrs.alias(),
                    "the local site answers again after {} s; subscriptions renewed",
                    o.since.elapsed().as_secs()
                );
                true
            }
            None => false,
        };
        if let Some(reason) = gap_reason(
            first,
            outage_ended,
            self.previous_about.as_deref(),
            &about,
            lost,
        ) {
            self.metrics.gaps.inc();
            self.sweep_due = true;
            if first {
                tracing::info!(
                    site = %self.qrs.alias(),
                    "subscribed to app changes; sweeping for approvals made while nobody listened"
                );
            } else {
                tracing::warn!(
                    site = %self.qrs.alias(),
                    "{reason}: subscriptions renewed; sweeping for approvals that may have been missed"
                );
            }
        }
        self.previous_about = Some(about);
        let now = crate::store::now_ms();
        self.status.last_success_ms.store(now, Ordering::Relaxed);
        if let Err(e) = self.store.meta_put(LAST_CHECK_KEY, &now.to_string()).await {
            tracing::warn!("cannot record the subscription check time: {e}");
        }
        self.sweep_if_due().await
    }

    fn failed(&mut self, why: &str) {
        self.metrics.subscription_failures.inc();
        match &mut self.outage {
            Some(o) => {
                o.failures += 1;
                tracing::debug!(
                    "subscription check failed again ({} failures): {why}",
                    o.failures
                );
            }
            None => {
                tracing::warn!(
                    site = %self.qrs.alias(),
                    "subscription check failed: {why}. Changes on the local site are not being received; retrying with backoff, and sweeping for missed approvals once it works again"
                );
                self.outage = Some(Outage {
                    since: Instant::now(),
                    failures: 1,
                });
            }
        }
    }

    /// Registers each wanted subscription anew and deletes the handles it replaces (also those
    /// of earlier runs and of sites no longer local). Returns how many old handles QRS no longer
    /// knew.
    async fn renew(&mut self) -> Result<usize, String> {
        let site = self.qrs.alias().to_string();
        let stored = self
            .store
            .subscriptions()
            .await
            .map_err(|e| format!("cannot read the stored subscriptions: {e}"))?;
        for old in stored
            .iter()
            .filter(|s| !s.site.eq_ignore_ascii_case(&site))
        {
            tracing::info!(
                "forgetting subscription {} of site \"{}\", which is no longer the local site",
                old.handle,
                old.site
            );
            self.store
                .subscription_delete(&old.handle)
                .await
                .map_err(|e| e.to_string())?;
        }
        let mut lost = 0;
        for w in wanted() {
            let url = format!("{}/{}", self.callback_base, w.kind);
            let handle = self
                .qrs
                .subscribe(&w.spec, &url)
                .await
                .map_err(|e| format!("cannot subscribe to app changes ({}): {e}", w.kind))?;
            let now = crate::store::now_ms();
            self.store
                .subscription_save(&SubscriptionRow {
                    handle: handle.clone(),
                    site: site.clone(),
                    kind: w.kind.to_string(),
                    object_type: w.spec.object_type.clone(),
                    change_type: w
                        .spec
                        .change_type
                        .map_or_else(|| "All".to_string(), |c| c.name().to_string()),
                    property_name: w.spec.property_name.clone(),
                    callback_url: url,
                    instance: self.instance.clone(),
                    created_at: now,
                    checked_at: now,
                })
                .await
                .map_err(|e| format!("cannot store subscription {handle}: {e}"))?;
            let replaced = stored
                .iter()
                .filter(|s| s.site.eq_ignore_ascii_case(&site) && s.kind == w.kind);
            for old in replaced {
                match self.qrs.unsubscribe(&old.handle).await {
                    Ok(true) => {}
                    Ok(false) => lost += 1,
                    Err(e) if e.retryable() => {
                        return Err(format!(
                            "cannot delete the replaced subscription {}: {e}",
                            old.handle
                        ));
                    }
                    Err(e) => tracing::warn!(
                        "QRS refused to delete subscription {} ({e}); forgetting it",
                        old.handle
                    ),
                }
                self.store
                    .subscription_delete(&old.handle)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(lost)
    }

    async fn sweep_if_due(&mut self) -> bool {
        if !self.sweep_due || self.outage.is_some() {
            return self.outage.is_none();
        }
        match self.sweep().await {
            Ok((found, new)) => {
                self.sweep_due = false;
                self.metrics.sweep("ok");
                self.metrics.sweep_apps.inc_by(found);
                self.metrics.sweep_new_entries.inc_by(new);
                if new > 0 {
                    tracing::info!(
                        "sweep: {found} app(s) with {} set, {new} new inbox entr{}",
                        self.settings.properties.approval,
                        if new == 1 { "y" } else { "ies" }
                    );
                } else {
                    tracing::debug!("sweep: {found} app(s), nothing new");
                }
                true
            }
            Err(e) => {
                self.metrics.sweep("failed");
                self.failed(&format!("sweep failed: {e}"));
                false
            }
        }
    }

    /// Finds local apps whose approval property has a value and enqueues them (as `sweep`
    /// entries; an app whose modifiedDate was already swept is a duplicate, not a new entry).
    pub async fn sweep(&self) -> Result<(u64, u64), String> {
        let approval = &self.settings.properties.approval;
        let filter = Filter::eq("customProperties.definition.name", approval);
        let apps = self
            .qrs
            .apps(Some(&filter))
            .await
            .map_err(|e| e.to_string())?;
        let records: Vec<NewInboxRecord> = apps
            .iter()
            .filter(|a| {
                a.property_values(approval)
                    .iter()
                    .any(|v| !v.trim().is_empty())
            })
            .map(|a| NewInboxRecord {
                source: SWEEP_SOURCE.into(),
                object_type: "App".into(),
                object_id: a.id.to_ascii_lowercase(),
                change_type: 0,
                changed_properties: Vec::new(),
                modified_date: Some(a.modified_date.clone()),
                payload: json!({
                    "sweep": true,
                    "name": a.name,
                    "modifiedDate": a.modified_date,
                    "modifiedByUserName": a.modified_by_user_name,
                    approval.as_str(): a.property_values(approval),
                }),
            })
            .collect();
        if records.is_empty() {
            return Ok((0, 0));
        }
        let outcome = self
            .store
            .inbox_insert(&records)
            .await
            .map_err(|e| e.to_string())?;
        Ok((records.len() as u64, u64::from(outcome.new)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let cap = Duration::from_secs(30);
        let got: Vec<u64> = (1..=7).map(|n| backoff(n, cap).as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(backoff(1000, cap), cap);
        assert_eq!(backoff(3, Duration::from_secs(1)), Duration::from_secs(1));
    }

    #[test]
    fn gaps_are_named() {
        let cases = [
            ((true, false, None, "a", 0), Some("start")),
            ((false, true, Some("a"), "a", 0), Some("unreachable")),
            ((false, false, Some("a"), "b", 0), Some("restarted")),
            ((false, false, Some("a"), "a", 2), Some("forgotten 2")),
            ((false, false, Some("a"), "a", 0), None),
        ];
        for ((first, ended, prev, about, lost), want) in cases {
            let got = gap_reason(first, ended, prev, about, lost);
            match want {
                Some(w) => assert!(got.as_deref().is_some_and(|g| g.contains(w)), "{got:?}"),
                None => assert_eq!(got, None),
            }
        }
    }

    #[test]
    fn three_app_update_subscriptions() {
        let w = wanted();
        assert_eq!(
            w.iter().map(|w| w.kind).collect::<Vec<_>>(),
            super::super::delivery::ENDPOINTS
        );
        assert!(
            w.iter()
                .all(|w| w.spec.object_type == "App"
                    && w.spec.change_type == Some(ChangeType::Update))
        );
        assert_eq!(w[1].spec.property_name.as_deref(), Some("lastReloadTime"));
        assert_eq!(w[2].spec.property_name.as_deref(), Some("publishTime"));
    }
}
