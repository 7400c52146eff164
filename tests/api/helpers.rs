//! Test harness: databases, a population with known people, and a gateway
//! spawned in-process on 127.0.0.1:0.

use std::net::SocketAddr;
use std::time::Duration;

use simverify::audit::{CommitMode, JournalConfig};
use simverify::domain::KeyedHasher;
use simverify::grpc::{Application, ServerConfig};
use simverify::mirror::import_csv;
use simverify::proto::verification_client::VerificationClient;
use simverify::store::Store;
use simverify::verifier::{Verifier, VerifierConfig};
use sqlx::Connection;
use tokio::sync::oneshot;
use tonic::transport::Channel;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs each listed `async fn name(backend: Backend)` once per backend.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            )+
        }
    };
}

pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A fresh, empty database; dropped when the value is.
pub struct TestDb {
    pub url: String,
    pub backend: Backend,
    pub dir: tempfile::TempDir,
    pg_name: Option<String>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        match backend {
            Backend::Sqlite => {
                let url = format!("sqlite://{}", dir.path().join("simverify.db").display());
                Self {
                    url,
                    backend,
                    dir,
                    pg_name: None,
                }
            }
            Backend::Postgres => {
                let name = format!("simverify_test_{}", uuid::Uuid::new_v4().simple());
                let mut admin = sqlx::PgConnection::connect(PG_ADMIN_URL)
                    .await
                    .expect("PostgreSQL must be running on 127.0.0.1:5432 (see README)");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut admin)
                    .await
                    .expect("create test database");
                let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
                Self {
                    url,
                    backend,
                    dir,
                    pg_name: Some(name),
                }
            }
        }
    }

    /// The SQLite file (and its WAL), for byte-level searches.
    pub fn sqlite_files(&self) -> Vec<std::path::PathBuf> {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains("simverify.db"))
            .collect()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = self.pg_name.take() {
            // Drop runs outside any runtime guarantee: use a private one.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok(mut c) = sqlx::PgConnection::connect(PG_ADMIN_URL).await {
                        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                        let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut c).await;
                    }
                });
            })
            .join();
        }
    }
}

/// The checkpoint signer of a test database (kept next to it).
pub fn test_signer(db: &TestDb) -> std::sync::Arc<simverify::audit::log::Signer> {
    let path = db.dir.path().join("audit-signing.key");
    std::sync::Arc::new(simverify::audit::log::Signer::load_or_create(&path, true).unwrap())
}

pub fn test_hasher() -> KeyedHasher {
    KeyedHasher::new(b"simverify-test-key-0123456789abcdef", 1).unwrap()
}

/// Known people. IDs encode sex and birth year consistently.
pub const POPULATION: &str = "\
id_number,full_name,date_of_birth,sex,status
001190012345,Nguyễn Thị Minh Khai,1990-05-17,F,
079085001234,Trần Văn Hoà,1985-03-02,M,
048199000777,Đặng Thị Thuỷ,1999-12-31,F,active
001075000001,Lê Văn Tám,1975,M,
036060123456,Phạm Văn Đồng,1960-01-01,M,deceased
001301000042,Hoàng Thị Lan,2001-07-04,F,
";

/// Every plaintext value of [`POPULATION`] a privacy check searches for.
pub fn population_secrets() -> Vec<String> {
    let mut out = Vec::new();
    for line in POPULATION.lines().skip(1) {
        let cols: Vec<&str> = line.split(',').collect();
        out.push(cols[0].to_owned());
        out.push(cols[1].to_owned());
        out.push(cols[1].to_lowercase());
        // A bare birth year ("1975") is four digits that hex ids and hashes
        // contain by chance; full dates are specific enough to search for.
        if cols[2].len() == 10 {
            out.push(cols[2].to_owned());
        }
    }
    out
}

