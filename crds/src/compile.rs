//! The directory compiler: a pure function from one MailServer and the objects of its namespace to
//! a [`Directory`] plus per-object diagnostics (docs/ARCHITECTURE.md).
//!
//! One bad object never affects the others: an invalid Mailbox or MailAlias whose address is known
//! stays in the directory as a *deferring entry* (mail to it waits, as virtual(8) defers a bad uid,
//! virtual(8) V9), everything else that is valid is served.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::{Selector, SelectorExt};
use kube::{Resource, ResourceExt};
use serde::{Deserialize, Serialize};

use crate::address::{self, fold};
use crate::contract;
use crate::directory::{
    AliasEntry, Autoreply, Deferral, Directory, Domain, MailboxEntry, Settings, Table,
};
use crate::quantity;
use crate::resources::{MailAlias, MailDomain, MailServer, Mailbox, MailboxFormat};

/// Why an object is not (fully) served. The names are stable: they are condition reasons,
/// Event reasons and metric labels.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Another, older object already claims this address.
    AddressConflict,
    /// Another, older MailDomain already claims this domain, or another MailServer selects it
    /// too.
    DomainConflict,
    /// Another, older mailbox uses this path, or one path lies inside the other.
    PathConflict,
    /// Absolute path, `.`/`..`/empty component, NUL, or a path that disagrees with the format.
    InvalidPath,
    /// uid or gid missing, 0, or uid below `minimumUid`.
    InvalidOwner,
    /// Quota is not a valid quantity.
    InvalidQuota,
    /// Address or domain syntax is invalid.
    InvalidAddress,
    /// The address's domain is served by no MailDomain.
    UnknownDomain,
    /// Aliases that expand into each other.
    AliasLoop,
    /// The domain's postmaster address is unusable.
    InvalidPostmaster,
    /// The domain's catch-all names no mailbox of the domain.
    UnknownCatchAll,
    /// A MailAlias pattern that is not a usable regular expression (syntax, length, size).
    InvalidPattern,
    /// A Mailbox's autoreply cannot be sent: its MailServer declares no outbound path, or the
    /// autoreply itself is invalid. Mail is delivered; no reply is sent.
    AutoreplyRefused,
}

impl Reason {
    /// The stable PascalCase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::AddressConflict => "AddressConflict",
            Reason::DomainConflict => "DomainConflict",
            Reason::PathConflict => "PathConflict",
            Reason::InvalidPath => "InvalidPath",
            Reason::InvalidOwner => "InvalidOwner",
            Reason::InvalidQuota => "InvalidQuota",
            Reason::InvalidAddress => "InvalidAddress",
            Reason::UnknownDomain => "UnknownDomain",
            Reason::AliasLoop => "AliasLoop",
            Reason::InvalidPostmaster => "InvalidPostmaster",
            Reason::UnknownCatchAll => "UnknownCatchAll",
            Reason::InvalidPattern => "InvalidPattern",
            Reason::AutoreplyRefused => "AutoreplyRefused",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Kind of a virtmail object.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `MailServer`
    MailServer,
    /// `MailDomain`
    MailDomain,
    /// `Mailbox`
    Mailbox,
    /// `MailAlias`
    MailAlias,
}

impl Kind {
    /// The Kubernetes kind name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::MailServer => "MailServer",
            Kind::MailDomain => "MailDomain",
            Kind::Mailbox => "Mailbox",
            Kind::MailAlias => "MailAlias",
        }
    }
}

/// A reference to one object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    /// Kind.
    pub kind: Kind,
    /// `metadata.name`.
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.as_str(), self.name)
    }
}

/// What a diagnostic means for the object's mail.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// In the directory, but mail to it is deferred (4.3.5) until it is fixed.
    Deferring,
    /// Not in the directory.
    Excluded,
    /// Served, with one feature off (e.g. a domain without its catch-all).
    Degraded,
}

/// A problem with one object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The object.
    pub object: ObjectRef,
    /// Stable reason.
    pub reason: Reason,
    /// What is wrong, for people.
    pub message: String,
    /// What it means for mail.
    pub effect: Effect,
}

/// Output of [`compile`].
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    /// The directory.
    pub directory: Directory,
    /// One entry per problem, in input order within each kind.
    pub diagnostics: Vec<Diagnostic>,
    /// Every object that belongs to this server (served or diagnosed), sorted (kind, then
    /// name), so that an in-place change finds and places a member by binary search.
    pub members: Vec<ObjectRef>,
    /// Domains this server selects but an older MailServer of the namespace serves.
    pub ceded: Vec<CededDomain>,
}

/// A domain two MailServers select: the older one serves it, the other cedes it (two servers
/// with their own volumes would each hold part of a mailbox's mail).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CededDomain {
    /// The MailDomain object.
    pub object: String,
    /// The domain name.
    pub domain: String,
    /// The MailServer that serves it.
    pub served_by: String,
}

