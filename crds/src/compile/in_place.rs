//! The changes a mail provider sees most, applied in place: a Mailbox edited without moving its
//! address (a quota, a suspension, an automatic reply, an owner), created, deleted, or moved to
//! another address. A full compile at 100,000 mailboxes takes about half a second; these take
//! microseconds to a few milliseconds, because each can only change its own entry, its own
//! diagnostics and its own membership.
//!
//! What the full compile decides about one Mailbox and what may depend on it:
//! - which object holds its address: the oldest. A new address nobody holds is the new
//!   Mailbox's whatever its age; an address whose loser is waiting (an `AddressConflict`) is
//!   not changed in place;
//! - its entry: from its spec, its domain's defaults and the server's settings (neither changed);
//! - whether it claims its path and derived names (read by every younger mailbox's overlap
//!   check): only when its entry has no problem of its own. Claiming before and after with the
//!   same path and format, or claiming neither time, leaves everyone else's result unchanged. A
//!   claim that comes or goes changes nobody else's only when no mailbox lost a path
//!   (`PathConflict`) and the new claim touches no claimed name;
//! - the other passes ask whether a mailbox address exists: the implied `postmaster@` alias,
//!   the domain's catch-all, and pattern aliases (an address with a mailbox of its own is not
//!   expanded by a pattern). An address that comes or goes must be none of these;
//! - the members list is sorted, so a member comes and goes in place; diagnostics keep the
//!   compile's order, so a change that makes one appear is not applied in place.
//!
//! Anything else is [`NeedsFullCompile`]: the caller compiles from scratch, which stays the
//! reference. A property test holds every in-place result to a full compile of the same inputs.

use kube::{Resource, ResourceExt};

use std::collections::BTreeMap;

use super::{
    Compiled, Compiler, Inputs, Kind, ObjectRef, Reason, address_taken, claimed_names, fold,
    in_namespace, path_overlap,
};
use crate::address;
use crate::directory::{MailboxEntry, pattern};
use crate::resources::{MailDomain, Mailbox};

/// The change cannot be applied in place; compile from scratch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeedsFullCompile;

/// Apply the current state of the Mailbox `name` (`None`: deleted) to `compiled`, the compile of
/// the same `inputs` as they were before this Mailbox changed (nothing else changed since).
/// `inputs` needs the server and its namespace's MailDomains; its Mailboxes and MailAliases are
/// not read. Returns the mailbox keys whose entries were added, removed or changed. `compiled` is
/// left as it was when the change needs a full compile.
pub fn recompile_mailbox(
    compiled: &mut Compiled,
    inputs: Inputs<'_>,
    name: &str,
    mailbox: Option<&Mailbox>,
) -> Result<Vec<String>, NeedsFullCompile> {
    let object = ObjectRef {
        kind: Kind::Mailbox,
        name: name.to_string(),
    };
    let namespace = inputs.server.meta().namespace.as_deref();
    let mailbox = mailbox.filter(|m| in_namespace(namespace, m.meta()));
    let new_key = mailbox.map(|m| fold(&m.spec.address));
    let old_key = if compiled.members.binary_search(&object).is_ok() {
        // A member without an entry lost its address or has none valid: a diagnostic in order.
        Some(held_key(compiled, name, new_key.as_deref()).ok_or(NeedsFullCompile)?)
    } else {
        None
    };
    if let (Some(old), Some(mailbox)) = (&old_key, mailbox)
        && Some(old) == new_key.as_ref()
        && let Ok(changed) = edit(compiled, inputs, &object, old, mailbox)
    {
        return Ok(changed.into_iter().collect());
    }
    // Otherwise the old entry goes and the new one comes: a removal, an addition, or both (a
    // new address, or an edit that changes a claim or a diagnostic).
    if let Some(old) = &old_key {
        check_removal(compiled, &object, old)?;
    }
    let added = match mailbox {
        Some(mailbox) => addition(compiled, inputs, &object, mailbox)?,
        None => None,
    };
    let mut changed = Vec::new();
    if let Some(old) = old_key {
        let entry = compiled.directory.mailboxes.remove(&old);
        compiled.diagnostics.retain(|d| d.object != object);
        if let Ok(index) = compiled.members.binary_search(&object) {
            compiled.members.remove(index);
        }
        changed.push((old, entry));
    }
    if let Some((key, entry)) = added {
        match changed.iter().position(|(old, _)| *old == key) {
            Some(same) if changed[same].1.as_ref() == Some(&entry) => {
                changed.remove(same);
            }
            Some(_) => {}
            None => changed.push((key.clone(), None)),
        }
        compiled.directory.mailboxes.insert(key, entry);
        if let Err(index) = compiled.members.binary_search(&object) {
            compiled.members.insert(index, object);
        }
    }
    Ok(changed.into_iter().map(|(key, _)| key).collect())
}

