//! Leader election with a coordination.k8s.io Lease, so two operator replicas are safe: only the
//! holder reconciles; a replica that cannot renew in time stops.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, PostParams};
use tracing::info;

/// A lease to hold.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity.
    pub identity: String,
    /// How long a lease is valid without renewal.
    pub duration: Duration,
}

/// Whether `lease` may be taken by `identity` at `now`.
pub fn can_take(lease: &LeaseSpec, identity: &str, now: Timestamp) -> bool {
    if lease
        .holder_identity
        .as_deref()
        .is_none_or(|h| h.is_empty() || h == identity)
    {
        return true;
    }
    let Some(renewed) = lease.renew_time.as_ref() else {
        return true;
    };
    let seconds = lease.lease_duration_seconds.unwrap_or(15) as i64;
    renewed.0 + SignedDuration::from_secs(seconds) < now
}

fn spec(config: &LeaseConfig, previous: Option<&LeaseSpec>, now: Timestamp) -> LeaseSpec {
    let same_holder =
        previous.and_then(|p| p.holder_identity.as_deref()) == Some(config.identity.as_str());
    let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(config.identity.clone()),
        lease_duration_seconds: Some(config.duration.as_secs() as i32),
        acquire_time: if same_holder {
            previous.and_then(|p| p.acquire_time.clone())
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if same_holder {
            transitions
        } else {
            transitions + 1
        }),
        ..Default::default()
    }
}

/// A lease write's outcome: `Ok(true)` when it went through, `Ok(false)` when another
/// replica wrote first (409: the resourceVersion or the name was taken).
fn written(result: Result<Lease, kube::Error>) -> Result<bool, kube::Error> {
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Try once to take or renew the lease. `Ok(true)` when held.
pub async fn try_acquire(client: &Client, config: &LeaseConfig) -> Result<bool, kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &config.namespace);
    let now = Timestamp::now();
    match api.get_opt(&config.name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(config.name.clone()),
                    ..Default::default()
                },
                spec: Some(spec(config, None, now)),
            };
            written(api.create(&PostParams::default(), &lease).await)
        }
        Some(mut lease) => {
            let current = lease.spec.clone().unwrap_or_default();
            if !can_take(&current, &config.identity, now) {
                return Ok(false);
            }
            lease.spec = Some(spec(config, Some(&current), now));
            // replace() carries the resourceVersion: a concurrent taker gets 409 and loses.
            written(
                api.replace(&config.name, &PostParams::default(), &lease)
                    .await,
            )
        }
    }
}

/// The Lease's namespace does not exist: no retry can succeed, so the operator stops at start
/// with what to create instead of warning forever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingNamespace {
    /// The namespace.
    pub namespace: String,
}

impl std::fmt::Display for MissingNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "namespace {ns:?} of the leader-election Lease does not exist: create it \
             (kubectl create namespace {ns}) or name an existing one with --lease-namespace \
             (or POD_NAMESPACE)",
            ns = self.namespace
        )
    }
}

impl std::error::Error for MissingNamespace {}

/// Wait until this replica holds the lease. Fails only when the Lease's namespace is missing
/// (creating a namespaced object there answers 404); other errors are retried.
pub async fn acquire(client: &Client, config: &LeaseConfig) -> Result<(), MissingNamespace> {
    let retry = config.duration / 3;
    loop {
        match try_acquire(client, config).await {
            Ok(true) => {
                info!(lease = %config.name, identity = %config.identity, "leader");
                return Ok(());
            }
            Ok(false) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {
                return Err(MissingNamespace {
                    namespace: config.namespace.clone(),
                });
            }
            Err(e) => tracing::warn!(error = %e, "lease"),
        }
        tokio::time::sleep(retry).await;
    }
}

/// Renew until renewal fails for a whole lease duration; then return (the caller stops).
pub async fn keep(client: Client, config: LeaseConfig) {
    let period = config.duration / 3;
    let mut last_renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(period).await;
        match try_acquire(&client, &config).await {
            Ok(true) => last_renewed = tokio::time::Instant::now(),
            Ok(false) => {
                tracing::error!("lease taken by another replica");
                return;
            }
            Err(e) => tracing::warn!(error = %e, "lease renewal"),
        }
        if last_renewed.elapsed() >= config.duration {
            tracing::error!("lease not renewed in time");
            return;
        }
    }
}

/// Give the lease up on a graceful stop, so a standby (or the next rollout's pod) takes over
/// at its next try instead of waiting for the lease to expire. Only a lease this replica still
/// holds is touched; a conflict means someone else already has it.
pub async fn release(client: &Client, config: &LeaseConfig) -> Result<(), kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &config.namespace);
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        return Ok(());
    };
    let Some(spec) = lease.spec.as_mut() else {
        return Ok(());
    };
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    if written(
        api.replace(&config.name, &PostParams::default(), &lease)
            .await,
    )? {
        info!(lease = %config.name, identity = %config.identity, "released");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_or_own_lease_can_be_taken() {
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().expect("ts");
        let held = |who: &str, at: &str| LeaseSpec {
            holder_identity: Some(who.into()),
            renew_time: Some(MicroTime(at.parse().expect("ts"))),
            lease_duration_seconds: Some(15),
            ..Default::default()
        };
        assert!(can_take(&LeaseSpec::default(), "a", now));
        assert!(can_take(&held("a", "2026-01-01T00:00:59Z"), "a", now));
        assert!(!can_take(&held("b", "2026-01-01T00:00:59Z"), "a", now));
        assert!(can_take(&held("b", "2026-01-01T00:00:30Z"), "a", now));
    }
}
