//! LMTP server (RFC 2033) as Postfix's lmtp(8) client speaks it.
//!
//! Pipelined input is answered in order: replies are buffered and flushed whenever the input
//! buffer runs dry, so a client that sends MAIL, RCPT, RCPT, DATA in one write gets the four
//! replies in one write. After the final dot there is one reply per accepted RCPT, in RCPT order,
//! each written as soon as the delivery engine reports that copy durable.
//!
//! Hand-written: the SMTP server crates do not offer LMTP's per-recipient replies after the dot,
//! streaming of the body into a size-capped buffer, or pipelining exactly as lmtp(8) uses it.
//!
//! # Security
//! Everything read here is untrusted. Command lines are capped at [`MAX_LINE`] octets without
//! buffering the excess; the message body is streamed through a byte-level state machine (no line
//! buffer, so long lines cost nothing) and kept only up to the size limit; parameters and paths
//! are parsed strictly and every problem is a reply, never a panic. Reads and writes have
//! timeouts, sessions that keep sending errors are closed, and a session that ends inside DATA
//! discards the partial message before anything is delivered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::OwnedSemaphorePermit;
use virtmail_crds::address;

use super::Shared;
use super::backend::{Delivery, Recipient, Reply};
use super::metrics::Proto;
use crate::source::Loaded;
use virtmail_crds::address::unquote_address;

/// Longest command line including CRLF (RFC 5321 §4.5.3.1.4).
pub const MAX_LINE: usize = 512;
/// Default SIZE when neither `--max-message-size` nor the MailServer's `mailboxSizeLimit` sets one.
pub const DEFAULT_MAX_MESSAGE: u64 = 52_428_800;

type Reader<S> = BufReader<tokio::io::ReadHalf<S>>;
type Writer<S> = BufWriter<tokio::io::WriteHalf<S>>;

/// The session ends: the client closed, timed out, I/O failed, or QUIT.
#[derive(Debug)]
struct Closed;

type Step = Result<(), Closed>;

struct Transaction {
    sender: String,
    snapshot: Option<Arc<Loaded>>,
    recipients: Vec<Recipient>,
}

struct Session<S> {
    reader: Reader<S>,
    writer: Writer<S>,
    shared: Arc<Shared>,
    lhlo: bool,
    tx: Option<Transaction>,
    errors: u32,
}

/// Serve one LMTP connection; `permit` holds its slot under the connection limit.
pub async fn serve<S>(stream: S, shared: Arc<Shared>, permit: OwnedSemaphorePermit)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _permit = permit;
    let _open = shared.metrics.open(Proto::Lmtp);
    let (read, write) = tokio::io::split(stream);
    let mut session = Session {
        reader: BufReader::with_capacity(64 * 1024, read),
        writer: BufWriter::with_capacity(16 * 1024, write),
        shared: shared.clone(),
        lhlo: false,
        tx: None,
        errors: 0,
    };
    let greeting = format!("220 {} virtmail LMTP ready", shared.hostname);
    if session.reply(&greeting).await.is_err() {
        return;
    }
    let _ = session.run().await;
    let _ = session.writer.flush().await;
}

/// Write a refusal to a connection over the limit and close it.
pub async fn refuse<S: AsyncWrite + Unpin>(mut stream: S) {
    let reply = b"421 4.3.2 Too many connections, try again later\r\n";
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(reply)).await;
    let _ = stream.shutdown().await;
}

/// Longest reply line without its CRLF (RFC 5321 §4.5.3.1.5: 512 octets with it).
const MAX_REPLY_TEXT: usize = 510;

