//! Automatic replies (RFC 3834) for mailboxes with an `autoreply`.
//!
//! After a copy has been stored (its 250 is already decided), [`respond`] decides whether the
//! message deserves an answer ([`decide`], pure), records the sender in the mailbox's state file
//! (at most one reply per sender per interval), and hands the reply to the pod's own Postfix over
//! SMTP on loopback with a null envelope sender. Postfix queues it durably and sends it through
//! the MailServer's `outbound.relayHost`. Nothing here can change the original delivery's result:
//! every failure is logged and the reply is dropped.
//!
//! # Security
//!
//! Senders and message headers are untrusted. A reply goes only to the envelope sender, never to
//! a null, system (`MAILER-DAEMON`, `owner-*`, `*-request`, list servers) or own address, never
//! for mail that is automatic (`Auto-Submitted` other than `no`), bulk or list mail, or mail that
//! does not name the mailbox in To/Cc; and at most once per sender per interval, so the
//! autoresponder cannot be turned into a spam cannon. Text copied from the message into the reply
//! (subject, Message-ID, References) is checked or cleaned so it cannot add header lines.
//!
//! The state file lives on the volume beside (mbox) or inside (Maildir) the mailbox. It is opened
//! below the base with the containment rules (no symlinks, no escaping the base) under the
//! recipient's file system identity, so the kernel checks the recipient's permissions and the
//! file belongs to the recipient. It holds a bounded number of entries of bounded size
//! (`<unix time> <hash of the sender>`), never the addresses themselves.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::fs::{Mode, OFlags};
use sha2::{Digest, Sha256};
use virtmail_crds::address;
use virtmail_crds::directory::Autoreply;

use crate::deliver::{Format, Target};
use crate::fs::containment::open_beneath;
use crate::fs::identity::FsIdentity;
use crate::fs::layout::MAIL_FILE_MODE;
use crate::fs::lock;

/// Senders remembered per mailbox; the oldest are forgotten first.
pub const MAX_STATE_ENTRIES: usize = 1000;
/// Largest state file read (a longer one is treated as a fresh start after it is rewritten).
const MAX_STATE_BYTES: usize = 64 * 1024;
/// Header section examined for the decision.
const MAX_HEADER_BYTES: usize = 256 * 1024;

/// Where replies are handed to Postfix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    /// `host:port` of the pod's Postfix smtpd (loopback).
    pub address: String,
    /// Name in EHLO and in the reply's Message-ID.
    pub hostname: String,
    /// Connect and per-reply timeout.
    pub timeout: Duration,
}

/// Why no reply is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The envelope sender is null (`<>`).
    NullSender,
    /// `MAILER-DAEMON`, `owner-*`, `*-request`, `LISTSERV`, `majordomo`.
    SystemSender,
    /// The sender is the mailbox (or an address delivered to it) itself.
    OwnAddress,
    /// `Auto-Submitted` with a value other than `no`.
    AutoSubmitted,
    /// `Precedence: bulk`, `list` or `junk`.
    Bulk,
    /// A `List-*` header.
    MailingList,
    /// `X-Auto-Response-Suppress: All` or `OOF`.
    Suppressed,
    /// None of the mailbox's addresses is in To or Cc.
    NotAddressed,
    /// Before `start` or at/after `end`.
    OutsideWindow,
    /// This sender had a reply less than an interval ago.
    AlreadyAnswered,
}

impl Skip {
    /// For the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::NullSender => "null sender",
            Skip::SystemSender => "system sender",
            Skip::OwnAddress => "sender is the mailbox itself",
            Skip::AutoSubmitted => "Auto-Submitted",
            Skip::Bulk => "Precedence bulk/list/junk",
            Skip::MailingList => "mailing list headers",
            Skip::Suppressed => "X-Auto-Response-Suppress",
            Skip::NotAddressed => "mailbox not in To or Cc",
            Skip::OutsideWindow => "outside start/end",
            Skip::AlreadyAnswered => "sender answered within the interval",
        }
    }
}