impl Compiled {
    /// The first diagnostic of an object, if any.
    pub fn diagnostic(&self, object: &ObjectRef) -> Option<&Diagnostic> {
        self.diagnostics.iter().find(|d| &d.object == object)
    }
}

/// Everything in a MailServer's namespace that the compiler looks at, borrowed (the operator
/// compiles straight from its caches: at 100,000 Mailboxes a copy would double its memory).
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The server.
    pub server: &'a MailServer,
    /// Every MailServer of the namespace (this one may be among them): a domain several of
    /// them select is served by the oldest only.
    pub servers: Objects<'a, MailServer>,
    /// All MailDomains of the namespace (the compiler applies the server's selector).
    pub domains: Objects<'a, MailDomain>,
    /// All Mailboxes of the namespace.
    pub mailboxes: Objects<'a, Mailbox>,
    /// All MailAliases of the namespace.
    pub aliases: Objects<'a, MailAlias>,
}

/// A borrowed list of objects: a plain slice (manifests) or the shared objects of a cache.
#[derive(Debug)]
pub enum Objects<'a, T> {
    /// Objects owned by the caller.
    Slice(&'a [T]),
    /// Objects shared with a cache (kube's reflector stores hand out `Arc`s).
    Shared(&'a [std::sync::Arc<T>]),
}

impl<T> Clone for Objects<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Objects<'_, T> {}

impl<'a, T> Objects<'a, T> {
    /// The objects, in list order.
    pub fn iter(&self) -> impl Iterator<Item = &'a T> + 'a {
        let (slice, shared): (&'a [T], &'a [std::sync::Arc<T>]) = match *self {
            Objects::Slice(s) => (s, &[]),
            Objects::Shared(s) => (&[], s),
        };
        slice.iter().chain(shared.iter().map(|o| &**o))
    }

    /// How many.
    pub fn len(&self) -> usize {
        match self {
            Objects::Slice(s) => s.len(),
            Objects::Shared(s) => s.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<'a, T> From<&'a [T]> for Objects<'a, T> {
    fn from(objects: &'a [T]) -> Self {
        Objects::Slice(objects)
    }
}

impl<'a, T> From<&'a Vec<T>> for Objects<'a, T> {
    fn from(objects: &'a Vec<T>) -> Self {
        Objects::Slice(objects)
    }
}

impl<'a, T> From<&'a [std::sync::Arc<T>]> for Objects<'a, T> {
    fn from(objects: &'a [std::sync::Arc<T>]) -> Self {
        Objects::Shared(objects)
    }
}

impl<'a, T> From<&'a Vec<std::sync::Arc<T>>> for Objects<'a, T> {
    fn from(objects: &'a Vec<std::sync::Arc<T>>) -> Self {
        Objects::Shared(objects)
    }
}

/// Server settings from a MailServer spec.
pub fn settings(server: &MailServer) -> Settings {
    let spec = &server.spec;
    Settings {
        server: server.name_any(),
        mailbox_base: spec.mailbox_base.trim_end_matches('/').to_string(),
        minimum_uid: spec.minimum_uid.max(1),
        mailbox_lock: spec.mailbox_lock.clone(),
        mailbox_size_limit: spec.mailbox_size_limit,
        recipient_delimiter: spec.recipient_delimiter.clone(),
    }
}

/// Objects oldest first: by creation time, then by input order (files have no creation time).
/// Objects from the API tie on creation time (one-second resolution) and arrive in cache order,
/// which differs between processes: ties are broken by name, so every replica picks the same
/// winner. Input order decides only among objects without a creation time (files).
/// The objects in `server`'s namespace (all of them when either has none, as in manifests),
/// in the order in which older objects win: creation time, then file order, then name.
/// Whether an object is in `namespace` (every object is when either has none, as in manifests).
fn in_namespace(namespace: Option<&str>, meta: &ObjectMeta) -> bool {
    match (namespace, meta.namespace.as_deref()) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

fn oldest_first<'a, K: Resource>(server: &MailServer, objects: Objects<'a, K>) -> Vec<&'a K> {
    let namespace = server.meta().namespace.as_deref();
    let mut sorted: Vec<(usize, &K)> = objects
        .iter()
        .enumerate()
        .filter(|(_, o)| in_namespace(namespace, o.meta()))
        .collect();
    sorted.sort_by(|(ia, a), (ib, b)| {
        let key = |index: usize, o: &'a K| {
            let created = o.meta().creation_timestamp.as_ref().map(|t| t.0);
            let file_order = if created.is_some() { 0 } else { index };
            (created, file_order, o.meta().name.as_deref())
        };
        key(*ia, a).cmp(&key(*ib, b))
    });
    sorted.into_iter().map(|(_, o)| o).collect()
}

struct Compiler<'a> {
    inputs: Inputs<'a>,
    directory: Directory,
    diagnostics: Vec<Diagnostic>,
    members: Vec<ObjectRef>,
    ceded: Vec<CededDomain>,
    /// Domains of every MailDomain in the namespace, selected by this server or not.
    known_domains: BTreeSet<String>,
    /// Default owner/format/quota per served domain.
    domain_specs: BTreeMap<String, &'a MailDomain>,
}