/// `text` cut at a character boundary to [`MAX_REPLY_TEXT`] octets: replies repeat addresses of
/// up to 256 octets, so a long one would otherwise make a line no client has to accept.
fn within_reply_limit(text: &str) -> &str {
    if text.len() <= MAX_REPLY_TEXT {
        return text;
    }
    let mut end = MAX_REPLY_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A command line as read.
enum Line {
    Text(Vec<u8>),
    TooLong,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Session<S> {
    async fn run(&mut self) -> Step {
        let mut shutdown = self.shared.shutdown.clone();
        loop {
            self.flush_if_idle().await?;
            let timeout = self.shared.limits.command_timeout;
            let line = tokio::select! {
                biased;
                line = tokio::time::timeout(timeout, read_line(&mut self.reader, MAX_LINE)) => line,
                _ = crate::stopped(&mut shutdown), if self.reader.buffer().is_empty() => {
                    return self.close("421 4.3.2 Service shutting down").await;
                }
            };
            let line = match line {
                Err(_) => return self.close("421 4.4.2 Timeout, closing connection").await,
                Ok(Err(_)) | Ok(Ok(None)) => return Err(Closed),
                Ok(Ok(Some(line))) => line,
            };
            match line {
                Line::TooLong => self.error("500 5.5.2 Line too long").await?,
                Line::Text(bytes) => self.command(bytes).await?,
            }
        }
    }

    /// Queue a reply line (CRLF added), cut to RFC 5321's 512 octets.
    async fn reply(&mut self, text: &str) -> Step {
        let text = within_reply_limit(text);
        let write = async {
            self.writer.write_all(text.as_bytes()).await?;
            self.writer.write_all(b"\r\n").await
        };
        match tokio::time::timeout(self.shared.limits.command_timeout, write).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Closed),
        }
    }

    async fn flush(&mut self) -> Step {
        match tokio::time::timeout(self.shared.limits.command_timeout, self.writer.flush()).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Closed),
        }
    }

    /// Flush queued replies unless more pipelined input is already waiting.
    async fn flush_if_idle(&mut self) -> Step {
        if self.reader.buffer().is_empty() {
            self.flush().await?;
        }
        Ok(())
    }

    async fn close(&mut self, text: &str) -> Step {
        self.reply(text).await?;
        self.flush().await?;
        Err(Closed)
    }

    /// A protocol error reply; too many of them end the session.
    async fn error(&mut self, text: &str) -> Step {
        self.errors += 1;
        if self.errors > self.shared.limits.max_errors {
            return self
                .close("421 4.7.0 Too many errors, closing connection")
                .await;
        }
        self.reply(text).await
    }

    async fn command(&mut self, bytes: Vec<u8>) -> Step {
        let Ok(text) = String::from_utf8(bytes) else {
            return self.error("500 5.5.2 Command is not valid UTF-8").await;
        };
        let text = text
            .strip_suffix('\n')
            .map(|t| t.strip_suffix('\r').unwrap_or(t))
            .unwrap_or(&text);
        if text.chars().any(|c| c.is_control() && c != '\t') {
            return self.error("500 5.5.2 Control characters in command").await;
        }
        let (verb, rest) = match text.split_once(' ') {
            Some((verb, rest)) => (verb, rest),
            None => (text, ""),
        };
        match verb.to_ascii_uppercase().as_str() {
            "LHLO" => self.lhlo(rest.trim()).await,
            "MAIL" => self.mail(rest).await,
            "RCPT" => self.rcpt(rest).await,
            "DATA" if rest.trim().is_empty() => self.data().await,
            "DATA" => self.error("501 5.5.4 DATA takes no arguments").await,
            "RSET" => {
                self.tx = None;
                self.reply("250 2.0.0 OK").await
            }
            "NOOP" => self.reply("250 2.0.0 OK").await,
            "QUIT" => self.close("221 2.0.0 Bye").await,
            "HELO" | "EHLO" => {
                self.error("500 5.5.1 This is LMTP: use LHLO (RFC 2033)")
                    .await
            }
            // Address probing is not offered: Postfix never sends VRFY over LMTP.
            "VRFY" | "EXPN" => self.error("502 5.5.1 VRFY and EXPN are disabled").await,
            "BDAT" | "STARTTLS" | "AUTH" | "HELP" | "TURN" | "ETRN" => {
                self.error("502 5.5.1 Command not implemented").await
            }
            "" => self.error("500 5.5.2 Syntax error: empty command").await,
            _ => self.error("500 5.5.1 Command unrecognized").await,
        }
    }

    /// The SIZE announced and enforced for this directory.
    fn max_message(&self, loaded: Option<&Loaded>) -> u64 {
        let limits = &self.shared.limits;
        if limits.max_message_size > 0 {
            return limits.max_message_size;
        }
        match loaded.map(|l| l.directory.settings.mailbox_size_limit) {
            Some(limit) if limit > 0 => limit,
            _ => DEFAULT_MAX_MESSAGE,
        }
    }

    async fn lhlo(&mut self, name: &str) -> Step {
        if name.is_empty() || name.contains(' ') {
            return self.error("501 5.5.4 Syntax: LHLO hostname").await;
        }
        self.lhlo = true;
        self.tx = None;
        let size = self.max_message(self.shared.directory.current().as_deref());
        let host = self.shared.hostname.clone();
        for line in [
            format!("250-{host}"),
            "250-PIPELINING".into(),
            "250-ENHANCEDSTATUSCODES".into(),
            "250-8BITMIME".into(),
            "250-SMTPUTF8".into(),
            format!("250 SIZE {size}"),
        ] {
            self.reply(&line).await?;
        }
        Ok(())
    }

    async fn mail(&mut self, rest: &str) -> Step {
        if !self.lhlo {
            return self.error("503 5.5.1 Send LHLO first").await;
        }
        if self.tx.is_some() {
            return self.error("503 5.5.1 Nested MAIL command").await;
        }
        let Some(arg) = strip_keyword(rest, "FROM:") else {
            return self.error("501 5.5.4 Syntax: MAIL FROM:<address>").await;
        };
        let Some((path, params)) = parse_path(arg) else {
            return self.error("501 5.1.7 Bad sender address syntax").await;
        };
        let snapshot = self.shared.directory.current();
        let max = self.max_message(snapshot.as_deref());
        for param in params.split(' ').filter(|p| !p.is_empty()) {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            match key.to_ascii_uppercase().as_str() {
                "SIZE" => match value.parse::<u64>() {
                    Ok(size) if size > max => {
                        return self
                            .reply("552 5.3.4 Message size exceeds fixed maximum message size")
                            .await;
                    }
                    Ok(_) => {}
                    Err(_) => return self.error("501 5.5.4 Bad SIZE parameter").await,
                },
                "BODY" => {
                    let value = value.to_ascii_uppercase();
                    if value != "7BIT" && value != "8BITMIME" {
                        return self.error("501 5.5.4 Unsupported BODY type").await;
                    }
                }
                // Accepted and not needed: UTF-8 addresses are taken with or without it (below).
                "SMTPUTF8" if value.is_empty() => {}
                _ => {
                    return self
                        .error(&format!("555 5.5.4 Unsupported parameter {key}"))
                        .await;
                }
            }
        }
        let sender = unquote_address(&path);
        if crate::deliver::address_problem(&sender).is_some() {
            return self.error("501 5.1.7 Bad sender address syntax").await;
        }
        // A UTF-8 sender or recipient without SMTPUTF8 is delivered, not refused 553 5.6.7:
        // this socket is Postfix's last hop, Postfix has already taken the message (its smtpd
        // accepts such addresses without SMTPUTF8), and a refusal here would bounce mail that
        // virtual(8) delivers. The bytes are stored as received, as virtual(8) writes them.
        if !sender.is_empty() && !plausible_address(&sender) {
            return self.error("501 5.1.7 Bad sender address syntax").await;
        }
        self.tx = Some(Transaction {
            sender,
            snapshot,
            recipients: Vec::new(),
        });
        self.reply("250 2.1.0 OK").await
    }

    async fn rcpt(&mut self, rest: &str) -> Step {
        let Some(tx) = &self.tx else {
            return self.error("503 5.5.1 MAIL first").await;
        };
        let count = tx.recipients.len();
        let Some(arg) = strip_keyword(rest, "TO:") else {
            return self.error("501 5.5.4 Syntax: RCPT TO:<address>").await;
        };
        let Some((path, params)) = parse_path(arg) else {
            return self.error("501 5.1.3 Bad recipient address syntax").await;
        };
        let address = unquote_address(&path);
        let mut original = None;
        for param in params.split(' ').filter(|p| !p.is_empty()) {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            match key.to_ascii_uppercase().as_str() {
                "ORCPT" => match decode_orcpt(value) {
                    Some(orcpt) => original = Some(orcpt),
                    None => return self.error("501 5.5.4 Bad ORCPT parameter").await,
                },
                _ => {
                    return self
                        .error(&format!("555 5.5.4 Unsupported parameter {key}"))
                        .await;
                }
            }
        }
        if !plausible_address(&address) || crate::deliver::address_problem(&address).is_some() {
            return self.error("501 5.1.3 Bad recipient address syntax").await;
        }
        if count >= self.shared.limits.max_recipients {
            self.shared.metrics.rcpt_refused(4);
            return self.reply("452 4.5.3 Too many recipients").await;
        }
        let check = match self.tx.as_ref().and_then(|t| t.snapshot.clone()) {
            None => Err(Reply::session_deferral("Directory not loaded yet")),
            Some(loaded) => {
                // The check may read the disk (quota): on the blocking pool, never on a runtime
                // worker that socketmap, other sessions and /healthz share.
                let backend = self.shared.backend.clone();
                let rcpt = address.clone();
                match tokio::task::spawn_blocking(move || {
                    backend.precheck(&loaded.directory, &rcpt)
                })
                .await
                {
                    Ok(checked) => checked.map_err(Reply::from),
                    Err(_) => Err(Reply::session_deferral(
                        "Internal error while checking the recipient",
                    )),
                }
            }
        };
        match check {
            Ok(()) => {
                if let Some(tx) = &mut self.tx {
                    tx.recipients.push(Recipient {
                        original_recipient: original.unwrap_or_else(|| address.clone()),
                        address,
                    });
                }
                self.reply("250 2.1.5 OK").await
            }
            Err(reply) => {
                self.shared.metrics.rcpt_refused(reply.status.code.0);
                tracing::info!(
                    sender = %self.tx.as_ref().map(|t| t.sender.as_str()).unwrap_or(""),
                    recipient = %address,
                    status = %reply.status.code,
                    "refused at RCPT: {}",
                    reply.status.text
                );
                self.reply(&reply.line(&address)).await
            }
        }
    }

    async fn data(&mut self) -> Step {
        let Some(tx) = &self.tx else {
            return self.error("503 5.5.1 MAIL first").await;
        };
        if tx.recipients.is_empty() {
            return self.error("503 5.5.1 No valid recipients").await;
        }
        let max = self.max_message(tx.snapshot.as_deref());
        self.reply("354 Start mail input; end with <CRLF>.<CRLF>")
            .await?;
        let started = Instant::now();
        let body = read_body(
            &mut self.reader,
            &mut self.writer,
            max,
            self.shared.limits.data_timeout,
        )
        .await;
        // A client that vanishes inside DATA gets nothing delivered: the body only lived here.
        let body = body.map_err(|_| Closed)?;
        let Some(tx) = self.tx.take() else {
            return Ok(());
        };
        let Some(message) = body else {
            for r in &tx.recipients {
                self.shared.metrics.delivery(5, started.elapsed());
                tracing::info!(
                    sender = %tx.sender, recipient = %r.address, status = "5.3.4",
                    "refused after DATA: message over {max} bytes"
                );
                let line = format!(
                    "552 5.3.4 <{}> Message size exceeds fixed maximum message size",
                    address::quote_address(&r.address)
                );
                self.reply(&line).await?;
            }
            return Ok(());
        };
        self.deliver(tx, message, started).await
    }

    async fn deliver(&mut self, tx: Transaction, message: Vec<u8>, started: Instant) -> Step {
        let Some(snapshot) = tx.snapshot.clone() else {
            // Unreachable: no recipient is accepted without a directory.
            return self.reply("451 4.3.0 Directory not loaded yet").await;
        };
        let backend = self.shared.backend.clone();
        let (send, mut results) = tokio::sync::mpsc::unbounded_channel();
        let envelope = crate::deliver::Envelope {
            sender: tx.sender.clone(),
            recipients: tx.recipients.clone(),
        };
        let size = message.len();
        // One blocking task per transaction: the engine switches fsuid per thread, and replies
        // stream back one by one so each goes out as soon as its copy is durable.
        let task = tokio::task::spawn_blocking(move || {
            let delivery = Delivery {
                directory: &snapshot.directory,
                envelope: &envelope,
                message: &message,
            };
            backend.deliver(delivery, &mut |outcome| send.send(outcome).is_ok());
        });
        let mut answered = 0;
        for recipient in &tx.recipients {
            let Some(result) = results.recv().await else {
                break;
            };
            answered += 1;
            let status = &result.status;
            self.shared
                .metrics
                .delivery(status.code.0, started.elapsed());
            tracing::info!(
                sender = %tx.sender,
                recipient = %recipient.address,
                original = %recipient.original_recipient,
                status = %status.code,
                code = status.reply_code(),
                path = %result.path.as_deref().unwrap_or("-"),
                size = result.size,
                message_size = size,
                duration_ms = result.duration.as_secs_f64() * 1000.0,
                "{}",
                status.text
            );
            let line = Reply::from(result.status).line(&recipient.address);
            // Write errors are noticed later: the remaining copies are still delivered.
            if self.reply(&line).await.is_err() || self.flush().await.is_err() {
                let _ = task.await;
                return Err(Closed);
            }
        }
        if answered < tx.recipients.len() {
            // The engine panicked: answer the rest with a temporary failure.
            let _ = task.await;
            for recipient in tx.recipients.iter().skip(answered) {
                let line = format!(
                    "451 4.3.0 <{}> Internal error",
                    address::quote_address(&recipient.address)
                );
                self.reply(&line).await?;
            }
        }
        Ok(())
    }
}