/// The header fields of a message: unfolded, names lowercased, values decoded leniently (UTF-8,
/// invalid bytes replaced), up to the blank line.
pub fn headers(message: &[u8]) -> Vec<(String, String)> {
    let end = message
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|p| p + 1)
        .unwrap_or(message.len())
        .min(MAX_HEADER_BYTES);
    let text = String::from_utf8_lossy(&message[..end]);
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            fields.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    fields
}

fn header<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The folded address without its extension.
fn canonical(addr: &str, delimiter: &str) -> String {
    let folded = address::fold(addr);
    address::strip_extension(&folded, delimiter).unwrap_or(folded)
}

/// Addresses found in a header value (tokens with an `@`, brackets and display names dropped).
fn addresses_in(value: &str) -> impl Iterator<Item = &str> {
    value
        .split(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | '<' | '>' | '(' | ')' | '"'))
        .filter(|token| token.contains('@'))
}

/// Whether `sender` is a system address no person reads (RFC 3834 §2, RFC 5230 §4.6).
fn system_sender(sender: &str) -> bool {
    let local = sender.rsplit_once('@').map_or(sender, |(l, _)| l);
    let local = local.to_ascii_lowercase();
    matches!(local.as_str(), "mailer-daemon" | "listserv" | "majordomo")
        || local.starts_with("owner-")
        || local.ends_with("-request")
}

/// Whether this message gets a reply (before the once-per-interval rule). `mine` are the
/// addresses that reach this mailbox (its own, and the recipient as sent, before aliases).
pub fn decide(
    autoreply: &Autoreply,
    sender: &str,
    mine: &[&str],
    delimiter: &str,
    fields: &[(String, String)],
    now: i64,
) -> Result<(), Skip> {
    if sender.is_empty() {
        return Err(Skip::NullSender);
    }
    if system_sender(sender) {
        return Err(Skip::SystemSender);
    }
    let mine: Vec<String> = mine.iter().map(|a| canonical(a, delimiter)).collect();
    if mine.contains(&canonical(sender, delimiter)) {
        return Err(Skip::OwnAddress);
    }
    if autoreply.start.is_some_and(|start| now < start)
        || autoreply.end.is_some_and(|end| now >= end)
    {
        return Err(Skip::OutsideWindow);
    }
    for (name, value) in fields {
        let first_word = || {
            value
                .split([';', ' ', '\t', '('])
                .next()
                .unwrap_or("")
                .to_ascii_lowercase()
        };
        match name.as_str() {
            "auto-submitted" if first_word() != "no" => return Err(Skip::AutoSubmitted),
            "precedence" if matches!(first_word().as_str(), "bulk" | "list" | "junk") => {
                return Err(Skip::Bulk);
            }
            "list-id" | "list-help" | "list-subscribe" | "list-unsubscribe" | "list-post"
            | "list-owner" | "list-archive" => return Err(Skip::MailingList),
            "x-auto-response-suppress"
                if value
                    .split(',')
                    .map(|v| v.trim().to_ascii_lowercase())
                    .any(|v| v == "all" || v == "oof") =>
            {
                return Err(Skip::Suppressed);
            }
            _ => {}
        }
    }
    let addressed = fields
        .iter()
        .filter(|(name, _)| name == "to" || name == "cc")
        .flat_map(|(_, value)| addresses_in(value))
        .any(|a| mine.contains(&canonical(a, delimiter)));
    if !addressed {
        return Err(Skip::NotAddressed);
    }
    Ok(())
}

/// A header value copied from the message: one line, no control characters, bounded.
fn clean(value: &str, max: usize) -> String {
    value
        .chars()
        .filter(|c| !c.is_control())
        .take(max)
        .collect()
}

/// A message id copied into In-Reply-To/References only if it looks like one (`<...>`, no
/// spaces or controls).
fn message_ids(value: &str) -> Vec<String> {
    value
        .split_whitespace()
        .filter(|id| {
            id.len() <= 250
                && id.starts_with('<')
                && id.ends_with('>')
                && id.len() > 2
                && id[1..id.len() - 1]
                    .chars()
                    .all(|c| c.is_ascii_graphic() && c != '<' && c != '>')
        })
        .map(str::to_string)
        .collect()
}

