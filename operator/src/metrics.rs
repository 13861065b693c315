//! Prometheus metrics of the operator, in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use virtmail_crds::Compiled;

/// Upper bounds (seconds) of the reconcile duration histogram.
const BUCKETS: [f64; 10] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Debug, Default, Clone)]
struct ServerFigures {
    directory_bytes: u64,
    domains: usize,
    mailboxes: usize,
    aliases: usize,
    diagnostics: usize,
}

/// The operator's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    reconciles: AtomicU64,
    paced: AtomicU64,
    written: AtomicU64,
    failures: Mutex<BTreeMap<&'static str, u64>>,
    duration: Mutex<Histogram>,
    servers: Mutex<BTreeMap<String, ServerFigures>>,
    ready: AtomicBool,
    leader: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere must not take metrics down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Metrics {
    /// Count one reconcile and its duration; `failure` is the error category.
    pub fn observe_reconcile(&self, took: Duration, failure: Option<&'static str>) {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        if let Some(category) = failure {
            *lock(&self.failures).entry(category).or_default() += 1;
        }
        let seconds = took.as_secs_f64();
        let mut h = lock(&self.duration);
        h.count += 1;
        h.sum += seconds;
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                h.counts[i] += 1;
            }
        }
    }

    /// Count a reconcile put off by the directory write budget.
    pub fn observe_paced(&self) {
        self.paced.fetch_add(1, Ordering::Relaxed);
    }

    /// Count directory bytes written to the apiserver.
    pub fn observe_written(&self, bytes: u64) {
        self.written.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Count a failure outside a reconcile (the members' status task), by category.
    pub fn observe_status_failure(&self, category: &'static str) {
        *lock(&self.failures).entry(category).or_default() += 1;
    }

    /// Record the published directory of a server.
    pub fn set_directory(&self, server: &str, bytes: u64, compiled: &Compiled) {
        lock(&self.servers).insert(
            server.to_string(),
            ServerFigures {
                directory_bytes: bytes,
                domains: compiled.directory.domains.len(),
                mailboxes: compiled.directory.mailboxes.len(),
                aliases: compiled.directory.aliases.len(),
                diagnostics: compiled.diagnostics.len(),
            },
        );
    }

    /// Whether the replica serves: leader or standby (for /readyz).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether this replica holds the lease.
    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::Relaxed);
    }

    /// Ready to serve.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP virtmail_operator_build_info The operator's version (always 1).\n# TYPE virtmail_operator_build_info gauge\nvirtmail_operator_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        for (name, help, value) in [
            (
                "virtmail_operator_reconciles_total",
                "Reconciles run.",
                &self.reconciles,
            ),
            (
                "virtmail_operator_paced_reconciles_total",
                "Reconciles put off because directory writes used up their budget.",
                &self.paced,
            ),
            (
                "virtmail_operator_directory_written_bytes_total",
                "Directory bytes (shards and heads) written to the apiserver.",
                &self.written,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        let _ = writeln!(
            out,
            "# HELP virtmail_operator_reconcile_failures_total Failed reconciles by error category."
        );
        let _ = writeln!(
            out,
            "# TYPE virtmail_operator_reconcile_failures_total counter"
        );
        for (category, count) in lock(&self.failures).iter() {
            let _ = writeln!(
                out,
                "virtmail_operator_reconcile_failures_total{{category=\"{category}\"}} {count}"
            );
        }
        let h = lock(&self.duration);
        let _ = writeln!(
            out,
            "# HELP virtmail_operator_reconcile_duration_seconds Time per reconcile."
        );
        let _ = writeln!(
            out,
            "# TYPE virtmail_operator_reconcile_duration_seconds histogram"
        );
        for (bound, count) in BUCKETS.iter().zip(h.counts) {
            let _ = writeln!(
                out,
                "virtmail_operator_reconcile_duration_seconds_bucket{{le=\"{bound}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "virtmail_operator_reconcile_duration_seconds_bucket{{le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(
            out,
            "virtmail_operator_reconcile_duration_seconds_sum {}",
            h.sum
        );
        let _ = writeln!(
            out,
            "virtmail_operator_reconcile_duration_seconds_count {}",
            h.count
        );
        drop(h);
        let servers = lock(&self.servers);
        let _ = writeln!(
            out,
            "# HELP virtmail_operator_directory_bytes Bytes of directory data per server."
        );
        let _ = writeln!(out, "# TYPE virtmail_operator_directory_bytes gauge");
        for (server, f) in servers.iter() {
            let _ = writeln!(
                out,
                "virtmail_operator_directory_bytes{{server=\"{server}\"}} {}",
                f.directory_bytes
            );
        }
        let _ = writeln!(
            out,
            "# HELP virtmail_operator_objects Directory entries and diagnostics per server."
        );
        let _ = writeln!(out, "# TYPE virtmail_operator_objects gauge");
        for (server, f) in servers.iter() {
            for (kind, n) in [
                ("domains", f.domains),
                ("mailboxes", f.mailboxes),
                ("aliases", f.aliases),
                ("diagnostics", f.diagnostics),
            ] {
                let _ = writeln!(
                    out,
                    "virtmail_operator_objects{{server=\"{server}\",kind=\"{kind}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP virtmail_operator_leader 1 when this replica holds the lease."
        );
        let _ = writeln!(out, "# TYPE virtmail_operator_leader gauge");
        let _ = writeln!(
            out,
            "virtmail_operator_leader {}",
            u8::from(self.leader.load(Ordering::Relaxed))
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histogram() {
        let m = Metrics::default();
        m.observe_reconcile(Duration::from_millis(30), None);
        m.observe_reconcile(Duration::from_secs(2), Some("ApiError"));
        m.observe_paced();
        m.observe_written(1000);
        m.observe_written(24);
        let text = m.render();
        assert!(
            text.contains("virtmail_operator_paced_reconciles_total 1\n"),
            "{text}"
        );
        assert!(
            text.contains("virtmail_operator_directory_written_bytes_total 1024\n"),
            "{text}"
        );
        assert!(
            text.contains("virtmail_operator_reconciles_total 2\n"),
            "{text}"
        );
        assert!(
            text.contains("virtmail_operator_reconcile_failures_total{category=\"ApiError\"} 1\n")
        );
        assert!(
            text.contains("virtmail_operator_reconcile_duration_seconds_bucket{le=\"0.05\"} 1\n")
        );
        assert!(
            text.contains("virtmail_operator_reconcile_duration_seconds_bucket{le=\"+Inf\"} 2\n")
        );
    }
}