/// Compile one server's directory. Pure and deterministic.
pub fn compile(inputs: Inputs<'_>) -> Compiled {
    let mut compiler = Compiler::new(inputs, settings(inputs.server));
    compiler.domains();
    compiler.mailboxes();
    compiler.aliases();
    compiler.postmasters();
    compiler.catch_alls();
    compiler.alias_loops();
    compiler.pattern_loops();
    compiler.members.sort_unstable();
    compiler.members.dedup();
    Compiled {
        directory: compiler.directory,
        diagnostics: compiler.diagnostics,
        members: compiler.members,
        ceded: compiler.ceded,
    }
}

impl<'a> Compiler<'a> {
    fn new(inputs: Inputs<'a>, settings: Settings) -> Compiler<'a> {
        Compiler {
            inputs,
            directory: Directory {
                settings,
                domains: Table::new(),
                mailboxes: Table::new(),
                aliases: Table::new(),
            },
            diagnostics: Vec::new(),
            members: Vec::new(),
            ceded: Vec::new(),
            known_domains: BTreeSet::new(),
            domain_specs: BTreeMap::new(),
        }
    }

    fn diagnose(&mut self, object: ObjectRef, reason: Reason, effect: Effect, message: String) {
        self.diagnostics.push(Diagnostic {
            object,
            reason,
            message,
            effect,
        });
    }

    fn domains(&mut self) {
        let server = self.inputs.server;
        let selector = domain_selector(server);
        // The namespace's live servers in the order objects always win in (oldest first). A
        // server not among them (a cache that has not seen it yet) counts as the youngest: a new
        // server never takes a domain from an existing one.
        let servers: Vec<(&MailServer, Option<Selector>)> =
            oldest_first(server, self.inputs.servers)
                .into_iter()
                .filter(|s| s.meta().deletion_timestamp.is_none())
                .map(|s| (s, domain_selector(s)))
                .collect();
        let own = servers
            .iter()
            .position(|(s, _)| s.name_any() == server.name_any())
            .unwrap_or(servers.len());
        let (older, younger) = (&servers[..own], servers.get(own + 1..).unwrap_or_default());
        for domain in oldest_first(server, self.inputs.domains) {
            let name = fold(&domain.spec.domain);
            self.known_domains.insert(name.clone());
            if !selects(&selector, domain.labels()) {
                continue;
            }
            let claims = |(_, s): &&(&MailServer, Option<Selector>)| selects(s, domain.labels());
            if let Some((owner, _)) = older.iter().find(claims) {
                self.ceded.push(CededDomain {
                    object: domain.name_any(),
                    domain: name,
                    served_by: owner.name_any(),
                });
                continue;
            }
            let object = ObjectRef {
                kind: Kind::MailDomain,
                name: domain.name_any(),
            };
            self.members.push(object.clone());
            let rivals: Vec<String> = younger
                .iter()
                .filter(claims)
                .map(|(s, _)| format!("MailServer/{}", s.name_any()))
                .collect();
            if !rivals.is_empty() {
                let message = format!(
                    "also selected by {}, which leaves it to MailServer/{} (the oldest); narrow their domainSelectors",
                    rivals.join(", "),
                    server.name_any()
                );
                self.diagnose(
                    object.clone(),
                    Reason::DomainConflict,
                    Effect::Degraded,
                    message,
                );
            }
            if !address::valid_domain(&name) {
                self.diagnose(
                    object,
                    Reason::InvalidAddress,
                    Effect::Excluded,
                    format!("{:?} is not a valid domain name", domain.spec.domain),
                );
                continue;
            }
            if let Some(existing) = self.directory.domains.get(&name) {
                let message = format!(
                    "domain {name} is already defined by MailDomain/{}",
                    existing.object
                );
                self.diagnose(object, Reason::DomainConflict, Effect::Excluded, message);
                continue;
            }
            self.directory.domains.insert(
                name.clone(),
                Domain {
                    postmaster: domain.spec.postmaster.clone(),
                    catch_all: None,
                    object: object.name.clone(),
                },
            );
            self.domain_specs.insert(name, domain);
        }
    }

    /// Decide whether an address belongs to this server. `Err(())` means skip the object; a
    /// diagnostic has been recorded when the object is invalid for every server.
    fn claim_address(
        &mut self,
        object: &ObjectRef,
        raw: &str,
        allow_at_domain: bool,
    ) -> Result<String, ()> {
        let folded = fold(raw);
        let syntax_ok = match address::split(&folded) {
            Some(("", domain)) => allow_at_domain && address::valid_domain(domain),
            Some(_) => address::valid_address(&folded),
            None => false,
        };
        if !syntax_ok {
            self.members.push(object.clone());
            self.diagnose(
                object.clone(),
                Reason::InvalidAddress,
                Effect::Excluded,
                format!("{raw:?} is not a valid address"),
            );
            return Err(());
        }
        let domain = address::split(&folded).map(|(_, d)| d).unwrap_or_default();
        if !self.directory.domains.contains_key(domain) {
            if !self.known_domains.contains(domain) {
                self.members.push(object.clone());
                self.diagnose(
                    object.clone(),
                    Reason::UnknownDomain,
                    Effect::Excluded,
                    format!("no MailDomain serves {domain}"),
                );
            }
            // Otherwise the domain belongs to another server (or lost a DomainConflict, which is
            // reported on the MailDomain).
            return Err(());
        }
        self.members.push(object.clone());
        Ok(folded)
    }

    fn mailboxes(&mut self) {
        let server = self.inputs.server;
        let mut claimed_paths: BTreeMap<String, String> = BTreeMap::new();
        for mailbox in oldest_first(server, self.inputs.mailboxes) {
            let object = ObjectRef {
                kind: Kind::Mailbox,
                name: mailbox.name_any(),
            };
            let Ok(key) = self.claim_address(&object, &mailbox.spec.address, false) else {
                continue;
            };
            if let Some(existing) = self.directory.mailboxes.get(&key) {
                let message = address_taken(&key, &existing.object);
                self.diagnose(object, Reason::AddressConflict, Effect::Excluded, message);
                continue;
            }
            let (entry, problem) = self.mailbox_entry(&key, mailbox, &object);
            let problem = problem.or_else(|| {
                let names = claimed_names(&entry.path, entry.format);
                let conflict = names.iter().find_map(|(name, what)| {
                    path_overlap(&claimed_paths, name).map(|other| (name, *what, other))
                });
                match conflict {
                    Some((name, what, other)) => Some((
                        Reason::PathConflict,
                        if what == "the path" {
                            format!("path {} overlaps {other}", entry.path)
                        } else {
                            format!(
                                "{} {name} (a name the agent uses beside path {}) overlaps {other}",
                                what.trim_start_matches("the "),
                                entry.path
                            )
                        },
                    )),
                    None => {
                        for (name, what) in names {
                            claimed_paths
                                .insert(name, format!("{what} of Mailbox/{}", object.name));
                        }
                        None
                    }
                }
            });
            let entry = self.settle_mailbox(object, entry, problem, mailbox);
            self.directory.mailboxes.insert(key, entry);
        }
    }

    /// A mailbox entry with its first problem (a deferring entry), or else its automatic reply,
    /// and the diagnostic either gets.
    fn settle_mailbox(
        &mut self,
        object: ObjectRef,
        mut entry: MailboxEntry,
        problem: Option<(Reason, String)>,
        mailbox: &Mailbox,
    ) -> MailboxEntry {
        if let Some((reason, message)) = problem {
            entry.defer = Some(Box::new(Deferral {
                reason,
                message: message.clone(),
            }));
            self.diagnose(object, reason, Effect::Deferring, message);
        } else if let Some(spec) = &mailbox.spec.autoreply {
            match self.autoreply(spec) {
                Ok(autoreply) => entry.autoreply = Some(Box::new(autoreply)),
                Err(message) => {
                    self.diagnose(object, Reason::AutoreplyRefused, Effect::Degraded, message)
                }
            }
        }
        entry
    }

    /// Build a mailbox entry; the first problem found makes it a deferring entry.
    fn mailbox_entry(
        &self,
        key: &str,
        mailbox: &Mailbox,
        object: &ObjectRef,
    ) -> (MailboxEntry, Option<(Reason, String)>) {
        let spec = &mailbox.spec;
        let (local, domain) = address::split(key).unwrap_or_default();
        let defaults = self
            .domain_specs
            .get(domain)
            .and_then(|d| d.spec.defaults.as_ref());
        let format = spec
            .format
            .or_else(|| spec.path.as_ref().map(|p| path_format(p)))
            .or_else(|| defaults.and_then(|d| d.format))
            .unwrap_or(MailboxFormat::Maildir);
        let path = match &spec.path {
            Some(path) => path.clone(),
            None => match format {
                MailboxFormat::Maildir => format!("{domain}/{local}/"),
                MailboxFormat::Mbox => format!("{domain}/{local}"),
            },
        };
        let uid = spec.uid.or_else(|| defaults.and_then(|d| d.uid));
        let gid = spec.gid.or_else(|| defaults.and_then(|d| d.gid));
        let quota = spec
            .quota
            .as_ref()
            .or_else(|| defaults.and_then(|d| d.quota.as_ref()));
        let mut problem = check_path(&path, format).map(|m| (Reason::InvalidPath, m));
        if problem.is_none() {
            problem = self
                .check_owner(uid, gid)
                .or_else(|| self.check_domain_range(domain, uid, gid))
                .map(|m| (Reason::InvalidOwner, m));
        }
        let quota = match quota.map(quantity::parse_bytes) {
            Some(Ok(bytes)) => Some(bytes),
            Some(Err(message)) => {
                problem.get_or_insert((Reason::InvalidQuota, message));
                None
            }
            None => None,
        };
        let entry = MailboxEntry {
            path,
            format,
            uid: uid.unwrap_or(0),
            gid: gid.unwrap_or(0),
            quota,
            suspended: spec.suspended,
            defer: None,
            object: object.name.clone(),
            autoreply: None,
        };
        (entry, problem)
    }

    /// The directory form of a Mailbox's autoreply, or why it is refused (the mailbox itself is
    /// served either way).
    fn autoreply(&self, spec: &crate::resources::AutoreplySpec) -> Result<Autoreply, String> {
        match &self.inputs.server.spec.outbound {
            None => {
                return Err(format!(
                    "MailServer/{} declares no outbound path (spec.outbound.relayHost): no reply \
                     could leave, so none is sent",
                    self.inputs.server.name_any()
                ));
            }
            Some(outbound) if !crate::resources::valid_relay_host(&outbound.relay_host) => {
                return Err(format!(
                    "MailServer/{}'s outbound.relayHost {:?} is not host, host:port, [host] or \
                     [host]:port",
                    self.inputs.server.name_any(),
                    outbound.relay_host
                ));
            }
            Some(_) => {}
        }
        if spec.body.trim().is_empty() {
            return Err("autoreply.body is empty".into());
        }
        if spec.body.len() > MAX_AUTOREPLY_BODY {
            return Err(format!(
                "autoreply.body is longer than {MAX_AUTOREPLY_BODY} bytes"
            ));
        }
        if let Some(subject) = &spec.subject
            && (subject.chars().any(char::is_control) || subject.chars().count() > 256)
        {
            return Err("autoreply.subject must be one line of at most 256 characters".into());
        }
        let interval_seconds = match spec.interval.as_deref() {
            None => 7 * 86_400,
            Some(text) => parse_interval(text).ok_or_else(|| {
                format!("autoreply.interval {text:?} is not a number of hours (h) or days (d) of at least 1h")
            })?,
        };
        let start = spec.start.as_ref().map(|t| t.0.as_second());
        let end = spec.end.as_ref().map(|t| t.0.as_second());
        if let (Some(start), Some(end)) = (start, end)
            && end <= start
        {
            return Err("autoreply.end is not after autoreply.start".into());
        }
        Ok(Autoreply {
            subject: spec.subject.clone(),
            body: spec.body.clone(),
            start,
            end,
            interval_seconds,
        })
    }

    /// The MailDomain's `uidRange`/`gidRange`, set by whoever may create the domain, bound the
    /// owners its Mailboxes may name.
    fn check_domain_range(
        &self,
        domain: &str,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Option<String> {
        let spec = &self.domain_specs.get(domain)?.spec;
        let object = self
            .directory
            .domains
            .get(domain)
            .map(|d| d.object.as_str())
            .unwrap_or(domain);
        let outside = |id: Option<u32>, range: Option<crate::resources::IdRange>, what: &str| {
            let (id, range) = (id?, range?);
            (!range.contains(id)).then(|| {
                format!(
                    "{what} {id} is outside MailDomain/{object}'s {what}Range {}-{}",
                    range.min, range.max
                )
            })
        };
        outside(uid, spec.uid_range, "uid").or_else(|| outside(gid, spec.gid_range, "gid"))
    }

    fn check_owner(&self, uid: Option<u32>, gid: Option<u32>) -> Option<String> {
        let minimum = self.directory.settings.minimum_uid;
        match (uid, gid) {
            (None, _) => {
                Some("no uid: set uid on the Mailbox or defaults.uid on its MailDomain".into())
            }
            (_, None) => {
                Some("no gid: set gid on the Mailbox or defaults.gid on its MailDomain".into())
            }
            (Some(0), _) => Some("uid 0 is never accepted".into()),
            (_, Some(0)) => Some("gid 0 is never accepted".into()),
            (Some(uid), _) if uid < minimum => Some(format!(
                "uid {uid} is below the server's minimumUid {minimum}"
            )),
            (Some(u32::MAX), _) | (_, Some(u32::MAX)) => {
                Some("uid/gid 4294967295 is reserved".into())
            }
            _ => None,
        }
    }

    fn aliases(&mut self) {
        let server = self.inputs.server;
        for alias in oldest_first(server, self.inputs.aliases) {
            let object = ObjectRef {
                kind: Kind::MailAlias,
                name: alias.name_any(),
            };
            let Ok(key) = self.claim_address(&object, &alias.spec.address, true) else {
                continue;
            };
            let key = match &alias.spec.pattern {
                None => key,
                Some(pattern) => match self.pattern_key(&object, &key, pattern) {
                    Some(key) => key,
                    None => continue,
                },
            };
            if let Some(existing) = self.directory.aliases.get(&key) {
                let message = alias_taken(&key, existing.object.as_deref().unwrap_or("?"));
                self.diagnose(object, Reason::AddressConflict, Effect::Excluded, message);
                continue;
            }
            let bad: Vec<&String> = alias
                .spec
                .to
                .iter()
                .filter(|t| !address::valid_address(t))
                .collect();
            let defer = if alias.spec.to.is_empty() {
                Some(Deferral {
                    reason: Reason::InvalidAddress,
                    message: "to is empty".into(),
                })
            } else if !bad.is_empty() {
                Some(Deferral {
                    reason: Reason::InvalidAddress,
                    message: format!("invalid destination address {:?}", bad[0]),
                })
            } else {
                None
            };
            if let Some(d) = &defer {
                self.diagnose(
                    object.clone(),
                    d.reason,
                    Effect::Deferring,
                    d.message.clone(),
                );
            }
            self.directory.aliases.insert(
                key,
                AliasEntry {
                    to: alias.spec.to.clone(),
                    defer,
                    object: Some(object.name),
                },
            );
        }
    }

    /// The alias-table key of a pattern alias claimed at `@domain` (`claimed`), or `None` after
    /// a diagnostic. Aliases come oldest first, so numbering them per domain in this order makes
    /// the oldest matching pattern win; the same pattern twice is an `AddressConflict`.
    fn pattern_key(&mut self, object: &ObjectRef, claimed: &str, pattern: &str) -> Option<String> {
        let Some(domain) = claimed.strip_prefix('@') else {
            self.diagnose(
                object.clone(),
                Reason::InvalidPattern,
                Effect::Excluded,
                format!("a pattern alias names its domain as address ('@<domain>'), not {claimed}"),
            );
            return None;
        };
        if let Err(message) = crate::directory::pattern::compile(pattern) {
            self.diagnose(
                object.clone(),
                Reason::InvalidPattern,
                Effect::Excluded,
                format!("pattern {pattern:?}: {message}"),
            );
            return None;
        }
        let prefix = crate::directory::pattern::key_prefix(domain);
        let existing = self
            .directory
            .aliases
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .find(|(k, _)| crate::directory::pattern::key_pattern(k) == Some(pattern));
        if let Some((_, entry)) = existing {
            let message = format!(
                "pattern {pattern:?} of @{domain} is already defined by MailAlias/{}",
                entry.object.as_deref().unwrap_or("?")
            );
            self.diagnose(
                object.clone(),
                Reason::AddressConflict,
                Effect::Excluded,
                message,
            );
            return None;
        }
        let order = self
            .directory
            .aliases
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .count();
        if order >= crate::directory::pattern::MAX_PATTERNS_PER_DOMAIN {
            self.diagnose(
                object.clone(),
                Reason::InvalidPattern,
                Effect::Excluded,
                format!(
                    "@{domain} already has {} patterns, the most a domain may have",
                    crate::directory::pattern::MAX_PATTERNS_PER_DOMAIN
                ),
            );
            return None;
        }
        Some(crate::directory::pattern::key(domain, order, pattern))
    }

    /// Pattern aliases whose targets (addresses without an entry of their own) fall into a
    /// pattern that leads back to them would expand forever: they defer as loops.
    fn pattern_loops(&mut self) {
        use crate::directory::pattern::key_pattern;
        let keys: Vec<String> = self
            .directory
            .aliases
            .keys()
            .filter(|k| key_pattern(k).is_some())
            .cloned()
            .collect();
        let index: HashMap<&str, usize> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.as_str(), i))
            .collect();
        let mut self_loops: Vec<Option<String>> = vec![None; keys.len()];
        let edges: Vec<Vec<usize>> = keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let entry = &self.directory.aliases[key];
                let mut out = Vec::new();
                for target in &entry.to {
                    let found = self.directory.find_alias(&fold(target));
                    if let Some(&j) = found.and_then(|f| index.get(f.key)) {
                        if i == j {
                            self_loops[i].get_or_insert_with(|| target.clone());
                        } else {
                            out.push(j);
                        }
                    }
                }
                out
            })
            .collect();
        let in_cycle = cyclic_nodes(&edges);
        let looping: Vec<(String, String)> = keys
            .iter()
            .enumerate()
            .filter_map(|(i, key)| {
                let via = self_loops[i]
                    .clone()
                    .or_else(|| in_cycle[i].then(|| "another pattern alias".to_string()))?;
                Some((key.clone(), via))
            })
            .collect();
        for (key, target) in looping {
            let message = format!(
                "pattern alias {key} expands back into a pattern through {target}: mail would expand forever"
            );
            self.defer_alias_loop(&key, message);
        }
    }

    /// `postmaster@<domain>` is implied as an alias to the domain's postmaster unless a Mailbox
    /// or MailAlias defines it (Postfix's VIRTUAL_README: every domain needs a postmaster contact).
    fn postmasters(&mut self) {
        let mut implied = Vec::new();
        for (name, domain) in &self.directory.domains {
            let key = format!("postmaster@{name}");
            if self.directory.mailboxes.contains_key(&key)
                || self.directory.aliases.contains_key(&key)
            {
                continue;
            }
            let object = ObjectRef {
                kind: Kind::MailDomain,
                name: domain.object.clone(),
            };
            let target = fold(&domain.postmaster);
            let problem = if !address::valid_address(&target) {
                Some(format!(
                    "postmaster {:?} is not a valid address",
                    domain.postmaster
                ))
            } else if target == key {
                Some(format!(
                    "postmaster is {key} itself but no Mailbox or MailAlias defines it"
                ))
            } else {
                None
            };
            match problem {
                Some(message) => self.diagnostics.push(Diagnostic {
                    object,
                    reason: Reason::InvalidPostmaster,
                    message,
                    effect: Effect::Degraded,
                }),
                None => implied.push((
                    key,
                    AliasEntry {
                        to: vec![domain.postmaster.clone()],
                        defer: None,
                        object: None,
                    },
                )),
            }
        }
        self.directory.aliases.extend(implied);
    }

    fn catch_alls(&mut self) {
        for (name, spec) in &self.domain_specs {
            let Some(local) = &spec.spec.catch_all else {
                continue;
            };
            let key = format!("{}@{name}", fold(local));
            if self.directory.mailboxes.contains_key(&key) {
                if let Some(domain) = self.directory.domains.get_mut(name) {
                    domain.catch_all = Some(key);
                }
            } else {
                self.diagnostics.push(Diagnostic {
                    object: ObjectRef {
                        kind: Kind::MailDomain,
                        name: spec.name_any(),
                    },
                    reason: Reason::UnknownCatchAll,
                    message: format!("catchAll {key} is not a Mailbox of this server"),
                    effect: Effect::Degraded,
                });
            }
        }
    }

    /// Aliases that expand into each other (a cycle of two or more; listing oneself is the
    /// "keep a copy" idiom and allowed) become deferring entries.
    fn alias_loops(&mut self) {
        let keys: Vec<&String> = self.directory.aliases.keys().collect();
        let index: HashMap<&str, usize> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.as_str(), i))
            .collect();
        let edges: Vec<Vec<usize>> = self
            .directory
            .aliases
            .iter()
            .map(|(key, entry)| {
                entry
                    .to
                    .iter()
                    .map(|t| fold(t))
                    .filter(|t| t != key)
                    .filter_map(|t| index.get(t.as_str()).copied())
                    .collect()
            })
            .collect();
        let in_cycle = cyclic_nodes(&edges);
        let looping: Vec<String> = keys
            .iter()
            .zip(&in_cycle)
            .filter(|(_, c)| **c)
            .map(|(k, _)| (*k).clone())
            .collect();
        for key in looping {
            let message = format!("{key} expands back into itself through other aliases");
            self.defer_alias_loop(&key, message);
        }
    }

    /// Keep an alias of a loop as a deferring entry (mail to it waits for the fix) and report
    /// the loop on its MailAlias.
    fn defer_alias_loop(&mut self, key: &str, message: String) {
        let Some(entry) = self.directory.aliases.get_mut(key) else {
            return;
        };
        entry.defer = Some(Deferral {
            reason: Reason::AliasLoop,
            message: message.clone(),
        });
        if let Some(name) = entry.object.clone() {
            self.diagnose(
                ObjectRef {
                    kind: Kind::MailAlias,
                    name,
                },
                Reason::AliasLoop,
                Effect::Deferring,
                message,
            );
        }
    }
}

