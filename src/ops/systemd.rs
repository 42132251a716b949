//! systemd's notification protocol: newline-separated `KEY=VALUE` assignments in one datagram
//! to the unix socket named by `$NOTIFY_SOCKET` (a path, or an abstract name written with a
//! leading `@`). What `sd_notify(3)` does, in a few lines, with no library.

use std::io;
use std::os::unix::net::UnixDatagram;

/// Sends notifications to one socket.
#[derive(Debug)]
pub(crate) struct Notifier {
    socket: UnixDatagram,
    target: Target,
}

#[derive(Debug)]
enum Target {
    Path(std::path::PathBuf),
    #[cfg(any(target_os = "linux", target_os = "android"))]
    Abstract(std::os::unix::net::SocketAddr),
}

impl Notifier {
    /// A notifier for `$NOTIFY_SOCKET`'s value. Nothing is sent yet, so a socket that is gone
    /// shows at the first [`send`](Self::send).
    pub fn new(notify_socket: &str) -> io::Result<Notifier> {
        let target = match notify_socket.strip_prefix('@') {
            Some(name) => abstract_target(name)?,
            None if notify_socket.starts_with('/') => Target::Path(notify_socket.into()),
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("NOTIFY_SOCKET {notify_socket:?} is neither a path nor @name"),
                ))
            }
        };
        Ok(Notifier {
            socket: UnixDatagram::unbound()?,
            target,
        })
    }

    /// Sends `state`, e.g. `"READY=1\nSTATUS=serving"`, as one datagram.
    pub fn send(&self, state: &str) -> io::Result<()> {
        let sent = match &self.target {
            Target::Path(path) => self.socket.send_to(state.as_bytes(), path)?,
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Target::Abstract(addr) => self.socket.send_to_addr(state.as_bytes(), addr)?,
        };
        if sent != state.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "the notification was cut short",
            ));
        }
        Ok(())
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_target(name: &str) -> io::Result<Target> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    Ok(Target::Abstract(
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?,
    ))
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_target(_name: &str) -> io::Result<Target> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract unix sockets (NOTIFY_SOCKET=@...) exist only on Linux",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn receive(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn sends_to_a_path() {
        let dir = std::env::temp_dir().join(format!("pgsql-broker-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).expect("bind");
        let notifier = Notifier::new(path.to_str().expect("utf-8")).expect("notifier");
        notifier.send("READY=1\nSTATUS=up").expect("send");
        assert_eq!(receive(&socket), "READY=1\nSTATUS=up");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("pgsql-broker-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("abstract name");
        let socket = UnixDatagram::bind_addr(&addr).expect("bind");
        let notifier = Notifier::new(&format!("@{name}")).expect("notifier");
        notifier.send("STOPPING=1").expect("send");
        assert_eq!(receive(&socket), "STOPPING=1");
    }

    #[test]
    fn a_relative_name_is_refused() {
        assert!(Notifier::new("notify.sock").is_err());
    }

    #[test]
    fn a_missing_socket_fails_at_send() {
        let notifier = Notifier::new("/nonexistent/pgsql-broker/notify").expect("notifier");
        assert!(notifier.send("READY=1").is_err());
    }
}
