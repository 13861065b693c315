//! The one LMTP client of the suites, benchmarks and agent tests: whole transactions for tests
//! that deliver, and raw `send`/`reply` for tests that speak the protocol badly on purpose.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::mail::to_wire;

/// How long a reply may take before the read fails (a 20 MB delivery under load included).
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// A unix or TCP stream to an LMTP server.
trait Connection: Read + Write + Send + fmt::Debug {}
impl Connection for UnixStream {}
impl Connection for TcpStream {}

/// One LMTP connection. Replies come back as their lines without CRLF, joined with `\n`.
#[derive(Debug)]
pub struct Lmtp {
    stream: BufReader<Box<dyn Connection>>,
}

impl Lmtp {
    /// Connect to the unix socket `path` (as Postfix's lmtp(8) talks to the agent).
    pub fn connect(path: &Path) -> Lmtp {
        let stream = UnixStream::connect(path)
            .unwrap_or_else(|e| panic!("connect LMTP {}: {e}", path.display()));
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .expect("LMTP read timeout");
        Lmtp::over(Box::new(stream))
    }

    /// Connect to `unix:PATH` or `HOST:PORT` (any LMTP server, Dovecot's included).
    pub fn connect_to(target: &str) -> Lmtp {
        if let Some(path) = target.strip_prefix("unix:") {
            return Lmtp::connect(Path::new(path));
        }
        let stream =
            TcpStream::connect(target).unwrap_or_else(|e| panic!("connect LMTP {target}: {e}"));
        stream.set_nodelay(true).expect("TCP_NODELAY");
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .expect("LMTP read timeout");
        Lmtp::over(Box::new(stream))
    }

    fn over(stream: Box<dyn Connection>) -> Lmtp {
        Lmtp {
            stream: BufReader::new(stream),
        }
    }

    /// Connect to the unix socket `path`, read the greeting and say LHLO.
    pub fn session(path: &Path) -> Lmtp {
        let mut lmtp = Lmtp::connect(path);
        lmtp.hello();
        lmtp
    }

    /// Write raw bytes: commands, pipelined batches, message data, garbage.
    pub fn send(&mut self, data: &[u8]) {
        self.try_send(data).expect("LMTP write");
    }

    /// Write raw bytes where the server may already have closed the connection.
    pub fn try_send(&mut self, data: &[u8]) -> io::Result<()> {
        self.stream.get_mut().write_all(data)
    }

    /// One reply, all its lines; an empty string once the server has closed the connection.
    pub fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            match self.stream.read_line(&mut line) {
                Ok(0) | Err(_) => return lines.join("\n"),
                Ok(_) => {}
            }
            assert!(line.ends_with("\r\n"), "reply line without CRLF: {line:?}");
            let line = line.trim_end().to_string();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return lines.join("\n");
            }
        }
    }

    /// Send one command line and read its reply.
    pub fn command(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// Read the greeting and say LHLO; the LHLO reply (its capabilities).
    pub fn hello(&mut self) -> String {
        let greeting = self.reply();
        assert!(greeting.starts_with("220 "), "greeting: {greeting}");
        let lhlo = self.command("LHLO client.test");
        assert!(lhlo.starts_with("250"), "LHLO: {lhlo}");
        lhlo
    }

    /// One transaction of `message` (LF or CRLF lines; dot-stuffed here) from `sender` to
    /// `rcpts`. The final reply for each recipient: its RCPT reply where that was refused, else
    /// its reply after the final dot. When every recipient is refused, RSET instead of DATA.
    pub fn deliver(&mut self, sender: &str, rcpts: &[&str], message: &[u8]) -> Vec<String> {
        let mail = self.command(&format!("MAIL FROM:<{sender}>"));
        assert!(mail.starts_with("250"), "MAIL: {mail}");
        let mut replies: Vec<Option<String>> = rcpts
            .iter()
            .map(|rcpt| {
                let reply = self.command(&format!("RCPT TO:<{rcpt}>"));
                (!reply.starts_with("250")).then_some(reply)
            })
            .collect();
        if replies.iter().all(Option::is_some) {
            self.command("RSET");
        } else {
            let data = self.command("DATA");
            assert!(data.starts_with("354"), "DATA: {data}");
            let mut wire = to_wire(message);
            wire.extend_from_slice(b".\r\n");
            self.send(&wire);
            for reply in replies.iter_mut().filter(|r| r.is_none()) {
                *reply = Some(self.reply());
            }
        }
        replies.into_iter().map(Option::unwrap).collect()
    }

    /// Whether the server closed the connection (reads one byte).
    pub fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0))
    }
}

/// One transaction on a fresh connection to the unix socket `path`: a message with subject
/// `test` and `body` from `sender@example.test` to `rcpt`; the final reply.
pub fn deliver_once(path: &Path, rcpt: &str, body: &str) -> String {
    let message = format!("Subject: test\r\n\r\n{body}\r\n");
    let mut lmtp = Lmtp::session(path);
    let reply = lmtp
        .deliver("sender@example.test", &[rcpt], message.as_bytes())
        .remove(0);
    let _ = lmtp.try_send(b"QUIT\r\n");
    reply
}
