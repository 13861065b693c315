//! Counters and the Prometheus text rendering (hand-formatted: a handful of fixed series does not
//! need a metrics library).

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::reload::Holder;

/// socketmap maps, in label order.
pub const MAPS: [&str; 4] = ["domain", "mailbox", "alias", "unknown"];
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

/// Every metric the agent exports.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Per-recipient delivery results after DATA, by reply class (2, 4, 5).
    deliveries: [AtomicU64; 3],
    /// RCPT refusals by class (4, 5).
    rcpt_refused: [AtomicU64; 2],
    latency_buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    lookups: [[AtomicU64; RESULTS.len()]; MAPS.len()],
    open: [AtomicI64; 3],
    connections_refused: AtomicU64,
    http_connections_refused: AtomicU64,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    last_reload_diagnostics: AtomicU64,
    last_reload_error: Mutex<Option<String>>,
    /// The Postfix container's queue size file (`<queue> <messages>` lines).
    postfix_queue_stats: Option<std::path::PathBuf>,
}

impl Metrics {
    /// Metrics that also export the Postfix queue size read from `path`.
    pub fn with_postfix_queue_stats(path: Option<std::path::PathBuf>) -> Self {
        Metrics {
            postfix_queue_stats: path,
            ..Default::default()
        }
    }

    /// Count a per-recipient delivery result.
    pub fn delivery(&self, class: u8, duration: Duration) {
        if let Some(c) = class
            .checked_sub(2)
            .and_then(|i| self.deliveries.get(i as usize))
        {
            c.fetch_add(1, Relaxed);
        }
        let secs = duration.as_secs_f64();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.latency_buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_us
            .fetch_add(duration.as_micros() as u64, Relaxed);
    }

    /// Count a refused RCPT.
    pub fn rcpt_refused(&self, class: u8) {
        let i = if class == 4 { 0 } else { 1 };
        self.rcpt_refused[i].fetch_add(1, Relaxed);
    }

    /// Count a socketmap lookup (`map` and `result` are indices into [`MAPS`] and [`RESULTS`]).
    pub fn lookup(&self, map: usize, result: usize) {
        self.lookups[map][result].fetch_add(1, Relaxed);
    }