/// Read one line of at most `max` octets (including the line end); longer lines are consumed and
/// reported as [`Line::TooLong`]. `None` at end of input.
async fn read_line<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    max: usize,
) -> std::io::Result<Option<Line>> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(None);
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(pos) => (pos + 1, true),
            None => (buf.len(), false),
        };
        if !too_long {
            if line.len() + take > max {
                too_long = true;
                line = Vec::new();
            } else {
                line.extend_from_slice(&buf[..take]);
            }
        }
        reader.consume(take);
        if done {
            return Ok(Some(if too_long {
                Line::TooLong
            } else {
                Line::Text(line)
            }));
        }
    }
}

/// The DATA decoder: removes dot-stuffing, turns CRLF into LF and finds `CRLF.CRLF`.
/// Only CRLF ends a line; a bare CR or LF is kept as it is (so `LF.LF` is not the end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DotState {
    /// At the start of a line.
    Bol,
    /// Inside a line.
    Mid,
    /// After a CR inside a line.
    Cr,
    /// After a `.` at the start of a line.
    Dot,
    /// After `.` CR at the start of a line.
    DotCr,
}

/// Streaming decoder state plus the size accounting.
#[derive(Debug)]
pub struct BodyDecoder {
    state: DotState,
    max: u64,
    size: u64,
    body: Option<Vec<u8>>,
}

