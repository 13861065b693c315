//! Mail clients for the end-to-end suites: a small SMTP client over `TcpStream` (byte-exact, no
//! rewriting beyond what RFC 5321 requires: LF becomes CRLF, dot-stuffing) and an IMAP fetch that
//! reads every message of a mailbox back with `BODY.PEEK[]` through Python's `imaplib`
//! (`tests/support/imap_fetch.py`), plus helpers to build test messages.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use crate::workspace_root;

/// One SMTP reply (all lines of a multi-line reply joined by `\n`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The text after the code of every line.
    pub text: String,
}

impl Reply {
    /// `"<code> <text>"` of the whole reply.
    pub fn line(&self) -> String {
        format!("{} {}", self.code, self.text)
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

/// An SMTP session with a server on 127.0.0.1.
#[derive(Debug)]
pub struct Smtp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    /// The EHLO reply (keywords), once sent.
    pub ehlo: Option<Reply>,
}

impl Smtp {
    /// Connect to `127.0.0.1:port`, read the greeting (must be 220) and send `EHLO client.test`.
    pub fn connect(port: u16) -> Smtp {
        Smtp::connect_to("127.0.0.1", port)
    }

    /// Like [`Smtp::connect`], to another local address (a Service's ClusterIP on the node).
    pub fn connect_to(host: &str, port: u16) -> Smtp {
        Smtp::connect_with_preamble(host, port, b"")
    }

    /// Like [`Smtp::connect_to`], sending `preamble` first (a PROXY protocol header, as a load
    /// balancer does before the client's first byte).
    pub fn connect_with_preamble(host: &str, port: u16, preamble: &[u8]) -> Smtp {
        Smtp::try_connect_with_preamble(host, port, preamble)
            .unwrap_or_else(|e| panic!("cannot connect to SMTP {host}:{port}: {e}"))
    }

    /// Like [`Smtp::connect_to`], but a refused connection is the caller's to handle, as a
    /// sending MTA retries a server that is briefly unreachable (a Service without a ready pod
    /// refuses connections).
    pub fn try_connect_to(host: &str, port: u16) -> std::io::Result<Smtp> {
        Smtp::try_connect_with_preamble(host, port, b"")
    }

    fn try_connect_with_preamble(host: &str, port: u16, preamble: &[u8]) -> std::io::Result<Smtp> {
        let mut stream = TcpStream::connect((host, port))?;
        stream.write_all(preamble).expect("send the preamble");
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .expect("read timeout");
        let writer = stream.try_clone().expect("clone stream");
        let mut smtp = Smtp {
            reader: BufReader::new(stream),
            writer,
            ehlo: None,
        };
        let greeting = smtp.reply();
        assert_eq!(greeting.code, 220, "SMTP greeting: {greeting}");
        let ehlo = smtp.command("EHLO client.test");
        assert_eq!(ehlo.code, 250, "EHLO: {ehlo}");
        smtp.ehlo = Some(ehlo);
        Ok(smtp)
    }

    /// Read one (possibly multi-line) reply.
    pub fn reply(&mut self) -> Reply {
        let mut text = Vec::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).expect("read SMTP reply");
            assert!(n > 0, "SMTP server closed the connection");
            let line = line.trim_end_matches(['\r', '\n']);
            assert!(line.len() >= 3, "short SMTP reply line {line:?}");
            let code: u16 = line[..3]
                .parse()
                .unwrap_or_else(|_| panic!("bad reply {line:?}"));
            text.push(line.get(4..).unwrap_or("").to_string());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Reply {
                    code,
                    text: text.join("\n"),
                };
            }
        }
    }

    /// Send one command line and read its reply.
    pub fn command(&mut self, line: &str) -> Reply {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .expect("send SMTP command");
        self.reply()
    }

    /// `MAIL FROM:<from>` plus parameters (e.g. `SMTPUTF8`, `BODY=8BITMIME`).
    pub fn mail(&mut self, from: &str, params: &str) -> Reply {
        let params = if params.is_empty() {
            String::new()
        } else {
            format!(" {params}")
        };
        self.command(&format!("MAIL FROM:<{from}>{params}"))
    }

    /// `RCPT TO:<to>`.
    pub fn rcpt(&mut self, to: &str) -> Reply {
        self.command(&format!("RCPT TO:<{to}>"))
    }

    /// `DATA`, then the message (LF line ends become CRLF, lines starting with `.` are
    /// dot-stuffed, a missing final line end is added because SMTP cannot carry one), then the
    /// final dot. Returns the reply after the dot (or the DATA reply if it was not 354).
    pub fn data(&mut self, message: &[u8]) -> Reply {
        let go = self.command("DATA");
        if go.code != 354 {
            return go;
        }
        let wire = to_wire(message);
        self.writer.write_all(&wire).expect("send message data");
        self.writer.write_all(b".\r\n").expect("send final dot");
        self.reply()
    }

    /// `RSET`.
    pub fn rset(&mut self) -> Reply {
        self.command("RSET")
    }

    /// `QUIT` (the reply is not checked).
    pub fn quit(mut self) {
        let _ = self.writer.write_all(b"QUIT\r\n");
        let mut line = String::new();
        let _ = self.reader.read_line(&mut line);
    }
}

