//! A throwaway PostgreSQL cluster for tests that need a server of their own: TLS, password
//! authentication, restarts. `initdb` and `pg_ctl` come from the newest
//! `/usr/lib/postgresql/*/bin`; as root they run as the `postgres` OS user (initdb refuses root).
//!
//! ```ignore
//! let mut cluster = Cluster::start(&["ssl = off"]);
//! let mut client = cluster.client("postgres");       // superuser, over the Unix socket
//! cluster.restart();                                  // same port, same data
//! cluster.stop();  cluster.start_again();
//! let replica = Cluster::replica_of(&cluster);       // a streaming standby, in recovery
//! replica.promote();
//! // dropped: stopped (immediate) and its directory removed
//! ```
//!
//! The server listens on 127.0.0.1 at a free port and on a Unix socket in its directory; TCP
//! and the socket trust every user unless `hba_lines` (placed first, so they win) say otherwise.
//! The superuser connection of [`Cluster::client`] uses the socket, so it works whatever TCP
//! authentication a test sets up.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};

static CLUSTERS: AtomicUsize = AtomicUsize::new(0);

/// A PostgreSQL server of a test's own, stopped and deleted when dropped.
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    running: bool,
    /// `Some(uid, gid)` of `postgres` when the tests run as root.
    owner: Option<(u32, u32)>,
}

impl Cluster {
    /// Creates and starts a cluster; `conf_lines` are appended to postgresql.conf
    /// (e.g. `"ssl = on"`).
    pub fn start(conf_lines: &[&str]) -> Cluster {
        let mut cluster = Cluster::init(conf_lines, &[]);
        cluster.start_again();
        cluster
    }

    /// Creates a cluster without starting it, so a test can add files first (certificates,
    /// see [`Cluster::put_file`]). `hba_lines` go before the trust lines of pg_hba.conf.
    pub fn init(conf_lines: &[&str], hba_lines: &[&str]) -> Cluster {
        let cluster = Cluster::empty();
        let data = cluster.data_dir();
        let out = cluster.run(
            "initdb",
            &[
                "-D",
                path_str(&data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        assert!(out.status.success(), "initdb failed: {}", output_text(&out));
        let mut conf = format!(
            "\n# added by the test harness\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 50\nshared_buffers = 16MB\n",
            path_str(&cluster.dir)
        );
        for line in conf_lines {
            conf.push_str(line);
            conf.push('\n');
        }
        append(&data.join("postgresql.conf"), &conf);
        if !hba_lines.is_empty() {
            let hba = data.join("pg_hba.conf");
            let old = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
            let new = format!("{}\n{old}", hba_lines.join("\n"));
            std::fs::write(&hba, new).expect("write pg_hba.conf");
        }
        cluster
    }

    /// A streaming replica of `primary` (`pg_basebackup -R`), started: a server in recovery
    /// until [`Cluster::promote`].
    pub fn replica_of(primary: &Cluster) -> Cluster {
        let mut replica = Cluster::empty();
        let data = replica.data_dir();
        let port = primary.port().to_string();
        replica.run_ok(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                path_str(&data),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ],
        );
        // The copied configuration points the socket into the primary's directory.
        append(
            &data.join("postgresql.conf"),
            &format!("\nunix_socket_directories = '{}'\n", path_str(&replica.dir)),
        );
        replica.start_again();
        replica
    }

    /// Promotes a replica (see [`Cluster::replica_of`]) to a primary, waiting until it is one.
    pub fn promote(&self) {
        self.run_ok(
            "pg_ctl",
            &["-D", path_str(&self.data_dir()), "-w", "promote"],
        );
    }

    /// A directory of its own, without a data directory yet.
    fn empty() -> Cluster {
        let dir = std::env::temp_dir().join(format!(
            "pgsql-broker-cluster-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create cluster directory");
        let cluster = Cluster {
            dir,
            bin: pg_bin(),
            port: free_port(),
            running: false,
            owner: server_owner(),
        };
        cluster.chown(&cluster.dir);
        cluster
    }

    /// The port the server listens on at 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's directory (data directory, socket, log); a place for test files too.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// A libpq key=value string for the superuser over TCP (trust unless `hba_lines` changed it).
    pub fn dsn(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres", self.port)
    }

    /// Writes `contents` into the data directory, owned by the server's user with `mode` (the
    /// server insists on 0600 for its private key).
    pub fn put_file(&self, name: &str, contents: &[u8], mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.data_dir().join(name);
        std::fs::write(&path, contents).expect("write cluster file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .expect("chmod cluster file");
        self.chown(&path);
        path
    }

    /// Starts the (stopped) server again; picks another port if the old one was taken meanwhile.
    pub fn start_again(&mut self) {
        assert!(!self.running, "cluster already running");
        let log = self.dir.join("server.log");
        let mut last = String::new();
        for attempt in 0..3 {
            if attempt > 0 {
                self.port = free_port();
            }
            let port_opt = format!("-p {}", self.port);
            let out = self.run(
                "pg_ctl",
                &[
                    "-D",
                    path_str(&self.data_dir()),
                    "-l",
                    path_str(&log),
                    "-o",
                    &port_opt,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
            );
            if out.status.success() {
                self.running = true;
                return;
            }
            last = format!(
                "{}\nserver log:\n{}",
                output_text(&out),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            // Only a port clash is worth another try.
            if !last.contains("already in use") {
                break;
            }
        }
        panic!("pg_ctl start failed: {last}");
    }

    /// Stops the server (fast shutdown: sessions are disconnected), keeping its data.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        let out = self.pg_ctl_stop("fast");
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            output_text(&out)
        );
        self.running = false;
    }

    /// Stops and starts the server on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// A superuser connection to `database` over the Unix socket.
    pub fn client(&self, database: &str) -> Client {
        let mut cfg = postgres::Config::new();
        cfg.host_path(&self.dir)
            .port(self.port)
            .user("postgres")
            .dbname(database)
            .connect_timeout(Duration::from_secs(10));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match cfg.connect(NoTls) {
                Ok(c) => return c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("cannot connect to the test cluster: {e}"),
            }
        }
    }

    /// Runs `sql` as the superuser in `database`.
    pub fn exec(&self, database: &str, sql: &str) {
        self.client(database)
            .batch_execute(sql)
            .unwrap_or_else(|e| panic!("{sql}: {}", super::explain(&e)));
    }

    /// The first column of the first row of `sql`, as text (None for NULL or no row).
    pub fn value(&self, database: &str, sql: &str) -> Option<String> {
        let rows = self
            .client(database)
            .simple_query(sql)
            .unwrap_or_else(|e| panic!("{sql}: {}", super::explain(&e)));
        rows.into_iter().find_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
            _ => None,
        })?
    }

    /// The server's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    fn pg_ctl_stop(&self, mode: &str) -> Output {
        self.run(
            "pg_ctl",
            &[
                "-D",
                path_str(&self.data_dir()),
                "-m",
                mode,
                "-w",
                "-t",
                "60",
                "stop",
            ],
        )
    }