pub async fn import(store: &Store, csv: &str) -> simverify::mirror::ImportReport {
    let bytes = csv.as_bytes().to_vec();
    import_csv(
        store,
        &test_hasher(),
        std::io::Cursor::new(bytes),
        "test",
        |_| {},
    )
    .await
    .expect("import")
}

pub struct TestApp {
    pub signer: std::sync::Arc<simverify::audit::log::Signer>,
    pub addr: SocketAddr,
    pub store: Store,
    pub db: TestDb,
    /// Dropped before stopping: the audit journal drains once no handle is left.
    verifier: Option<Verifier>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<Result<(), simverify::grpc::ServeError>>>,
}

impl TestApp {
    pub async fn client(&self) -> VerificationClient<Channel> {
        VerificationClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connect")
    }

    /// A plain channel to the app, for clients other than Verification's.
    pub async fn channel(&self) -> Channel {
        tonic::transport::Endpoint::from_shared(self.endpoint())
            .expect("valid endpoint")
            .connect()
            .await
            .expect("connect")
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until every audit record answered so far is in the store (the
    /// journal indexes in the background).
    pub async fn synced(&self) {
        let v = self.verifier.as_ref().expect("running");
        assert!(
            v.audit_synced(Duration::from_secs(60)).await,
            "the audit journal was not indexed within a minute"
        );
    }

    /// Graceful stop: waits until the server and the audit writer are done,
    /// closes the store, and hands back the database for inspection.
    pub async fn stop(mut self) -> TestDb {
        self.verifier = None;
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
        self.store.close().await;
        self.db
    }
}

pub struct AppOptions {
    pub max_batch_items: usize,
    pub watch_interval: Duration,
    /// Population CSV imported before serving.
    pub population: String,
    /// Fixed address, e.g. to start a gateway on a port a client already uses.
    pub listen: SocketAddr,
    /// An existing database to serve (instead of a fresh one).
    pub db: Option<TestDb>,
    /// Commit audit records to the database instead of the journal.
    pub commit_to_database: bool,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            max_batch_items: 100,
            watch_interval: Duration::from_millis(100),
            population: POPULATION.to_owned(),
            listen: "127.0.0.1:0".parse().unwrap(),
            db: None,
            commit_to_database: false,
        }
    }
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, AppOptions::default()).await
}

/// Gateway warnings and errors show up in a failing test's output.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()))
        .try_init();
}

pub async fn spawn_app_with(backend: Backend, opts: AppOptions) -> TestApp {
    init_logs();
    let fresh = opts.db.is_none();
    let db = match opts.db {
        Some(db) => db,
        None => TestDb::new(backend).await,
    };
    let store = Store::connect(&db.url).await.expect("connect store");
    if fresh {
        import(&store, &opts.population).await;
    }
    let audit = if opts.commit_to_database {
        CommitMode::Database {
            max_batch: 4096,
            queue: 4096,
        }
    } else {
        journal(&db)
    };
    let cfg = VerifierConfig {
        watch_interval: opts.watch_interval,
        ..VerifierConfig::new(audit)
    };
    let (verifier, tasks) = Verifier::start(test_hasher(), store.clone(), cfg)
        .await
        .unwrap();
    let signer = test_signer(&db);
    let server = ServerConfig {
        max_batch_items: opts.max_batch_items,
        ..ServerConfig::plaintext(opts.listen, signer.clone())
    };
    serve(server, verifier, tasks, signer, store, db).await
}

/// The audit journal of a test database (kept next to it).
pub fn journal(db: &TestDb) -> CommitMode {
    CommitMode::Journal(JournalConfig::new(db.dir.path().join("audit-journal")))
}

async fn serve(
    server: ServerConfig,
    verifier: Verifier,
    tasks: simverify::verifier::VerifierTasks,
    signer: std::sync::Arc<simverify::audit::log::Signer>,
    store: Store,
    db: TestDb,
) -> TestApp {
    let handle_verifier = verifier.clone();
    let app = Application::build(server, verifier, tasks).await.unwrap();
    let addr = app.local_addr();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(app.run_until_stopped(async {
        let _ = rx.await;
    }));
    TestApp {
        signer,
        addr,
        store,
        db,
        verifier: Some(handle_verifier),
        shutdown: Some(tx),
        handle: Some(handle),
    }
}

