//! TLS setup: loads the operator's certificate, or creates (once) a
//! development CA and a `localhost` certificate under `DATA/tls/`, and
//! builds the `rustls::ServerConfig` the listener uses.
//!
//! The development certificate is for trying the server on one machine:
//! clients trust it by passing `--ca DATA/tls/ca.pem`. Deployments pass
//! `--tls-cert`/`--tls-key`.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsFiles;

/// Names the development certificate is valid for.
pub const DEV_CERT_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Failures loading or creating TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("cannot read {what} from {path}")]
    Pem {
        /// "certificate" or "private key".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The reader's or parser's complaint.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("no certificate found in {path}")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The development CA or certificate could not be generated.
    #[error("cannot generate the development certificate")]
    Generate(#[source] rcgen::Error),
    /// The development files could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// What the filesystem said.
        #[source]
        source: io::Error,
    },
    /// rustls refused the certificate and key (e.g. they do not match).
    #[error("the TLS certificate and key were refused")]
    Rustls(#[source] rustls::Error),
}

/// The development files inside `DATA/tls/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevCertPaths {
    /// The CA certificate clients must trust.
    pub ca: PathBuf,
    /// The `localhost` leaf certificate.
    pub cert: PathBuf,
    /// The leaf's private key (mode 0600).
    pub key: PathBuf,
}

impl DevCertPaths {
    /// The paths inside `tls_dir`.
    pub fn new(tls_dir: &Path) -> DevCertPaths {
        DevCertPaths {
            ca: tls_dir.join("ca.pem"),
            cert: tls_dir.join("cert.pem"),
            key: tls_dir.join("key.pem"),
        }
    }

    fn as_tls_files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }
}

/// Whether [`ensure_dev_cert`] made new files or found earlier ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevCertOrigin {
    /// Generated just now.
    Generated,
    /// Reused from an earlier run.
    Reused,
}

/// Makes sure a development CA and leaf certificate exist in `tls_dir`.
///
/// The leaf and its key are reused whenever both exist, so clients that
/// already trust `ca.pem` keep working across restarts. The CA's private key
/// is never written: it exists only long enough to sign the leaf, so a copy
/// of the data directory cannot be used to mint certificates that the
/// clients trusting `ca.pem` would accept for other names. The price is
/// that replacing the leaf means a new CA for clients to trust.
pub fn ensure_dev_cert(tls_dir: &Path) -> Result<(DevCertPaths, DevCertOrigin), TlsError> {
    let paths = DevCertPaths::new(tls_dir);
    if paths.cert.is_file() && paths.key.is_file() {
        return Ok((paths, DevCertOrigin::Reused));
    }
    crate::storage::data_dir::create_private_dir(tls_dir).map_err(|source| TlsError::Write {
        path: tls_dir.to_path_buf(),
        source,
    })?;
    let generated = generate_dev_cert()?;
    // The leaf certificate is written last: its presence (with the key)
    // is what marks a complete set, so a crash part-way regenerates.
    write_atomically(&paths.ca, generated.ca_pem.as_bytes(), 0o644)?;
    write_atomically(&paths.key, generated.key_pem.as_bytes(), 0o600)?;
    write_atomically(&paths.cert, generated.cert_pem.as_bytes(), 0o644)?;
    Ok((paths, DevCertOrigin::Generated))
}

/// Builds the server's TLS configuration from the operator's files, or from
/// the development certificate in `tls_dir` (created if needed) when
/// `files` is `None`.
pub fn server_config(
    files: Option<&TlsFiles>,
    tls_dir: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let files = match files {
        Some(files) => files.clone(),
        None => {
            let (paths, origin) = ensure_dev_cert(tls_dir)?;
            let verb = match origin {
                DevCertOrigin::Generated => "generated",
                DevCertOrigin::Reused => "using",
            };
            tracing::warn!(
                "{verb} development TLS certificate for {}; clients must trust the CA in {} (pass --ca {})",
                DEV_CERT_NAMES.join(", "),
                paths.ca.display(),
                paths.ca.display(),
            );
            paths.as_tls_files()
        }
    };
    let (chain, key) = load(&files)?;
    build_server_config(chain, key)
}

/// Reads a certificate chain and private key from PEM files.
pub fn load(
    files: &TlsFiles,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let cert_error = |source| TlsError::Pem {
        what: "certificate",
        path: files.cert.clone(),
        source,
    };
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .map_err(cert_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(cert_error)?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: files.cert.clone(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|source| TlsError::Pem {
        what: "private key",
        path: files.key.clone(),
        source,
    })?;
    Ok((chain, key))
}

/// A TLS 1.3/1.2 server configuration on the ring provider, offering only
/// HTTP/1.1 because WebSocket upgrades need it.
///
/// The versions are named rather than left to rustls's defaults so that
/// the rule (nothing older than TLS 1.2, which rustls cannot speak anyway)
/// stays visible and tested here if a provider or default ever changes.
pub fn build_server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .map_err(TlsError::Rustls)?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(TlsError::Rustls)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

struct GeneratedCert {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn generate_dev_cert() -> Result<GeneratedCert, TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };

    // rcgen's default validity (1975 to 4096) is kept: this certificate is
    // only ever trusted explicitly, by a client given this very CA file.
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Baraza development CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().map_err(TlsError::Generate)?;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(TlsError::Generate)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let names: Vec<String> = DEV_CERT_NAMES.iter().map(|n| n.to_string()).collect();
    let mut leaf_params = CertificateParams::new(names).map_err(TlsError::Generate)?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf_params.use_authority_key_identifier_extension = true;
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate().map_err(TlsError::Generate)?;
    let leaf_cert = leaf_params
        .signed_by(&leaf_key, &issuer)
        .map_err(TlsError::Generate)?;

    Ok(GeneratedCert {
        ca_pem: ca_cert.pem(),
        cert_pem: leaf_cert.pem(),
        key_pem: leaf_key.serialize_pem(),
    })
}

