//! Connecting to the server: TLS (rustls, trusting the configured CA file
//! or the system's webpki roots are not bundled: a CA file is required for
//! now), the WebSocket upgrade with the device's bearer token
//! (tokio-tungstenite), and the small HTTPS calls (hyper's HTTP/1.1
//! client). Every connect and exchange has a timeout and every reply a
//! size bound, so a server that stalls or floods cannot hang the tablet.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::WebSocketStream;

use crate::error::ClientError;

/// TCP and TLS together must be up within this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// An HTTPS exchange or the WebSocket upgrade must finish within this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest HTTPS reply read (enrolment and rotation replies are a few
/// hundred bytes); a larger one fails instead of filling memory.
pub const REPLY_BYTES_MAX: usize = 64 * 1024;

/// An open sync connection.
pub type SyncSocket = WebSocketStream<TlsStream<TcpStream>>;

/// Where and how to connect.
#[derive(Clone)]
pub struct Endpoint {
    /// `https://host:port` (or `wss://`), as configured.
    pub url: String,
    /// PEM file of the CA (or self-signed certificate) to trust.
    pub ca_file: Option<std::path::PathBuf>,
    /// The device's bearer token. Never logged.
    pub token: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url)
            .field("ca_file", &self.ca_file)
            .field("token", &"<redacted>")
            .finish()
    }
}

struct Target {
    host: String,
    port: u16,
    ws_url: String,
}

fn parse(url: &str) -> Result<Target, ClientError> {
    let bad = |why: &str| ClientError::BadUrl(url.to_string(), why.to_string());
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("wss://"))
        .ok_or_else(|| bad("must start with https:// or wss://"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
        let port = after.strip_prefix(':').unwrap_or("443");
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p),
            None => (authority.to_string(), "443"),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port: u16 = port.parse().map_err(|_| bad("bad port"))?;
    let ws_url = format!("wss://{authority}/v1/sync");
    Ok(Target { host, port, ws_url })
}

fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    let path = ca_file.ok_or_else(|| ClientError::Tls("no CA file configured".into()))?;
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| ClientError::Tls(format!("cannot read {}: {e}", path.display())))?;
    for cert in certs {
        let cert =
            cert.map_err(|e| ClientError::Tls(format!("bad PEM in {}: {e}", path.display())))?;
        roots
            .add(cert)
            .map_err(|e| ClientError::Tls(format!("bad certificate in {}: {e}", path.display())))?;
    }
    if roots.is_empty() {
        return Err(ClientError::Tls(format!(
            "no certificate in {}",
            path.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Checks a server URL and a CA file as a connection would, without
/// connecting: setting a tablet up with either wrong fails then, not at
/// its first sync.
pub(crate) fn check_endpoint(
    url: &str,
    ca_file: Option<&std::path::Path>,
) -> Result<(), ClientError> {
    parse(url)?;
    if ca_file.is_some() {
        tls_config(ca_file)?;
    }
    Ok(())
}

/// Opens a TLS WebSocket to the server's sync endpoint.
pub async fn connect(
    endpoint: &Endpoint,
    frame_bytes_max: usize,
) -> Result<SyncSocket, ClientError> {
    let target = parse(&endpoint.url)?;
    let connect_err = |reason: String| ClientError::Connect {
        url: endpoint.url.clone(),
        reason,
    };
    let config = tls_config(endpoint.ca_file.as_deref())?;
    let tls = tls_to(&endpoint.url, &target, config).await?;
    let mut request = target
        .ws_url
        .as_str()
        .into_client_request()
        .map_err(|e| ClientError::BadUrl(endpoint.url.clone(), e.to_string()))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {}", endpoint.token)).map_err(|_| {
        ClientError::Unauthorized {
            refusal: crate::AuthRefusal::UnknownToken,
            message: "the token has characters a header cannot carry".into(),
        }
    })?;
    request.headers_mut().insert("authorization", bearer);
    let mut ws_config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default();
    ws_config.max_message_size = Some(frame_bytes_max.saturating_mul(4));
    ws_config.max_frame_size = Some(frame_bytes_max.saturating_mul(4));
    let upgrade = tokio_tungstenite::client_async_with_config(request, tls, Some(ws_config));
    let upgraded = tokio::time::timeout(REQUEST_TIMEOUT, upgrade)
        .await
        .map_err(|_| connect_err(format!("no WebSocket upgrade within {REQUEST_TIMEOUT:?}")))?;
    match upgraded {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).trim().to_string())
                .unwrap_or_default();
            if resp.status().as_u16() == 401 {
                Err(ClientError::Unauthorized {
                    refusal: refusal_of(resp.headers()),
                    message: body,
                })
            } else {
                Err(connect_err(format!("HTTP {}: {body}", resp.status())))
            }
        }
        Err(e) => Err(connect_err(e.to_string())),
    }
}