impl BodyDecoder {
    /// A decoder that keeps at most `max` bytes of decoded body.
    pub fn new(max: u64) -> BodyDecoder {
        BodyDecoder {
            state: DotState::Bol,
            max,
            size: 0,
            body: Some(Vec::new()),
        }
    }

    fn emit(&mut self, byte: u8) {
        self.size += 1;
        if self.size > self.max {
            self.body = None;
        } else if let Some(body) = &mut self.body {
            body.push(byte);
        }
    }

    /// Feed bytes; returns how many were consumed when the end marker was found.
    pub fn feed(&mut self, input: &[u8]) -> Option<usize> {
        for (i, &b) in input.iter().enumerate() {
            self.state = match (self.state, b) {
                (DotState::Bol, b'.') => DotState::Dot,
                (DotState::Bol | DotState::Mid | DotState::Dot, b'\r') => {
                    if self.state == DotState::Dot {
                        DotState::DotCr
                    } else {
                        DotState::Cr
                    }
                }
                (DotState::Bol | DotState::Mid | DotState::Dot, _) => {
                    self.emit(b);
                    DotState::Mid
                }
                (DotState::Cr, b'\n') => {
                    self.emit(b'\n');
                    DotState::Bol
                }
                (DotState::DotCr, b'\n') => return Some(i + 1),
                (DotState::Cr | DotState::DotCr, b'\r') => {
                    self.emit(b'\r');
                    DotState::Cr
                }
                (DotState::Cr | DotState::DotCr, _) => {
                    self.emit(b'\r');
                    self.emit(b);
                    DotState::Mid
                }
            };
        }
        None
    }