/// Largest autoreply body, in bytes.
pub const MAX_AUTOREPLY_BODY: usize = 65_536;

/// An autoreply interval, `<n>h` or `<n>d`, in seconds; `None` if malformed or under an hour.
fn parse_interval(text: &str) -> Option<u64> {
    let (number, unit) = text.split_at(text.len().checked_sub(1)?);
    let number: u64 = number.parse().ok()?;
    let seconds = match unit {
        "h" => number.checked_mul(3600)?,
        "d" => number.checked_mul(86_400)?,
        _ => return None,
    };
    (seconds >= 3600).then_some(seconds)
}

/// A MailServer's `domainSelector`, parsed once per compile. Absent, it selects every domain
/// (an empty selector); one kube cannot parse (an unknown operator, `In` without values) is
/// `None` and selects none, so a typo never widens a selection.
fn domain_selector(server: &MailServer) -> Option<Selector> {
    match &server.spec.domain_selector {
        None => Some(Selector::default()),
        Some(selector) => Selector::try_from(selector.clone()).ok(),
    }
}

/// Whether a parsed `domainSelector` selects a MailDomain with these labels, as the apiserver
/// matches label selectors.
fn selects(selector: &Option<Selector>, labels: &BTreeMap<String, String>) -> bool {
    selector.as_ref().is_some_and(|s| s.matches(labels))
}

