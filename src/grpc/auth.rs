//! Who is calling: connections carry a [`PeerInfo`] resolved at the TLS
//! handshake; a per-service [`RequireRole`] turns it into a [`Principal`]
//! with the role the service requires, or rejects the call.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::codegen::http;
use tonic::transport::server::Connected;
use tonic::{Request, Status};

use super::coalesce::Coalesced;
use crate::config::{Config, LimitsSection, PrincipalEntry, Role};

/// An authenticated caller and its limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    pub carrier_id: Arc<str>,
    pub role: Role,
    pub rate_per_sec: f64,
    pub burst: u64,
    pub daily_quota: u64,
}

impl Principal {
    pub fn new(entry: &PrincipalEntry, defaults: &LimitsSection) -> Self {
        Self {
            carrier_id: entry.carrier_id.as_str().into(),
            role: entry.role,
            rate_per_sec: entry.rate_per_sec.unwrap_or(defaults.rate_per_sec),
            burst: entry.burst.unwrap_or(defaults.burst),
            daily_quota: entry.daily_quota.unwrap_or(defaults.daily_quota),
        }
    }

    /// The identity of plaintext callers on loopback (development only).
    pub fn development(defaults: &LimitsSection) -> Self {
        Self {
            carrier_id: "dev-carrier".into(),
            role: Role::Carrier,
            rate_per_sec: defaults.rate_per_sec,
            burst: defaults.burst,
            daily_quota: defaults.daily_quota,
        }
    }
}

/// Certificate subject → principal, from configuration.
#[derive(Debug, Default)]
pub struct PrincipalMap {
    by_subject: HashMap<String, Principal>,
}

impl PrincipalMap {
    pub fn from_config(cfg: &Config) -> Self {
        let by_subject = cfg
            .principals
            .iter()
            .map(|p| (p.subject.clone(), Principal::new(p, &cfg.limits)))
            .collect();
        Self { by_subject }
    }

    /// A copy of `other` (the server keeps its own).
    pub fn from_entries(other: &PrincipalMap) -> Self {
        Self {
            by_subject: other.by_subject.clone(),
        }
    }

    pub fn insert(&mut self, subject: &str, principal: Principal) {
        self.by_subject.insert(subject.to_owned(), principal);
    }

    /// The first of a certificate's names that is registered.
    pub fn resolve(&self, names: &[String]) -> Option<Principal> {
        names.iter().find_map(|n| self.by_subject.get(n).cloned())
    }
}

/// What the server knows about a connection's peer.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    /// `None`: a valid certificate that no configured principal matches.
    pub principal: Option<Principal>,
}

/// An accepted connection, plaintext or TLS. Built with [`Conn::plain`] or
/// [`Conn::tls`], which gather its writes (see `coalesce`).
pub enum Conn {
    Plain(Coalesced<TcpStream>, PeerInfo),
    Tls(
        Box<Coalesced<tokio_rustls::server::TlsStream<TcpStream>>>,
        PeerInfo,
    ),
}

impl Conn {
    pub fn plain(sock: TcpStream, peer: PeerInfo) -> Self {
        Self::Plain(Coalesced::new(sock), peer)
    }

    pub fn tls(stream: tokio_rustls::server::TlsStream<TcpStream>, peer: PeerInfo) -> Self {
        Self::Tls(Box::new(Coalesced::new(stream)), peer)
    }
}

impl Connected for Conn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        match self {
            Conn::Plain(_, p) | Conn::Tls(_, p) => p.clone(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s, _) => s.is_write_vectored(),
            Conn::Tls(s, _) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Admits only callers whose principal has one of `roles`, and puts the
/// [`Principal`] into the request's extensions for the handler; otherwise
/// answers `UNAUTHENTICATED` or `PERMISSION_DENIED` without calling the
/// service.
///
/// A tower service over the HTTP request rather than a tonic interceptor:
/// an interceptor takes the request apart into a `tonic::Request` and puts
/// it back together around the check, which cost the unary path about
/// 0.4 µs a call (see BENCHMARKS.md); this reads the extension in place.
#[derive(Clone)]
pub struct RequireRole<S> {
    inner: S,
    roles: &'static [Role],
}

impl<S> RequireRole<S> {
    pub fn new(inner: S, roles: &'static [Role]) -> Self {
        Self { inner, roles }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for RequireRole<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for RequireRole<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = futures_util::future::Either<
        S::Future,
        std::future::Ready<Result<Self::Response, S::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        match admit(req.extensions(), self.roles) {
            Ok(principal) => {
                req.extensions_mut().insert(principal);
                futures_util::future::Either::Left(self.inner.call(req))
            }
            Err(status) => {
                futures_util::future::Either::Right(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// The connection's principal, if it holds one of `roles`.
fn admit(extensions: &http::Extensions, roles: &[Role]) -> Result<Principal, Status> {
    let principal = extensions
        .get::<PeerInfo>()
        .and_then(|p| p.principal.as_ref())
        .ok_or_else(|| {
            Status::unauthenticated("client certificate is not registered with this gateway")
        })?;
    // The call's span, when traces are exported (see `trace`): which
    // carrier or auditor called. A no-op on a disabled span.
    tracing::Span::current().record("simverify.caller", principal.carrier_id.as_ref());
    if !roles.contains(&principal.role) {
        return Err(Status::permission_denied(format!(
            "role `{}` may not call this service",
            principal.role.as_str()
        )));
    }
    Ok(principal.clone())
}

/// The principal [`RequireRole`] admitted, taken out of the request (the
/// handler owns it from here, without a copy).
pub fn principal<T>(req: &mut Request<T>) -> Result<Principal, Status> {
    req.extensions_mut()
        .remove::<Principal>()
        .ok_or_else(|| Status::unauthenticated("no authenticated principal"))
}
