//! The edit a mail provider sees most, applied in place: a Mailbox whose spec changed but not
//! its address (a quota, a suspension, an automatic reply, an owner). A full compile at 100,000
//! mailboxes takes about half a second; this takes microseconds, because such an edit can only
//! change its own entry and its own diagnostic.
//!
//! What the full compile decides about one Mailbox and what may depend on it:
//! - which object holds its address: the oldest, and age does not change with an edit;
//! - its entry: from its spec, its domain's defaults and the server's settings (neither changed);
//! - whether it claims its path and derived names (read by every younger mailbox's overlap
//!   check): only when its entry has no problem of its own. Claiming before and after with the
//!   same path and format, or claiming neither time, leaves everyone else's result unchanged;
//! - the other passes (aliases, postmasters, catch-alls, loops) only ask whether a mailbox
//!   address exists, which an edit that keeps the address does not change.
//!
//! Anything else (an address, path or format change of a path claimant, a claim gained or lost,
//! a diagnostic appearing or going, a loser of an address conflict) is [`NeedsFullCompile`]: the
//! caller compiles from scratch, which stays the reference. A property test holds every in-place
//! result to a full compile of the same inputs.

use kube::{Resource, ResourceExt};

use super::{Compiled, Compiler, Inputs, Kind, ObjectRef, Reason, fold, in_namespace};
use crate::address;
use crate::resources::Mailbox;

/// The edit cannot be applied in place; compile from scratch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeedsFullCompile;

/// Apply the current spec of `mailbox` to `compiled`, the compile of the same `inputs` as they
/// were before this Mailbox changed (nothing else changed since). Returns the mailbox key whose
/// entry changed, or none when the edit changes nothing the directory holds.
pub fn recompile_mailbox(
    compiled: &mut Compiled,
    inputs: Inputs<'_>,
    mailbox: &Mailbox,
) -> Result<Option<String>, NeedsFullCompile> {
    let same_namespace = in_namespace(inputs.server.meta().namespace.as_deref(), mailbox.meta());
    let key = fold(&mailbox.spec.address);
    let name = mailbox.name_any();
    let domain = match address::split(&key) {
        Some((local, domain)) if !local.is_empty() && address::valid_address(&key) => domain,
        _ => return Err(NeedsFullCompile),
    };
    let old = compiled
        .directory
        .mailboxes
        .get(&key)
        .ok_or(NeedsFullCompile)?;
    if !same_namespace || old.object != name {
        return Err(NeedsFullCompile);
    }
    let served = compiled
        .directory
        .domains
        .get(domain)
        .ok_or(NeedsFullCompile)?;
    let domain_object = inputs
        .domains
        .iter()
        .find(|d| d.name_any() == served.object && fold(&d.spec.domain) == domain)
        .ok_or(NeedsFullCompile)?;
    // A compiler holding only what an entry is built from: the settings and the one domain.
    let mut compiler = Compiler::new(inputs, compiled.directory.settings.clone());
    compiler
        .directory
        .domains
        .insert(domain.to_string(), served.clone());
    compiler
        .domain_specs
        .insert(domain.to_string(), domain_object);
    let object = ObjectRef {
        kind: Kind::Mailbox,
        name,
    };
    let (entry, problem) = compiler.mailbox_entry(&key, mailbox, &object);
    let claimed_before = old
        .defer
        .as_ref()
        .is_none_or(|d| d.reason == Reason::PathConflict);
    let problem = match (claimed_before, problem) {
        // The overlap check ran before and runs again on the same names against the same
        // older claims: its outcome (a claim, or a PathConflict) stands.
        (true, None) if entry.path == old.path && entry.format == old.format => {
            old.defer.as_ref().map(|d| (d.reason, d.message.clone()))
        }
        (false, Some(problem)) => Some(problem),
        _ => return Err(NeedsFullCompile),
    };
    let entry = compiler.settle_mailbox(object.clone(), entry, problem, mailbox);
    // The object's diagnostics are replaced where they stand; one appearing or going would
    // move in the list, which only a full compile orders.
    let positions: Vec<usize> = compiled
        .diagnostics
        .iter()
        .enumerate()
        .filter(|(_, d)| d.object == object)
        .map(|(index, _)| index)
        .collect();
    if positions.len() != compiler.diagnostics.len() {
        return Err(NeedsFullCompile);
    }
    for (index, diagnostic) in positions.into_iter().zip(compiler.diagnostics) {
        compiled.diagnostics[index] = diagnostic;
    }
    let changed = compiled.directory.mailboxes.get(&key) != Some(&entry);
    compiled.directory.mailboxes.insert(key.clone(), entry);
    Ok(changed.then_some(key))
}

#[cfg(test)]
mod tests;
