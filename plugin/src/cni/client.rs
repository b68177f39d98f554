//! The brindle-cni side of brindled's local API (`crate::api` is the server side): one
//! HTTP/1.1 request on the unix socket per CNI operation, written and read with plain
//! blocking I/O. A plugin process that only forwards its operation starts no async
//! runtime and no etcd client: it sends one request and reads one answer.
//!
//! A caller brindled does not admit is told so (code 106) rather than sent to etcd
//! directly: the socket's mode refused the connection (`EACCES`), or brindled answered
//! 403 after checking the caller's credentials or the netns path.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::{code, CniError};

/// Paths of the API, shared with the server (`crate::api`).
pub mod paths {
    pub const ADD: &str = "/v1/cni/add";
    pub const DEL: &str = "/v1/cni/del";
    pub const CHECK: &str = "/v1/cni/check";
    pub const GC: &str = "/v1/cni/gc";
    pub const STATUS: &str = "/v1/cni/status";
}

/// Longest a fast-path call may take (brindled's etcd calls give up after 5 s each).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a call did not produce a reply.
#[derive(Debug)]
pub enum CallError {
    /// Nothing was sent: brindled is not running here (no socket, refused). Safe to do
    /// the work directly.
    Unavailable(String),
    /// brindled declined before doing anything (another node or prefix, or it could not
    /// decode the request). Also safe to do the work directly.
    Declined(CniError),
    /// The operation ran (or may have run) and failed.
    Failed(CniError),
}

/// Largest answer read from brindled (its replies are a few hundred bytes).
const MAX_REPLY: u64 = 1 << 20;

/// POST `body` to `path` on brindled's socket and decode the 200 answer.
pub fn call<Req: Serialize, Rep: DeserializeOwned>(
    socket: &Path,
    path: &str,
    body: &Req,
) -> Result<Rep, CallError> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            CallError::Failed(not_admitted(socket, &e))
        } else {
            CallError::Unavailable(format!("connect {}: {e}", socket.display()))
        }
    })?;
    let gone = |e: String| {
        CallError::Failed(CniError::new(
            code::TRY_AGAIN,
            format!(
                "brindled at {} went away during {path}: {e}",
                socket.display()
            ),
        ))
    };
    let json = serde_json::to_vec(body).expect("API requests serialise");
    let (status, bytes) = exchange(&mut stream, path, &json).map_err(|e| gone(e.to_string()))?;
    let bad = |what: String| {
        CallError::Failed(CniError::new(
            code::BRINDLED,
            format!("brindled answered {path} with {what}"),
        ))
    };
    if status == 404 {
        // A brindled without this API (older, or serving something else): nothing ran.
        return Err(CallError::Declined(CniError::new(
            code::BRINDLED,
            format!("brindled at {} does not serve {path}", socket.display()),
        )));
    }
    if status == 200 {
        return serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("an unreadable reply: {e}")));
    }
    if status == 403 {
        // Refused before anything ran; going to etcd directly would only sidestep it.
        return Err(CallError::Failed(
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                CniError::new(
                    code::REFUSED,
                    format!(
                        "brindled at {} refused {path}: {}",
                        socket.display(),
                        String::from_utf8_lossy(&bytes).trim()
                    ),
                )
            }),
        ));
    }
    let err: CniError = serde_json::from_slice(&bytes).map_err(|_| {
        bad(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&bytes).trim()
        ))
    })?;
    if status == 409 || status == 400 {
        Err(CallError::Declined(err))
    } else {
        Err(CallError::Failed(err))
    }
}

/// The socket's mode keeps this process out: say who it runs as and who may call.
fn not_admitted(socket: &Path, e: &std::io::Error) -> CniError {
    // SAFETY: geteuid and getegid cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    CniError::new(
        code::REFUSED,
        format!(
            "brindled refused uid {uid} (gid {gid}): cannot connect to {}: {e}; only root or members of brindled's --api-group may call",
            socket.display()
        ),
    )
}

/// Why an exchange with brindled broke off.
#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within {}s", CALL_TIMEOUT.as_secs())]
    Timeout,
    #[error("a malformed HTTP answer ({0})")]
    Malformed(&'static str),
}

/// One request, `Connection: close`, and the whole answer up to its end: its status and
/// body.
fn exchange(
    stream: &mut UnixStream,
    path: &str,
    json: &[u8],
) -> Result<(u16, Vec<u8>), ExchangeError> {
    stream.set_read_timeout(Some(CALL_TIMEOUT))?;
    stream.set_write_timeout(Some(CALL_TIMEOUT))?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: brindled\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        json.len()
    );
    let timed_out = |e: std::io::Error| match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => ExchangeError::Timeout,
        _ => ExchangeError::Io(e),
    };
    // One write: the whole request in a single send when it fits the socket buffer.
    let mut request = head.into_bytes();
    request.extend_from_slice(json);
    // brindled may answer (a refusal) and close before it has read the request; the
    // write then fails with EPIPE while the answer waits unread: read it before failing.
    let unsent = match stream.write_all(&request) {
        Ok(()) => None,
        Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => Some(e),
        Err(e) => return Err(timed_out(e)),
    };
    match (read_answer(stream), unsent) {
        (Ok(answer), None) => parse_response(&answer),
        (Ok(answer), Some(_)) if !answer.is_empty() => parse_response(&answer),
        (_, Some(write_error)) => Err(ExchangeError::Io(write_error)),
        (Err(e), None) => Err(timed_out(e)),
    }
}

