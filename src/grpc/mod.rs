//! The gRPC edge: services, identity, admission control, TLS, health,
//! reflection, and the server's life cycle. **Architecture invariant:** tonic
//! types stay in here (and in the CLI's client commands); errors become
//! statuses only in [`status`].

pub mod audit;
pub mod auth;
mod coalesce;
pub mod convert;
pub mod limits;
pub mod status;
pub mod tls;
pub mod trace;
mod verification;
pub mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;

use crate::config::{Config, Role};
use crate::proto::gateway::verification_server::VerificationServer;
use crate::store::Store;
use crate::verifier::{Verifier, VerifierTasks};
use auth::{Conn, PeerInfo, Principal, PrincipalMap};
use limits::Limits;
use tls::{ReloadableTls, TlsError};
pub use verification::{VerificationService, deadline};

/// How callers are identified.
pub enum Security {
    /// Mutual TLS: client certificates map to principals.
    MutualTls {
        tls: crate::config::TlsSection,
        principals: PrincipalMap,
    },
    /// No TLS, loopback only: every caller is this principal.
    Plaintext { principal: Principal },
}

pub struct ServerConfig {
    /// Signs audit checkpoints.
    pub audit_signer: Arc<crate::audit::log::Signer>,
    /// How often a checkpoint of a grown log is published.
    pub checkpoint_interval: Duration,
    /// Months of audit records to keep (None: all).
    pub audit_retention_months: Option<u32>,
    /// How long a stop waits for the audit journal to be indexed.
    pub audit_drain: Duration,
    pub listen: SocketAddr,
    pub max_batch_items: usize,
    pub max_message_bytes: usize,
    pub max_concurrent_requests: usize,
    pub shutdown_grace: Duration,
    pub security: Security,
    /// A span per call (see [`trace`]); on only while traces are exported.
    pub rpc_spans: bool,
}

impl ServerConfig {
    /// The server settings of a validated configuration.
    pub fn from_config(
        cfg: &Config,
        audit_signer: Arc<crate::audit::log::Signer>,
    ) -> Result<Self, ServeError> {
        let security = if cfg.server.insecure_plaintext {
            Security::Plaintext {
                principal: Principal::development(&cfg.limits),
            }
        } else {
            let tls = cfg.tls.clone().ok_or(ServeError::NoTls)?;
            Security::MutualTls {
                tls,
                principals: PrincipalMap::from_config(cfg),
            }
        };
        Ok(Self {
            audit_signer,
            checkpoint_interval: Duration::from_secs(cfg.server.checkpoint_secs),
            audit_retention_months: cfg.audit_retention_months,
            audit_drain: Duration::from_secs(cfg.audit.drain_secs),
            listen: cfg.server.listen,
            max_batch_items: cfg.server.max_batch_items,
            max_message_bytes: cfg.server.max_message_bytes,
            max_concurrent_requests: cfg.server.max_concurrent_requests,
            shutdown_grace: Duration::from_secs(cfg.server.shutdown_grace_secs),
            security,
            rpc_spans: false,
        })
    }

    /// Plaintext on loopback with the development principal (tests, demos).
    pub fn plaintext(listen: SocketAddr, audit_signer: Arc<crate::audit::log::Signer>) -> Self {
        let defaults = crate::config::LimitsSection::default();
        Self {
            audit_signer,
            checkpoint_interval: Duration::from_secs(60),
            audit_retention_months: None,
            audit_drain: Duration::from_secs(60),
            listen,
            max_batch_items: 5000,
            max_message_bytes: 16 * 1024 * 1024,
            max_concurrent_requests: 512,
            shutdown_grace: Duration::from_secs(30),
            security: Security::Plaintext {
                principal: Principal::development(&defaults),
            },
            rpc_spans: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "refusing to serve plaintext on {0}: without TLS the gateway listens on a loopback address only"
    )]
    NotLoopback(SocketAddr),
    #[error(
        "tls: no certificates configured; set tls.cert, tls.key and tls.client_ca \
         (`simverify pki init` makes development ones), or pass --insecure-plaintext on loopback"
    )]
    NoTls,
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection descriptors are invalid: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

enum Acceptor {
    Tls {
        tls: Arc<ReloadableTls>,
        principals: Arc<PrincipalMap>,
    },
    Plain {
        principal: Principal,
    },
}

/// A gateway whose listener is bound but not yet serving: `local_addr()`
/// tells the port (useful with port 0), `run_until_stopped` serves.
pub struct Application {
    listener: TcpListener,
    acceptor: Acceptor,
    verifier: Verifier,
    tasks: VerifierTasks,
    cfg: ServerConfig,
}