/// Writes through a temporary file and a rename, so a reader never sees a
/// half-written file and the key is never readable by others, even briefly.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let write_error = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    // A leftover from a crash may have other permissions; start afresh.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(write_error(e)),
        _ => {}
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&tmp).map_err(write_error)?;
    file.write_all(contents).map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(write_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;

    #[test]
    fn the_development_certificate_is_made_once_and_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tls");
        let (paths, origin) = ensure_dev_cert(&dir).unwrap();
        assert_eq!(origin, DevCertOrigin::Generated);
        let first = std::fs::read(&paths.cert).unwrap();

        let (again, origin) = ensure_dev_cert(&dir).unwrap();
        assert_eq!(origin, DevCertOrigin::Reused);
        assert_eq!(again, paths);
        assert_eq!(std::fs::read(&paths.cert).unwrap(), first);

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&paths.key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        server_config(None, &dir).unwrap();
    }

    #[test]
    fn the_leaf_verifies_against_the_ca_for_localhost_names() {
        let tmp = tempfile::tempdir().unwrap();
        let (paths, _) = ensure_dev_cert(tmp.path()).unwrap();
        let ca = CertificateDer::from_pem_file(&paths.ca).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        let (chain, _) = load(&paths.as_tls_files()).unwrap();
        let now = rustls::pki_types::UnixTime::now();
        for name in DEV_CERT_NAMES {
            let name = rustls::pki_types::ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(&chain[0], &chain[1..], &name, &[], now)
                .unwrap();
        }
        let other = rustls::pki_types::ServerName::try_from("example.org").unwrap();
        assert!(verifier
            .verify_server_cert(&chain[0], &chain[1..], &other, &[], now)
            .is_err());
    }

    /// Runs a handshake in memory, returning the client's negotiated
    /// version or the first error either side reports.
    fn handshake(
        server: Arc<rustls::ServerConfig>,
        ca: &Path,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Result<rustls::ProtocolVersion, rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(ca).unwrap())
            .unwrap();
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
        let mut server = rustls::ServerConnection::new(server).unwrap();
        for _ in 0..10 {
            let mut bytes = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut bytes).unwrap();
            }
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                server.read_tls(&mut rest).unwrap();
                server.process_new_packets()?;
            }
            let mut bytes = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut bytes).unwrap();
            }
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                client.read_tls(&mut rest).unwrap();
                client.process_new_packets()?;
            }
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(client.protocol_version().unwrap());
            }
        }
        panic!("the handshake did not finish");
    }

    #[test]
    fn tls_1_2_and_1_3_clients_are_served() {
        let tmp = tempfile::tempdir().unwrap();
        let config = server_config(None, tmp.path()).unwrap();
        let ca = DevCertPaths::new(tmp.path()).ca;
        assert_eq!(
            handshake(config.clone(), &ca, &[&rustls::version::TLS12]).unwrap(),
            rustls::ProtocolVersion::TLSv1_2
        );
        assert_eq!(
            handshake(config, &ca, &[&rustls::version::TLS13]).unwrap(),
            rustls::ProtocolVersion::TLSv1_3
        );
    }

    /// A TLS 1.1 ClientHello (no supported_versions extension), offering
    /// TLS_RSA_WITH_AES_128_CBC_SHA and TLS_RSA_WITH_AES_256_CBC_SHA.
    const TLS11_CLIENT_HELLO: [u8; 52] = {
        let mut hello = [0x11u8; 52];
        let head = [
            0x16, 0x03, 0x01, 0x00, 0x2f, 0x01, 0x00, 0x00, 0x2b, 0x03, 0x02,
        ];
        let mut i = 0;
        while i < head.len() {
            hello[i] = head[i];
            i += 1;
        }
        // After the 32 random bytes: no session id, two suites, null
        // compression, no extensions.
        let tail = [0x00, 0x00, 0x04, 0x00, 0x2f, 0x00, 0x35, 0x01, 0x00];
        let mut j = 0;
        while j < tail.len() {
            hello[43 + j] = tail[j];
            j += 1;
        }
        hello
    };

    #[test]
    fn a_tls_1_1_client_gets_an_alert_not_a_server_hello() {
        let tmp = tempfile::tempdir().unwrap();
        let config = server_config(None, tmp.path()).unwrap();
        let mut server = rustls::ServerConnection::new(config).unwrap();
        server.read_tls(&mut &TLS11_CLIENT_HELLO[..]).unwrap();
        let error = server.process_new_packets().unwrap_err();
        assert!(
            matches!(error, rustls::Error::PeerIncompatible(_)),
            "{error:?}"
        );
        let mut reply = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut reply).unwrap();
        }
        // One fatal alert record (content type 21, level 2) and nothing
        // else: no ServerHello, so no TLS 1.1 session.
        assert_eq!(reply.len(), 7, "{reply:02x?}");
        assert_eq!((reply[0], reply[5]), (0x15, 2), "{reply:02x?}");
    }

    #[test]
    fn operator_files_that_are_missing_or_empty_are_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let empty = tmp.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let files = TlsFiles {
            cert: empty.clone(),
            key: empty,
        };
        assert!(matches!(load(&files), Err(TlsError::NoCertificate { .. })));
        let missing = TlsFiles {
            cert: tmp.path().join("nope.pem"),
            key: tmp.path().join("nope.pem"),
        };
        assert!(matches!(load(&missing), Err(TlsError::Pem { .. })));
    }
}