/// rustls needs a process-wide crypto provider before any TLS client runs.
pub fn init_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A test CA with a localhost server certificate, able to issue clients.
pub struct TestPki {
    pub dir: tempfile::TempDir,
    pub ca: simverify::pki::Ca,
    pub validity: simverify::pki::Validity,
}

impl TestPki {
    pub fn new() -> Self {
        init_crypto();
        let dir = tempfile::tempdir().unwrap();
        let validity = simverify::pki::Validity::days_from_today(simverify::clock::today_vn(), 30);
        let ca = simverify::pki::Ca::new("test CA", validity).unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).unwrap();
        let (cert, key) = ca.server(&["localhost"], validity).unwrap();
        std::fs::write(dir.path().join("server.pem"), cert).unwrap();
        std::fs::write(dir.path().join("server.key"), key).unwrap();
        Self { dir, ca, validity }
    }

    pub fn tls(&self) -> simverify::config::TlsSection {
        simverify::config::TlsSection {
            cert: self.dir.path().join("server.pem"),
            key: self.dir.path().join("server.key"),
            client_ca: self.dir.path().join("ca.pem"),
        }
    }

    pub fn ca_path(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Issues a client certificate with SAN URI `uri`; returns (cert, key).
    pub fn client(&self, name: &str, uri: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        self.client_with(&self.ca, name, uri, self.validity)
    }

    pub fn client_with(
        &self,
        ca: &simverify::pki::Ca,
        name: &str,
        uri: &str,
        validity: simverify::pki::Validity,
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        let (cert, key) = ca.client(name, uri, validity).unwrap();
        let (c, k) = (
            self.dir.path().join(format!("{name}.pem")),
            self.dir.path().join(format!("{name}.key")),
        );
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        (c, k)
    }
}

pub fn principal(
    subject: &str,
    id: &str,
    role: simverify::config::Role,
) -> simverify::config::PrincipalEntry {
    simverify::config::PrincipalEntry {
        subject: subject.into(),
        carrier_id: id.into(),
        role,
        rate_per_sec: None,
        burst: None,
        daily_quota: None,
    }
}

/// A gateway serving mutual TLS with `cfg`'s principals and limits.
pub async fn spawn_tls_app(
    backend: Backend,
    pki: &TestPki,
    mut cfg: simverify::config::Config,
) -> TestApp {
    init_crypto();
    cfg.tls = Some(pki.tls());
    cfg.server.listen = "127.0.0.1:0".parse().unwrap();
    cfg.validate().unwrap();
    let db = TestDb::new(backend).await;
    let store = Store::connect(&db.url).await.expect("connect store");
    import(&store, POPULATION).await;
    let audit = match cfg.audit.commit {
        simverify::config::AuditCommit::Database => cfg.audit_commit_mode(),
        simverify::config::AuditCommit::Journal => journal(&db),
    };
    let (verifier, tasks) =
        Verifier::start(test_hasher(), store.clone(), VerifierConfig::new(audit))
            .await
            .unwrap();
    let signer = test_signer(&db);
    let server = ServerConfig::from_config(&cfg, signer.clone()).unwrap();
    serve(server, verifier, tasks, signer, store, db).await
}

/// A client channel over TLS to `addr`, presenting `identity` if given.
pub async fn tls_channel(
    addr: SocketAddr,
    ca: &std::path::Path,
    identity: Option<&(std::path::PathBuf, std::path::PathBuf)>,
) -> Result<Channel, tonic::transport::Error> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    init_crypto();
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name("localhost");
    if let Some((c, k)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(c).unwrap(),
            std::fs::read(k).unwrap(),
        ));
    }
    Endpoint::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}
