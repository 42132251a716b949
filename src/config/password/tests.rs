//! Unit tests of passwords and pgpass; the module is declared under `#[cfg(test)]`.

use std::path::{Path, PathBuf};

use super::*;
use crate::config::tests::{env, write};

#[test]
fn pgpass_wildcards_escapes_and_first_match() {
    let text = "\
# comment line:*:*:*:nope
db.example:5432:app:alice:first
*:*:app:alice:second
localhost:*:*:bob:b\\:c\\\\d
host\\:with\\:colons:6000:*:*:colon-host
\\*:*:*:carol:literal-star
*:*:*:*:fallback
";
    let look = |h: &str, p: u16, d: &str, u: &str| {
        pgpass_lookup(text, h, p, d, u).map(|s| s.expose().to_string())
    };
    // First matching line wins, even when a later wildcard line matches too.
    assert_eq!(
        look("db.example", 5432, "app", "alice").as_deref(),
        Some("first")
    );
    assert_eq!(
        look("other", 5433, "app", "alice").as_deref(),
        Some("second")
    );
    // `\:` is a colon and `\\` a backslash, in the password as in the fields.
    assert_eq!(look("localhost", 1, "x", "bob").as_deref(), Some("b:c\\d"));
    assert_eq!(
        look("host:with:colons", 6000, "x", "y").as_deref(),
        Some("colon-host")
    );
    // An escaped star is a literal star, not a wildcard.
    assert_eq!(look("*", 1, "x", "carol").as_deref(), Some("literal-star"));
    assert_eq!(look("h", 1, "x", "carol").as_deref(), Some("fallback"));
    // The comment is no entry; the port must match as written.
    assert_eq!(
        look("db.example", 5433, "app", "alice").as_deref(),
        Some("second")
    );
    assert_eq!(
        pgpass_lookup("a:1:b:c\n", "a", 1, "b", "c"),
        None,
        "4 fields"
    );
    assert_eq!(
        pgpass_lookup("a:1:b:c:pw:extra\r\n", "a", 1, "b", "c").map(|s| s.expose().to_string()),
        Some("pw".into()),
        "the password ends at an unescaped colon; CRLF is a line end"
    );
    assert_eq!(pgpass_host("/var/run/postgresql"), "localhost");
    assert_eq!(pgpass_host("db"), "db");
}

#[test]
fn password_precedence_config_then_file_then_pgpass() {
    use std::os::unix::fs::PermissionsExt;
    let pgpass = write("pgpass", "*:*:*:*:from-pgpass\n");
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let pwfile = write("pwfile", "from-file\nsecond line ignored\n");
    let mut db = DatabaseConfig::new("app");
    let pw = |db: &DatabaseConfig| {
        db.find_password(Some(&pgpass))
            .unwrap()
            .password
            .map(|s| s.expose().to_string())
    };
    assert_eq!(pw(&db).as_deref(), Some("from-pgpass"));
    db.password_file = Some(pwfile.clone());
    assert_eq!(pw(&db).as_deref(), Some("from-file"));
    db.password = Some(Secret::new("from-config"));
    assert_eq!(pw(&db).as_deref(), Some("from-config"));

    // An unreadable password_file is an error naming the key, not the password.
    db.password = None;
    db.password_file = Some("/nonexistent/pw".into());
    let e = db.find_password(Some(&pgpass)).unwrap_err();
    assert_eq!(e.key, "password_file");
    assert!(e.message.contains("/nonexistent/pw"), "{e}");

    // A pgpass file others can read is ignored with a warning, as libpq does.
    db.password_file = None;
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o644)).unwrap();
    let found = db.find_password(Some(&pgpass)).unwrap();
    assert!(found.password.is_none());
    assert!(
        found.warnings[0].contains("group or world access"),
        "{:?}",
        found.warnings
    );
    // No pgpass file at all is quietly no password.
    let found = db
        .find_password(Some(Path::new("/nonexistent/pgpass")))
        .unwrap();
    assert!(found.password.is_none() && found.warnings.is_empty());
}

#[test]
fn pgpassfile_overrides_home() {
    let vars = env(&[("PGPASSFILE", "/x/pass"), ("HOME", "/home/u")]);
    assert_eq!(
        pgpass_path(|v| vars.get(v).cloned()),
        Some(PathBuf::from("/x/pass"))
    );
    let vars = env(&[("HOME", "/home/u")]);
    assert_eq!(
        pgpass_path(|v| vars.get(v).cloned()),
        Some(PathBuf::from("/home/u/.pgpass"))
    );
}