/// Opens TCP then TLS to `target`, both within [`CONNECT_TIMEOUT`]: an
/// unreachable server (a tablet on a captive portal, a dropped packet)
/// fails the call instead of hanging it.
async fn tls_to(
    url: &str,
    target: &Target,
    config: rustls::ClientConfig,
) -> Result<TlsStream<TcpStream>, ClientError> {
    let connect_err = |reason: String| ClientError::Connect {
        url: url.to_string(),
        reason,
    };
    let name = ServerName::try_from(target.host.clone())
        .map_err(|e| ClientError::BadUrl(url.to_string(), e.to_string()))?;
    let open = async {
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| connect_err(format!("TLS: {e}")))
    };
    tokio::time::timeout(CONNECT_TIMEOUT, open)
        .await
        .map_err(|_| connect_err(format!("no connection within {CONNECT_TIMEOUT:?}")))?
}

/// The reason a refusal's `baraza-refusal` header names.
fn refusal_of(headers: &hyper::HeaderMap) -> crate::AuthRefusal {
    crate::AuthRefusal::from_code(
        headers
            .get(baraza_protocol::REFUSAL_HEADER)
            .and_then(|v| v.to_str().ok()),
    )
}

/// What an HTTPS call answered.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The reason the `baraza-refusal` header names; `Other` when the
    /// server sent none (as on any answer that is not a refusal).
    pub refusal: crate::AuthRefusal,
    /// The body, as text.
    pub body: String,
}

/// A small HTTPS POST of a JSON body (enrolment, token rotation), answered
/// with the status, the refusal code and the body, through hyper's
/// HTTP/1.1 client. The reply is bounded twice: at most
/// [`REPLY_BYTES_MAX`] bytes, within [`REQUEST_TIMEOUT`].
pub async fn post_json(
    url: &str,
    ca_file: &std::path::Path,
    path: &str,
    body: &str,
    bearer: Option<&str>,
) -> Result<Reply, ClientError> {
    let mut session = HttpsSession::connect(url, Some(ca_file), bearer).await?;
    let reply = session
        .send(
            hyper::Method::POST,
            path,
            &[
                ("content-type", "application/json".into()),
                ("connection", "close".into()),
            ],
            body.as_bytes().to_vec(),
            REPLY_BYTES_MAX,
        )
        .await?;
    Ok(Reply {
        status: reply.status,
        refusal: reply.refusal,
        body: String::from_utf8_lossy(&reply.body).into_owned(),
    })
}

/// What an HTTPS exchange on a kept connection answered, body as bytes.
#[derive(Debug)]
pub struct BytesReply {
    /// The status code.
    pub status: u16,
    /// The refusal code of a 401 or 503 (`Other` when none).
    pub refusal: crate::AuthRefusal,
    /// The body.
    pub body: Vec<u8>,
}

