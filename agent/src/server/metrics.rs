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

/// Reply classes of deliveries, in label order.
const CLASSES: [&str; 3] = ["2xx", "4xx", "5xx"];

/// The servers' metrics; clones count into the same series. Every series is made once, here:
/// counting on the LMTP and socketmap paths is one atomic add, with no label lookup.
#[derive(Debug, Clone)]
pub struct Metrics {
    deliveries: Family<Labels, Counter>,
    rcpt_refused: Family<Labels, Counter>,
    latency: Histogram,
    lookups: Family<Labels, Counter>,
    open: Family<Labels, Gauge>,
    connections_refused: Counter,
    http_connections_refused: Counter,
    /// `deliveries` by class, in [`CLASSES`] order.
    delivery_series: [Counter; 3],
    /// `rcpt_refused` for 4xx and 5xx.
    rcpt_series: [Counter; 2],
    /// `lookups` by map (the served maps, then `unknown`) and result.
    lookup_series: [[Counter; 4]; 4],
    /// `open` by protocol, in [`Proto`] order.
    open_series: [Gauge; 3],
}

impl Default for Metrics {
    fn default() -> Self {
        let deliveries = Family::<Labels, Counter>::default();
        let rcpt_refused = Family::<Labels, Counter>::default();
        let lookups = Family::<Labels, Counter>::default();
        let open = Family::<Labels, Gauge>::default();
        let class = |family: &Family<Labels, Counter>, class: &'static str| {
            family.get_or_create_owned(&vec![("class", class)])
        };
        let maps = [
            Some(SocketmapMap::Domain),
            Some(SocketmapMap::Mailbox),
            Some(SocketmapMap::Alias),
            None,
        ];
        Metrics {
            delivery_series: CLASSES.map(|c| class(&deliveries, c)),
            rcpt_series: ["4xx", "5xx"].map(|c| class(&rcpt_refused, c)),
            lookup_series: maps.map(|map| {
                let map = map.map_or("unknown", SocketmapMap::name);
                RESULTS.map(|result| {
                    lookups.get_or_create_owned(&vec![("map", map), ("result", result)])
                })
            }),
            open_series: PROTOS.map(|proto| open.get_or_create_owned(&vec![("protocol", proto)])),
            deliveries,
            rcpt_refused,
            latency: Histogram::new(BUCKETS),
            lookups,
            open,
            connections_refused: Counter::default(),
            http_connections_refused: Counter::default(),
        }
    }
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
        let index = match class {
            2 => Some(0),
            4 => Some(1),
            5 => Some(2),
            _ => None,
        };
        if let Some(index) = index {
            self.delivery_series[index].inc();
        }
        self.latency.observe(duration.as_secs_f64());
    }

    /// Count a refused RCPT.
    pub fn rcpt_refused(&self, class: u8) {
        self.rcpt_series[usize::from(class != 4)].inc();
    }

    /// Count a socketmap lookup (`result` is an index into [`RESULTS`]).
    pub fn lookup(&self, map: Option<SocketmapMap>, result: usize) {
        let map = match map {
            Some(SocketmapMap::Domain) => 0,
            Some(SocketmapMap::Mailbox) => 1,
            Some(SocketmapMap::Alias) => 2,
            None => 3,
        };
        self.lookup_series[map][result].inc();
    }

    /// One more open connection; the guard counts it down again.
    pub fn open(&self, proto: Proto) -> OpenGuard {
        let gauge = self.open_series[proto as usize].clone();
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
    fn each_result_is_counted_under_its_own_labels() {
        let metrics = Metrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.delivery(2, Duration::from_millis(1));
        metrics.delivery(4, Duration::from_millis(1));
        metrics.delivery(4, Duration::from_millis(1));
        metrics.delivery(5, Duration::from_millis(1));
        metrics.rcpt_refused(4);
        metrics.lookup(Some(SocketmapMap::Alias), 0);
        metrics.lookup(None, 3);
        metrics.lookup(None, 3);
        let _lmtp = metrics.open(Proto::Lmtp);
        let text = crate::metrics::render(&registry);
        for series in [
            "virtmail_deliveries_total{class=\"2xx\"} 1\n",
            "virtmail_deliveries_total{class=\"4xx\"} 2\n",
            "virtmail_deliveries_total{class=\"5xx\"} 1\n",
            "virtmail_rcpt_refused_total{class=\"4xx\"} 1\n",
            "virtmail_rcpt_refused_total{class=\"5xx\"} 0\n",
            "virtmail_delivery_duration_seconds_count 4\n",
            "virtmail_lookups_total{map=\"alias\",result=\"ok\"} 1\n",
            "virtmail_lookups_total{map=\"domain\",result=\"ok\"} 0\n",
            "virtmail_lookups_total{map=\"unknown\",result=\"perm\"} 2\n",
            "virtmail_open_connections{protocol=\"lmtp\"} 1\n",
            "virtmail_open_connections{protocol=\"http\"} 0\n",
        ] {
            assert!(text.contains(series), "missing {series}in:\n{text}");
        }
    }
}
