//! How the CLI's client commands reach a gateway: mutual TLS by default,
//! with the development PKI in DATA_DIR/pki when nothing else is configured.

use std::path::PathBuf;

use clap::Args;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::CliError;
use crate::config::Config;

#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Gateway URL [default: https://localhost:50051, or
    /// http://127.0.0.1:50051 with --insecure-plaintext].
    #[arg(long)]
    pub server: Option<String>,
    /// CA certificate (PEM) the gateway's certificate must chain to
    /// [default: client.ca, else DATA_DIR/pki/ca.pem].
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) [default: client.cert, else
    /// DATA_DIR/pki/carrier-a.pem].
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM) [default: client.key, else
    /// DATA_DIR/pki/carrier-a.key].
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Connect without TLS (only to a gateway started with
    /// --insecure-plaintext).
    #[arg(long)]
    pub insecure_plaintext: bool,
}

fn read(what: &str, path: &PathBuf) -> Result<Vec<u8>, CliError> {
    std::fs::read(path)
        .map_err(|e| CliError::Usage(format!("{what}: cannot read {}: {e}", path.display())))
}

impl ClientArgs {
    /// Connects with the configured identity, else the development carrier.
    pub async fn connect(&self, cfg: &Config) -> Result<Channel, CliError> {
        self.connect_as(cfg, "carrier-a").await
    }

    /// Connects; without a configured identity, uses the development PKI's
    /// `dev_identity` certificate (e.g. "auditor").
    pub async fn connect_as(&self, cfg: &Config, dev_identity: &str) -> Result<Channel, CliError> {
        let plaintext = self.insecure_plaintext || cfg.client.insecure_plaintext;
        let server = self
            .server
            .clone()
            .or_else(|| cfg.client.server.clone())
            .unwrap_or_else(|| {
                if plaintext {
                    "http://127.0.0.1:50051".into()
                } else {
                    "https://localhost:50051".into()
                }
            });
        let mut endpoint = Endpoint::from_shared(server.clone())
            .map_err(|_| CliError::Usage(format!("server: `{server}` is not a valid URL")))?
            .connect_timeout(std::time::Duration::from_secs(10));
        if !plaintext {
            if !server.starts_with("https://") {
                return Err(CliError::Usage(format!(
                    "server: `{server}` must be an https:// URL (or pass --insecure-plaintext)"
                )));
            }
            let pki = cfg.pki_dir();
            let pick = |flag: &Option<PathBuf>, conf: &Option<PathBuf>, dev: &str| -> PathBuf {
                flag.clone()
                    .or_else(|| conf.clone())
                    .unwrap_or_else(|| pki.join(dev))
            };
            let ca = pick(&self.ca, &cfg.client.ca, "ca.pem");
            let cert = pick(&self.cert, &cfg.client.cert, &format!("{dev_identity}.pem"));
            let key = pick(&self.key, &cfg.client.key, &format!("{dev_identity}.key"));
            let host = endpoint.uri().host().unwrap_or("localhost").to_owned();
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read("ca", &ca)?))
                .identity(Identity::from_pem(read("cert", &cert)?, read("key", &key)?))
                .domain_name(host);
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| CliError::Usage(format!("tls: {e}")))?;
        }
        endpoint.connect().await.map_err(|e| {
            CliError::Unavailable(format!(
                "cannot reach the gateway at {server} ({}); is `simverify serve` running?",
                error_chain(&e)
            ))
        })
    }
}

/// An error with its causes, on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
