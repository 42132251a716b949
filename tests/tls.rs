//! TLS against throwaway clusters with `ssl = on` and certificates the test makes itself
//! (openssl CLI): a CA, a server certificate for `localhost` only (no IP address), and a second
//! CA that vouches for nothing here. Each sslmode connects or fails as libpq would, and each
//! failure says which database and what failed, naming sslmode/sslrootcert.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::cluster::Cluster;
use common::*;
use pgsql_broker::test_support as db;
use pgsql_broker::{DatabaseConfig, SslMode};

/// Certificates made for one test.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// A CA, a server certificate for `localhost` signed by it, and an unrelated CA.
    fn new(dir: &Path) -> Pki {
        let dir = dir.join("pki");
        std::fs::create_dir_all(&dir).expect("pki dir");
        let pki = Pki { dir };
        std::fs::write(
            pki.path("ext.cnf"),
            "[ca]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\nsubjectKeyIdentifier = hash\n\
             [server]\nbasicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature, keyEncipherment\n\
             extendedKeyUsage = serverAuth\nsubjectAltName = DNS:localhost\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n",
        )
        .expect("write ext.cnf");
        for ca in ["ca", "other-ca"] {
            pki.key(ca);
            pki.openssl(&[
                "req",
                "-x509",
                "-new",
                "-key",
                &pki.arg(&format!("{ca}.key")),
                "-subj",
                &format!("/CN=pgsql-broker test {ca}"),
                "-days",
                "2",
                "-config",
                &pki.arg("req.cnf"),
                "-extensions",
                "ca",
                "-out",
                &pki.arg(&format!("{ca}.crt")),
            ]);
        }
        pki.key("server");
        pki.openssl(&[
            "req",
            "-new",
            "-key",
            &pki.arg("server.key"),
            "-subj",
            "/CN=localhost",
            "-config",
            &pki.arg("req.cnf"),
            "-out",
            &pki.arg("server.csr"),
        ]);
        pki.openssl(&[
            "x509",
            "-req",
            "-in",
            &pki.arg("server.csr"),
            "-CA",
            &pki.arg("ca.crt"),
            "-CAkey",
            &pki.arg("ca.key"),
            "-set_serial",
            "2",
            "-days",
            "2",
            "-extfile",
            &pki.arg("ext.cnf"),
            "-extensions",
            "server",
            "-out",
            &pki.arg("server.crt"),
        ]);
        pki
    }

    fn key(&self, name: &str) {
        // `req -config` needs a file with the extension sections and a distinguished-name one.
        std::fs::write(
            self.path("req.cnf"),
            format!(
                "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\n{}",
                std::fs::read_to_string(self.path("ext.cnf")).unwrap_or_default()
            ),
        )
        .expect("write req.cnf");
        self.openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &self.arg(&format!("{name}.key")),
        ]);
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("the TLS tests need the openssl command (apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).expect("read pki file")
    }
}

/// A cluster with `ssl = on` and the Pki's server certificate; logs each connection (with its
/// TLS state) so tests can check the server side.
fn tls_cluster() -> (Cluster, Pki) {
    let mut cluster = Cluster::init(
        &[
            "ssl = on",
            "ssl_cert_file = 'server.crt'",
            "ssl_key_file = 'server.key'",
            "log_connections = on",
        ],
        &[],
    );
    let pki = Pki::new(cluster.dir());
    cluster.put_file("server.crt", &pki.read("server.crt"), 0o644);
    cluster.put_file("server.key", &pki.read("server.key"), 0o600);
    cluster.start_again();
    (cluster, pki)
}

fn database(
    cluster: &Cluster,
    host: &str,
    sslmode: SslMode,
    root: Option<PathBuf>,
) -> DatabaseConfig {
    let mut db = DatabaseConfig::new("postgres");
    db.name = "tlsdb".into();
    db.host = host.into();
    db.port = cluster.port();
    db.user = "postgres".into();
    db.sslmode = sslmode;
    db.sslrootcert = root;
    db
}