/// The format a path implies: a trailing `/` means Maildir.
pub fn path_format(path: &str) -> MailboxFormat {
    if path.ends_with('/') {
        MailboxFormat::Maildir
    } else {
        MailboxFormat::Mbox
    }
}

/// Check a relative mailbox path; `Some(message)` when invalid.
pub fn check_path(path: &str, format: MailboxFormat) -> Option<String> {
    if let Err(problem) = contract::check_mailbox_path(path) {
        return Some(format!("path {path:?} {}", problem.describe()));
    }
    if path_format(path) != format {
        return Some(format!(
            "path {path:?} {} but format is {format:?}: a trailing '/' means Maildir",
            if path.ends_with('/') {
                "ends in '/'"
            } else {
                "does not end in '/'"
            }
        ));
    }
    None
}

/// Every name the agent creates beside a mailbox, relative to the base like `path`, with what
/// it is: for an mbox `d/bob`, its dotlock `d/bob.lock`, its append journal
/// `d/.bob.virtmail-append` and its autoreply state `d/.bob.virtmail-autoreply`. A Maildir's work files (`tmp/…`, `maildirsize`) lie inside its own
/// directory, which nested-path checking already covers. The compiler reserves these names: a
/// mailbox on one of them could be deferred forever by the other's lock, or removed as a stale
/// lock when both share a uid.
fn derived_names(path: &str, format: MailboxFormat) -> Vec<(String, &'static str)> {
    match format {
        MailboxFormat::Maildir => Vec::new(),
        MailboxFormat::Mbox => {
            let (parent, leaf) = match path.rsplit_once('/') {
                Some((parent, leaf)) => (format!("{parent}/"), leaf),
                None => (String::new(), path),
            };
            vec![
                (
                    format!("{parent}{}", contract::dotlock_name(leaf)),
                    "the dotlock",
                ),
                (
                    format!("{parent}{}", contract::journal_name(leaf)),
                    "the append journal",
                ),
                (
                    format!("{parent}{}", contract::autoreply_state_name(leaf)),
                    "the autoreply state",
                ),
            ]
        }
    }
}

