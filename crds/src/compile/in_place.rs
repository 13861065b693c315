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
//! A MailAlias (not a pattern) comes, goes or changes in place the same way
//! ([`recompile_alias`]): its address and its alias graph component are all it can touch. Its
//! old entry goes and its new one comes unless a younger MailAlias lost the address to it, the
//! address is a domain's `postmaster@` (the implied alias), its domain has pattern aliases
//! (whose loop check resolves addresses through exact aliases), the new entry has a problem of
//! its own, or the new targets lead back to it through other aliases (a loop, whose diagnostics
//! only a full compile orders). While any alias loop is reported, every alias change compiles
//! from scratch.
//!
//! Anything else is [`NeedsFullCompile`]: the caller compiles from scratch, which stays the
//! reference. A property test holds every in-place result to a full compile of the same inputs.

use kube::{Resource, ResourceExt};

use std::collections::BTreeMap;

use super::{
    Compiled, Compiler, Inputs, Kind, ObjectRef, Reason, address_taken, alias_taken, claimed_names,
    fold, in_namespace, path_overlap,
};
use crate::address;
use crate::directory::{AliasEntry, Directory, MailboxEntry, Table, pattern};
use crate::resources::{MailAlias, MailDomain, Mailbox};

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
    let old_key = previous_key(
        compiled,
        &object,
        |d| &d.mailboxes,
        |e| e.object == name,
        new_key.as_deref(),
    )?;
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
    Ok(replace_entry(
        compiled,
        |d| &mut d.mailboxes,
        object,
        old_key,
        added,
    ))
}

/// Take `object`'s entry at `old_key` (with its diagnostics and membership) out of the table
/// `table` picks, and put `added` in. Returns the keys whose entries changed.
fn replace_entry<T: Clone + PartialEq>(
    compiled: &mut Compiled,
    table: fn(&mut Directory) -> &mut Table<T>,
    object: ObjectRef,
    old_key: Option<String>,
    added: Option<(String, T)>,
) -> Vec<String> {
    let mut changed = Vec::new();
    if let Some(old) = old_key {
        let entry = table(&mut compiled.directory).remove(&old);
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
        table(&mut compiled.directory).insert(key, entry);
        if let Err(index) = compiled.members.binary_search(&object) {
            compiled.members.insert(index, object);
        }
    }
    changed.into_iter().map(|(key, _)| key).collect()
}

/// Apply the current state of the MailAlias `name` (`None`: deleted) to `compiled`, as
/// [`recompile_mailbox`] does for a Mailbox. Returns the alias keys whose entries were added,
/// removed or changed.
pub fn recompile_alias(
    compiled: &mut Compiled,
    inputs: Inputs<'_>,
    name: &str,
    alias: Option<&MailAlias>,
) -> Result<Vec<String>, NeedsFullCompile> {
    if compiled
        .diagnostics
        .iter()
        .any(|d| d.reason == Reason::AliasLoop)
    {
        return Err(NeedsFullCompile);
    }
    let object = ObjectRef {
        kind: Kind::MailAlias,
        name: name.to_string(),
    };
    let namespace = inputs.server.meta().namespace.as_deref();
    let alias = alias.filter(|a| in_namespace(namespace, a.meta()));
    let new_key = alias.map(|a| fold(&a.spec.address));
    let old_key = previous_key(
        compiled,
        &object,
        |d| &d.aliases,
        |e| e.object.as_deref() == Some(name),
        new_key.as_deref(),
    )?;
    if let Some(old) = &old_key {
        check_alias_removal(compiled, &object, old)?;
    }
    let added = match alias {
        Some(alias) => alias_addition(compiled, inputs, &object, alias)?,
        None => None,
    };
    Ok(replace_entry(
        compiled,
        |d| &mut d.aliases,
        object,
        old_key,
        added,
    ))
}

/// Whether an exact alias at `key` may come or go without another pass noticing: it is no
/// domain's `postmaster@` and no pattern alias of its domain resolves addresses through it.
fn alias_key_is_plain(compiled: &Compiled, key: &str) -> bool {
    let Some((local, domain)) = address::split(key) else {
        return false;
    };
    local != "postmaster" && pattern::key_pattern(key).is_none() && !has_patterns(compiled, domain)
}

/// Whether `domain` has pattern aliases.
fn has_patterns(compiled: &Compiled, domain: &str) -> bool {
    let prefix = pattern::key_prefix(domain);
    compiled
        .directory
        .aliases
        .range(prefix.clone()..)
        .next()
        .is_some_and(|(k, _)| k.starts_with(&prefix))
}

