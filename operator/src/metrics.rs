//! Prometheus metrics of the operator, encoded by `prometheus-client` in the OpenMetrics text
//! format (which Prometheus scrapes as it does its own text format).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use virtmail_crds::Compiled;

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (seconds) of the reconcile duration histogram.
const BUCKETS: [f64; 10] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CategoryLabel {
    category: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct MadeLabel {
    made: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ServerLabel {
    server: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ObjectsLabel {
    server: String,
    kind: &'static str,
}

/// Registers each metric (a clone sharing its value) under its name with its help text; a
/// macro because the metrics differ in type.
macro_rules! register {
    ($registry:ident, $($name:literal, $help:literal => $metric:expr;)*) => {
        $($registry.register($name, $help, $metric.clone());)*
    };
}

/// The operator's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    paced: Counter,
    written: Counter,
    failures: Family<CategoryLabel, Counter>,
    snapshots: Family<MadeLabel, Counter>,
    duration: Histogram,
    directory_bytes: Family<ServerLabel, Gauge>,
    objects: Family<ObjectsLabel, Gauge>,
    leader: Gauge,
    /// Not a metric: what /readyz answers.
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let metrics = Metrics {
            registry: Registry::default(),
            reconciles: Counter::default(),
            paced: Counter::default(),
            written: Counter::default(),
            failures: Family::default(),
            snapshots: Family::default(),
            duration: Histogram::new(BUCKETS),
            directory_bytes: Family::default(),
            objects: Family::default(),
            leader: Gauge::default(),
            ready: AtomicBool::new(false),
        };
        let build_info = Family::<VersionLabel, Gauge>::default();
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        // Counters are registered without `_total`, which the encoder appends; help texts
        // without their final period, which the registry appends.
        let mut registry = Registry::with_prefix("virtmail_operator");
        register!(registry,
            "build_info", "The operator's version (always 1)" => build_info;
            "reconciles", "Reconciles run" => metrics.reconciles;
            "paced_reconciles",
                "Reconciles put off because directory writes used up their budget" => metrics.paced;
            "directory_written_bytes",
                "Directory bytes (shards and heads) written to the apiserver" => metrics.written;
            "reconcile_failures", "Failed reconciles by error category" => metrics.failures;
            "snapshots",
                "Directories made, from scratch (full) or by Mailbox edits applied in place \
                 (in_place)" => metrics.snapshots;
            "reconcile_duration_seconds", "Time per reconcile" => metrics.duration;
            "directory_bytes", "Bytes of directory data per server" => metrics.directory_bytes;
            "objects", "Directory entries and diagnostics per server" => metrics.objects;
            "leader", "1 when this replica holds the lease" => metrics.leader;
        );
        Metrics {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    /// Count one reconcile and its duration; `failure` is the error category.
    pub fn observe_reconcile(&self, took: Duration, failure: Option<&'static str>) {
        self.reconciles.inc();
        if let Some(category) = failure {
            self.observe_status_failure(category);
        }
        self.duration.observe(took.as_secs_f64());
    }

    /// Count a directory made, by how (`full`, `in_place`).
    pub fn observe_snapshot(&self, made: &'static str) {
        self.snapshots.get_or_create(&MadeLabel { made }).inc();
    }

    /// Count a reconcile put off by the directory write budget.
    pub fn observe_paced(&self) {
        self.paced.inc();
    }

    /// Count directory bytes written to the apiserver.
    pub fn observe_written(&self, bytes: u64) {
        self.written.inc_by(bytes);
    }

    /// Count a failure outside a reconcile (the members' status task), by category.
    pub fn observe_status_failure(&self, category: &'static str) {
        self.failures
            .get_or_create(&CategoryLabel { category })
            .inc();
    }

    /// Record the published directory of a server.
    pub fn set_directory(&self, server: &str, bytes: u64, compiled: &Compiled) {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.directory_bytes
            .get_or_create(&ServerLabel {
                server: server.to_string(),
            })
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        for (kind, n) in [
            ("domains", compiled.directory.domains.len()),
            ("mailboxes", compiled.directory.mailboxes.len()),
            ("aliases", compiled.directory.aliases.len()),
            ("diagnostics", compiled.diagnostics.len()),
        ] {
            self.objects
                .get_or_create(&ObjectsLabel {
                    server: server.to_string(),
                    kind,
                })
                .set(gauge(n));
        }
    }

    /// Whether the replica serves: leader or standby (for /readyz).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether this replica holds the lease.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Ready to serve.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The metrics as text, of type [`CONTENT_TYPE`].
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_histogram_under_their_names() {
        let m = Metrics::default();
        m.observe_reconcile(Duration::from_millis(30), None);
        m.observe_reconcile(Duration::from_secs(2), Some("ApiError"));
        m.observe_paced();
        m.observe_written(1000);
        m.observe_written(24);
        m.set_leader(true);
        let text = m.render();
        let missing = [
            concat!(
                "virtmail_operator_build_info{version=\"",
                env!("CARGO_PKG_VERSION"),
                "\"} 1\n"
            ),
            "virtmail_operator_paced_reconciles_total 1\n",
            "virtmail_operator_directory_written_bytes_total 1024\n",
            "virtmail_operator_reconciles_total 2\n",
            "virtmail_operator_reconcile_failures_total{category=\"ApiError\"} 1\n",
            "virtmail_operator_reconcile_duration_seconds_bucket{le=\"0.05\"} 1\n",
            "virtmail_operator_reconcile_duration_seconds_bucket{le=\"+Inf\"} 2\n",
            "virtmail_operator_reconcile_duration_seconds_count 2\n",
            "virtmail_operator_leader 1\n",
            "# TYPE virtmail_operator_reconcile_duration_seconds histogram\n",
            "# TYPE virtmail_operator_leader gauge\n",
        ]
        .into_iter()
        .filter(|line| !text.contains(line))
        .collect::<Vec<_>>();
        assert!(missing.is_empty(), "{missing:?} not in:\n{text}");
    }

    #[test]
    fn a_server_directory_shows_per_server_and_kind() {
        let m = Metrics::default();
        let server = virtmail_crds::MailServer::new("mail", Default::default());
        let compiled = crate::fixtures::compiled_alone(&server);
        m.set_directory("ns/mail", 4096, &compiled);
        let text = m.render();
        assert!(
            text.contains("virtmail_operator_directory_bytes{server=\"ns/mail\"} 4096\n"),
            "{text}"
        );
        assert!(
            text.contains("virtmail_operator_objects{server=\"ns/mail\",kind=\"mailboxes\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE virtmail_operator_objects gauge\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
