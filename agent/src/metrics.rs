//! `/metrics`: one `prometheus-client` registry in the OpenMetrics text format. Each layer
//! registers its own series (the servers theirs, the directory source its own, provisioning its
//! gauge); this module adds the agent-wide ones and the helpers for series computed at scrape
//! time.

use std::fmt;
use std::path::PathBuf;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A registry with the agent's own series: its version, and Postfix's queue size when the
/// Postfix container writes it to `postfix_queue_stats`.
pub fn registry(postfix_queue_stats: Option<PathBuf>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(AgentSeries {
        postfix_queue_stats,
    }));
    registry
}

/// The registry's exposition.
pub fn render(registry: &Registry) -> String {
    let mut text = String::with_capacity(4096);
    // Writing into a String cannot fail, and the collectors only fail when the writer does.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}

/// Encode one unlabelled gauge computed at scrape time.
pub fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> fmt::Result {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

/// Encode one gauge family computed at scrape time, one series per label set.
pub fn gauges<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(L, i64)],
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

/// Escape a label value (the encoder writes label values as they are).
pub fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[derive(Debug)]
struct AgentSeries {
    /// The Postfix container's queue size file (`<queue> <messages>` lines).
    postfix_queue_stats: Option<PathBuf>,
}

impl Collector for AgentSeries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        gauges(
            &mut encoder,
            "virtmail_agent_build_info",
            "The agent's version (always 1).",
            &[([("version", env!("CARGO_PKG_VERSION"))], 1)],
        )?;
        match &self.postfix_queue_stats {
            Some(path) => encode_postfix_queue(&mut encoder, path),
            None => Ok(()),
        }
    }
}

/// Postfix's queue size as the Postfix container last wrote it. The file is written by a
/// container the agent does not trust more than its input: only known queue names and numbers
/// are exported.
fn encode_postfix_queue(encoder: &mut DescriptorEncoder, path: &std::path::Path) -> fmt::Result {
    const QUEUES: [&str; 5] = ["maildrop", "incoming", "active", "deferred", "hold"];
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let counts: Vec<([(&str, &str); 1], i64)> = text
        .lines()
        .take(QUEUES.len())
        .filter_map(|line| {
            let (queue, count) = line.split_once(' ')?;
            let queue = QUEUES.iter().find(|q| **q == queue)?;
            let count = count.trim().parse::<u64>().ok()?;
            Some(([("queue", *queue)], i64::try_from(count).ok()?))
        })
        .collect();
    gauges(
        encoder,
        "virtmail_postfix_queue_messages",
        "Messages in the pod's Postfix queue, by queue.",
        &counts,
    )?;
    if let Ok(modified) = std::fs::metadata(path).and_then(|m| m.modified())
        && let Ok(since) = modified.duration_since(std::time::UNIX_EPOCH)
    {
        gauge(
            encoder,
            "virtmail_postfix_queue_updated_timestamp_seconds",
            "When the Postfix container last counted its queue.",
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        )?;
    }
    Ok(())
}