/// Why a Mailbox lost its address to an older one (`holder`).
fn address_taken(key: &str, holder: &str) -> String {
    format!("{key} is already defined by Mailbox/{holder}")
}

/// Why a MailAlias lost its address to an older one (`holder`).
fn alias_taken(key: &str, holder: &str) -> String {
    format!("{key} is already defined by MailAlias/{holder}")
}

/// What a mailbox at `path` claims: the path and every name the agent derives from it. None
/// may touch another mailbox's path or derived names.
fn claimed_names(path: &str, format: MailboxFormat) -> Vec<(String, &'static str)> {
    let mut names = vec![(path.trim_end_matches('/').to_string(), "the path")];
    names.extend(derived_names(path, format));
    names
}

/// The owner of a claimed path equal to, inside, or containing `path`.
fn path_overlap(claimed: &BTreeMap<String, String>, path: &str) -> Option<String> {
    if let Some(owner) = claimed.get(path) {
        return Some(owner.clone());
    }
    // An ancestor of `path` is claimed?
    let mut end = path.len();
    while let Some(slash) = path[..end].rfind('/') {
        if let Some(owner) = claimed.get(&path[..slash]) {
            return Some(owner.clone());
        }
        end = slash;
    }
    // A descendant of `path` is claimed?
    let prefix = format!("{path}/");
    claimed
        .range(prefix.clone()..)
        .next()
        .filter(|(k, _)| k.starts_with(&prefix))
        .map(|(_, owner)| owner.clone())
}

