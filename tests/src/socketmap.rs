//! The one socketmap client (Postfix's netstring protocol) of the suites, benchmarks and agent
//! tests.

use std::io::{BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// One socketmap connection over a unix socket.
#[derive(Debug)]
pub struct Socketmap {
    stream: BufReader<UnixStream>,
}

impl Socketmap {
    /// Connect to the unix socket `path`.
    pub fn connect(path: &Path) -> Socketmap {
        Socketmap::try_connect(path)
            .unwrap_or_else(|e| panic!("connect socketmap {}: {e}", path.display()))
    }

    fn try_connect(path: &Path) -> std::io::Result<Socketmap> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Socketmap {
            stream: BufReader::new(stream),
        })
    }

    /// Write raw bytes (malformed netstrings included).
    pub fn send_raw(&mut self, data: &[u8]) {
        self.stream
            .get_mut()
            .write_all(data)
            .expect("socketmap write");
    }

    /// Read one netstring reply; `None` at EOF or on a malformed reply.
    pub fn read_reply(&mut self) -> Option<String> {
        let mut len = 0usize;
        loop {
            let mut byte = [0u8; 1];
            if self.stream.read(&mut byte).ok()? == 0 {
                return None;
            }
            match byte[0] {
                b':' => break,
                digit @ b'0'..=b'9' => len = len * 10 + usize::from(digit - b'0'),
                _ => return None,
            }
        }
        let mut data = vec![0u8; len + 1];
        self.stream.read_exact(&mut data).ok()?;
        assert_eq!(data.pop(), Some(b','), "netstring without its comma");
        String::from_utf8(data).ok()
    }

    /// One request (`map key`); the reply payload.
    pub fn query(&mut self, request: &str) -> String {
        self.send_raw(format!("{}:{},", request.len(), request).as_bytes());
        self.read_reply().expect("socketmap reply")
    }
}

/// One request on a fresh connection; `None` where the socket does not answer (yet).
pub fn query_once(socket: &Path, request: &str) -> Option<String> {
    let mut map = Socketmap::try_connect(socket).ok()?;
    map.stream
        .get_mut()
        .write_all(format!("{}:{},", request.len(), request).as_bytes())
        .ok()?;
    map.read_reply()
}
