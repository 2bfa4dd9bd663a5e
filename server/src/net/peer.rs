//! The client's address, carried from the accept loop to the routes.
//!
//! hyper's `serve_connection` hands requests to warp without the TCP
//! peer, and `warp::addr::remote` is only filled in by warp's own server,
//! which Baraza does not use (it terminates TLS itself). So each
//! connection's service is wrapped in [`WithPeer`], which stamps every
//! request with the peer address, and routes read it with [`remote`].

use std::net::{IpAddr, SocketAddr};

use warp::Filter;

/// The address of the TCP peer a request came from, as a request extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// A hyper service that stamps each request with its connection's peer
/// address before handing it on.
#[derive(Clone, Debug)]
pub struct WithPeer<S> {
    inner: S,
    peer: PeerAddr,
}

impl<S> WithPeer<S> {
    /// Wraps `inner` for the connection from `peer`.
    pub fn new(inner: S, peer: SocketAddr) -> WithPeer<S> {
        WithPeer {
            inner,
            peer: PeerAddr(peer),
        }
    }
}

impl<S, B> hyper::service::Service<hyper::Request<B>> for WithPeer<S>
where
    S: hyper::service::Service<hyper::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, mut request: hyper::Request<B>) -> Self::Future {
        request.extensions_mut().insert(self.peer);
        self.inner.call(request)
    }
}

/// The peer address of the request, or `None` if it did not come through
/// [`WithPeer`].
pub fn remote(
) -> impl Filter<Extract = (Option<SocketAddr>,), Error = std::convert::Infallible> + Clone + Send + Sync
{
    warp::ext::optional::<PeerAddr>().map(|peer: Option<PeerAddr>| peer.map(|p| p.0))
}

/// The key one client is throttled under. IPv4-mapped IPv6 addresses are
/// their IPv4 address; other IPv6 addresses count by /64, the block one
/// subscriber is usually given, so one client cannot dodge the throttle by
/// hopping between addresses of its own block.
pub fn client_key(addr: IpAddr) -> IpAddr {
    match addr.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::service::Service;

    /// Answers each request with the peer address it carries.
    struct Echo;

    impl hyper::service::Service<hyper::Request<()>> for Echo {
        type Response = Option<PeerAddr>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Option<PeerAddr>, Self::Error>>;

        fn call(&self, request: hyper::Request<()>) -> Self::Future {
            std::future::ready(Ok(request.extensions().get::<PeerAddr>().copied()))
        }
    }

    #[tokio::test]
    async fn every_request_carries_its_connections_peer() {
        let peer: SocketAddr = "192.0.2.10:40000".parse().unwrap();
        let service = WithPeer::new(Echo, peer);
        for _ in 0..2 {
            let got = service.call(hyper::Request::new(())).await.unwrap();
            assert_eq!(got, Some(PeerAddr(peer)));
        }
        assert_eq!(Echo.call(hyper::Request::new(())).await.unwrap(), None);
    }

    #[test]
    fn clients_are_keyed_by_ipv4_address_or_ipv6_slash_64() {
        let key = |s: &str| client_key(s.parse().unwrap());
        assert_eq!(key("203.0.113.5"), key("203.0.113.5"));
        assert_ne!(key("203.0.113.5"), key("203.0.113.6"));
        assert_eq!(key("::ffff:203.0.113.5"), key("203.0.113.5"));
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:bbbb::2"));
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2::"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::1"), key("::"));
    }
}