/// The outcome of [`send`]: every RCPT reply, and the reply to DATA (None when no recipient was
/// accepted, so DATA was not sent).
#[derive(Debug, Clone)]
pub struct Sent {
    /// MAIL reply.
    pub mail: Reply,
    /// One reply per recipient, in order.
    pub rcpt: Vec<Reply>,
    /// The reply after the final dot.
    pub data: Option<Reply>,
}

impl Sent {
    /// Panic unless MAIL, every RCPT and DATA were accepted.
    pub fn assert_accepted(&self) {
        assert_eq!(self.mail.code, 250, "MAIL: {}", self.mail);
        for reply in &self.rcpt {
            assert_eq!(reply.code, 250, "RCPT: {reply}");
        }
        let data = self.data.as_ref().expect("DATA sent");
        assert_eq!(data.code, 250, "DATA: {data}");
    }
}

/// One SMTP transaction on a new session: MAIL (with `params`), every RCPT, DATA if any RCPT was
/// accepted, QUIT.
pub fn send(port: u16, from: &str, params: &str, rcpts: &[&str], message: &[u8]) -> Sent {
    let mut smtp = Smtp::connect(port);
    let mail = smtp.mail(from, params);
    let mut rcpt = Vec::new();
    let mut data = None;
    if mail.code == 250 {
        rcpt = rcpts.iter().map(|r| smtp.rcpt(r)).collect::<Vec<_>>();
        if rcpt.iter().any(|r| r.code == 250) {
            data = Some(smtp.data(message));
        }
    }
    smtp.quit();
    Sent { mail, rcpt, data }
}

/// The SMTP wire form of a message: CRLF line ends, dot-stuffed, ending in CRLF.
pub fn to_wire(message: &[u8]) -> Vec<u8> {
    let mut wire = Vec::with_capacity(message.len() + message.len() / 50 + 2);
    for line in lines(message) {
        if line.first() == Some(&b'.') {
            wire.push(b'.');
        }
        wire.extend_from_slice(line);
        wire.extend_from_slice(b"\r\n");
    }
    wire
}

/// Lines of a message without their LF or CRLF ends.
fn lines(message: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = message;
    while !rest.is_empty() {
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                let line = &rest[..i];
                out.push(line.strip_suffix(b"\r").unwrap_or(line));
                rest = &rest[i + 1..];
            }
            None => {
                out.push(rest);
                rest = &[];
            }
        }
    }
    out
}

/// `message` with CRLF line ends and a final CRLF: how IMAP returns a stored message.
pub fn crlf(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 50 + 2);
    for line in lines(message) {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A complete RFC 5322 message (From, To, Subject, Date, Message-ID, then `extra_headers`, a
/// blank line and `body`) with LF line ends. Postfix's cleanup adds only a Received header to it.
pub fn message(from: &str, to: &str, subject: &str, extra_headers: &str, body: &[u8]) -> Vec<u8> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut m = format!(
        "From: <{from}>\nTo: <{to}>\nSubject: {subject}\nDate: Wed, 25 Nov 2026 10:00:00 +0000\nMessage-ID: <{}.{n}@client.test>\n{extra_headers}\n",
        std::process::id()
    )
    .into_bytes();
    m.extend_from_slice(body);
    m
}

/// Messages of a mailbox read back through IMAP.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// `BODY.PEEK[]` of each message in UID order, exactly as the server sent it.
    pub messages: Vec<Vec<u8>>,
}