/// The key of the entry `name` holds: found at its current address when it still holds that,
/// else by a walk over the mailboxes (an address changed or the Mailbox went).
fn held_key(compiled: &Compiled, name: &str, current: Option<&str>) -> Option<String> {
    let mailboxes = &compiled.directory.mailboxes;
    if let Some(key) = current
        && mailboxes.get(key).is_some_and(|e| e.object == name)
    {
        return Some(key.to_string());
    }
    mailboxes
        .iter()
        .find(|(_, entry)| entry.object == name)
        .map(|(key, _)| key.clone())
}

/// Whether mailbox `key` of a served `domain` may come or go without another pass noticing:
/// it is not the domain's postmaster or catch-all, and no pattern alias of the domain could
/// expand it.
fn other_passes_ignore(
    compiled: &Compiled,
    key: &str,
    domain: &str,
    domain_object: Option<&MailDomain>,
) -> bool {
    let Some((local, _)) = address::split(key) else {
        return false;
    };
    let catch_all = domain_object
        .and_then(|d| d.spec.catch_all.as_deref())
        .is_some_and(|local| format!("{}@{domain}", fold(local)) == key);
    let served = compiled.directory.domains.get(domain);
    let prefix = pattern::key_prefix(domain);
    let patterns = compiled
        .directory
        .aliases
        .range(prefix.clone()..)
        .next()
        .is_some_and(|(k, _)| k.starts_with(&prefix));
    local != "postmaster"
        && !catch_all
        && served.is_some_and(|d| d.catch_all.as_deref() != Some(key))
        && !patterns
}

/// Removing `object`'s entry at `key` changes nothing but its own entry, diagnostics and
/// membership: no younger Mailbox lost the address to it, none lost a path to its claim, and no
/// other pass asks for the address.
fn check_removal(
    compiled: &Compiled,
    object: &ObjectRef,
    key: &str,
) -> Result<(), NeedsFullCompile> {
    let domain = address::split(key).map(|(_, d)| d).unwrap_or_default();
    let entry = compiled
        .directory
        .mailboxes
        .get(key)
        .ok_or(NeedsFullCompile)?;
    let taken = address_taken(key, &object.name);
    let lost_address = compiled.diagnostics.iter().any(|d| {
        d.object.kind == Kind::Mailbox && d.reason == Reason::AddressConflict && d.message == taken
    });
    let lost_path = entry.defer.is_none()
        && touches_claims(compiled, entry, &object.name, |other| {
            other
                .defer
                .as_ref()
                .is_some_and(|d| d.reason == Reason::PathConflict)
        });
    if lost_address || lost_path || !other_passes_ignore(compiled, key, domain, None) {
        return Err(NeedsFullCompile);
    }
    Ok(())
}

/// Whether the names `entry` claims touch a name claimed by another mailbox's entry that
/// `counts` (other than `name`'s own).
fn touches_claims(
    compiled: &Compiled,
    entry: &MailboxEntry,
    name: &str,
    counts: impl Fn(&MailboxEntry) -> bool,
) -> bool {
    let mine: BTreeMap<String, String> = claimed_names(&entry.path, entry.format)
        .into_iter()
        .map(|(name, _)| (name, String::new()))
        .collect();
    compiled
        .directory
        .mailboxes
        .values()
        .filter(|other| other.object != name && counts(other))
        .any(|other| {
            claimed_names(&other.path, other.format)
                .iter()
                .any(|(name, _)| path_overlap(&mine, name).is_some())
        })
}

/// The served domain of `key` and its MailDomain, when `key` is a valid mailbox address.
fn served_domain<'a>(
    compiled: &Compiled,
    inputs: Inputs<'a>,
    key: &'a str,
) -> Option<(&'a str, &'a MailDomain)> {
    let domain = match address::split(key) {
        Some((local, domain)) if !local.is_empty() && address::valid_address(key) => domain,
        _ => return None,
    };
    let served = compiled.directory.domains.get(domain)?;
    let object = inputs
        .domains
        .iter()
        .find(|d| d.name_any() == served.object && fold(&d.spec.domain) == domain)?;
    Some((domain, object))
}

