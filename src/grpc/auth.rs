//! Who is calling: connections carry a [`PeerInfo`] resolved at the TLS
//! handshake; per-service interceptors turn it into a [`Principal`] with the
//! role the service requires, or reject the call.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::Connected;
use tonic::{Request, Status};

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

/// An accepted connection, plaintext or TLS.
pub enum Conn {
    Plain(TcpStream, PeerInfo),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>, PeerInfo),
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

/// An interceptor admitting only principals with one of `roles`; it puts
/// the [`Principal`] into the request's extensions for the handler.
pub fn require(
    roles: &'static [Role],
) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut req: Request<()>| {
        let principal = req
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.principal.clone())
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
        req.extensions_mut().insert(principal);
        Ok(req)
    }
}

/// The principal an interceptor admitted.
pub fn principal<T>(req: &Request<T>) -> Result<Principal, Status> {
    req.extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no authenticated principal"))
}