/// An RFC 2047 encoded word (UTF-8, base64) for non-ASCII header text; ASCII as it is.
fn encode_word(text: &str) -> String {
    if text.is_ascii() {
        return text.to_string();
    }
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::from("=?UTF-8?B?");
    for chunk in text.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out.push_str("?=");
    out
}

/// The reply: headers of RFC 3834 §3 and §5 and the body, with LF line ends.
pub fn compose(
    autoreply: &Autoreply,
    mailbox: &str,
    sender: &str,
    fields: &[(String, String)],
    hostname: &str,
    now: SystemTime,
) -> Vec<u8> {
    let original_subject = header(fields, "subject").map(|s| clean(s, 200));
    let subject = match (&autoreply.subject, original_subject) {
        (Some(subject), _) => clean(subject, 256),
        (None, Some(original)) if !original.is_empty() => format!("Auto: {original}"),
        (None, _) => "Automatic reply".to_string(),
    };
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let date = jiff::Timestamp::from_second(since_epoch.as_secs() as i64)
        .map(|t| t.to_zoned(jiff::tz::TimeZone::UTC))
        .ok()
        .and_then(|z| jiff::fmt::rfc2822::to_string(&z).ok())
        .unwrap_or_default();
    let mut unique = Sha256::new();
    unique.update(since_epoch.as_nanos().to_be_bytes());
    unique.update(std::process::id().to_be_bytes());
    unique.update(sender.as_bytes());
    unique.update(mailbox.as_bytes());
    let unique = hex::encode(&unique.finalize()[..12]);
    let original_id = header(fields, "message-id")
        .map(message_ids)
        .and_then(|ids| ids.into_iter().next());
    let mut references = header(fields, "references")
        .map(message_ids)
        .unwrap_or_default();
    references.truncate(20);
    let mut text = format!(
        "From: <{mailbox}>\nTo: <{}>\nSubject: {}\nDate: {date}\nMessage-ID: <{}.{unique}@{hostname}>\n",
        address::quote_address(sender),
        encode_word(&subject),
        since_epoch.as_secs(),
    );
    if let Some(id) = &original_id {
        references.push(id.clone());
        text.push_str(&format!("In-Reply-To: {id}\n"));
    }
    if !references.is_empty() {
        text.push_str(&format!("References: {}\n", references.join(" ")));
    }
    text.push_str("Auto-Submitted: auto-replied\nMIME-Version: 1.0\n");
    text.push_str("Content-Type: text/plain; charset=utf-8\n");
    text.push_str(if autoreply.body.is_ascii() {
        "Content-Transfer-Encoding: 7bit\n"
    } else {
        "Content-Transfer-Encoding: 8bit\n"
    });
    text.push('\n');
    text.push_str(&autoreply.body.replace("\r\n", "\n"));
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.into_bytes()
}

/// The state file of `target`, relative to the base.
fn state_path(target: &Target) -> String {
    match target.format {
        Format::Maildir => format!(
            "{}{}",
            target.path,
            virtmail_crds::contract::MAILDIR_AUTOREPLY_STATE
        ),
        Format::Mbox => match target.path.rsplit_once('/') {
            Some((parent, leaf)) => format!(
                "{parent}/{}",
                virtmail_crds::contract::autoreply_state_name(leaf)
            ),
            None => virtmail_crds::contract::autoreply_state_name(&target.path),
        },
    }
}

/// The key a sender is remembered by: a hash, so the file holds no addresses.
fn sender_key(sender: &str) -> String {
    hex::encode(&Sha256::digest(address::fold(sender).as_bytes())[..16])
}

/// Entries `(unix time, sender key)` of a state file's text; malformed lines are dropped.
fn parse_state(text: &str) -> Vec<(i64, String)> {
    text.lines()
        .filter_map(|line| {
            let (time, key) = line.split_once(' ')?;
            let valid = key.len() == 32 && key.bytes().all(|b| b.is_ascii_hexdigit());
            Some((time.parse().ok()?, key.to_string())).filter(|_| valid)
        })
        .collect()
}