    /// Runs a server program as the server's user, without the caller's PG* environment.
    fn run(&self, program: &str, args: &[&str]) -> Output {
        let exe = self.bin.join(program);
        let mut cmd = if self.owner.is_some() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        for (k, _) in std::env::vars() {
            if k.starts_with("PG") {
                cmd.env_remove(k);
            }
        }
        cmd.args(args)
            .current_dir(&self.dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()))
    }

    /// [`Cluster::run`], failing the test unless the program succeeds.
    fn run_ok(&self, program: &str, args: &[&str]) {
        let out = self.run(program, args);
        assert!(
            out.status.success(),
            "{program} failed: {}",
            output_text(&out)
        );
    }

    fn chown(&self, path: &Path) {
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            let _ = self.pg_ctl_stop("immediate");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The newest installed server's bin directory.
fn pg_bin() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                    let bin = e.path().join("bin");
                    bin.join("initdb").is_file().then_some((version, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .expect("no /usr/lib/postgresql/*/bin/initdb: install the postgresql package")
}

/// (uid, gid) of the `postgres` user when running as root, since initdb refuses root.
fn server_owner() -> Option<(u32, u32)> {
    let id = |flag: &str, who: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, who]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    let me = Command::new("id").arg("-u").output().expect("run id");
    if String::from_utf8_lossy(&me.stdout).trim() != "0" {
        return None;
    }
    Some((
        id("-u", "postgres").expect("no postgres OS user to run the test cluster as"),
        id("-g", "postgres").expect("no postgres OS group"),
    ))
}

/// A port nobody listens on right now (the OS picks it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("pick a free port")
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open postgresql.conf");
    f.write_all(text.as_bytes())
        .expect("append postgresql.conf");
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

fn output_text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
