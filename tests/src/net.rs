//! Reaching the server at the transport level: TLS that trusts only the
//! server's generated development CA, and TCP from a chosen loopback
//! address (the server counts and throttles per address). The raw
//! WebSocket, the HTTP client and the event stream all connect through
//! these.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::net::{TcpSocket, TcpStream};

use crate::server_process::ServerProcess;

/// How long a raw connection waits for the server's next frame.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(15);

/// A TLS client configuration trusting only the certificates in the PEM
/// file `ca` (the server's development CA), TLS 1.2 and 1.3. The bench
/// adjusts it (no session resumption) before use.
pub fn client_config(ca: &Path) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("cannot read {}", ca.display()))?
    {
        let cert = cert.with_context(|| format!("bad PEM in {}", ca.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("bad certificate in {}", ca.display()))?;
    }
    ensure!(!roots.is_empty(), "no certificate in {}", ca.display());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A TLS client trusting only the CA in `ca` (the server's development CA).
pub fn tls_connector(ca: &Path) -> tokio_rustls::TlsConnector {
    let config = client_config(ca).unwrap_or_else(|e| panic!("the server's CA: {e:#}"));
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// TCP to `addr` from the local address `local` (the system's choice when
/// None), without Nagle's delay: requests and frames here are small and
/// timed. Not bounded: callers put their own timeout around it.
pub async fn tcp_from(addr: SocketAddr, local: Option<IpAddr>) -> anyhow::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .context("a TCP socket")?;
    if let Some(local) = local {
        socket
            .bind(SocketAddr::new(local, 0))
            .with_context(|| format!("cannot bind to {local}"))?;
    }
    let tcp = socket
        .connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// A TCP connection to the server from the loopback address `local`
/// (`127.0.0.2` and up work on Linux without any setup), so a test can be
/// several clients as the server counts them.
pub async fn tcp_connect_from(server: &ServerProcess, local: IpAddr) -> TcpStream {
    tokio::time::timeout(FRAME_TIMEOUT, tcp_from(server.addr(), Some(local)))
        .await
        .expect("the TCP connection is made in time")
        .unwrap_or_else(|e| panic!("TCP connect from {local}: {e:#}"))
}

/// A CA of the test's own, written to `dir/ca.pem`, and a TLS acceptor
/// serving a certificate it signed for 127.0.0.1: for a forwarder that
/// stands between a tablet (told to trust this CA) and the server.
pub fn test_tls_acceptor(dir: &Path) -> (std::path::PathBuf, tokio_rustls::TlsAcceptor) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use rustls::pki_types::PrivateKeyDer;

    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let ca_key = KeyPair::generate().expect("a CA key");
    let ca_cert = ca_params.self_signed(&ca_key).expect("a CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().expect("a key");
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("certificate parameters")
        .signed_by(&leaf_key, &issuer)
        .expect("a certificate");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).expect("write the CA");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::try_from(leaf_key.serialize_der()).expect("a private key"),
        )
        .expect("a server configuration");
    (ca_file, tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