/// Record a reply to `sender` at `now` unless one was recorded less than `interval` ago: `true`
/// when the caller should send. With `forget`, remove the record again (a reply that could not
/// be handed over). Runs as the recipient, under an exclusive `flock` of the state file.
fn record(
    base: &OwnedFd,
    target: &Target,
    sender: &str,
    interval: u64,
    now: i64,
    forget: bool,
) -> Result<bool, String> {
    let _identity = FsIdentity::assume(target.uid, target.gid)
        .map_err(|e| format!("cannot switch to {}/{}: {e}", target.uid, target.gid))?;
    let path = state_path(target);
    let file = open_beneath(
        base.as_fd(),
        &path,
        OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK,
        Mode::from_raw_mode(MAIL_FILE_MODE),
    )
    .map_err(|e| format!("{path}: {e}"))?;
    let stat = rustix::fs::fstat(&file).map_err(|e| format!("{path}: {e}"))?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile
        || stat.st_uid != target.uid
        || stat.st_nlink != 1
    {
        return Err(format!(
            "{path} is not the recipient's own regular file; not used"
        ));
    }
    lock::flock(file.as_fd(), Instant::now() + Duration::from_secs(10))
        .map_err(|e| format!("{path}: lock: {e}"))?;
    let mut buffer = vec![0u8; MAX_STATE_BYTES];
    let mut read = 0;
    while read < buffer.len() {
        match rustix::io::pread(&file, &mut buffer[read..], read as u64) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(format!("{path}: read: {e}")),
        }
    }
    let key = sender_key(sender);
    let horizon = now.saturating_sub(interval as i64);
    let mut entries = parse_state(&String::from_utf8_lossy(&buffer[..read]));
    let answered = entries.iter().any(|(time, k)| *k == key && *time > horizon);
    if answered && !forget {
        return Ok(false);
    }
    entries.retain(|(time, k)| *k != key && *time > horizon);
    if !forget {
        entries.push((now, key));
    }
    let skip = entries.len().saturating_sub(MAX_STATE_ENTRIES);
    let text: String = entries
        .iter()
        .skip(skip)
        .map(|(time, k)| format!("{time} {k}\n"))
        .collect();
    rustix::fs::ftruncate(&file, 0).map_err(|e| format!("{path}: truncate: {e}"))?;
    let mut written = 0;
    while written < text.len() {
        match rustix::io::pwrite(&file, &text.as_bytes()[written..], written as u64) {
            Ok(n) => written += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(format!("{path}: write: {e}")),
        }
    }
    Ok(!forget)
}

/// Read one SMTP reply; its code.
fn smtp_reply(reader: &mut impl BufRead) -> Result<(u16, String), String> {
    let mut text = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Err("connection closed".into());
        }
        text.push_str(&line);
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            let code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            return Ok((code, text.trim_end().to_string()));
        }
    }
}

/// Hand `message` to Postfix for `recipient` with a null envelope sender.
pub fn submit(submission: &Submission, recipient: &str, message: &[u8]) -> Result<(), String> {
    let address = submission
        .address
        .to_socket_addrs()
        .map_err(|e| format!("{}: {e}", submission.address))?
        .next()
        .ok_or_else(|| format!("{}: no address", submission.address))?;
    let stream = TcpStream::connect_timeout(&address, submission.timeout)
        .map_err(|e| format!("connect {}: {e}", submission.address))?;
    stream
        .set_read_timeout(Some(submission.timeout))
        .and_then(|()| stream.set_write_timeout(Some(submission.timeout)))
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    let mut writer = stream;
    let mut step = |command: Option<&[u8]>, want: u16| -> Result<(), String> {
        if let Some(command) = command {
            writer.write_all(command).map_err(|e| e.to_string())?;
        }
        let (code, text) = smtp_reply(&mut reader)?;
        if code / 100 != want / 100 {
            return Err(format!("Postfix answered {text}"));
        }
        Ok(())
    };
    step(None, 220)?;
    step(
        Some(format!("EHLO {}\r\n", submission.hostname).as_bytes()),
        250,
    )?;
    let mut mail = String::from("MAIL FROM:<>");
    if !message.is_ascii() {
        mail.push_str(" BODY=8BITMIME");
    }
    if !recipient.is_ascii() {
        mail.push_str(" SMTPUTF8");
    }
    mail.push_str("\r\n");
    step(Some(mail.as_bytes()), 250)?;
    let rcpt = format!("RCPT TO:<{}>\r\n", address::quote_address(recipient));
    step(Some(rcpt.as_bytes()), 250)?;
    step(Some(b"DATA\r\n"), 354)?;
    let mut data = Vec::with_capacity(message.len() + 64);
    for line in message.split_inclusive(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        if line.first() == Some(&b'.') {
            data.push(b'.');
        }
        data.extend_from_slice(line);
        data.extend_from_slice(b"\r\n");
    }
    data.extend_from_slice(b".\r\n");
    step(Some(&data), 250)?;
    let _ = step(Some(b"QUIT\r\n"), 221);
    Ok(())
}