    /// The decoded body, or `None` when it went over the limit.
    pub fn finish(self) -> Option<Vec<u8>> {
        self.body
    }
}

/// Read the body up to the final dot. `Ok(None)`: over the size limit (all input was still read).
async fn read_body<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    reader: &mut BufReader<R>,
    writer: &mut BufWriter<W>,
    max: u64,
    timeout: Duration,
) -> Result<Option<Vec<u8>>, ()> {
    let mut decoder = BodyDecoder::new(max);
    loop {
        if reader.buffer().is_empty() {
            // The 354 must reach the client before it sends the body.
            tokio::time::timeout(timeout, writer.flush())
                .await
                .map_err(|_| ())?
                .map_err(|_| ())?;
        }
        let buf = tokio::time::timeout(timeout, reader.fill_buf())
            .await
            .map_err(|_| ())?
            .map_err(|_| ())?;
        if buf.is_empty() {
            return Err(());
        }
        let len = buf.len();
        match decoder.feed(buf) {
            Some(used) => {
                reader.consume(used);
                return Ok(decoder.finish());
            }
            None => reader.consume(len),
        }
    }
}

/// `FROM:` / `TO:` after the verb, case-insensitive, tolerating spaces around the colon.
fn strip_keyword<'a>(rest: &'a str, keyword: &str) -> Option<&'a str> {
    let rest = rest.trim_start();
    let head = rest.get(..keyword.len() - 1)?;
    if !head.eq_ignore_ascii_case(&keyword[..keyword.len() - 1]) {
        return None;
    }
    let after = rest[keyword.len() - 1..].trim_start().strip_prefix(':')?;
    Some(after.trim_start())
}

