//! The TLS files a database names: `sslrootcert`, `sslcert` and `sslkey`, else libpq's defaults
//! under `~/.postgresql`, read and checked as libpq would (a private key others can read is
//! refused). The connector that uses them is `db::tls`.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

use super::{DatabaseConfig, KeyError, SslMode};

/// Where the default files live when the config names none, as libpq looks for them.
const DEFAULT_DIR: &str = ".postgresql";
const DEFAULT_ROOT_CERT: &str = "root.crt";
const DEFAULT_CERT: &str = "postgresql.crt";
const DEFAULT_KEY: &str = "postgresql.key";

/// CA bundles `sslrootcert: system` means, first one present wins (Debian, then Red Hat).
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// True when `host` names a Unix-domain socket directory; libpq never uses TLS there.
pub fn is_unix_socket(host: &str) -> bool {
    host.starts_with('/') || host.starts_with('@')
}

/// A TLS setting that cannot be used names its key (e.g. `sslrootcert`).
type SetupError = KeyError;

fn setup_err(key: &'static str, message: String) -> SetupError {
    KeyError::new(key, message)
}

/// The files TLS uses for a database: explicit settings, else libpq's defaults when present.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Files {
    root_cert: Option<RootCert>,
    client: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum RootCert {
    File(PathBuf),
    System(PathBuf),
}

impl RootCert {
    fn path(&self) -> &Path {
        match self {
            RootCert::File(p) | RootCert::System(p) => p,
        }
    }
}

fn home_file(name: &str) -> Option<PathBuf> {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
    Some(PathBuf::from(home).join(DEFAULT_DIR).join(name))
}

fn files(db: &DatabaseConfig) -> Result<Files, SetupError> {
    let root_cert = match &db.sslrootcert {
        Some(p) if p.as_os_str() == "system" => {
            // As libpq 16: the system's CAs vouch for many names, so only a host-name check
            // makes them meaningful.
            if db.sslmode != SslMode::VerifyFull {
                return Err(setup_err(
                    "sslrootcert",
                    format!(
                        "\"system\" needs sslmode verify-full (the system CAs vouch for any \
                         public host), not {}",
                        db.sslmode.as_str()
                    ),
                ));
            }
            let bundle = SYSTEM_CA_BUNDLES
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    setup_err(
                        "sslrootcert",
                        format!(
                            "\"system\": no CA bundle found (looked for {})",
                            SYSTEM_CA_BUNDLES.join(", ")
                        ),
                    )
                })?;
            Some(RootCert::System(bundle))
        }
        Some(p) => Some(RootCert::File(p.clone())),
        None => home_file(DEFAULT_ROOT_CERT)
            .filter(|p| p.is_file())
            .map(RootCert::File),
    };
    let client = match (&db.sslcert, &db.sslkey) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        (Some(cert), None) => {
            let missing = format!(
                "sslcert {} is set but no sslkey (and there is no ~/{DEFAULT_DIR}/{DEFAULT_KEY})",
                cert.display()
            );
            let key = home_file(DEFAULT_KEY)
                .filter(|p| p.is_file())
                .ok_or_else(|| setup_err("sslkey", missing))?;
            Some((cert.clone(), key))
        }
        (None, Some(key)) => {
            return Err(setup_err(
                "sslcert",
                format!(
                    "sslkey {} is set but no sslcert to go with it",
                    key.display()
                ),
            ))
        }
        (None, None) => match home_file(DEFAULT_CERT).filter(|p| p.is_file()) {
            Some(cert) => home_file(DEFAULT_KEY)
                .filter(|p| p.is_file())
                .map(|key| (cert, key)),
            None => None,
        },
    };
    Ok(Files { root_cert, client })
}

/// What a database's TLS settings ask for, with the files they name read.
pub struct TlsFiles {
    pub verify: Verify,
    /// The CA certificates to trust; None when nothing is verified.
    pub roots: Option<RootCertStore>,
    /// Where the root certificates are (read or not), for error messages.
    pub root_path: Option<PathBuf>,
    pub client: Option<ClientCert>,
}

/// The client certificate chain and its private key.
pub struct ClientCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

