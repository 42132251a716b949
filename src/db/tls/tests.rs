//! Unit tests of the TLS connector; the module is declared under `#[cfg(test)]`.

use super::*;

#[test]
fn certificate_names_read_plainly() {
    assert_eq!(plain_name("DnsName(\"localhost\")"), "localhost");
    assert_eq!(plain_name("IpAddress(127.0.0.1)"), "127.0.0.1");
    assert_eq!(plain_name("db.example"), "db.example");
}

#[test]
fn unix_sockets_never_use_tls() {
    let mut db = DatabaseConfig::new("app");
    db.host = "/var/run/postgresql".into();
    db.sslmode = SslMode::VerifyFull;
    assert_eq!(pg_ssl_mode(&db), postgres::config::SslMode::Disable);
    // No root certificate needed either: TLS is never attempted.
    assert!(MakeTls::new(&db).is_ok());
}

#[test]
fn modes_map_to_the_postgres_crate() {
    use postgres::config::SslMode as Pg;
    let mut db = DatabaseConfig::new("app");
    db.host = "db.example".into();
    for (mode, pg) in [
        (SslMode::Disable, Pg::Disable),
        (SslMode::Allow, Pg::Prefer),
        (SslMode::Prefer, Pg::Prefer),
        (SslMode::Require, Pg::Require),
        (SslMode::VerifyCa, Pg::Require),
        (SslMode::VerifyFull, Pg::Require),
    ] {
        db.sslmode = mode;
        assert_eq!(pg_ssl_mode(&db), pg, "{mode:?}");
    }
}

#[test]
fn setup_errors_name_the_key() {
    let mut db = DatabaseConfig::new("app");
    db.host = "db.example".into();
    db.sslmode = SslMode::VerifyFull;
    db.sslrootcert = Some("/nonexistent/root.crt".into());
    let e = MakeTls::new(&db).unwrap_err();
    assert_eq!(e.key, "sslrootcert");
    assert!(e.message.contains("/nonexistent/root.crt"), "{e}");

    db.sslrootcert = Some("system".into());
    db.sslmode = SslMode::Require;
    let e = MakeTls::new(&db).unwrap_err();
    assert!(e.message.contains("verify-full"), "{e}");

    db.sslrootcert = None;
    db.sslmode = SslMode::Require;
    db.sslkey = Some("/nonexistent/client.key".into());
    let e = MakeTls::new(&db).unwrap_err();
    assert_eq!(e.key, "sslcert");

    // Disabled TLS reads no files.
    db.sslmode = SslMode::Disable;
    assert!(MakeTls::new(&db).is_ok());
}