/// Parse `<path>` followed by parameters. Returns the path in external form (quotes kept, source
/// route removed) and the parameter text.
fn parse_path(arg: &str) -> Option<(String, &str)> {
    let inner = arg.strip_prefix('<')?;
    let mut quoted = false;
    let mut escaped = false;
    let mut end = None;
    for (i, c) in inner.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' && quoted {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == '>' && !quoted {
            end = Some(i);
            break;
        }
    }
    let end = end?;
    let mut path = &inner[..end];
    let params = &inner[end + 1..];
    if !params.is_empty() && !params.starts_with(' ') {
        return None;
    }
    // RFC 5321 §4.1.2: an obsolete source route `@a,@b:` is accepted and ignored.
    if path.starts_with('@') {
        path = &path[path.find(':')? + 1..];
    }
    if path.len() > 256 {
        return None;
    }
    Some((path.to_string(), params.trim_start()))
}

/// `local@domain` with a non-empty local part and a domain without spaces or controls.
fn plausible_address(address: &str) -> bool {
    let Some((local, domain)) = address::split(address) else {
        return false;
    };
    !local.is_empty()
        && local.len() <= 64
        && !domain.is_empty()
        && domain.len() <= 255
        && !domain
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>\"\\@,;:[]()".contains(c))
        && !local.chars().any(|c| c.is_control())
}

