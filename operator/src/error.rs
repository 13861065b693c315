//! The operator's one error type. Each variant has a stable category used in logs, the
//! `virtmail_operator_reconcile_failures_total{category}` metric and Event reasons.

/// Everything a reconcile can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or could not be reached (transient: retried with backoff).
    #[error("kubernetes API: {0}")]
    Api(#[from] kube::Error),
    /// A watched cache is not ready yet (transient).
    #[error("caches not ready: {0}")]
    NotReady(String),
    /// The MailServer itself cannot be served as written (parked until it changes).
    #[error("invalid MailServer: {0}")]
    InvalidSpec(String),
    /// An object could not be serialized for the API (a bug).
    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),
}

impl Error {
    /// Stable PascalCase category.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Api(_) => "ApiError",
            Error::NotReady(_) => "NotReady",
            Error::InvalidSpec(_) => "InvalidSpec",
            Error::Serialization(_) => "SerializationError",
        }
    }

    /// Whether retrying can help without a change to the object.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Api(_) | Error::NotReady(_))
    }
}

/// Result of a reconcile step.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_are_stable() {
        assert_eq!(Error::NotReady("x".into()).category(), "NotReady");
        assert_eq!(Error::InvalidSpec("x".into()).category(), "InvalidSpec");
        assert!(Error::NotReady("x".into()).is_transient());
        assert!(!Error::InvalidSpec("x".into()).is_transient());
    }
}
