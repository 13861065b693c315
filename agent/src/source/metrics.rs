//! The directory's series on `/metrics`: loads by result, and what is loaded and pending.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{Holder, SourceState};
use crate::metrics::{escape, gauge, gauges};

type ResultLabel = [(&'static str, &'static str); 1];

/// Load counters, shared by the [`super::Publisher`] and the registry.
#[derive(Debug, Clone)]
pub struct SourceMetrics {
    reloads_ok: Counter,
    reloads_failed: Counter,
    diagnostics: Gauge,
    failing: Gauge,
    state: Arc<SourceState>,
}

impl SourceMetrics {
    /// Register the directory's series for `holder`; `follows_published_versions` adds the
    /// pending and source error gauges (see [`super::DirectorySource`]).
    pub fn register(
        registry: &mut Registry,
        holder: Arc<Holder>,
        follows_published_versions: bool,
    ) -> Self {
        let reloads = Family::<ResultLabel, Counter>::default();
        let metrics = SourceMetrics {
            reloads_ok: reloads.get_or_create_owned(&[("result", "success")]),
            reloads_failed: reloads.get_or_create_owned(&[("result", "failure")]),
            diagnostics: Gauge::default(),
            failing: Gauge::default(),
            state: Arc::default(),
        };
        registry.register(
            "virtmail_reloads",
            "Directory loads by result (failed ones keep the previous directory)",
            reloads,
        );
        for (name, help, gauge) in [
            (
                "virtmail_directory_diagnostics",
                "Diagnostics of the last successful load",
                &metrics.diagnostics,
            ),
            (
                "virtmail_directory_reload_failing",
                "1 while the newest resources cannot be loaded",
                &metrics.failing,
            ),
        ] {
            registry.register(name, help, gauge.clone());
        }
        registry.register_collector(Box::new(DirectorySeries {
            holder,
            state: follows_published_versions.then(|| metrics.state.clone()),
        }));
        metrics
    }

    pub(super) fn state(&self) -> Arc<SourceState> {
        self.state.clone()
    }

    pub(super) fn reload_ok(&self, diagnostics: usize) {
        self.reloads_ok.inc();
        self.diagnostics
            .set(i64::try_from(diagnostics).unwrap_or(i64::MAX));
        self.failing.set(0);
    }

    pub(super) fn reload_failed(&self) {
        self.reloads_failed.inc();
        self.failing.set(1);
    }
}

/// What is loaded, read from the holder at scrape time.
#[derive(Debug)]
struct DirectorySeries {
    holder: Arc<Holder>,
    state: Option<Arc<SourceState>>,
}

impl Collector for DirectorySeries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let current = self.holder.current();
        gauge(
            &mut encoder,
            "virtmail_directory_loaded",
            "1 when a directory is loaded.",
            i64::from(current.is_some()),
        )?;
        if let Some(loaded) = current {
            let d = &loaded.directory;
            gauges(
                &mut encoder,
                "virtmail_directory_info",
                "Version of the loaded directory.",
                &[(
                    [
                        ("server", escape(&d.settings.server)),
                        ("version", escape(&loaded.version)),
                    ],
                    1,
                )],
            )?;
            let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
            gauges(
                &mut encoder,
                "virtmail_directory_entries",
                "Entries of the loaded directory by kind.",
                &[
                    ([("kind", "domains")], count(d.domains.len())),
                    ([("kind", "mailboxes")], count(d.mailboxes.len())),
                    ([("kind", "aliases")], count(d.aliases.len())),
                ],
            )?;
            gauge(
                &mut encoder,
                "virtmail_directory_loaded_timestamp_seconds",
                "When the loaded directory was swapped in.",
                i64::try_from(loaded.loaded_unix).unwrap_or(i64::MAX),
            )?;
        }
        if let Some(state) = &self.state {
            let status = state.get();
            gauge(
                &mut encoder,
                "virtmail_directory_pending",
                "1 while a newer directory version cannot be served yet (missing or mismatched shard); the last good version keeps serving.",
                i64::from(status.pending.is_some()),
            )?;
            gauge(
                &mut encoder,
                "virtmail_directory_source_error",
                "1 while the directory source cannot be read (API unreachable, volume unreadable).",
                i64::from(status.watch_error.is_some()),
            )?;
        }
        Ok(())
    }
}
