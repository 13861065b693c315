//! The servers' series: deliveries, RCPT refusals, delivery latency, socketmap lookups, open and
//! refused connections. Every label combination exists from the start, at zero.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use virtmail_crds::contract::SocketmapMap;

/// socketmap results, in label order.
pub const RESULTS: [&str; 4] = ["ok", "notfound", "temp", "perm"];
/// Upper bounds (seconds) of the delivery latency histogram.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Protocols whose open connections are counted.
#[derive(Debug, Clone, Copy)]
pub enum Proto {
    /// LMTP sessions.
    Lmtp = 0,
    /// socketmap clients.
    Socketmap = 1,
    /// HTTP requests.
    Http = 2,
}
const PROTOS: [&str; 3] = ["lmtp", "socketmap", "http"];

type Labels = Vec<(&'static str, &'static str)>;

/// The servers' metrics; clones count into the same series.
#[derive(Debug, Clone)]
pub struct Metrics {
    deliveries: Family<Labels, Counter>,
    rcpt_refused: Family<Labels, Counter>,
    latency: Histogram,
    lookups: Family<Labels, Counter>,
    open: Family<Labels, Gauge>,
    connections_refused: Counter,
    http_connections_refused: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let metrics = Metrics {
            deliveries: Family::default(),
            rcpt_refused: Family::default(),
            latency: Histogram::new(BUCKETS),
            lookups: Family::default(),
            open: Family::default(),
            connections_refused: Counter::default(),
            http_connections_refused: Counter::default(),
        };
        for class in [2, 4, 5] {
            metrics.deliveries.get_or_create_owned(&class_label(class));
        }
        for class in [4, 5] {
            metrics
                .rcpt_refused
                .get_or_create_owned(&class_label(class));
        }
        let maps = SocketmapMap::ALL.map(Some).into_iter().chain([None]);
        for map in maps {
            for result in 0..RESULTS.len() {
                metrics
                    .lookups
                    .get_or_create_owned(&lookup_labels(map, result));
            }
        }
        for proto in PROTOS {
            metrics.open.get_or_create_owned(&vec![("protocol", proto)]);
        }
        metrics
    }
}

fn class_label(class: u8) -> Labels {
    let class = match class {
        2 => "2xx",
        4 => "4xx",
        _ => "5xx",
    };
    vec![("class", class)]
}

/// A lookup's labels; a map the request named but the agent does not serve is `unknown`.
fn lookup_labels(map: Option<SocketmapMap>, result: usize) -> Labels {
    let map = map.map_or("unknown", SocketmapMap::name);
    vec![("map", map), ("result", RESULTS[result])]
}

impl Metrics {
    /// Register every series in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        for (name, help, family) in [
            (
                "virtmail_deliveries",
                "Per-recipient results after DATA, by reply class",
                &self.deliveries,
            ),
            (
                "virtmail_rcpt_refused",
                "RCPT commands refused before DATA, by reply class",
                &self.rcpt_refused,
            ),
            (
                "virtmail_lookups",
                "socketmap lookups by map and result",
                &self.lookups,
            ),
        ] {
            registry.register(name, help, family.clone());
        }
        for (name, help, counter) in [
            (
                "virtmail_connections_refused",
                "LMTP connections refused at the connection limit",
                &self.connections_refused,
            ),
            (
                "virtmail_http_connections_refused",
                "HTTP connections closed unanswered at the HTTP connection limit",
                &self.http_connections_refused,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "virtmail_delivery_duration_seconds",
            "Time from the final dot to each recipient's reply",
            self.latency.clone(),
        );
        registry.register(
            "virtmail_open_connections",
            "Connections being served, by protocol",
            self.open.clone(),
        );
    }

    /// Count a per-recipient delivery result (class 2, 4 or 5).
    pub fn delivery(&self, class: u8, duration: Duration) {
        if matches!(class, 2 | 4 | 5) {
            self.deliveries.get_or_create(&class_label(class)).inc();
        }
        self.latency.observe(duration.as_secs_f64());
    }

    /// Count a refused RCPT.
    pub fn rcpt_refused(&self, class: u8) {
        let class = if class == 4 { 4 } else { 5 };
        self.rcpt_refused.get_or_create(&class_label(class)).inc();
    }

    /// Count a socketmap lookup (`result` is an index into [`RESULTS`]).
    pub fn lookup(&self, map: Option<SocketmapMap>, result: usize) {
        self.lookups
            .get_or_create(&lookup_labels(map, result))
            .inc();
    }

    /// One more open connection; the guard counts it down again.
    pub fn open(&self, proto: Proto) -> OpenGuard {
        let gauge = self
            .open
            .get_or_create_owned(&vec![("protocol", PROTOS[proto as usize])]);
        gauge.inc();
        OpenGuard(gauge)
    }

    /// An HTTP connection closed at once for the HTTP connection limit.
    pub fn refused_http_connection(&self) {
        self.http_connections_refused.inc();
    }

    /// A connection refused for the connection limit.
    pub fn refused_connection(&self) {
        self.connections_refused.inc();
    }
}

/// Counts an open connection down when dropped.
#[derive(Debug)]
pub struct OpenGuard(Gauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reply_class_is_counted_under_its_own_label() {
        let metrics = Metrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.delivery(2, Duration::from_millis(1));
        metrics.delivery(4, Duration::from_millis(1));
        metrics.delivery(4, Duration::from_millis(1));
        metrics.delivery(5, Duration::from_millis(1));
        metrics.rcpt_refused(4);
        let text = crate::metrics::render(&registry);
        for series in [
            "virtmail_deliveries_total{class=\"2xx\"} 1\n",
            "virtmail_deliveries_total{class=\"4xx\"} 2\n",
            "virtmail_deliveries_total{class=\"5xx\"} 1\n",
            "virtmail_rcpt_refused_total{class=\"4xx\"} 1\n",
            "virtmail_rcpt_refused_total{class=\"5xx\"} 0\n",
            "virtmail_delivery_duration_seconds_count 4\n",
            "virtmail_lookups_total{map=\"unknown\",result=\"perm\"} 0\n",
        ] {
            assert!(text.contains(series), "missing {series}in:\n{text}");
        }
    }
}