/// Everything brindled sent, up to [`MAX_REPLY`]: to the end of a body whose length the
/// headers give (brindled's server closes the connection only after that, and the
/// plugin need not wait for it), else to the close. A close with part of our request
/// still unread ends the stream with `ECONNRESET` after the answer instead of EOF: the
/// answer is whole either way.
fn read_answer(stream: &mut UnixStream) -> std::io::Result<Vec<u8>> {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(answer),
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.len() as u64 > MAX_REPLY {
                    return Err(std::io::Error::new(
                        ErrorKind::InvalidData,
                        format!("an answer longer than {MAX_REPLY} bytes"),
                    ));
                }
                if has_whole_body(&answer) {
                    return Ok(answer);
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset && !answer.is_empty() => {
                return Ok(answer)
            }
            Err(e) => return Err(e),
        }
    }
}

/// Where an answer's headers end (the blank line), if it has come that far.
fn end_of_head(answer: &[u8]) -> Option<usize> {
    answer.windows(4).position(|w| w == b"\r\n\r\n")
}

/// The value of header `name` (case-insensitive) among the lines after the status line.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (n, value) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// Whether `answer` holds its headers and all of the body their `Content-Length` gives.
fn has_whole_body(answer: &[u8]) -> bool {
    let Some(split) = end_of_head(answer) else {
        return false;
    };
    let length = std::str::from_utf8(&answer[..split])
        .ok()
        .and_then(|head| header(head, "content-length")?.parse::<usize>().ok());
    length.is_some_and(|n| answer.len() - (split + 4) >= n)
}

/// The status and body of an HTTP/1.1 answer read to its end (`Content-Length`,
/// chunked, or delimited by the connection's close).
fn parse_response(answer: &[u8]) -> Result<(u16, Vec<u8>), ExchangeError> {
    let split = end_of_head(answer).ok_or(ExchangeError::Malformed("no end of headers"))?;
    let head = std::str::from_utf8(&answer[..split])
        .map_err(|_| ExchangeError::Malformed("headers not UTF-8"))?;
    let body = &answer[split + 4..];
    let status = head
        .split("\r\n")
        .next()
        .and_then(|l| l.strip_prefix("HTTP/1."))
        .and_then(|l| l.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or(ExchangeError::Malformed("no status line"))?;
    let length = header(head, "content-length")
        .map(|v| {
            v.parse::<usize>()
                .map_err(|_| ExchangeError::Malformed("bad Content-Length"))
        })
        .transpose()?;
    let chunked =
        header(head, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(body)?
    } else {
        match length {
            Some(n) => body
                .get(..n)
                .ok_or(ExchangeError::Malformed("body shorter than Content-Length"))?
                .to_vec(),
            None => body.to_vec(),
        }
    };
    Ok((status, body))
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, ExchangeError> {
    let mut body = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or(ExchangeError::Malformed("unterminated chunk size"))?;
        let size = std::str::from_utf8(&rest[..eol])
            .ok()
            .map(|s| s.split(';').next().unwrap_or("").trim())
            .and_then(|s| usize::from_str_radix(s, 16).ok())
            .ok_or(ExchangeError::Malformed("bad chunk size"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = rest
            .get(..size)
            .ok_or(ExchangeError::Malformed("chunk shorter than its size"))?;
        body.extend_from_slice(chunk);
        rest = rest.get(size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_with_a_length_chunks_or_neither_are_read() {
        let plain =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_response(plain).unwrap(), (200, b"{}".to_vec()));
        let chunked =
            b"HTTP/1.1 409 Conflict\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4;x=y\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked).unwrap(),
            (409, b"{\"a\":1}".to_vec())
        );
        let closed = b"HTTP/1.0 403 Forbidden\r\n\r\nno";
        assert_eq!(parse_response(closed).unwrap(), (403, b"no".to_vec()));
    }

    #[test]
    fn an_answer_is_taken_at_the_end_of_its_body_without_waiting_for_the_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let (answered, got_answer) = std::sync::mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = [0u8; 4096];
            let _ = conn.read(&mut request).unwrap();
            conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\n{\"x\": 1}")
                .unwrap();
            // The connection stays open until the client has its answer (or 20 s).
            got_answer.recv_timeout(Duration::from_secs(20)).is_ok()
        });
        let reply: serde_json::Value = call(&path, "/v1/test", &serde_json::json!({})).unwrap();
        // The server is gone if it stopped waiting: the assertion below says why.
        let _ = answered.send(());
        assert_eq!(reply, serde_json::json!({"x": 1}));
        assert!(
            server.join().unwrap(),
            "the client waited for the connection to close"
        );
    }

    #[test]
    fn has_whole_body_needs_the_headers_and_every_byte_of_the_body() {
        let whole = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert!(has_whole_body(whole));
        assert!(!has_whole_body(&whole[..whole.len() - 1]));
        assert!(!has_whole_body(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"));
        // No length: the close ends the answer.
        assert!(!has_whole_body(b"HTTP/1.0 403 Forbidden\r\n\r\nno"));
        assert!(!has_whole_body(
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n{}"
        ));
    }

    #[test]
    fn an_answer_sent_before_the_request_was_read_is_not_lost() {
        // brindled's refusal answers without reading the request and closes: a request
        // larger than the socket buffer then meets EPIPE, with the answer waiting unread.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            conn.write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 2\r\n\r\nno")
                .unwrap();
        });
        let mut stream = UnixStream::connect(&path).unwrap();
        let big = vec![b' '; 4 << 20];
        let answer = exchange(&mut stream, paths::STATUS, &big);
        server.join().unwrap();
        assert_eq!(answer.unwrap(), (403, b"no".to_vec()));
    }

    #[test]
    fn malformed_answers_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"HTTP/1.1 200 OK\r\n",
            b"SMTP 200\r\n\r\n",
            b"HTTP/1.1 2x0 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nff\r\nab",
        ] {
            assert!(
                parse_response(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
