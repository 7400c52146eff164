//! The gRPC edge: the Verification service, health, reflection, and the
//! server's life cycle. **Architecture invariant:** tonic types stay in here
//! (and in the CLI's client commands); errors become statuses only in
//! [`status`].

pub mod convert;
pub mod status;
mod verification;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

use crate::proto::verification_server::VerificationServer;
use crate::store::Store;
use crate::verifier::{Verifier, VerifierTasks};
pub use verification::VerificationService;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Most requests in one VerifyStream message.
    pub max_batch_items: usize,
    /// Largest decoded message, in bytes.
    pub max_message_bytes: usize,
    /// The principal recorded as caller. Until client certificates identify
    /// carriers, every caller is this one development identity.
    pub caller: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            max_batch_items: 5000,
            max_message_bytes: 16 * 1024 * 1024,
            caller: "dev-carrier".to_owned(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "refusing to serve plaintext on {0}: without TLS the gateway listens on a loopback address only"
    )]
    NotLoopback(SocketAddr),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection descriptors are invalid: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// A gateway whose listener is bound but not yet serving: `local_addr()`
/// tells the port (useful with port 0), `run_until_stopped` serves.
pub struct Application {
    listener: TcpListener,
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
        if !cfg.listen.ip().is_loopback() {
            return Err(ServeError::NotLoopback(cfg.listen));
        }
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: cfg.listen,
                source,
            })?;
        Ok(Self {
            listener,
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

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight
    /// calls finish, and waits for the audit writer to commit what it holds.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let Self {
            listener,
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

        let service = VerificationServer::new(VerificationService::new(
            verifier.clone(),
            &cfg.caller,
            cfg.max_batch_items,
        ))
        .max_decoding_message_size(cfg.max_message_bytes);
        drop(verifier);

        tracing::info!(addr = ?addr, "serving gRPC (plaintext, loopback only)");
        let result = Server::builder()
            .tcp_nodelay(true)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(service)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await;
        monitor.abort();
        // The server (and with it every Verifier handle) is gone: the audit
        // writer commits what is queued and ends.
        if let Err(e) = tasks.audit.await {
            tracing::error!(error = %e, "audit writer task failed");
        }
        tasks.watcher.abort();
        tracing::info!("gateway stopped");
        result.map_err(ServeError::from)
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
