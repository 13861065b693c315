//! `virtmail-agent check --resources DIR`: compile manifests and report every diagnostic.

use std::fmt::Write as _;
use std::path::Path;

use virtmail_crds::manifests::{self, Resources};
use virtmail_crds::{Compiled, compile, encoding};

/// Exit status of `check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckStatus {
    /// Every object is valid.
    Valid = 0,
    /// Some object has a diagnostic.
    Invalid = 1,
    /// The manifests cannot be used (YAML, kinds, field types, server choice).
    Unusable = 2,
}

/// Result of a check: the status and the report text.
#[derive(Debug)]
pub struct CheckReport {
    /// Exit status.
    pub status: CheckStatus,
    /// What to print (stdout for a usable set, stderr otherwise).
    pub text: String,
}

/// Load and compile the manifests under `dir` for `server` (or the only / default server).
pub fn load_and_compile(dir: &Path, server: Option<&str>) -> Result<(Resources, Compiled), String> {
    let resources = manifests::load_dir(dir).map_err(|e| e.to_string())?;
    let server = resources.server(server)?;
    let compiled = compile(resources.inputs(&server));
    Ok((resources, compiled))
}

/// Run the check.
pub fn check(dir: &Path, server: Option<&str>) -> CheckReport {
    let (resources, compiled) = match load_and_compile(dir, server) {
        Ok(loaded) => loaded,
        Err(message) => {
            return CheckReport {
                status: CheckStatus::Unusable,
                text: format!("error: {message}\n"),
            };
        }
    };
    let directory = &compiled.directory;
    let mut text = String::new();
    let _ = writeln!(
        text,
        "server {}: {} domains, {} mailboxes, {} aliases, directory version {}",
        directory.settings.server,
        directory.domains.len(),
        directory.mailboxes.len(),
        directory.aliases.len(),
        encoding::version(directory),
    );
    for diagnostic in &compiled.diagnostics {
        let source = resources
            .source_of(&diagnostic.object)
            .map(|s| s.to_string())
            .unwrap_or_else(|| "?".into());
        let _ = writeln!(
            text,
            "{}: {} {}: {} ({:?})",
            source, diagnostic.object, diagnostic.reason, diagnostic.message, diagnostic.effect
        );
    }
    let status = if compiled.diagnostics.is_empty() {
        let _ = writeln!(text, "all {} objects valid", compiled.members.len());
        CheckStatus::Valid
    } else {
        let _ = writeln!(
            text,
            "{} of {} objects invalid",
            compiled
                .diagnostics
                .iter()
                .map(|d| &d.object)
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            compiled.members.len()
        );
        CheckStatus::Invalid
    };
    CheckReport { status, text }
}