/// Removing `object`'s alias at `key` changes nothing but its own entry, diagnostics and
/// membership (with no loop anywhere, a removal cannot make or break one).
fn check_alias_removal(
    compiled: &Compiled,
    object: &ObjectRef,
    key: &str,
) -> Result<(), NeedsFullCompile> {
    let taken = alias_taken(key, &object.name);
    let lost = compiled.diagnostics.iter().any(|d| {
        d.object.kind == Kind::MailAlias
            && d.reason == Reason::AddressConflict
            && d.message == taken
    });
    if lost || !alias_key_is_plain(compiled, key) {
        return Err(NeedsFullCompile);
    }
    Ok(())
}

/// A MailAlias the compile did not hold (or held elsewhere): its entry when it takes an address
/// of a served domain nobody else holds, with valid targets that do not lead back to it; `None`
/// when its address belongs to another server's domain.
fn alias_addition(
    compiled: &Compiled,
    inputs: Inputs<'_>,
    object: &ObjectRef,
    alias: &MailAlias,
) -> Result<Option<(String, AliasEntry)>, NeedsFullCompile> {
    let key = fold(&alias.spec.address);
    let (local, domain) = address::split(&key).ok_or(NeedsFullCompile)?;
    let syntax_ok = if local.is_empty() {
        address::valid_domain(domain)
    } else {
        address::valid_address(&key)
    };
    if !syntax_ok || alias.spec.pattern.is_some() {
        return Err(NeedsFullCompile);
    }
    if !compiled.directory.domains.contains_key(domain) {
        return if known_domain(inputs, domain) {
            Ok(None)
        } else {
            Err(NeedsFullCompile)
        };
    }
    let taken = compiled
        .directory
        .aliases
        .get(&key)
        .is_some_and(|e| e.object.as_deref() != Some(object.name.as_str()));
    let valid_targets =
        !alias.spec.to.is_empty() && alias.spec.to.iter().all(|t| address::valid_address(t));
    if taken || !valid_targets || !alias_key_is_plain(compiled, &key) {
        return Err(NeedsFullCompile);
    }
    if leads_back(compiled, &key, &alias.spec.to) {
        return Err(NeedsFullCompile);
    }
    Ok(Some((
        key,
        AliasEntry {
            to: alias.spec.to.clone(),
            defer: None,
            object: Some(object.name.clone()),
        },
    )))
}

/// Whether `targets` (other than `key` itself, the "keep a copy" idiom) reach `key` through
/// exact aliases: the loop check of the component the new edges join.
fn leads_back(compiled: &Compiled, key: &str, targets: &[String]) -> bool {
    let aliases = &compiled.directory.aliases;
    let mut seen = std::collections::HashSet::new();
    let mut stack: Vec<String> = targets
        .iter()
        .map(|t| fold(t))
        .filter(|t| t != key)
        .collect();
    while let Some(node) = stack.pop() {
        if node == key {
            return true;
        }
        if !seen.insert(node.clone()) {
            continue;
        }
        if let Some(entry) = aliases.get(&node) {
            stack.extend(entry.to.iter().map(|t| fold(t)).filter(|t| *t != node));
        }
    }
    false
}

/// The key of `object`'s entry in the table `table` picks before this change: none when it was
/// no member. A member without an entry lost its address or has none valid (a diagnostic in the
/// compile's order): a full compile. Found at its current address when it still holds that,
/// else by a walk over the table (an address changed or the object went).
fn previous_key<T: Clone>(
    compiled: &Compiled,
    object: &ObjectRef,
    table: fn(&Directory) -> &Table<T>,
    holds: impl Fn(&T) -> bool,
    current: Option<&str>,
) -> Result<Option<String>, NeedsFullCompile> {
    if compiled.members.binary_search(object).is_err() {
        return Ok(None);
    }
    let table = table(&compiled.directory);
    if let Some(key) = current
        && table.get(key).is_some_and(&holds)
    {
        return Ok(Some(key.to_string()));
    }
    let (key, _) = table
        .iter()
        .find(|(_, entry)| holds(entry))
        .ok_or(NeedsFullCompile)?;
    Ok(Some(key.clone()))
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
    local != "postmaster"
        && !catch_all
        && served.is_some_and(|d| d.catch_all.as_deref() != Some(key))
        && !has_patterns(compiled, domain)
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
    // Names that touch share their first component (equal, or one inside the other), and a
    // mailbox's derived names lie beside its path: a mailbox below a directory none of ours
    // starts with is passed over without building its names.
    let firsts: Vec<&str> = mine.keys().map(|n| first_component(n)).collect();
    compiled
        .directory
        .mailboxes
        .values()
        .filter(|other| other.object != name && counts(other))
        .filter(|other| {
            let path = other.path.trim_end_matches('/');
            !path.contains('/') || firsts.contains(&first_component(path))
        })
        .any(|other| {
            claimed_names(&other.path, other.format)
                .iter()
                .any(|(name, _)| path_overlap(&mine, name).is_some())
        })
}

/// A relative path's first component.
fn first_component(path: &str) -> &str {
    path.split('/').next().unwrap_or(path)
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
