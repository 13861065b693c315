//! The logic of every fuzz target, as plain functions.
//!
//! `cargo fuzz run <target>` (see `scripts/fuzz.sh`) calls these from `fuzz_targets/*.rs`; the
//! agent's normal test suite (`agent/tests/fuzz_corpus.rs`) includes this file and replays every
//! committed corpus file through the same functions on the stable toolchain. Each function
//! panics when a property fails, so a crash under the fuzzer and a failing replay are the same
//! thing.
//!
//! The inputs reach the real parsers: a whole LMTP session and a whole socketmap connection over
//! an in-memory stream, the DATA decoder, the netstring reader, the manifest loader and compiler,
//! the ConfigMap assembler and decoder, and the mbox quoting. The only stand-in is the LMTP
//! delivery seam ([`Backend::deliver`]): it records what would be written instead of writing,
//! so nothing touches a file and an execution takes microseconds. RCPT checks use the real
//! engine against the directory in `fixtures/directory.yaml`, whose mailbox base does not exist.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use virtmail_agent::deliver::{self, Code, Engine, message};
use virtmail_agent::server::backend::{Backend, Delivery, Outcome, Recipient, Status};
use virtmail_agent::server::lmtp::{self, BodyDecoder};
use virtmail_agent::server::metrics::Metrics;
use virtmail_agent::server::socketmap::{self, FrameError, MAX_QUERY, MAX_REPLY, Reply};
use virtmail_agent::server::{Limits, Shared};
use virtmail_agent::source::assemble::{Assembly, assemble};
use virtmail_agent::source::{Holder, Loaded};
use virtmail_crds::contract::SocketmapMap;
use virtmail_crds::encoding::{self, Data};
use virtmail_crds::manifests::Resources;
use virtmail_crds::{Directory, compile};

/// A fuzz target: it panics when a property of its input fails.
pub type Target = fn(&[u8]);

/// Every target: its corpus directory name under `fuzz/corpus/` and its function.
pub const TARGETS: [(&str, Target); 7] = [
    ("lmtp_command", lmtp_command),
    ("lmtp_data", lmtp_data),
    ("socketmap_netstring", socketmap_netstring),
    ("resources_yaml", resources_yaml),
    ("directory_decode", directory_decode),
    ("mbox_quoting", mbox_quoting),
    ("mbox_journal", mbox_journal),
];

/// Message size limit the LMTP harness runs with (small, so 552 paths are reachable).
const MAX_MESSAGE: u64 = 2000;
/// RCPT limit the LMTP harness runs with (small, so 452 4.5.3 is reachable).
const MAX_RECIPIENTS: usize = 3;
/// Text of the harness's successful delivery status, to count those replies.
const DELIVERED: &str = "fuzz-delivered";
/// Longest reply line including CRLF (RFC 5321 §4.5.3.1.5).
const MAX_REPLY_LINE: usize = 512;
/// A session or connection that has not ended this long after its client closed is hung.
const HANG: Duration = Duration::from_secs(10);

