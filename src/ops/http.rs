//! A minimal HTTP/1.x server for a few GET endpoints, on one thread of its own: it reads a
//! request's head (bounded in size and time), answers with `Connection: close`, and takes the
//! next connection. No keep-alive, no request bodies, no TLS; enough for a metrics scraper and
//! a health check, with nothing a slow or hostile client can grow.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Largest request head read; a longer one is answered 431.
const MAX_HEAD: usize = 8 * 1024;
/// How long one client may take to send its request head, in all.
const READ_BUDGET: Duration = Duration::from_secs(5);
/// How long one write to a client may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a handler answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// Answers a request for a path (without its query string).
pub(crate) type Handler = Box<dyn Fn(&str) -> Response + Send + 'static>;

/// A running server; [`stop`](Server::stop) ends its thread.
pub(crate) struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `addr`, so that a port in use shows before anything else starts.
    pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
        TcpListener::bind(addr)
    }

    /// Serves `handler` on `listener` (see [`bind`](Self::bind)) on a thread named `name`.
    pub fn start(listener: TcpListener, name: &str, handler: Handler) -> io::Result<Server> {
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || serve(listener, &stopped, &handler))?;
        Ok(Server {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on (the port the system picked, for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and waits for the thread (at most one request in progress).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // `accept` does not look at the flag: a connection of our own wakes it.
        let wake = SocketAddr::new(reachable(self.addr.ip()), self.addr.port());
        match TcpStream::connect_timeout(&wake, Duration::from_secs(1)) {
            Ok(_) => {
                if let Some(thread) = self.thread.take() {
                    let _ = thread.join();
                }
            }
            // Cannot reach ourselves: leave the thread to the process's exit.
            Err(e) => log::debug!("http: cannot wake the server thread at {wake}: {e}"),
        }
    }
}

/// The address to connect to for a server bound to `ip` (loopback for "every interface").
fn reachable(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    }
}

fn serve(listener: TcpListener, stop: &AtomicBool, handler: &Handler) {
    let mut last_error: Option<Instant> = None;
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        match stream {
            Ok(stream) => {
                if let Err(e) = answer(stream, handler) {
                    log::debug!("http: {e}");
                }
            }
            Err(e) => {
                // E.g. out of file descriptors: say so once a minute, and do not spin.
                if last_error.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    log::warn!("http: cannot accept a connection: {e}");
                    last_error = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Reads one request head from `stream` and writes the answer.
fn answer(mut stream: TcpStream, handler: &Handler) -> io::Result<()> {
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let _ = stream.set_nodelay(true);
    let (response, head_only) = match read_head(&mut stream)? {
        Head::Complete(head) => respond(&head, handler),
        Head::TooLarge => (Response::text(431, "request header too large\n"), false),
        Head::Incomplete => return Ok(()),
    };
    let reason = reason(response.status);
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    if response.status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(&response.body);
    }
    stream.write_all(out.as_bytes())?;
    stream.flush()?;
    let _ = stream.shutdown(Shutdown::Write);
    Ok(())
}

/// The answer to a request head, and whether it is for HEAD (no body sent).
fn respond(head: &str, handler: &Handler) -> (Response, bool) {
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return (Response::text(400, "bad request\n"), false);
    };
    if !version.starts_with("HTTP/1.") {
        return (Response::text(505, "HTTP/1.x only\n"), false);
    }
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return (Response::text(405, "GET or HEAD only\n"), false);
    }
    let path = target.split(['?', '#']).next().unwrap_or_default();
    let response = catch_unwind(AssertUnwindSafe(|| handler(path)))
        .unwrap_or_else(|_| Response::text(500, "internal error (a bug; see the log)\n"));
    (response, head_only)
}

enum Head {
    Complete(String),
    TooLarge,
    /// The client went away or took too long.
    Incomplete,
}

fn read_head(stream: &mut TcpStream) -> io::Result<Head> {
    let started = Instant::now();
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let left = READ_BUDGET.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Ok(Head::Incomplete);
        }
        stream.set_read_timeout(Some(left))?;
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Ok(Head::Incomplete),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(Head::Incomplete)
            }
            Err(e) => return Err(e),
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf) {
            return Ok(Head::Complete(
                String::from_utf8_lossy(&buf[..end]).into_owned(),
            ));
        }
        if buf.len() >= MAX_HEAD {
            return Ok(Head::TooLarge);
        }
    }
}

/// Where the head ends (the blank line), if it has.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = buf.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(addr: SocketAddr, raw: &str) -> String {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(raw.as_bytes()).expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out
    }

    fn server() -> Server {
        let handler: Handler = Box::new(|path| match path {
            "/hello" => Response::text(200, "hi\n"),
            "/panic" => panic!("handler bug"),
            _ => Response::text(404, "not found\n"),
        });
        let listener = Server::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).expect("bind");
        Server::start(listener, "http test", handler).expect("start")
    }

    #[test]
    fn answers_get_head_and_errors() {
        let s = server();
        let addr = s.local_addr();
        let ok = request(addr, "GET /hello?x=1 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Content-Length: 3\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nhi\n"), "{ok}");
        let head = request(addr, "HEAD /hello HTTP/1.0\n\n");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "{head}");
        let missing = request(addr, "GET /nope HTTP/1.0\r\n\r\n");
        assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
        let post = request(addr, "POST /hello HTTP/1.1\r\n\r\n");
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
        assert!(post.contains("Allow: GET, HEAD\r\n"), "{post}");
        let garbage = request(addr, "hello\r\n\r\n");
        assert!(garbage.starts_with("HTTP/1.1 400 "), "{garbage}");
        let huge = request(addr, &format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_HEAD)));
        assert!(huge.starts_with("HTTP/1.1 431 "), "{huge}");
        let bug = request(addr, "GET /panic HTTP/1.1\r\n\r\n");
        assert!(bug.starts_with("HTTP/1.1 500 "), "{bug}");
        // Still serving after all that.
        assert!(request(addr, "GET /hello HTTP/1.0\r\n\r\n").contains("hi"));
        s.stop();
        assert!(
            TcpStream::connect(addr).is_err(),
            "still listening after stop"
        );
    }

    #[test]
    fn a_silent_client_does_not_stop_the_next() {
        let s = server();
        let addr = s.local_addr();
        let silent = TcpStream::connect(addr).expect("connect");
        let started = Instant::now();
        let ok = request(addr, "GET /hello HTTP/1.0\r\n\r\n");
        assert!(ok.contains("hi"), "{ok}");
        assert!(started.elapsed() < READ_BUDGET + Duration::from_secs(5));
        drop(silent);
        s.stop();
    }

    #[test]
    fn a_port_in_use_is_an_error() {
        let s = server();
        assert!(Server::bind(s.local_addr()).is_err());
        s.stop();
    }
}