/// A Mailbox the compile did not hold before: its entry when it takes a new address of a served
/// domain without a problem or a claim touching another's; `None` when its address belongs to
/// another server's domain (it is not this server's member then either).
fn addition(
    compiled: &Compiled,
    inputs: Inputs<'_>,
    object: &ObjectRef,
    mailbox: &Mailbox,
) -> Result<Option<(String, MailboxEntry)>, NeedsFullCompile> {
    let key = fold(&mailbox.spec.address);
    let Some((domain, domain_object)) = served_domain(compiled, inputs, &key) else {
        return match address::split(&key) {
            // Another server's domain (known to the namespace, not served here): not ours.
            Some((local, domain))
                if !local.is_empty()
                    && address::valid_address(&key)
                    && !compiled.directory.domains.contains_key(domain)
                    && known_domain(inputs, domain) =>
            {
                Ok(None)
            }
            _ => Err(NeedsFullCompile),
        };
    };
    let taken = compiled
        .directory
        .mailboxes
        .get(&key)
        .is_some_and(|e| e.object != object.name);
    if taken || !other_passes_ignore(compiled, &key, domain, Some(domain_object)) {
        return Err(NeedsFullCompile);
    }
    let mut compiler = entry_compiler(compiled, inputs, domain, domain_object);
    let (entry, problem) = compiler.mailbox_entry(&key, mailbox, object);
    // Its claim may touch no name another claims, nor one a mailbox that lost a path holds
    // (whose diagnostic names the claim it met first).
    if problem.is_some()
        || touches_claims(compiled, &entry, &object.name, |other| {
            other
                .defer
                .as_ref()
                .is_none_or(|d| d.reason == Reason::PathConflict)
        })
    {
        return Err(NeedsFullCompile);
    }
    let entry = compiler.settle_mailbox(object.clone(), entry, None, mailbox);
    if !compiler.diagnostics.is_empty() {
        return Err(NeedsFullCompile);
    }
    Ok(Some((key, entry)))
}

/// Whether a MailDomain of the server's namespace names `domain` (selected by it or not).
fn known_domain(inputs: Inputs<'_>, domain: &str) -> bool {
    let namespace = inputs.server.meta().namespace.as_deref();
    inputs
        .domains
        .iter()
        .any(|d| in_namespace(namespace, d.meta()) && fold(&d.spec.domain) == domain)
}

/// A compiler holding only what an entry is built from: the settings and its one domain.
fn entry_compiler<'a>(
    compiled: &Compiled,
    inputs: Inputs<'a>,
    domain: &str,
    domain_object: &'a MailDomain,
) -> Compiler<'a> {
    let mut compiler = Compiler::new(inputs, compiled.directory.settings.clone());
    if let Some(served) = compiled.directory.domains.get(domain) {
        compiler
            .directory
            .domains
            .insert(domain.to_string(), served.clone());
    }
    compiler
        .domain_specs
        .insert(domain.to_string(), domain_object);
    compiler
}

/// A Mailbox that keeps the address it holds: its entry and diagnostics rebuilt where they
/// stand. Returns its key when the entry changed.
fn edit(
    compiled: &mut Compiled,
    inputs: Inputs<'_>,
    object: &ObjectRef,
    key: &str,
    mailbox: &Mailbox,
) -> Result<Option<String>, NeedsFullCompile> {
    let (domain, domain_object) = served_domain(compiled, inputs, key).ok_or(NeedsFullCompile)?;
    let old = compiled
        .directory
        .mailboxes
        .get(key)
        .ok_or(NeedsFullCompile)?;
    let mut compiler = entry_compiler(compiled, inputs, domain, domain_object);
    let (entry, problem) = compiler.mailbox_entry(key, mailbox, object);
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
        .filter(|(_, d)| &d.object == object)
        .map(|(index, _)| index)
        .collect();
    if positions.len() != compiler.diagnostics.len() {
        return Err(NeedsFullCompile);
    }
    for (index, diagnostic) in positions.into_iter().zip(compiler.diagnostics) {
        compiled.diagnostics[index] = diagnostic;
    }
    let changed = compiled.directory.mailboxes.get(key) != Some(&entry);
    compiled.directory.mailboxes.insert(key.to_string(), entry);
    Ok(changed.then(|| key.to_string()))
}

#[cfg(test)]
mod tests;