/// One kept-alive HTTPS connection for a run of requests (the chunks of an
/// upload, the pieces of a download), so each costs one round trip and
/// not a TCP and TLS handshake too: on a 2G link with 300 ms round trips
/// the handshakes would cost more than the chunks. Each request is bounded
/// by [`REQUEST_TIMEOUT`] and its reply by the caller's byte limit.
pub struct HttpsSession {
    url: String,
    host: String,
    token: Option<String>,
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<hyper::body::Bytes>>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for HttpsSession {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl HttpsSession {
    /// Connects to the endpoint's server, with its device token.
    pub async fn open(endpoint: &Endpoint) -> Result<HttpsSession, ClientError> {
        HttpsSession::connect(
            &endpoint.url,
            endpoint.ca_file.as_deref(),
            Some(&endpoint.token),
        )
        .await
    }

    /// Connects to the server at `url` trusting `ca_file`; requests carry
    /// `token` as a bearer when there is one.
    pub async fn connect(
        url: &str,
        ca_file: Option<&std::path::Path>,
        token: Option<&str>,
    ) -> Result<HttpsSession, ClientError> {
        let target = parse(url)?;
        let connect_err = |reason: String| ClientError::Connect {
            url: url.to_string(),
            reason,
        };
        let config = tls_config(ca_file)?;
        let tls = tls_to(url, &target, config).await?;
        let (sender, connection) = tokio::time::timeout(
            CONNECT_TIMEOUT,
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)),
        )
        .await
        .map_err(|_| connect_err(format!("no HTTP handshake within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| connect_err(e.to_string()))?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(HttpsSession {
            url: url.to_string(),
            host: target.host,
            token: token.map(str::to_string),
            sender,
            driver,
        })
    }

    /// Sends one request (with the token, if the session has one) and
    /// reads the reply, at most `reply_max` bytes of it.
    pub async fn send(
        &mut self,
        method: hyper::Method,
        path: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
        reply_max: usize,
    ) -> Result<BytesReply, ClientError> {
        use http_body_util::{BodyExt, Full, Limited};
        use hyper::header;
        let url = self.url.clone();
        let connect_err = |reason: String| ClientError::Connect {
            url: url.clone(),
            reason,
        };
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.host.as_str());
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, value.as_str());
        }
        let request = request
            .body(Full::new(hyper::body::Bytes::from(body)))
            .map_err(|e| connect_err(format!("request: {e}")))?;
        let exchange = async {
            self.sender
                .ready()
                .await
                .map_err(|e| connect_err(e.to_string()))?;
            let response = self
                .sender
                .send_request(request)
                .await
                .map_err(|e| connect_err(e.to_string()))?;
            let status = response.status().as_u16();
            let refusal = refusal_of(response.headers());
            let bytes = Limited::new(response.into_body(), reply_max)
                .collect()
                .await
                .map_err(|e| connect_err(format!("reply: {e}")))?
                .to_bytes();
            Ok(BytesReply {
                status,
                refusal,
                body: bytes.to_vec(),
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| connect_err(format!("no reply within {REQUEST_TIMEOUT:?}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_to_host_port_and_sync_path() {
        let t = parse("https://127.0.0.1:8443").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 8443));
        assert_eq!(t.ws_url, "wss://127.0.0.1:8443/v1/sync");
        let t = parse("wss://[::1]:9000/").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 9000));
        let t = parse("https://station.example").unwrap();
        assert_eq!(t.port, 443);
        assert!(parse("http://127.0.0.1:8443").is_err());
    }

    /// A CA file trusting a certificate for 127.0.0.1, and an acceptor
    /// serving that certificate.
    fn test_tls(dir: &std::path::Path) -> (std::path::PathBuf, tokio_rustls::TlsAcceptor) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        use rustls::pki_types::PrivateKeyDer;

        let mut ca_params = CertificateParams::default();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).unwrap();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .unwrap();
        (ca_file, tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }

    #[tokio::test]
    async fn an_https_reply_over_the_bound_fails_instead_of_filling_memory() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let dir = tempfile::tempdir().unwrap();
        let (ca_file, acceptor) = test_tls(dir.path());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let mut request = [0u8; 4096];
            let _ = tls.read(&mut request).await;
            let len = REPLY_BYTES_MAX + 1;
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n{}",
                "x".repeat(len)
            );
            let _ = tls.write_all(reply.as_bytes()).await;
            let _ = tls.shutdown().await;
        });
        let url = format!("https://127.0.0.1:{port}");
        let err = post_json(&url, &ca_file, "/v1/enroll", "{}", None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::Connect { reason, .. } if reason.starts_with("reply")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_https_reply_within_the_bound_is_read_whole() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let dir = tempfile::tempdir().unwrap();
        let (ca_file, acceptor) = test_tls(dir.path());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let mut request = [0u8; 4096];
            let _ = tls.read(&mut request).await;
            // Chunked, as hyper's server sends a streamed body.
            let reply = "HTTP/1.1 409 Conflict\r\nTransfer-Encoding: chunked\r\n\r\n\
                         5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
            let _ = tls.write_all(reply.as_bytes()).await;
            let _ = tls.shutdown().await;
        });
        let url = format!("https://127.0.0.1:{port}");
        let reply = post_json(&url, &ca_file, "/v1/token", "{}", Some("bz_t"))
            .await
            .unwrap();
        assert_eq!((reply.status, reply.body.as_str()), (409, "hello world"));
    }

    /// Serves `replies` in turn, one per connection, each after reading
    /// the request; returns the URL to reach them.
    async fn serve_replies(acceptor: tokio_rustls::TlsAcceptor, replies: Vec<String>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            for reply in replies {
                let (tcp, _) = listener.accept().await.unwrap();
                let mut tls = acceptor.accept(tcp).await.unwrap();
                let mut request = [0u8; 4096];
                let _ = tls.read(&mut request).await;
                let _ = tls.write_all(reply.as_bytes()).await;
                let _ = tls.shutdown().await;
            }
        });
        format!("https://127.0.0.1:{port}")
    }

    /// A 401 with `body`, and the refusal header if `code` is given.
    fn unauthorized(code: Option<&str>, body: &str) -> String {
        let header = code
            .map(|c| format!("{}: {c}\r\n", baraza_protocol::REFUSAL_HEADER))
            .unwrap_or_default();
        format!(
            "HTTP/1.1 401 Unauthorized\r\n{header}Content-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
    }

    #[tokio::test]
    async fn an_https_refusal_is_known_by_its_code_not_its_words() {
        let dir = tempfile::tempdir().unwrap();
        let (ca_file, acceptor) = test_tls(dir.path());
        let url = serve_replies(
            acceptor,
            vec![
                unauthorized(Some("expired"), "wrong user name or password"),
                unauthorized(None, "revoked: this device was reported lost"),
            ],
        )
        .await;
        let coded = post_json(&url, &ca_file, "/v1/token", "{}", Some("bz_t"))
            .await
            .unwrap();
        assert_eq!(
            (coded.status, coded.refusal, coded.body.as_str()),
            (
                401,
                crate::AuthRefusal::Expired,
                "wrong user name or password"
            )
        );
        let uncoded = post_json(&url, &ca_file, "/v1/token", "{}", Some("bz_t"))
            .await
            .unwrap();
        assert_eq!(
            (uncoded.status, uncoded.refusal),
            (401, crate::AuthRefusal::Other)
        );
    }

    #[tokio::test]
    async fn a_refused_websocket_upgrade_is_known_by_its_code_not_its_words() {
        let dir = tempfile::tempdir().unwrap();
        let (ca_file, acceptor) = test_tls(dir.path());
        let url = serve_replies(
            acceptor,
            vec![
                unauthorized(Some("revoked"), "this device was reported lost"),
                unauthorized(None, "revoked: this device was reported lost"),
            ],
        )
        .await;
        let endpoint = Endpoint {
            url,
            ca_file: Some(ca_file),
            token: "bz_t".into(),
        };
        match connect(&endpoint, 1 << 20).await {
            Err(ClientError::Unauthorized { refusal, message }) => {
                assert_eq!(refusal, crate::AuthRefusal::Revoked, "{message}");
                assert_eq!(message, "this device was reported lost");
            }
            other => panic!("expected a refusal, got {:?}", other.err()),
        }
        // Without the code, the same words are a refusal of no known kind:
        // nothing is wiped on the strength of a message's wording.
        match connect(&endpoint, 1 << 20).await {
            Err(ClientError::Unauthorized { refusal, .. }) => {
                assert_eq!(refusal, crate::AuthRefusal::Other);
            }
            other => panic!("expected a refusal, got {:?}", other.err()),
        }
    }
}
