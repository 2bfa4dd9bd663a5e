//! The port speaks TLS 1.2 and 1.3 and nothing else: plain HTTP gets no
//! HTTP answer, only a closed connection; a client limited to TLS 1.2 is
//! served; a TLS 1.1 ClientHello gets a fatal alert instead of a
//! ServerHello.

use std::sync::Arc;
use std::time::Duration;

use baraza_tests::ServerProcess;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const IO_TIMEOUT: Duration = Duration::from_secs(15);

/// Sends `bytes` on a fresh TCP connection and reads until the server
/// closes it, failing the test if it does not within [`IO_TIMEOUT`].
async fn raw_exchange(server: &ServerProcess, bytes: &[u8]) -> Vec<u8> {
    let exchange = async {
        let mut tcp = TcpStream::connect(server.addr()).await.unwrap();
        tcp.write_all(bytes).await.unwrap();
        let mut reply = Vec::new();
        // A reset after the server's last bytes is still a close.
        let _ = tcp.read_to_end(&mut reply).await;
        reply
    };
    tokio::time::timeout(IO_TIMEOUT, exchange)
        .await
        .expect("the server closes the connection")
}

/// A TLS 1.1 ClientHello (no supported_versions extension) offering
/// TLS_RSA_WITH_AES_128_CBC_SHA and TLS_RSA_WITH_AES_256_CBC_SHA.
fn tls11_client_hello() -> Vec<u8> {
    let mut hello = vec![
        0x16, 0x03, 0x01, 0x00, 0x2f, 0x01, 0x00, 0x00, 0x2b, 0x03, 0x02,
    ];
    hello.extend([0x11; 32]);
    hello.extend([0x00, 0x00, 0x04, 0x00, 0x2f, 0x00, 0x35, 0x01, 0x00]);
    hello
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_tls_1_2_and_1_3_are_spoken() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("server"));

    let plain = raw_exchange(
        &server,
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        !plain.starts_with(b"HTTP/") && !plain.windows(2).any(|w| w == b"ok"),
        "plain HTTP got an answer: {:?}",
        String::from_utf8_lossy(&plain)
    );

    let old = raw_exchange(&server, &tls11_client_hello()).await;
    // Content type 21 (alert), level 2 (fatal); a ServerHello would be 22.
    assert_eq!(old.first(), Some(&0x15), "{old:02x?}");
    assert_eq!(old.get(5), Some(&2), "{old:02x?}");

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(server.ca_path()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let exchange = async {
        let tcp = TcpStream::connect(server.addr()).await.unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("a TLS 1.2 handshake");
        let version = tls.get_ref().1.protocol_version();
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut reply = Vec::new();
        let _ = tls.read_to_end(&mut reply).await;
        (version, String::from_utf8_lossy(&reply).into_owned())
    };
    let (version, reply) = tokio::time::timeout(IO_TIMEOUT, exchange)
        .await
        .expect("the TLS 1.2 exchange finishes in time");
    assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_2));
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("ok"), "{reply}");

    // The server is unharmed by all of the above.
    let (status, body) = baraza_tests::https_get(&server, "/healthz", None).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
}