/// The directory compiled from `fixtures/directory.yaml`.
pub fn fixture_directory() -> &'static Directory {
    static DIRECTORY: OnceLock<Directory> = OnceLock::new();
    DIRECTORY.get_or_init(|| {
        let mut resources = Resources::default();
        resources
            .add_yaml(
                Path::new("fixtures/directory.yaml"),
                include_str!("../fixtures/directory.yaml"),
            )
            .expect("the fuzz fixture parses");
        let server = resources
            .server(None)
            .expect("the fuzz fixture has a server");
        compile(resources.inputs(&server)).directory
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

/// One delivery the LMTP session asked for.
#[derive(Debug, Clone)]
struct Recorded {
    sender: String,
    recipient: Recipient,
    size: usize,
}

/// The real engine's RCPT check; deliveries are recorded instead of written.
#[derive(Debug, Default)]
struct RecordingBackend {
    engine: Engine,
    delivered: Mutex<Vec<Recorded>>,
    /// Property failures seen on the blocking delivery threads (a panic there would only turn
    /// into a 451 reply, so they are reported through here).
    violations: Mutex<Vec<String>>,
}

impl Backend for RecordingBackend {
    fn precheck(&self, directory: &Directory, recipient: &str) -> Result<(), Status> {
        Backend::precheck(&self.engine, directory, recipient)
    }

    fn deliver(&self, delivery: Delivery<'_>, report: &mut dyn FnMut(Outcome) -> bool) {
        // The engine's own message rewriting, then every copy recorded instead of written.
        let mut recipients = delivery.envelope.recipients.clone();
        let message = message::adopt_postfix_original_recipient(&mut recipients, delivery.message);
        for recipient in recipients {
            // Only what the real engine would accept reaches delivery.
            if deliver::resolve(delivery.directory, &recipient.address).is_err() {
                self.violations
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(format!(
                        "delivery to a recipient the engine refuses: {recipient:?}"
                    ));
            }
            let outcome = Outcome {
                recipient: recipient.address.clone(),
                status: Status::new(Code(2, 0, 0), DELIVERED),
                path: None,
                size: message.len() as u64,
                duration: Duration::ZERO,
            };
            self.delivered
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Recorded {
                    sender: delivery.envelope.sender.clone(),
                    recipient,
                    size: message.len(),
                });
            if !report(outcome) {
                return;
            }
        }
    }
}

/// A `Shared` around the fixture directory and `backend`; the returned sender keeps the
/// session from seeing a shutdown.
fn shared(backend: Arc<dyn Backend>) -> (Arc<Shared>, tokio::sync::watch::Sender<bool>) {
    let holder = Holder::default();
    holder.swap(fixture_directory().clone());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let limits = Limits {
        max_recipients: MAX_RECIPIENTS,
        max_message_size: MAX_MESSAGE,
        ..Limits::default()
    };
    let shared = Shared {
        directory: Arc::new(holder),
        metrics: Arc::new(Metrics::default()),
        limits,
        backend,
        hostname: "fuzz.test".into(),
        shutdown: stopped,
    };
    (Arc::new(shared), stop)
}

/// Send `input` as a client, close the sending side, and collect everything the server writes.
async fn converse<F>(input: &[u8], server: impl FnOnce(tokio::io::DuplexStream) -> F) -> Vec<u8>
where
    F: Future<Output = ()>,
{
    let (client, server_end) = tokio::io::duplex(64 * 1024);
    let (mut read, mut write) = tokio::io::split(client);
    let send = async {
        // The server may close first (QUIT, too many errors): the rest is not read then.
        let _ = write.write_all(input).await;
        let _ = write.shutdown().await;
    };
    let receive = async {
        let mut out = Vec::new();
        let _ = read.read_to_end(&mut out).await;
        out
    };
    let all = async { tokio::join!(server(server_end), send, receive).2 };
    match tokio::time::timeout(HANG, all).await {
        Ok(out) => out,
        Err(_) => panic!("the server did not finish within {HANG:?} after its client closed"),
    }
}

/// `lmtp_command`: `data` is what an LMTP client sends on one connection (commands, DATA,
/// pipelining, garbage). Properties: the session ends once the client closes; every reply line is
/// a well-formed RFC 5321 reply of at most 512 octets; the greeting comes first; every 250 after
/// DATA corresponds to exactly one delivery; only recipients the engine accepts are delivered to,
/// with at most the size limit; and the headers and From_ line the delivery would write from the
/// envelope stay one line each (no header injection).
pub fn lmtp_command(data: &[u8]) {
    lmtp_session(data);
}

/// Run one LMTP session with `data` as the client's side and check its properties; returns what
/// the server wrote and how many copies it delivered.
pub fn lmtp_session(data: &[u8]) -> (Vec<u8>, usize) {
    let backend = Arc::new(RecordingBackend::default());
    let (shared, _stop) = shared(backend.clone());
    let out = runtime().block_on(converse(data, |stream| async move {
        let permit = Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .expect("one permit");
        lmtp::serve(stream, shared, permit).await;
    }));
    let violations = backend
        .violations
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    assert!(violations.is_empty(), "{violations:?}");
    let lines = reply_lines(&out);
    assert!(
        lines.first().is_some_and(|l| l.starts_with(b"220 ")),
        "no greeting first: {:?}",
        String::from_utf8_lossy(&out)
    );
    let delivered = backend
        .delivered
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let success_replies = lines
        .iter()
        .filter(|l| l.starts_with(b"250 2.0.0 <") && l.ends_with(DELIVERED.as_bytes()))
        .count();
    assert_eq!(
        success_replies,
        delivered.len(),
        "delivery replies and deliveries differ"
    );
    for d in &delivered {
        assert!(d.size as u64 <= MAX_MESSAGE, "over the size limit: {d:?}");
        let from = message::from_line(&d.sender, "Thu Aug 21 09:05:03 2026");
        assert_eq!(
            from.bytes().filter(|&b| b == b'\n').count(),
            1,
            "From_ line is not one line: {from:?}"
        );
        assert!(from.ends_with('\n'));
        let headers = message::prepended_headers(
            &d.sender,
            &d.recipient.original_recipient,
            &d.recipient.address,
        );
        let want = if d.recipient.original_recipient.is_empty() {
            2
        } else {
            3
        };
        assert_eq!(
            headers.iter().filter(|&&b| b == b'\n').count(),
            want,
            "prepended headers are not {want} lines: {:?}",
            String::from_utf8_lossy(&headers)
        );
        assert!(
            !headers.contains(&b'\r'),
            "CR in prepended headers: {:?}",
            String::from_utf8_lossy(&headers)
        );
    }
    (out, delivered.len())
}

/// Split server output into reply lines (without CRLF), checking the framing of each.
fn reply_lines(out: &[u8]) -> Vec<&[u8]> {
    let text = String::from_utf8_lossy(out);
    assert!(
        out.is_empty() || out.ends_with(b"\r\n"),
        "output does not end in CRLF: {text:?}"
    );
    let mut lines = Vec::new();
    let mut rest = out;
    while !rest.is_empty() {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("every line ends in CRLF");
        let line = &rest[..end];
        assert!(
            end + 2 <= MAX_REPLY_LINE,
            "reply line over {MAX_REPLY_LINE} octets: {text:?}"
        );
        assert!(
            !line.contains(&b'\n') && !line.contains(&b'\r'),
            "bare CR or LF in a reply: {text:?}"
        );
        assert!(
            line.len() >= 4
                && line[..3].iter().all(u8::is_ascii_digit)
                && matches!(line[0], b'2'..=b'5')
                && matches!(line[3], b' ' | b'-'),
            "malformed reply line {:?} in {text:?}",
            String::from_utf8_lossy(line)
        );
        lines.push(line);
        rest = &rest[end + 2..];
    }
    lines
}

/// `lmtp_data`: the DATA decoder. The first byte chooses a chunk size and a size limit, the rest
/// is what follows `354`. Properties: feeding in chunks gives what feeding at once gives; the
/// limit drops exactly the bodies longer than it; and, read as a message body instead, the bytes
/// encoded the way an SMTP client does (CRLF line ends, dot-stuffing, `.` line) decode back to
/// themselves with a final line end.
pub fn lmtp_data(data: &[u8]) {
    let Some((&control, wire)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(control & 0x0f) + 1;
    let max = u64::from(control >> 4) * 16;

    let mut whole = BodyDecoder::new(u64::MAX);
    let end = whole.feed(wire);
    let body = whole.finish().expect("no limit");
    if let Some(end) = end {
        assert!(end <= wire.len());
        assert!(wire[..end].ends_with(b"\r\n.\r\n") || wire[..end] == *b".\r\n");
    }

    let mut chunked = BodyDecoder::new(u64::MAX);
    let mut chunked_end = None;
    for (i, piece) in wire.chunks(chunk).enumerate() {
        if let Some(used) = chunked.feed(piece) {
            chunked_end = Some(i * chunk + used);
            break;
        }
    }
    assert_eq!(chunked_end, end, "end marker depends on read sizes");
    assert_eq!(
        chunked.finish().expect("no limit"),
        body,
        "body depends on read sizes"
    );

    let mut limited = BodyDecoder::new(max);
    assert_eq!(limited.feed(wire), end);
    match limited.finish() {
        Some(kept) => assert_eq!(kept, body, "limited body differs"),
        None => assert!(body.len() as u64 > max, "body within the limit dropped"),
    }

    // Round trip: the rest of the input as a message body.
    let message = wire;
    let encoded = smtp_encode(message);
    let mut decoder = BodyDecoder::new(u64::MAX);
    assert_eq!(decoder.feed(&encoded), Some(encoded.len()));
    let mut want = message.to_vec();
    message::push_final_newline(&mut want, message);
    assert_eq!(
        decoder.finish().expect("no limit"),
        want,
        "DATA round trip changed the message"
    );
}

/// What an SMTP client sends for `message`: LF becomes CRLF, a line starting with `.` gets
/// another, a final line end is added, then `.` CRLF.
fn smtp_encode(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() * 2 + 5);
    let mut at_start = true;
    for &b in message {
        if at_start && b == b'.' {
            out.push(b'.');
        }
        if b == b'\n' {
            out.extend_from_slice(b"\r\n");
        } else {
            out.push(b);
        }
        at_start = b == b'\n';
    }
    if !message.is_empty() && !message.ends_with(b"\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// `socketmap_netstring`: `data` is what Postfix's socketmap client sends on one connection.
/// Properties: the frames the reader accepts are exactly a prefix of the input re-encoded; every
/// frame re-encodes and decodes to itself; lookups never panic and answer with a known status; a
/// whole connection answers with well-formed netstrings, one per accepted frame at most.
pub fn socketmap_netstring(data: &[u8]) {
    let directory = fixture_directory();
    let frames = runtime().block_on(async {
        let mut reader = BufReader::new(data);
        let mut frames = Vec::new();
        let end = loop {
            match socketmap::read_netstring(&mut reader, MAX_QUERY).await {
                Ok(frame) => frames.push(frame),
                Err(e) => break e,
            }
        };
        let encoded: Vec<u8> = frames
            .iter()
            .flat_map(|f| socketmap::netstring(f))
            .collect();
        assert!(
            data.starts_with(&encoded),
            "accepted frames are not the input"
        );
        if end == FrameError::Eof {
            assert_eq!(encoded.len(), data.len(), "clean end with input left");
        }
        for frame in &frames {
            assert!(frame.len() <= MAX_QUERY);
            let wire = socketmap::netstring(frame);
            let mut again = BufReader::new(&wire[..]);
            assert_eq!(
                socketmap::read_netstring(&mut again, MAX_QUERY)
                    .await
                    .as_ref(),
                Ok(frame),
                "netstring round trip"
            );
        }
        frames
    });
    for frame in &frames {
        let Ok(request) = std::str::from_utf8(frame) else {
            continue;
        };
        let (map, reply) = socketmap::lookup(Some(directory), request);
        assert_eq!(
            map.is_none(),
            matches!(&reply, Reply::Perm(why) if why.starts_with("unknown map")),
            "an unknown map is refused, and only that: {request:?}"
        );
        if let Reply::Ok(value) = &reply {
            assert!(!value.is_empty(), "OK with an empty value for {request:?}");
        }
        assert!(matches!(
            socketmap::lookup(None, request).1,
            Reply::Temp(_) | Reply::Perm(_)
        ));
    }

    let (shared, _stop) = shared(Arc::new(RecordingBackend::default()));
    let out = runtime().block_on(converse(data, |stream| socketmap::serve(stream, shared)));
    let replies = runtime().block_on(async {
        let mut reader = BufReader::new(&out[..]);
        let mut replies = Vec::new();
        loop {
            match socketmap::read_netstring(&mut reader, MAX_REPLY + 100).await {
                Ok(reply) => replies.push(reply),
                Err(FrameError::Eof) => break replies,
                Err(e) => panic!("malformed reply stream ({e:?}): {out:?}"),
            }
        }
    });
    assert_eq!(replies.len(), frames.len(), "not one reply per request");
    for reply in &replies {
        assert!(
            ["OK ", "NOTFOUND ", "TEMP ", "PERM "]
                .iter()
                .any(|p| reply.starts_with(p.as_bytes())),
            "unknown reply {:?}",
            String::from_utf8_lossy(reply)
        );
    }
}

/// `resources_yaml`: `data` is a manifest file for `--resources`. Properties: loading never
/// panics; the compiled directory is deterministic, keeps its promises (no deferring-free
/// mailbox with a bad owner or path), and survives the ConfigMap encoding unchanged.
pub fn resources_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut resources = Resources::default();
    if resources.add_yaml(Path::new("fuzz.yaml"), text).is_err() {
        return;
    }
    let server = match resources.server(None) {
        Ok(server) => server,
        Err(_) => resources.servers[0].clone(),
    };
    let compiled = compile(resources.inputs(&server));
    let directory = &compiled.directory;
    assert_eq!(
        compile(resources.inputs(&server)).directory,
        *directory,
        "compile is not deterministic"
    );
    let settings = &directory.settings;
    for (address, entry) in &directory.mailboxes {
        assert_eq!(
            *address,
            virtmail_crds::address::fold(address),
            "key not folded"
        );
        if entry.defer.is_some() {
            continue;
        }
        assert!(
            entry.uid != 0 && entry.gid != 0 && entry.uid >= settings.minimum_uid,
            "served mailbox {address} with a bad owner: {entry:?}"
        );
        assert_eq!(
            compile::check_path(&entry.path, entry.format),
            None,
            "served mailbox {address} with a bad path: {entry:?}"
        );
    }
    for (domain, entry) in &directory.domains {
        if let Some(catch_all) = &entry.catch_all {
            assert!(
                directory.mailboxes.contains_key(catch_all),
                "catch-all of {domain} names no mailbox: {catch_all}"
            );
        }
    }
    round_trip(directory);
}

/// Encode `directory` for ConfigMaps, assemble it back as the agent does, and compare.
fn round_trip(directory: &Directory) {
    let encoded = encoding::encode(directory);
    assert_eq!(
        encoding::encode(directory),
        encoded,
        "encode is not deterministic"
    );
    let shards: BTreeMap<String, Data> = encoded
        .shards
        .iter()
        .map(|s| (s.name.clone(), (*s.data).clone()))
        .collect();
    match assemble(Some(&encoded.head), &shards, None) {
        Assembly::Ready { decoded, version } => {
            assert_eq!(
                decoded.directory, *directory,
                "directory changed by the encoding"
            );
            assert_eq!(version, encoded.version);
        }
        other => panic!("an encoded directory does not assemble: {other:?}"),
    }
}

/// `directory_decode`: `data` is a set of directory ConfigMaps in a small text container (see
/// [`directory_container`]): `@head KEY` and `@shard NAME KEY` lines each start a value that runs
/// to the next such line; a `@fix` line makes the harness write the shard list and version that
/// match the content, so the fuzzer gets past the hashes into the records. Properties: assembling
/// never panics; a directory that assembles re-encodes to a set that assembles to the same
/// directory and version; lookups and delivery resolution on it never panic.
pub fn directory_decode(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (mut head, shards, fix) = parse_container(text);
    if fix {
        let list: String = shards
            .iter()
            .map(|(name, data)| {
                let size: usize = data.iter().map(|(k, v)| k.len() + v.len()).sum();
                format!("{name} {} {size}\n", encoding::data_hash(data))
            })
            .collect();
        head.insert(encoding::KEY_SHARDS.into(), list);
    }
    let mut assembly = assemble(Some(&head), &shards, None);
    if fix
        && let Assembly::Invalid {
            error: encoding::DecodeError::Version { have, .. },
            ..
        } = &assembly
    {
        head.insert(encoding::KEY_VERSION.into(), have.clone());
        assembly = assemble(Some(&head), &shards, None);
    }
    let Assembly::Ready { decoded, version } = assembly else {
        return;
    };
    assert_eq!(
        Some(version.as_str()),
        head.get(encoding::KEY_VERSION).map(String::as_str)
    );
    let serving = Loaded::new(decoded.directory, version, decoded.hashes);
    assert!(matches!(
        assemble(Some(&head), &shards, Some(&serving)),
        Assembly::Unchanged
    ));
    let directory = &*serving.directory;
    round_trip(directory);
    let keys = directory
        .mailboxes
        .keys()
        .chain(directory.aliases.keys())
        .chain(directory.domains.keys());
    for key in keys {
        for map in SocketmapMap::ALL {
            let _ = socketmap::lookup(Some(directory), &format!("{} {key}", map.name()));
        }
        let _ = deliver::resolve(directory, key);
    }
}

/// Head data, shard data by name, `@fix`.
pub type Container = (Data, BTreeMap<String, Data>, bool);

/// A value being read: shard name (`None` for the head), key, text.
type Value = (Option<String>, String, String);

/// The ConfigMaps a [`directory_decode`] input describes: head, shards, and whether `@fix` is set.
pub fn parse_container(text: &str) -> Container {
    let mut head = Data::new();
    let mut shards: BTreeMap<String, Data> = BTreeMap::new();
    let mut fix = false;
    let mut current: Option<Value> = None;
    let finish = |current: Option<Value>, head: &mut Data, shards: &mut BTreeMap<String, Data>| {
        if let Some((shard, key, mut value)) = current {
            // The line end before the next `@` line separates; it is not part of the value.
            if value.ends_with('\n') {
                value.pop();
            }
            match shard {
                None => head.insert(key, value),
                Some(name) => shards.entry(name).or_default().insert(key, value),
            };
        }
    };
    for line in text.split_inclusive('\n') {
        let bare = line.strip_suffix('\n').unwrap_or(line);
        if bare == "@fix" {
            fix = true;
            continue;
        }
        let mut words = bare.split(' ');
        let start = match (words.next(), words.next(), words.next(), words.next()) {
            (Some("@head"), Some(key), None, None) => Some((None, key.to_string())),
            (Some("@shard"), Some(name), Some(key), None) => {
                Some((Some(name.to_string()), key.to_string()))
            }
            _ => None,
        };
        match start {
            Some((shard, key)) => {
                finish(current.take(), &mut head, &mut shards);
                current = Some((shard, key, String::new()));
            }
            None => {
                if let Some((_, _, value)) = &mut current {
                    value.push_str(line);
                }
            }
        }
    }
    finish(current, &mut head, &mut shards);
    (head, shards, fix)
}

/// The [`directory_decode`] container holding an encoded directory (for seeds); with `fix`, the
/// harness recomputes shard hashes and the version.
pub fn directory_container(encoded: &encoding::Encoded, fix: bool) -> String {
    let mut out = String::new();
    if fix {
        out.push_str("@fix\n");
    }
    for (key, text) in &encoded.head {
        out.push_str(&format!("@head {key}\n{text}\n"));
    }
    for shard in &encoded.shards {
        for (key, text) in shard.data.iter() {
            out.push_str(&format!("@shard {} {key}\n{text}\n", shard.name));
        }
    }
    out
}

/// `mbox_quoting`: `data` is a message body as delivered (LF line ends). Properties of the mboxo
/// quoting: the output has the input's lines in order, each unchanged except that exactly the
/// lines beginning with `From ` get one `>`; no output line begins with `From `, so an mbox
/// reader finds no extra message; the output ends with a line end. Also: CRLF conversion removes
/// exactly the CRLF pairs, the `X-Original-To` Postfix prepends is only taken as a whole first
/// line, and loop detection and size counting never panic.
pub fn mbox_quoting(data: &[u8]) {
    let mut out = Vec::new();
    message::push_mbox_quoted(&mut out, data);
    if !data.is_empty() {
        assert!(out.ends_with(b"\n"), "quoted message does not end in LF");
    }
    let input_lines: Vec<&[u8]> = data.split_inclusive(|&b| b == b'\n').collect();
    let output_lines: Vec<&[u8]> = out.split_inclusive(|&b| b == b'\n').collect();
    assert_eq!(input_lines.len(), output_lines.len(), "line count changed");
    for (i, (input, output)) in input_lines.iter().zip(&output_lines).enumerate() {
        assert!(
            !output.starts_with(b"From "),
            "line {i} starts with From_ after quoting"
        );
        let mut input = input.to_vec();
        if !input.ends_with(b"\n") {
            input.push(b'\n');
        }
        if input.starts_with(b"From ") {
            assert_eq!(output[0], b'>');
            assert_eq!(&output[1..], &input[..], "line {i} changed beyond quoting");
        } else {
            assert_eq!(*output, &input[..], "line {i} changed without From_");
        }
    }

    let lf = message::crlf_to_lf(data);
    let pairs = count_crlf(data);
    assert_eq!(
        lf.len() + pairs,
        data.len(),
        "CRLF conversion changed more than pairs"
    );

    if let Some((original, rest)) = message::postfix_original_recipient(data) {
        assert!(
            !original.chars().any(char::is_control),
            "control characters taken: {original:?}"
        );
        assert!(data.starts_with(b"X-Original-To: "));
        assert!(data.ends_with(rest), "more than the first line taken");
        assert_eq!(data[data.len() - rest.len() - 1], b'\n');
    }

    let _ = message::has_delivered_to(data, "alice@example.test");
    let _ = message::has_delivered_to(data, "john doe@example.test");
    assert!(message::virtual_size(data) >= data.len() as u64);
}

/// Non-overlapping CRLF pairs, left to right.
fn count_crlf(data: &[u8]) -> usize {
    let mut count = 0;
    let mut i = 0;
    while i + 1 < data.len() {
        if data[i] == b'\r' && data[i + 1] == b'\n' {
            count += 1;
            i += 2;
        } else {
            i += 1;
        }
    }
    count
}

/// The mbox append journal parser. The journal lies beside the mbox and its owner (an untrusted
/// mailbox user) can write anything into it; delivery parses it under the mailbox locks, so it
/// must never hang, panic or accept numbers that overflow. Properties: a parsed record has a
/// `from + length` that fits, names the device and inode its first lines say, has exactly one
/// hash per piece, and the parse takes time bounded by the input; a record the agent writes
/// for any offset and data parses back to the same numbers.
pub fn mbox_journal(data: &[u8]) {
    use virtmail_agent::deliver::journal::{AppendIntent, append_record};
    let text = String::from_utf8_lossy(data);
    let started = std::time::Instant::now();
    if let Some(intent) = AppendIntent::parse(&text) {
        let end = intent.from.checked_add(intent.length);
        assert!(
            end.is_some(),
            "accepted from {} length {}",
            intent.from,
            intent.length
        );
        assert_eq!(AppendIntent::names(&text), Some((intent.dev, intent.ino)));
        assert!(
            (intent.hashes.len() as u64) <= intent.length.div_ceil(4096) + 1,
            "{} hashes for {} bytes",
            intent.hashes.len(),
            intent.length
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "parsing {} bytes took {:?}",
        data.len(),
        started.elapsed()
    );
    // Round trip of a record the agent writes: offset from the first 8 bytes, data the rest.
    let (head, payload) = data.split_at(data.len().min(8));
    let mut offset = [0u8; 8];
    offset[..head.len()].copy_from_slice(head);
    let from = u64::from_le_bytes(offset) % (1 << 48);
    let record = append_record(7, 9, from, payload);
    let intent = AppendIntent::parse(&record).expect("the agent's own record parses");
    assert_eq!(
        (intent.dev, intent.ino, intent.from, intent.length),
        (7, 9, from, payload.len() as u64)
    );
}
