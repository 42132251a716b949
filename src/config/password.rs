//! Passwords: the `password` key, a `password_file`, or a pgpass entry as libpq finds it.

use std::path::{Path, PathBuf};

use super::*;

/// A password found for a database, and what to warn about on the way.
#[derive(Debug, Default)]
pub struct FoundPassword {
    pub password: Option<Secret>,
    /// Where it came from, for debug logs: `password`, `password_file` or the pgpass path.
    pub source: Option<String>,
    pub warnings: Vec<String>,
}

impl DatabaseConfig {
    /// The password to connect with, in this order: `password` (from the config file or
    /// `PGSQL_BROKER_DB_<NAME>_PASSWORD`; `PGPASSWORD` without a config file), then
    /// `password_file`, then the pgpass file `pgpass` (libpq's `~/.pgpass` or `PGPASSFILE`).
    /// An empty password counts as none, as in libpq. Errors name the key, never the password.
    pub(crate) fn find_password(&self, pgpass: Option<&Path>) -> Result<FoundPassword, KeyError> {
        let mut found = FoundPassword::default();
        if let Some(p) = self.password.as_ref().filter(|p| !p.0.is_empty()) {
            found.password = Some(p.clone());
            found.source = Some("password".into());
            return Ok(found);
        }
        if let Some(path) = &self.password_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                KeyError::new(
                    "password_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let first = text.lines().next().unwrap_or("");
            if first.is_empty() {
                return Err(KeyError::new(
                    "password_file",
                    format!("{}: the first line (the password) is empty", path.display()),
                ));
            }
            if let Some(mode) = readable_by_others(path) {
                found.warnings.push(format!(
                    "password_file {} can be read by other users (mode {mode:04o}); chmod o-rwx it",
                    path.display()
                ));
            }
            found.password = Some(Secret(first.to_string()));
            found.source = Some("password_file".into());
            return Ok(found);
        }
        let Some(path) = pgpass else {
            return Ok(found);
        };
        match pgpass_usable(path) {
            Ok(true) => {}
            Ok(false) => return Ok(found),
            Err(warning) => {
                found.warnings.push(warning);
                return Ok(found);
            }
        }
        // Unreadable (e.g. permission denied): libpq goes on without it, and so do we.
        let Ok(text) = std::fs::read_to_string(path) else {
            found.warnings.push(format!(
                "password file {} cannot be read; not used",
                path.display()
            ));
            return Ok(found);
        };
        let host = pgpass_host(&self.host);
        if let Some(p) = pgpass_lookup(&text, host, self.port, &self.database, &self.user) {
            found.password = Some(p);
            found.source = Some(path.display().to_string());
        }
        Ok(found)
    }
}

/// The pgpass file libpq would read: `PGPASSFILE`, else `~/.pgpass`.
pub fn pgpass_path(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(p) = env("PGPASSFILE").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    env("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".pgpass"))
}

/// The host as pgpass lines name it: libpq matches a Unix socket in the default directory (and
/// an empty host) as `localhost`.
pub(super) fn pgpass_host(host: &str) -> &str {
    match host {
        "" | "/var/run/postgresql" | "/run/postgresql" | "/tmp" => "localhost",
        h => h,
    }
}

/// Ok(false) when there is no such file; Err(warning) when libpq would ignore it.
fn pgpass_usable(path: &Path) -> Result<bool, String> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => {
            return Err(format!(
                "password file {} cannot be read ({e}); not used",
                path.display()
            ))
        }
    };
    if !meta.is_file() {
        return Err(format!(
            "password file {} is not a plain file; not used",
            path.display()
        ));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "password file {} has group or world access (mode {mode:04o}); permissions \
                 should be u=rw (0600) or less; not used",
                path.display()
            ));
        }
    }
    Ok(true)
}

/// The password of the first pgpass line (`host:port:database:user:password`) that matches.
/// A field that is exactly `*` matches anything; `\:` and `\\` stand for `:` and `\`.
pub fn pgpass_lookup(
    text: &str,
    host: &str,
    port: u16,
    database: &str,
    user: &str,
) -> Option<Secret> {
    let port = port.to_string();
    let wanted = [host, port.as_str(), database, user];
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((fields, password)) = pgpass_fields(line) else {
            continue;
        };
        let matches = fields.iter().zip(wanted).all(|(field, want)| match field {
            None => true,
            Some(f) => f == want,
        });
        if matches {
            // libpq uses the first matching line, even when its password is empty.
            return Some(Secret(password)).filter(|p| !p.0.is_empty());
        }
    }
    None
}

/// Splits a pgpass line into its four match fields (`None` for the `*` wildcard) and the
/// password, unescaping as libpq does. Lines with fewer than five fields match nothing.
fn pgpass_fields(line: &str) -> Option<([Option<String>; 4], String)> {
    let mut fields: Vec<Option<String>> = Vec::with_capacity(4);
    let mut current = String::new();
    let mut escaped_any = false;
    let mut chars = line.chars();
    while fields.len() < 4 {
        match chars.next()? {
            '\\' => {
                // A trailing backslash stands for itself.
                current.push(chars.next().unwrap_or('\\'));
                escaped_any = true;
            }
            ':' => {
                // Only an unescaped, lone `*` is the wildcard; `\*` is a literal star.
                let field = std::mem::take(&mut current);
                fields.push(if field == "*" && !escaped_any {
                    None
                } else {
                    Some(field)
                });
                escaped_any = false;
            }
            c => current.push(c),
        }
    }
    // The password runs to the end of the line or the next unescaped colon.
    let mut password = String::new();
    while let Some(c) = chars.next() {
        match c {
            '\\' => password.push(chars.next().unwrap_or('\\')),
            ':' => break,
            c => password.push(c),
        }
    }
    let fields: [Option<String>; 4] = fields.try_into().ok()?;
    Some((fields, password))
}

/// The file's mode when users outside its owner and group can access it.
pub(super) fn readable_by_others(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o007 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

#[cfg(test)]
mod tests;