    /// One more open connection; the guard counts it down again.
    pub fn open(&self, proto: Proto) -> OpenGuard<'_> {
        self.open[proto as usize].fetch_add(1, Relaxed);
        OpenGuard {
            metrics: self,
            proto,
        }
    }

    /// An HTTP connection closed at once for the HTTP connection limit.
    pub fn refused_http_connection(&self) {
        self.http_connections_refused.fetch_add(1, Relaxed);
    }

    /// A connection refused for the connection limit.
    pub fn refused_connection(&self) {
        self.connections_refused.fetch_add(1, Relaxed);
    }

    /// A reload that produced a directory (with this many diagnostics).
    pub fn reload_ok(&self, diagnostics: usize) {
        self.reloads_ok.fetch_add(1, Relaxed);
        self.last_reload_diagnostics
            .store(diagnostics as u64, Relaxed);
        *self
            .last_reload_error
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// A reload that failed; the previous directory stays.
    pub fn reload_failed(&self, error: &str) {
        self.reloads_failed.fetch_add(1, Relaxed);
        *self
            .last_reload_error
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(error.into());
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self, holder: &Holder) -> String {
        let mut out = String::with_capacity(4096);
        let o = &mut out;
        header(
            o,
            "virtmail_agent_build_info",
            "gauge",
            "The agent's version (always 1).",
        );
        let _ = writeln!(
            o,
            "virtmail_agent_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        if let Some(problems) = crate::provision::last_round_problems() {
            header(
                o,
                "virtmail_mailboxes_unprovisioned",
                "gauge",
                "Mailboxes the last provisioning round could not create or check.",
            );
            let _ = writeln!(o, "virtmail_mailboxes_unprovisioned {problems}");
        }
        if let Some(path) = &self.postfix_queue_stats {
            render_postfix_queue(o, path);
        }
        header(
            o,
            "virtmail_deliveries_total",
            "counter",
            "Per-recipient results after DATA, by reply class.",
        );
        for (i, class) in ["2xx", "4xx", "5xx"].iter().enumerate() {
            let _ = writeln!(
                o,
                "virtmail_deliveries_total{{class=\"{class}\"}} {}",
                self.deliveries[i].load(Relaxed)
            );
        }
        header(
            o,
            "virtmail_rcpt_refused_total",
            "counter",
            "RCPT commands refused before DATA, by reply class.",
        );
        for (i, class) in ["4xx", "5xx"].iter().enumerate() {
            let _ = writeln!(
                o,
                "virtmail_rcpt_refused_total{{class=\"{class}\"}} {}",
                self.rcpt_refused[i].load(Relaxed)
            );
        }
        header(
            o,
            "virtmail_delivery_duration_seconds",
            "histogram",
            "Time from the final dot to each recipient's reply.",
        );
        for (i, bound) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                o,
                "virtmail_delivery_duration_seconds_bucket{{le=\"{bound}\"}} {}",
                self.latency_buckets[i].load(Relaxed)
            );
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(
            o,
            "virtmail_delivery_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            o,
            "virtmail_delivery_duration_seconds_sum {}",
            self.latency_sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(o, "virtmail_delivery_duration_seconds_count {count}");
        header(
            o,
            "virtmail_lookups_total",
            "counter",
            "socketmap lookups by map and result.",
        );
        for (m, map) in MAPS.iter().enumerate() {
            for (r, result) in RESULTS.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "virtmail_lookups_total{{map=\"{map}\",result=\"{result}\"}} {}",
                    self.lookups[m][r].load(Relaxed)
                );
            }
        }
        header(
            o,
            "virtmail_open_connections",
            "gauge",
            "Connections being served, by protocol.",
        );
        for (i, proto) in PROTOS.iter().enumerate() {
            let _ = writeln!(
                o,
                "virtmail_open_connections{{protocol=\"{proto}\"}} {}",
                self.open[i].load(Relaxed)
            );
        }
        header(
            o,
            "virtmail_connections_refused_total",
            "counter",
            "LMTP connections refused at the connection limit.",
        );
        let _ = writeln!(
            o,
            "virtmail_connections_refused_total {}",
            self.connections_refused.load(Relaxed)
        );
        header(
            o,
            "virtmail_http_connections_refused_total",
            "counter",
            "HTTP connections closed unanswered at the HTTP connection limit.",
        );
        let _ = writeln!(
            o,
            "virtmail_http_connections_refused_total {}",
            self.http_connections_refused.load(Relaxed)
        );
        header(
            o,
            "virtmail_reloads_total",
            "counter",
            "Directory loads by result (failed ones keep the previous directory).",
        );
        let _ = writeln!(
            o,
            "virtmail_reloads_total{{result=\"success\"}} {}",
            self.reloads_ok.load(Relaxed)
        );
        let _ = writeln!(
            o,
            "virtmail_reloads_total{{result=\"failure\"}} {}",
            self.reloads_failed.load(Relaxed)
        );
        header(
            o,
            "virtmail_directory_diagnostics",
            "gauge",
            "Diagnostics of the last successful load.",
        );
        let _ = writeln!(
            o,
            "virtmail_directory_diagnostics {}",
            self.last_reload_diagnostics.load(Relaxed)
        );
        let failing = self
            .last_reload_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        header(
            o,
            "virtmail_directory_reload_failing",
            "gauge",
            "1 while the newest resources cannot be loaded.",
        );
        let _ = writeln!(o, "virtmail_directory_reload_failing {}", u8::from(failing));
        header(
            o,
            "virtmail_directory_loaded",
            "gauge",
            "1 when a directory is loaded.",
        );
        match holder.current() {
            Some(loaded) => {
                let d = &loaded.directory;
                let _ = writeln!(o, "virtmail_directory_loaded 1");
                header(
                    o,
                    "virtmail_directory_info",
                    "gauge",
                    "Version of the loaded directory.",
                );
                let _ = writeln!(
                    o,
                    "virtmail_directory_info{{server=\"{}\",version=\"{}\"}} 1",
                    escape(&d.settings.server),
                    escape(&loaded.version)
                );
                header(
                    o,
                    "virtmail_directory_entries",
                    "gauge",
                    "Entries of the loaded directory by kind.",
                );
                let _ = writeln!(
                    o,
                    "virtmail_directory_entries{{kind=\"domains\"}} {}",
                    d.domains.len()
                );
                let _ = writeln!(
                    o,
                    "virtmail_directory_entries{{kind=\"mailboxes\"}} {}",
                    d.mailboxes.len()
                );
                let _ = writeln!(
                    o,
                    "virtmail_directory_entries{{kind=\"aliases\"}} {}",
                    d.aliases.len()
                );
                header(
                    o,
                    "virtmail_directory_loaded_timestamp_seconds",
                    "gauge",
                    "When the loaded directory was swapped in.",
                );
                let _ = writeln!(
                    o,
                    "virtmail_directory_loaded_timestamp_seconds {}",
                    loaded.loaded_unix
                );
            }
            None => {
                let _ = writeln!(o, "virtmail_directory_loaded 0");
            }
        }
        out
    }
}

/// Postfix's queue size as the Postfix container last wrote it. The file is written by a
/// container the agent does not trust more than its input: only known queue names and numbers
/// are exported.
fn render_postfix_queue(o: &mut String, path: &std::path::Path) {
    const QUEUES: [&str; 5] = ["maildrop", "incoming", "active", "deferred", "hold"];
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    header(
        o,
        "virtmail_postfix_queue_messages",
        "gauge",
        "Messages in the pod's Postfix queue, by queue.",
    );
    for line in text.lines().take(QUEUES.len()) {
        if let Some((queue, count)) = line.split_once(' ')
            && QUEUES.contains(&queue)
            && let Ok(count) = count.trim().parse::<u64>()
        {
            let _ = writeln!(
                o,
                "virtmail_postfix_queue_messages{{queue=\"{queue}\"}} {count}"
            );
        }
    }
    if let Ok(modified) = std::fs::metadata(path).and_then(|m| m.modified())
        && let Ok(since) = modified.duration_since(std::time::UNIX_EPOCH)
    {
        header(
            o,
            "virtmail_postfix_queue_updated_timestamp_seconds",
            "gauge",
            "When the Postfix container last counted its queue.",
        );
        let _ = writeln!(
            o,
            "virtmail_postfix_queue_updated_timestamp_seconds {}",
            since.as_secs()
        );
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Escape a Prometheus label value.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Counts an open connection down when dropped.
#[derive(Debug)]
pub struct OpenGuard<'a> {
    metrics: &'a Metrics,
    proto: Proto,
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.metrics.open[self.proto as usize].fetch_sub(1, Relaxed);
    }
}
