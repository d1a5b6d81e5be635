//! Prometheus metrics of the intake (`GET /metrics`, OpenMetrics text format).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label: the callback endpoint (`update`, `reload`, `publish`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    /// `update`, `reload` or `publish`.
    pub endpoint: String,
}

/// Label: why a delivery was rejected.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why (e.g. `wrong_secret`, `malformed_json`, `too_large`).
    pub reason: String,
}

/// Label: how a sweep went (`ok`, `failed`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `ok` or `failed`.
    pub outcome: String,
}

/// Label: an inbox state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// An inbox state.
    pub state: String,
}

/// Every intake metric, registered once.
pub struct Metrics {
    registry: Registry,
    /// Deliveries acknowledged, by endpoint.
    pub deliveries: Family<EndpointLabel, Counter>,
    /// Change records in acknowledged deliveries, by endpoint.
    pub records: Family<EndpointLabel, Counter>,
    /// Records that repeated an earlier one (collapsed into its inbox entry).
    pub duplicates: Counter,
    /// Deliveries refused, by reason.
    pub rejected: Family<ReasonLabel, Counter>,
    /// Time from receiving a delivery to acknowledging it (durably stored).
    pub ack_seconds: Histogram,
    /// Inbox entries not yet evaluated (pending or processing), read at scrape time.
    pub inbox_depth: Gauge,
    /// Inbox entries by state, read at scrape time.
    pub inbox_entries: Family<StateLabel, Gauge>,
    /// Subscription checks (each renews the subscriptions on the local site).
    pub subscription_checks: Counter,
    /// Subscription checks that failed (QRS unreachable or refusing).
    pub subscription_failures: Counter,
    /// Gaps detected (QRS restart, lost subscription, outage, start).
    pub gaps: Counter,
    /// Catch-up sweeps, by outcome.
    pub sweeps: Family<OutcomeLabel, Counter>,
    /// Apps with promotion properties the sweeps found.
    pub sweep_apps: Counter,
    /// New inbox entries the sweeps created.
    pub sweep_new_entries: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric (prefix `promoter_`).
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("promoter");
        let m = Metrics {
            deliveries: Family::default(),
            records: Family::default(),
            duplicates: Counter::default(),
            rejected: Family::default(),
            // 0.25 ms .. ~4 s
            ack_seconds: Histogram::new(exponential_buckets(0.00025, 2.0, 15)),
            inbox_depth: Gauge::default(),
            inbox_entries: Family::default(),
            subscription_checks: Counter::default(),
            subscription_failures: Counter::default(),
            gaps: Counter::default(),
            sweeps: Family::default(),
            sweep_apps: Counter::default(),
            sweep_new_entries: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "deliveries_received",
            "Callback deliveries acknowledged, by endpoint",
            m.deliveries.clone(),
        );
        registry.register(
            "delivery_records",
            "Change records in acknowledged deliveries, by endpoint",
            m.records.clone(),
        );
        registry.register(
            "delivery_duplicates",
            "Change records identical to an earlier one (collapsed)",
            m.duplicates.clone(),
        );
        registry.register(
            "deliveries_rejected",
            "Callback requests refused, by reason",
            m.rejected.clone(),
        );
        registry.register(
            "delivery_ack_seconds",
            "Time to store and acknowledge a delivery",
            m.ack_seconds.clone(),
        );
        registry.register(
            "inbox_depth",
            "Inbox entries waiting for evaluation (pending or processing)",
            m.inbox_depth.clone(),
        );
        registry.register(
            "inbox_entries",
            "Inbox entries by state",
            m.inbox_entries.clone(),
        );
        registry.register(
            "subscription_checks",
            "Subscription checks of the local site",
            m.subscription_checks.clone(),
        );
        registry.register(
            "subscription_check_failures",
            "Subscription checks that failed",
            m.subscription_failures.clone(),
        );
        registry.register(
            "subscription_gaps",
            "Times events may have been missed (start, QRS restart, outage, lost subscription)",
            m.gaps.clone(),
        );
        registry.register("sweeps", "Catch-up sweeps, by outcome", m.sweeps.clone());
        registry.register(
            "sweep_apps_found",
            "Apps with promotion properties found by sweeps",
            m.sweep_apps.clone(),
        );
        registry.register(
            "sweep_new_entries",
            "Inbox entries created by sweeps",
            m.sweep_new_entries.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts a refused request.
    pub fn reject(&self, reason: &str) {
        self.rejected
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Counts a sweep.
    pub fn sweep(&self, outcome: &str) {
        self.sweeps
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Renders every metric in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_labels() {
        let m = Metrics::new();
        m.reject("wrong_secret");
        m.reject("wrong_secret");
        m.deliveries
            .get_or_create(&EndpointLabel {
                endpoint: "update".into(),
            })
            .inc();
        m.inbox_depth.set(7);
        m.ack_seconds.observe(0.002);
        let text = m.render();
        assert!(
            text.contains("promoter_deliveries_rejected_total{reason=\"wrong_secret\"} 2"),
            "{text}"
        );
        assert!(text.contains("promoter_deliveries_received_total{endpoint=\"update\"} 1"));
        assert!(text.contains("promoter_inbox_depth 7"));
        assert!(text.contains("promoter_delivery_ack_seconds_count 1"));
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