/// After `target`'s copy was stored: answer if [`decide`] and the interval allow. `original` is
/// the recipient before alias expansion. Never fails: every outcome is logged.
pub fn respond(
    submission: &Submission,
    target: &Target,
    autoreply: &Autoreply,
    delimiter: &str,
    sender: &str,
    original: &str,
    message: &[u8],
) {
    let fields = headers(message);
    let now = SystemTime::now();
    let unix = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mine = [target.key.as_str(), target.recipient.as_str(), original];
    let skip = |why: Skip| {
        tracing::info!(
            recipient = %target.key, sender = %sender,
            "autoreply not sent: {}", why.as_str()
        );
    };
    if let Err(why) = decide(autoreply, sender, &mine, delimiter, &fields, unix) {
        return skip(why);
    }
    if crate::deliver::address_problem(sender).is_some() {
        return skip(Skip::NullSender);
    }
    let base = match crate::deliver::open_base_dir(target) {
        Ok(base) => base,
        Err(error) => {
            tracing::warn!(recipient = %target.key, "autoreply not sent: {error}");
            return;
        }
    };
    match record(
        &base,
        target,
        sender,
        autoreply.interval_seconds,
        unix,
        false,
    ) {
        Ok(true) => {}
        Ok(false) => return skip(Skip::AlreadyAnswered),
        Err(error) => {
            tracing::warn!(recipient = %target.key, "autoreply not sent: state: {error}");
            return;
        }
    }
    let reply = compose(
        autoreply,
        &target.key,
        sender,
        &fields,
        &submission.hostname,
        now,
    );
    match submit(submission, sender, &reply) {
        Ok(()) => tracing::info!(recipient = %target.key, sender = %sender, "autoreply sent"),
        Err(error) => {
            tracing::warn!(
                recipient = %target.key, sender = %sender,
                "autoreply not sent: submission to {} failed: {error}", submission.address
            );
            // Not sent: the next message from this sender may try again.
            let _ = record(
                &base,
                target,
                sender,
                autoreply.interval_seconds,
                unix,
                true,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn autoreply() -> Autoreply {
        Autoreply {
            subject: None,
            body: "I am away.\n".into(),
            start: None,
            end: None,
            interval_seconds: 7 * 86_400,
        }
    }

    fn check(sender: &str, extra: &str) -> Result<(), Skip> {
        let message = format!(
            "From: <{sender}>\nTo: Bob <bob@example.test>, carol@example.test\nSubject: hi\n{extra}\nbody\n"
        );
        decide(
            &autoreply(),
            sender,
            &["bob@example.test", "bob@example.test"],
            "+",
            &headers(message.as_bytes()),
            1_000,
        )
    }

    #[test]
    fn replies_only_to_personal_mail_from_people() {
        assert_eq!(check("alice@remote.test", ""), Ok(()));
        assert_eq!(check("alice@remote.test", "Auto-Submitted: no\n"), Ok(()));
        assert_eq!(check("", ""), Err(Skip::NullSender));
        for system in [
            "MAILER-DAEMON@remote.test",
            "owner-list@remote.test",
            "list-request@remote.test",
            "majordomo@remote.test",
        ] {
            assert_eq!(check(system, ""), Err(Skip::SystemSender), "{system}");
        }
        assert_eq!(check("Bob+x@Example.test", ""), Err(Skip::OwnAddress));
        for (header, why) in [
            ("Auto-Submitted: auto-replied\n", Skip::AutoSubmitted),
            ("Auto-Submitted: auto-generated; x\n", Skip::AutoSubmitted),
            ("Precedence: bulk\n", Skip::Bulk),
            ("Precedence: List\n", Skip::Bulk),
            ("Precedence: junk\n", Skip::Bulk),
            ("List-Id: <l.remote.test>\n", Skip::MailingList),
            (
                "List-Unsubscribe:\n <mailto:x@remote.test>\n",
                Skip::MailingList,
            ),
            ("X-Auto-Response-Suppress: OOF, DR\n", Skip::Suppressed),
        ] {
            assert_eq!(check("alice@remote.test", header), Err(why), "{header}");
        }
        assert_eq!(
            check("alice@remote.test", "Precedence: first-class\n"),
            Ok(())
        );
        let message = b"From: a@remote.test\nTo: someone@else.test\nBcc: bob@example.test\n\nx\n";
        assert_eq!(
            decide(
                &autoreply(),
                "a@remote.test",
                &["bob@example.test"],
                "+",
                &headers(message),
                0
            ),
            Err(Skip::NotAddressed)
        );
        // Delivered through an alias: the address as sent counts as the mailbox's.
        let message = b"To: Team <Team+x@example.test>\n\nx\n";
        assert_eq!(
            decide(
                &autoreply(),
                "a@remote.test",
                &["bob@example.test", "team@example.test"],
                "+",
                &headers(message),
                0
            ),
            Ok(())
        );
    }

    #[test]
    fn the_window_bounds_replies() {
        let mut a = autoreply();
        a.start = Some(100);
        a.end = Some(200);
        let fields = headers(b"To: bob@example.test\n\nx\n");
        let at = |now| {
            decide(
                &a,
                "x@remote.test",
                &["bob@example.test"],
                "+",
                &fields,
                now,
            )
        };
        assert_eq!(at(99), Err(Skip::OutsideWindow));
        assert_eq!(at(100), Ok(()));
        assert_eq!(at(200), Err(Skip::OutsideWindow));
    }

    #[test]
    fn the_reply_threads_and_cannot_be_given_extra_headers() {
        let message = b"Subject: Hello\r\n there\nMessage-ID: <m1@remote.test>\nReferences: <m0@remote.test> bogus\nTo: bob@example.test\n\nbody\n";
        let fields = headers(message);
        let reply = compose(
            &autoreply(),
            "bob@example.test",
            "alice@remote.test",
            &fields,
            "mx.test",
            UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        );
        let text = String::from_utf8(reply).expect("utf-8");
        let (head, body) = text.split_once("\n\n").expect("blank line");
        assert!(head.contains("\nSubject: Auto: Hello there\n"), "{head}");
        assert!(head.contains("\nIn-Reply-To: <m1@remote.test>\n"), "{head}");
        assert!(
            head.contains("\nReferences: <m0@remote.test> <m1@remote.test>\n"),
            "{head}"
        );
        assert!(head.contains("\nAuto-Submitted: auto-replied\n"), "{head}");
        assert!(head.starts_with("From: <bob@example.test>\nTo: <alice@remote.test>\n"));
        assert!(
            head.contains("\nDate: Fri, 15 Jan 2027 08:00:00 +0000\n"),
            "{head}"
        );
        assert_eq!(body, "I am away.\n");
        let mut a = autoreply();
        a.subject = Some("Abwesend – Urlaub".into());
        let reply = compose(
            &a,
            "b@x.test",
            "a@y.test",
            &[],
            "mx.test",
            SystemTime::now(),
        );
        let text = String::from_utf8(reply).expect("utf-8");
        assert!(
            text.contains("\nSubject: =?UTF-8?B?QWJ3ZXNlbmQg4oCTIFVybGF1Yg==?=\n"),
            "{text}"
        );
    }

    #[test]
    fn state_entries_are_parsed_strictly() {
        let key = sender_key("A@x.test");
        assert_eq!(key, sender_key("a@X.TEST"));
        let text = format!("10 {key}\nbad line\n20 zz\n30 {key}\n");
        assert_eq!(parse_state(&text), vec![(10, key.clone()), (30, key)]);
    }
}