/// Connects through the broker's own connection code and asks the server whether it is TLS.
fn connect_ssl(db: &DatabaseConfig) -> Result<bool, String> {
    let mut client = db::connect(db).map_err(|e| e.to_string())?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

#[test]
fn require_encrypts_without_verifying() {
    let (cluster, _pki) = tls_cluster();
    // No sslrootcert: the self-signed chain is not checked, the connection is encrypted.
    let db = database(&cluster, "127.0.0.1", SslMode::Require, None);
    assert_eq!(connect_ssl(&db), Ok(true));
    // prefer takes TLS when offered; disable does not.
    let db = database(&cluster, "127.0.0.1", SslMode::Prefer, None);
    assert_eq!(connect_ssl(&db), Ok(true));
    let db = database(&cluster, "127.0.0.1", SslMode::Disable, None);
    assert_eq!(connect_ssl(&db), Ok(false));
}

#[test]
fn verify_full_connects_with_the_right_ca_and_host_name() {
    let (cluster, pki) = tls_cluster();
    let db = database(
        &cluster,
        "localhost",
        SslMode::VerifyFull,
        Some(pki.path("ca.crt")),
    );
    assert_eq!(connect_ssl(&db), Ok(true));
}

#[test]
fn verify_full_rejects_a_host_name_the_certificate_lacks() {
    let (cluster, pki) = tls_cluster();
    // The certificate is for localhost only; 127.0.0.1 is not among its names.
    let db = database(
        &cluster,
        "127.0.0.1",
        SslMode::VerifyFull,
        Some(pki.path("ca.crt")),
    );
    let e = connect_ssl(&db).unwrap_err();
    assert!(e.contains("database tlsdb"), "{e}");
    assert!(
        e.contains("not valid for host name \"127.0.0.1\"") && e.contains("localhost"),
        "{e}"
    );
    assert!(e.contains("verify-full") && e.contains("verify-ca"), "{e}");
}

#[test]
fn verify_ca_checks_the_chain_but_not_the_host_name() {
    let (cluster, pki) = tls_cluster();
    let db = database(
        &cluster,
        "127.0.0.1",
        SslMode::VerifyCa,
        Some(pki.path("ca.crt")),
    );
    assert_eq!(connect_ssl(&db), Ok(true));
}

#[test]
fn an_untrusted_certificate_is_refused_clearly() {
    let (cluster, pki) = tls_cluster();
    let other = pki.path("other-ca.crt");
    for (host, mode) in [
        ("localhost", SslMode::VerifyFull),
        ("127.0.0.1", SslMode::VerifyCa),
        // As libpq: require with a root certificate verifies the chain.
        ("127.0.0.1", SslMode::Require),
    ] {
        let db = database(&cluster, host, mode, Some(other.clone()));
        let e = connect_ssl(&db).unwrap_err();
        assert!(e.contains("database tlsdb"), "{e}");
        assert!(e.contains("not trusted"), "{mode:?}: {e}");
        assert!(
            e.contains(&format!("sslrootcert {}", other.display())),
            "{mode:?}: {e}"
        );
        assert!(e.contains(&format!("sslmode {}", mode.as_str())), "{e}");
    }
}

#[test]
fn require_against_a_server_without_ssl_fails_clearly() {
    let cluster = Cluster::start(&["ssl = off"]);
    for mode in [SslMode::Require, SslMode::VerifyCa] {
        let mut db = database(&cluster, "127.0.0.1", mode, None);
        if mode == SslMode::VerifyCa {
            // A CA file must exist for verify-ca; any certificate will do, the server never
            // gets that far.
            let pki = Pki::new(cluster.dir());
            db.sslrootcert = Some(pki.path("ca.crt"));
        }
        let e = connect_ssl(&db).unwrap_err();
        assert!(e.contains("database tlsdb"), "{e}");
        assert!(
            e.contains("server does not support TLS") && e.contains("ssl = off"),
            "{e}"
        );
        assert!(e.contains("sslmode"), "{e}");
    }
    // prefer falls back to plain text.
    let db = database(&cluster, "127.0.0.1", SslMode::Prefer, None);
    assert_eq!(connect_ssl(&db), Ok(false));
}

#[test]
fn missing_root_certificate_is_a_config_error() {
    let (cluster, pki) = tls_cluster();
    let config = cluster.dir().join("broker.yaml");
    std::fs::write(
        &config,
        format!(
            "databases:\n  - name: tlsdb\n    host: localhost\n    port: {}\n    user: postgres\n    database: postgres\n    sslmode: verify-full\n    sslrootcert: {}\n",
            cluster.port(),
            pki.path("missing.crt").display()
        ),
    )
    .expect("write config");
    let out = run_cli(&["--config", config.to_str().unwrap_or_default(), "install"]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("databases[0].sslrootcert") && out.stderr.contains("missing.crt"),
        "{}",
        out.stderr
    );
}

/// The binary end to end: `install` over verify-full, then `start`, whose listener and pooled
/// worker connections must all be TLS (checked on the server).
#[test]
fn broker_connections_are_all_tls_with_verify_full() {
    let (cluster, pki) = tls_cluster();
    cluster.exec("postgres", "CREATE DATABASE tlsdb");
    let config = cluster.dir().join("broker.yaml");
    std::fs::write(
        &config,
        format!(
            "databases:\n  - name: tlsdb\n    host: localhost\n    port: {}\n    user: postgres\n    database: tlsdb\n    sslmode: verify-full\n    sslrootcert: {}\n    max_open_conns: 3\n    queue_count: 1\nbroker:\n  notify_retry_seconds: 1s\nlogging:\n  level: debug\n",
            cluster.port(),
            pki.path("ca.crt").display()
        ),
    )
    .expect("write config");

    let out = run_cli(&["--config", config.to_str().unwrap_or_default(), "install"]);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let log = cluster.log();
    assert!(
        log.lines().any(|l| l.contains("connection authorized")
            && l.contains("database=tlsdb")
            && l.contains("SSL enabled")),
        "the server saw no TLS connection from install:\n{log}"
    );
    assert!(
        !log.lines().any(|l| l.contains("connection authorized")
            && l.contains("database=tlsdb")
            && !l.contains("SSL enabled")),
        "install connected without TLS:\n{log}"
    );

    let mut broker = BrokerProcess::start(&config);
    broker.wait_log("serving as instance");
    let id: i64 = cluster
        .value("tlsdb", "SELECT broker_add_job('tls job', 'SELECT 1')")
        .and_then(|v| v.parse().ok())
        .expect("job id");
    wait_until("the job to complete", || {
        cluster
            .value(
                "tlsdb",
                &format!("SELECT status FROM broker_jobs WHERE id = {id}"),
            )
            .as_deref()
            == Some("completed")
    });
    // Every TCP client of tlsdb is the broker (listener and pooled workers); the test's own
    // connections come over the Unix socket.
    let seen = cluster
        .value(
            "tlsdb",
            "SELECT string_agg(a.application_name || ' ssl=' || s.ssl, '; ')
               FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
              WHERE a.datname = 'tlsdb' AND a.client_addr IS NOT NULL",
        )
        .unwrap_or_default();
    let conns: Vec<&str> = seen.split("; ").filter(|c| !c.is_empty()).collect();
    assert!(
        conns.len() >= 2,
        "expected the listener and a worker: {seen:?}"
    );
    assert!(
        conns.iter().all(|c| c.ends_with("ssl=true")),
        "a broker connection is not TLS: {seen}"
    );
    broker.signal("TERM");
    assert!(broker.wait_exit(HANG).success(), "{}", broker.log());
    let log = broker.log();
    assert!(!log.contains("ERROR"), "{log}");
}

/// A cancel request travels with the database's TLS settings (`db::cancel`), so cancelling a
/// job works where the server is reached with sslmode require.
#[test]
fn cancel_works_over_tls() {
    let (cluster, pki) = tls_cluster();
    let db = database(
        &cluster,
        "localhost",
        SslMode::VerifyFull,
        Some(pki.path("ca.crt")),
    );
    let mut client = db::connect(&db).expect("connect");
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .expect("backend pid")
        .get(0);
    let token = client.cancel_token();
    // The cancel goes out once the server shows the sleep running, not before it started.
    let mut watcher = cluster.client("postgres");
    let canceller = {
        let db = db.clone();
        std::thread::spawn(move || {
            wait_until("the sleep to run", || {
                watcher
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity
                          WHERE pid = $1 AND state = 'active' AND wait_event = 'PgSleep'
                            AND query = 'SELECT pg_sleep(20)'",
                        &[&pid],
                    )
                    .expect("pg_stat_activity")
                    .get::<_, i64>(0)
                    == 1
            });
            db::cancel(&db, &token)
        })
    };
    let e = client
        .batch_execute("SELECT pg_sleep(20)")
        .expect_err("the sleep should be cancelled");
    assert!(db::is_query_canceled(&e), "{e:?}");
    assert!(canceller.join().expect("canceller thread").is_ok());
}