/// `ORCPT=rfc822;<xtext>` (RFC 3461 §4.2): decode `+XX` escapes. Other address types are
/// accepted but not used.
fn decode_orcpt(value: &str) -> Option<String> {
    let (kind, xtext) = value.split_once(';')?;
    if !kind.eq_ignore_ascii_case("rfc822") {
        return None;
    }
    let bytes = xtext.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'+' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let text = String::from_utf8(out).ok()?;
    let text = unquote_address(text.trim_start_matches('<').trim_end_matches('>'));
    (plausible_address(&text) && crate::deliver::address_problem(&text).is_none()).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(input: &[u8], max: u64) -> (Option<usize>, Option<Vec<u8>>) {
        let mut d = BodyDecoder::new(max);
        let end = d.feed(input);
        (end, d.finish())
    }

    #[test]
    fn body_unstuffs_and_converts_crlf() {
        let (end, body) = decode(b"a\r\n..b\r\n.c\r\n\r\n.\r\nNEXT", 100);
        assert_eq!(end, Some(17));
        assert_eq!(body.unwrap(), b"a\n.b\nc\n\n");
    }

    #[test]
    fn body_empty_and_bare_line_ends_kept() {
        assert_eq!(decode(b".\r\n", 100), (Some(3), Some(vec![])));
        let (end, body) = decode(b"a\n.\nb\rc\r\r\n.\r\n", 100);
        assert_eq!(end, Some(13));
        assert_eq!(body.unwrap(), b"a\n.\nb\rc\r\n");
    }

    #[test]
    fn body_end_split_across_reads() {
        let mut d = BodyDecoder::new(100);
        assert_eq!(d.feed(b"x\r"), None);
        assert_eq!(d.feed(b"\n."), None);
        assert_eq!(d.feed(b"\r"), None);
        assert_eq!(d.feed(b"\nrest"), Some(1));
        assert_eq!(d.finish().unwrap(), b"x\n");
    }

    #[test]
    fn body_over_limit_is_dropped_but_end_found() {
        let (end, body) = decode(b"12345\r\n.\r\n", 4);
        assert_eq!(end, Some(10));
        assert_eq!(body, None);
        assert_eq!(decode(b"123\r\n.\r\n", 4).1.unwrap(), b"123\n");
    }

    #[test]
    fn reply_limit_cuts_long_text_at_a_character_boundary() {
        assert_eq!(within_reply_limit("250 2.0.0 OK"), "250 2.0.0 OK");
        let long = format!("550 5.1.1 {}", "ä".repeat(300));
        let cut = within_reply_limit(&long);
        assert!(cut.len() <= MAX_REPLY_TEXT && cut.len() >= MAX_REPLY_TEXT - 1);
        assert!(long.starts_with(cut));
    }

    #[test]
    fn paths_and_parameters() {
        assert_eq!(
            parse_path("<a@b.test> SIZE=1"),
            Some(("a@b.test".into(), "SIZE=1"))
        );
        assert_eq!(parse_path("<>"), Some(("".into(), "")));
        assert_eq!(
            parse_path("<\"x>y\"@b.test>"),
            Some(("\"x>y\"@b.test".into(), ""))
        );
        assert_eq!(
            parse_path("<@r1,@r2:a@b.test>"),
            Some(("a@b.test".into(), ""))
        );
        assert_eq!(parse_path("a@b.test"), None);
        assert_eq!(parse_path("<a@b.test>X"), None);
        assert_eq!(strip_keyword(" from:<a>", "FROM:"), Some("<a>"));
        assert_eq!(strip_keyword("FROM : <a>", "FROM:"), Some("<a>"));
        assert_eq!(strip_keyword("TO:<a>", "FROM:"), None);
        assert_eq!(
            decode_orcpt("rfc822;a+2Bb@x.test").as_deref(),
            Some("a+b@x.test")
        );
        assert_eq!(decode_orcpt("rfc822;a+2@x.test"), None);
        assert_eq!(decode_orcpt("x400;foo"), None);
    }
}