impl Application {
    pub async fn build(
        cfg: ServerConfig,
        verifier: Verifier,
        tasks: VerifierTasks,
    ) -> Result<Self, ServeError> {
        let acceptor = match &cfg.security {
            Security::Plaintext { principal } => {
                if !cfg.listen.ip().is_loopback() {
                    return Err(ServeError::NotLoopback(cfg.listen));
                }
                Acceptor::Plain {
                    principal: principal.clone(),
                }
            }
            Security::MutualTls { tls, principals } => Acceptor::Tls {
                tls: Arc::new(ReloadableTls::new(tls.clone())?),
                principals: Arc::new(PrincipalMap::from_entries(principals)),
            },
        };
        // Monthly audit partitions exist before the first insert: attaching
        // one while inserts target the default partition would race.
        verifier
            .store()
            .ensure_audit_partitions(crate::clock::now_micros())
            .await?;
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: cfg.listen,
                source,
            })?;
        Ok(Self {
            listener,
            acceptor,
            verifier,
            tasks,
            cfg,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Serves until `shutdown` resolves; then stops accepting, gives
    /// in-flight calls the grace period to finish, and waits for the audit
    /// writer to commit what it holds.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let Self {
            listener,
            acceptor,
            verifier,
            tasks,
            cfg,
        } = self;
        let addr = listener.local_addr().ok();

        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<VerificationServer<VerificationService>>()
            .await;
        let monitor = tokio::spawn(monitor_store(verifier.store().clone(), health));
        let store = verifier.store().clone();
        // Shared with the last checkpoint at shutdown, which then reads only
        // what the minutely ones have not.
        let publisher = Arc::new(tokio::sync::Mutex::new(
            crate::audit::log::CheckpointPublisher::default(),
        ));
        let checkpoints = tokio::spawn(publish_checkpoints(
            store.clone(),
            cfg.audit_signer.clone(),
            cfg.checkpoint_interval,
            publisher.clone(),
        ));
        let upkeep = tokio::spawn(audit_upkeep(
            store.clone(),
            cfg.audit_signer.clone(),
            cfg.audit_retention_months,
        ));

        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;

        let limits = Arc::new(Limits::new(cfg.max_concurrent_requests));
        let verification = VerificationServer::new(VerificationService::new(
            verifier.clone(),
            limits.clone(),
            cfg.max_batch_items,
        ))
        .max_decoding_message_size(cfg.max_message_bytes);
        let verification = auth::RequireRole::new(verification, &[Role::Carrier]);
        let audit_service = auth::RequireRole::new(
            crate::proto::audit_server::AuditServer::new(audit::AuditService::new(
                verifier.clone(),
                cfg.audit_signer.clone(),
            )),
            &[Role::Carrier, Role::Auditor],
        );
        drop(verifier);

        let (conn_tx, conn_rx) = mpsc::channel::<std::io::Result<Conn>>(128);
        let mode = match &acceptor {
            Acceptor::Tls { .. } => "mutual TLS",
            Acceptor::Plain { .. } => "plaintext, loopback only",
        };
        let reloader = match &acceptor {
            Acceptor::Tls { tls, .. } => Some(tokio::spawn(reload_on_sighup(tls.clone()))),
            Acceptor::Plain { .. } => None,
        };
        let accept = tokio::spawn(accept_loop(listener, acceptor, conn_tx));
        tracing::info!(addr = ?addr, mode, "serving gRPC");

        let grace = cfg.shutdown_grace;
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            let _ = stopping_tx.send(());
        };
        let serve = Server::builder()
            .tcp_nodelay(true)
            // Outermost, so that the span records the status as sent.
            .layer(tower::util::option_layer(
                cfg.rpc_spans.then_some(trace::RpcSpanLayer),
            ))
            .layer(tower::util::MapResponseLayer::new(
                oversize_as_resource_exhausted,
            ))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(verification)
            .add_service(audit_service)
            .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), signal);
        let grace_over = async move {
            if stopping_rx.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let result = tokio::select! {
            r = serve => r,
            () = grace_over => {
                tracing::warn!(grace_secs = grace.as_secs(), "grace period over; abandoning in-flight calls");
                Ok(())
            }
        };
        accept.abort();
        monitor.abort();
        if let Some(r) = reloader {
            r.abort();
        }
        // The server (and with it every Verifier handle) is gone: the audit
        // sink commits what is queued and ends; a journal is indexed as far
        // as the drain period allows, and the rest at the next start.
        let mut audit_task = tasks.audit;
        match tokio::time::timeout(cfg.audit_drain, &mut audit_task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "audit task failed"),
            Err(_) => {
                audit_task.abort();
                tracing::warn!(
                    drain_secs = cfg.audit_drain.as_secs(),
                    "audit journal not fully indexed before stopping; the rest is indexed at the next start"
                );
            }
        }
        checkpoints.abort();
        upkeep.abort();
        // Cancelled, the task gives the publisher back.
        let _ = checkpoints.await;
        // A last checkpoint covers everything answered before the stop.
        let last = publisher
            .lock()
            .await
            .publish(&store, &cfg.audit_signer)
            .await;
        match last {
            Ok(Some(c)) => tracing::info!(size = c.size, "audit checkpoint published"),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "final audit checkpoint failed"),
        }
        tasks.watcher.abort();
        tracing::info!("gateway stopped");
        result.map_err(ServeError::from)
    }
}