/// Log in to the IMAP server on `127.0.0.1:port` as `user` (any password), EXAMINE `INBOX`
/// (read-only) and fetch `BODY.PEEK[]` of every message. Panics with the script's output on
/// failure.
pub fn imap_fetch(port: u16, user: &str) -> Fetched {
    let script = workspace_root().join("tests/support/imap_fetch.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(["127.0.0.1", &port.to_string(), user])
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "IMAP fetch for {user} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Output: for each message "<length>\n<bytes>".
    let mut messages = Vec::new();
    let mut rest = &out.stdout[..];
    while !rest.is_empty() {
        let nl = rest.iter().position(|&b| b == b'\n').expect("length line");
        let len: usize = std::str::from_utf8(&rest[..nl])
            .ok()
            .and_then(|s| s.parse().ok())
            .expect("numeric length");
        messages.push(rest[nl + 1..nl + 1 + len].to_vec());
        rest = &rest[nl + 1 + len..];
    }
    Fetched { messages }
}

/// The header section of a message (up to, not including, the first empty line), as text.
pub fn header_section(message: &[u8]) -> String {
    let end = find(message, b"\r\n\r\n")
        .or_else(|| find(message, b"\n\n"))
        .unwrap_or(message.len());
    String::from_utf8_lossy(&message[..end]).into_owned()
}

/// Value of the first header `name` (case-insensitive), unfolded.
pub fn header(message: &[u8], name: &str) -> Option<String> {
    headers(message, name).into_iter().next()
}

/// Values of every header `name` (case-insensitive), in order, unfolded.
pub fn headers(message: &[u8], name: &str) -> Vec<String> {
    let section = header_section(message);
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in section.split('\n') {
        let line = line.trim_end_matches('\r');
        if line.starts_with([' ', '\t']) {
            if let Some(value) = current.as_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        if let Some(value) = current.take() {
            out.push(value);
        }
        if let Some((n, v)) = line.split_once(':')
            && n.eq_ignore_ascii_case(name)
        {
            current = Some(v.trim().to_string());
        }
    }
    out.extend(current);
    out
}

/// A delivered copy taken apart: the three headers the delivery agent prepends (in virtual(8)'s
/// order), the Received header Postfix's smtpd adds, and the rest (what the client sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Value of the first line, which must be `Return-Path:`.
    pub return_path: String,
    /// Value of the second line, which must be `X-Original-To:`.
    pub x_original_to: String,
    /// Value of the third line, which must be `Delivered-To:`.
    pub delivered_to: String,
    /// The Received header that follows (unfolded), if any.
    pub received: Option<String>,
    /// Everything after those headers, line ends as stored.
    pub rest: Vec<u8>,
}

/// Take a delivered copy apart (LF or CRLF line ends). Panics, showing the start of the message,
/// unless it starts with Return-Path, X-Original-To and Delivered-To in that order.
pub fn delivery(stored: &[u8]) -> Delivery {
    let show = || String::from_utf8_lossy(&stored[..stored.len().min(600)]).into_owned();
    let mut rest = stored;
    let take_line = |rest: &mut &[u8]| -> String {
        let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let line = String::from_utf8_lossy(&rest[..end])
            .trim_end_matches('\r')
            .to_string();
        *rest = &rest[(end + 1).min(rest.len())..];
        line
    };
    let mut values = Vec::new();
    for name in ["Return-Path: ", "X-Original-To: ", "Delivered-To: "] {
        let line = take_line(&mut rest);
        let value = line
            .strip_prefix(name)
            .unwrap_or_else(|| panic!("expected {name:?} here: {line:?}\nmessage:\n{}", show()));
        values.push(value.to_string());
    }
    let mut received = None;
    if rest.starts_with(b"Received: ") {
        let mut value = take_line(&mut rest)["Received: ".len()..].to_string();
        while rest.starts_with(b" ") || rest.starts_with(b"\t") {
            value.push(' ');
            value.push_str(take_line(&mut rest).trim());
        }
        received = Some(value);
    }
    Delivery {
        return_path: values[0].clone(),
        x_original_to: values[1].clone(),
        delivered_to: values[2].clone(),
        received,
        rest: rest.to_vec(),
    }
}

/// `message` as virtual(8) stores it in an mbox (mboxo, `MAIL_COPY_QUOTE`): lines starting with
/// `From ` get a `>`; LF line ends; a missing final newline is added.
pub fn mboxo_quoted(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 16);
    for line in lines(message) {
        if line.starts_with(b"From ") {
            out.push(b'>');
        }
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out
}

/// `message` with LF line ends and a final LF (how Maildir and mbox files store it).
pub fn lf(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 1);
    for line in lines(message) {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out
}

/// Position of `needle` in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_stuffs_dots_and_uses_crlf() {
        assert_eq!(to_wire(b"a\n.b\nc"), b"a\r\n..b\r\nc\r\n");
        assert_eq!(to_wire(b"a\r\n.\r\n"), b"a\r\n..\r\n");
    }

    #[test]
    fn headers_are_unfolded_and_case_insensitive() {
        let m = b"Received: a\n\tb\nX-Original-To: x@y\nx-original-to: z\n\nbody: no\n";
        assert_eq!(header(m, "received").as_deref(), Some("a b"));
        assert_eq!(headers(m, "X-Original-To"), vec!["x@y", "z"]);
        assert_eq!(header(m, "body"), None);
    }
}
