//! Connecting to the server: TLS (rustls, trusting the configured CA file
//! or the system's webpki roots are not bundled: a CA file is required for
//! now) and the WebSocket upgrade with the device's bearer token.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::WebSocketStream;

use crate::error::ClientError;

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
    let name = ServerName::try_from(target.host.clone())
        .map_err(|e| ClientError::BadUrl(endpoint.url.clone(), e.to_string()))?;
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| connect_err(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| connect_err(format!("TLS: {e}")))?;
    let mut request = target
        .ws_url
        .as_str()
        .into_client_request()
        .map_err(|e| ClientError::BadUrl(endpoint.url.clone(), e.to_string()))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {}", endpoint.token)).map_err(|_| {
        ClientError::Unauthorized("the token has characters a header cannot carry".into())
    })?;
    request.headers_mut().insert("authorization", bearer);
    let mut ws_config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default();
    ws_config.max_message_size = Some(frame_bytes_max.saturating_mul(4));
    ws_config.max_frame_size = Some(frame_bytes_max.saturating_mul(4));
    match tokio_tungstenite::client_async_with_config(request, tls, Some(ws_config)).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).trim().to_string())
                .unwrap_or_default();
            if resp.status().as_u16() == 401 {
                Err(ClientError::Unauthorized(body))
            } else {
                Err(connect_err(format!("HTTP {}: {body}", resp.status())))
            }
        }
        Err(e) => Err(connect_err(e.to_string())),
    }
}

/// A small HTTPS POST of a JSON body (enrolment), answered with the
/// status and body. The server closes after the reply.
pub async fn post_json(
    url: &str,
    ca_file: &std::path::Path,
    path: &str,
    body: &str,
    bearer: Option<&str>,
) -> Result<(u16, String), ClientError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let target = parse(url)?;
    let connect_err = |reason: String| ClientError::Connect {
        url: url.to_string(),
        reason,
    };
    let config = tls_config(Some(ca_file))?;
    let name = ServerName::try_from(target.host.clone())
        .map_err(|e| ClientError::BadUrl(url.to_string(), e.to_string()))?;
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| connect_err(e.to_string()))?;
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| connect_err(format!("TLS: {e}")))?;
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        target.host,
        body.len()
    );
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| connect_err(e.to_string()))?;
    let mut raw = Vec::new();
    // A TLS close without close_notify still ends a Connection: close reply.
    let _ = tls.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| connect_err("no HTTP answer".into()))?;
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = rest;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
                break;
            };
            if n == 0 || tail.len() < n {
                break;
            }
            out.push_str(&tail[..n]);
            rest = tail[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        rest.to_string()
    };
    Ok((status, body))
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
}