/// Accepts TCP connections; TLS handshakes run concurrently so a slow or
/// hostile client cannot hold up others. Failed handshakes (no certificate,
/// an unknown CA, an expired certificate) never reach the server.
async fn accept_loop(
    listener: TcpListener,
    acceptor: Acceptor,
    tx: mpsc::Sender<std::io::Result<Conn>>,
) {
    const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    loop {
        let (sock, remote) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        match &acceptor {
            Acceptor::Plain { principal } => {
                let peer = PeerInfo {
                    remote: Some(remote),
                    principal: Some(principal.clone()),
                };
                if tx.send(Ok(Conn::plain(sock, peer))).await.is_err() {
                    return;
                }
            }
            Acceptor::Tls { tls, principals } => {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
                let principals = principals.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(
                        HANDSHAKE_TIMEOUT,
                        acceptor.accept(sock),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::info!(%remote, error = %e, "tls handshake rejected");
                            return;
                        }
                        Err(_) => {
                            tracing::info!(%remote, "tls handshake timed out");
                            return;
                        }
                    };
                    let names = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(tls::subject_names)
                        .unwrap_or_default();
                    let principal = principals.resolve(&names);
                    if principal.is_none() {
                        tracing::warn!(%remote, ?names, "client certificate is valid but not registered");
                    }
                    let peer = PeerInfo {
                        remote: Some(remote),
                        principal,
                    };
                    let _ = tx.send(Ok(Conn::tls(stream, peer))).await;
                });
            }
        }
    }
}

#[cfg(unix)]
async fn reload_on_sighup(tls: Arc<ReloadableTls>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        match tls.reload() {
            Ok(()) => tracing::info!("tls certificates reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "tls reload failed; keeping the previous certificates")
            }
        }
    }
}

#[cfg(not(unix))]
async fn reload_on_sighup(_tls: Arc<ReloadableTls>) {}

/// tonic reports a request message over the size limit as OUT_OF_RANGE;
/// gRPC's reference servers, and our contract, say RESOURCE_EXHAUSTED. Only
/// that one status is rewritten (in a trailers-only response, which is how
/// tonic answers a message it could not decode).
fn oversize_as_resource_exhausted<B>(
    mut resp: tonic::codegen::http::Response<B>,
) -> tonic::codegen::http::Response<B> {
    let h = resp.headers_mut();
    let oversize = h.get("grpc-status").is_some_and(|v| v == "11")
        && h.get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .is_some_and(|m| {
                m.contains("message length too large")
                    || m.contains("message%20length%20too%20large")
            });
    if oversize {
        h.insert(
            "grpc-status",
            tonic::codegen::http::HeaderValue::from_static("8"),
        );
    }
    resp
}

/// Publishes a signed checkpoint whenever the audit log has grown.
async fn publish_checkpoints(
    store: Store,
    signer: Arc<crate::audit::log::Signer>,
    every: Duration,
    publisher: Arc<tokio::sync::Mutex<crate::audit::log::CheckpointPublisher>>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let began = std::time::Instant::now();
        let published = publisher.lock().await.publish(&store, &signer).await;
        match published {
            Ok(latest) => tracing::debug!(
                size = latest.map_or(0, |c| c.size),
                took_ms = began.elapsed().as_millis() as u64,
                "audit checkpoint up to date"
            ),
            Err(e) => tracing::error!(error = %e, "publishing an audit checkpoint failed"),
        }
    }
}

/// Hourly: monthly audit partitions ahead of time, and retention.
async fn audit_upkeep(store: Store, signer: Arc<crate::audit::log::Signer>, months: Option<u32>) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        let now = crate::clock::now_micros();
        if let Err(e) = store.ensure_audit_partitions(now).await {
            tracing::error!(error = %e, "creating audit partitions failed");
        }
        if let Some(m) = months {
            match crate::audit::log::apply_retention(
                &store,
                &signer,
                crate::config::retention_cutoff(now, m),
            )
            .await
            {
                Ok(r) if r.removed > 0 => tracing::info!(
                    removed = r.removed,
                    start = r.start,
                    "audit retention applied"
                ),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "audit retention failed"),
            }
        }
    }
}

/// Reports NOT_SERVING while the store does not answer.
async fn monitor_store(store: Store, health: tonic_health::server::HealthReporter) {
    let mut serving = true;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let ok = tokio::time::timeout(Duration::from_secs(2), store.ping())
            .await
            .is_ok_and(|r| r.is_ok());
        if ok != serving {
            serving = ok;
            if ok {
                tracing::info!("store reachable again; serving");
                health
                    .set_serving::<VerificationServer<VerificationService>>()
                    .await;
            } else {
                tracing::warn!("store unreachable; reporting NOT_SERVING");
                health
                    .set_not_serving::<VerificationServer<VerificationService>>()
                    .await;
            }
        }
    }
}