impl DatabaseConfig {
    /// Reads the TLS files this database's settings name (none when TLS is off: sslmode
    /// disable or a Unix socket); a missing or bad file is an error naming its key.
    pub fn tls_files(&self) -> Result<TlsFiles, KeyError> {
        let tls_off = self.sslmode == SslMode::Disable || is_unix_socket(&self.host);
        // With TLS off the connector is never called; do not make unused files an error.
        let files = if tls_off {
            Files {
                root_cert: None,
                client: None,
            }
        } else {
            files(self)?
        };
        let verify = match self.sslmode {
            _ if tls_off => Verify::Nothing,
            SslMode::VerifyFull => Verify::Full,
            SslMode::VerifyCa => Verify::Chain,
            // libpq: `require` verifies the chain when a root certificate is present.
            SslMode::Require if files.root_cert.is_some() => Verify::Chain,
            _ => Verify::Nothing,
        };
        let roots = match (&files.root_cert, verify) {
            (_, Verify::Nothing) => None,
            (Some(root), _) => Some(load_roots(root)?),
            (None, _) => {
                return Err(setup_err(
                    "sslrootcert",
                    format!(
                        "sslmode {} verifies the server's certificate and needs the CA \
                         certificate(s) to trust: set sslrootcert (no ~/{DEFAULT_DIR}/{DEFAULT_ROOT_CERT} \
                         found), or use sslmode require to encrypt without verifying",
                        self.sslmode.as_str()
                    ),
                ))
            }
        };
        let client = match files.client {
            Some((cert_path, key_path)) => Some(ClientCert {
                chain: load_certs("sslcert", &cert_path)?,
                key: load_key(&key_path)?,
                cert_path,
                key_path,
            }),
            None => None,
        };
        Ok(TlsFiles {
            verify,
            roots,
            root_path: files.root_cert.map(|r| r.path().to_path_buf()),
            client,
        })
    }
}

/// What the server's certificate is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Encrypt without checking (sslmode prefer, or require without a root certificate).
    Nothing,
    /// The chain must lead to a trusted root (verify-ca; require with a root certificate).
    Chain,
    /// The chain and the host name (verify-full).
    Full,
}

fn load_roots(root: &RootCert) -> Result<RootCertStore, SetupError> {
    let path = root.path();
    let certs = load_certs("sslrootcert", path)?;
    let mut store = RootCertStore::empty();
    match root {
        // A system bundle may hold a certificate rustls cannot parse; skip it as libpq would.
        RootCert::System(_) => {
            store.add_parsable_certificates(certs);
        }
        RootCert::File(_) => {
            for cert in certs {
                store.add(cert).map_err(|e| {
                    setup_err(
                        "sslrootcert",
                        format!("{}: unusable CA certificate: {e}", path.display()),
                    )
                })?;
            }
        }
    }
    if store.is_empty() {
        return Err(setup_err(
            "sslrootcert",
            format!("{}: no usable CA certificate", path.display()),
        ));
    }
    Ok(store)
}

fn load_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, SetupError> {
    let bytes = std::fs::read(path)
        .map_err(|e| setup_err(key, format!("cannot read {}: {e}", path.display())))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| setup_err(key, format!("{} is not valid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(setup_err(
            key,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, SetupError> {
    check_key_permissions(path)?;
    let bytes = std::fs::read(path)
        .map_err(|e| setup_err("sslkey", format!("cannot read {}: {e}", path.display())))?;
    // The parser's message may quote the file; a private key's content stays out of errors.
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| {
        setup_err(
            "sslkey",
            format!(
                "{} holds no usable private key (PEM PKCS#8, PKCS#1 or SEC1; encrypted keys \
                 are not supported)",
                path.display()
            ),
        )
    })
}

/// libpq refuses a private key others can read: 0600 or less for the owner's own file, 0640
/// or less when root owns it (so a group can be given read access).
#[cfg(unix)]
fn check_key_permissions(path: &Path) -> Result<(), SetupError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| setup_err("sslkey", format!("cannot read {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(setup_err(
            "sslkey",
            format!("{} is not a regular file", path.display()),
        ));
    }
    let mode = meta.mode() & 0o777;
    let too_open = if meta.uid() == 0 {
        mode & 0o037 != 0
    } else {
        mode & 0o077 != 0
    };
    if too_open {
        return Err(setup_err(
            "sslkey",
            format!(
                "{} has group or world access (mode {mode:04o}); it must be u=rw (0600) or \
                 less, or u=rw,g=r (0640) or less if owned by root",
                path.display()
            ),
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_key_permissions(_path: &Path) -> Result<(), SetupError> {
    Ok(())
}