/// Nodes that lie on a cycle of length ≥ 2 (iterative Tarjan, so 100,000 aliases do not
/// overflow the stack).
fn cyclic_nodes(edges: &[Vec<usize>]) -> Vec<bool> {
    const UNVISITED: usize = usize::MAX;
    let n = edges.len();
    let mut index = vec![UNVISITED; n];
    let mut low = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut result = vec![false; n];
    let mut next = 0;
    for root in 0..n {
        if index[root] != UNVISITED {
            continue;
        }
        let mut work: Vec<(usize, usize)> = vec![(root, 0)];
        index[root] = next;
        low[root] = next;
        next += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some(&mut (node, ref mut edge)) = work.last_mut() {
            if let Some(&target) = edges[node].get(*edge) {
                *edge += 1;
                if index[target] == UNVISITED {
                    index[target] = next;
                    low[target] = next;
                    next += 1;
                    stack.push(target);
                    on_stack[target] = true;
                    work.push((target, 0));
                } else if on_stack[target] {
                    low[node] = low[node].min(index[target]);
                }
                continue;
            }
            work.pop();
            if let Some(&(parent, _)) = work.last() {
                low[parent] = low[parent].min(low[node]);
            }
            if low[node] == index[node] {
                let mut component = Vec::new();
                while let Some(member) = stack.pop() {
                    on_stack[member] = false;
                    component.push(member);
                    if member == node {
                        break;
                    }
                }
                if component.len() > 1 {
                    for member in component {
                        result[member] = true;
                    }
                }
            }
        }
    }
    result
}

mod in_place;
pub use in_place::{NeedsFullCompile, recompile_alias, recompile_mailbox};

#[cfg(test)]
mod tests;
