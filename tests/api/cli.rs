//! The `simverify` binary as a user runs it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::both_backends;
use crate::helpers::{Backend, TestDb};

fn simverify(data_dir: &Path, db: &TestDb) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_simverify"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SIMVERIFY__DATA_DIR", data_dir)
        .env("SIMVERIFY__DATABASE_URL", &db.url)
        .env("SIMVERIFY__LOG", "debug");
    c
}

fn run_ok(cmd: &mut Command) -> (String, String) {
    let out = cmd.output().unwrap();
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{o}\n{e}",
        out.status
    );
    (o, e)
}

async fn import_reports_bad_rows_and_is_idempotent(backend: Backend) {
    let db = TestDb::new(backend).await;
    let dir = db.dir.path().join("data");
    let pop = db.dir.path().join("pop.csv");
    run_ok(
        simverify(&dir, &db)
            .args([
                "gen",
                "population",
                "--count",
                "300",
                "--seed",
                "5",
                "--output",
            ])
            .arg(&pop),
    );
    // Append bad rows of every kind after the good ones.
    let mut text = std::fs::read_to_string(&pop).unwrap();
    text.push_str("123456789,Nguyễn Văn A,1990-01-01,M,\n"); // line 302: CMND
    text.push_str("001090123456,Nguyễn Văn 2,1990-01-01,M,\n"); // 303: digit in name
    text.push_str("001090123456,Nguyễn Văn B,1990-02-30,M,\n"); // 304: impossible date
    text.push_str("001090123456,Nguyễn Văn B,1990-01-01,F,\n"); // 305: sex vs ID digit
    text.push_str("001090123456,Nguyễn Văn B,1990-01-01\n"); // 306: wrong field count
    text.push_str("001090123456,Nguyễn Văn B,1990-01-01,M,retired\n"); // 307: bad status
    std::fs::write(&pop, text).unwrap();
    let rejects = db.dir.path().join("rejects.csv");
    let (out, err) = run_ok(
        simverify(&dir, &db)
            .args(["mirror", "import", "--input"])
            .arg(&pop)
            .arg("--rejects")
            .arg(&rejects),
    );
    assert!(
        out.contains("306 rows read, 300 added or changed, 0 unchanged, 0 deleted, 6 rejected"),
        "{out}"
    );
    for expected in [
        "line 302: id_number: 9-digit CMND",
        "line 303: full_name: contains a digit",
        "line 304: date_of_birth: is not a real calendar date",
        "line 305: sex: contradicts the ID number's sex digit",
        "line 306: row: has 3 fields; the header has 5",
        "line 307: status: must be active, deceased or deleted",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in\n{err}");
    }
    assert!(
        !err.contains("123456789") && !err.contains("Nguyễn"),
        "rejections echo values:\n{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&rejects).unwrap().lines().count(),
        7
    );

    let (out, _) = run_ok(
        simverify(&dir, &db)
            .args(["mirror", "import", "--input"])
            .arg(&pop),
    );
    assert!(out.contains("into mirror version 2"), "{out}");
    assert!(out.contains("0 added or changed, 300 unchanged"), "{out}");
    let (out, _) = run_ok(simverify(&dir, &db).args(["mirror", "status"]));
    assert!(
        out.contains("mirror_version  2") && out.contains("records         300"),
        "{out}"
    );
}

async fn a_file_without_required_columns_is_refused(backend: Backend) {
    let db = TestDb::new(backend).await;
    let dir = db.dir.path().join("data");
    let f = db.dir.path().join("bad.csv");
    std::fs::write(&f, "id_number,full_name,sex\n001090123456,A,M\n").unwrap();
    let out = simverify(&dir, &db)
        .args(["mirror", "import", "--input"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(65));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lacks the column `date_of_birth`"), "{err}");
}

pub(crate) struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

impl Server {
    /// Sends `signal` (e.g. `-HUP`) to the gateway.
    fn signal(&self, signal: &str) {
        assert!(
            Command::new("kill")
                .args([signal, &self.0.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
    }

    /// SIGTERM, then the gateway must exit 0; returns its log.
    pub(crate) fn stop(&mut self, log: std::thread::JoinHandle<String>) -> String {
        self.signal("-TERM");
        let status = self.0.wait().unwrap();
        let log = log.join().unwrap();
        assert!(status.success(), "the gateway ended with {status}:\n{log}");
        log
    }
}

async fn serve_verify_and_stop(backend: Backend) {
    let db = TestDb::new(backend).await;
    let dir = db.dir.path().join("data");
    let (mut server, addr, log, _) = start_server(&mut serve_demo(&dir, &db));

    // The demo population is deterministic; pick a living person from it.
    let pop = std::fs::read_to_string(dir.join("demo-population.csv")).unwrap();
    // The README's example subscriber is in every demo population.
    assert!(
        pop.contains("\n040199224981,Đoàn Thị Hằng,1999-10-31,F,\n"),
        "README example missing"
    );
    let person: Vec<&str> = pop
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect::<Vec<_>>())
        .find(|c| c[4].is_empty() && c[2].len() == 10)
        .unwrap();
    // Over mutual TLS with the development PKI `serve --demo` created: the
    // client finds it in the data directory without flags.
    let port = addr.rsplit(':').next().unwrap();
    let server_url = format!("https://localhost:{port}");
    let (out, _) = run_ok(simverify(&dir, &db).args([
        "verify",
        "--server",
        &server_url,
        "--msisdn",
        "0912345678",
        "--id",
        person[0],
        "--name",
        person[1],
        "--dob",
        person[2],
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["decision"], "VERIFIED", "{out}");
    assert_eq!(v["name_tier"], "EXACT");
    let (out, _) = run_ok(simverify(&dir, &db).args([
        "verify",
        "--server",
        &server_url,
        "--msisdn",
        "0912345678",
        "--id",
        person[0],
        "--name",
        "Không Phải Tên",
        "--dob",
        person[2],
    ]));
    assert!(out.starts_with("MISMATCH"), "{out}");
    assert!(out.contains("full_name       MISMATCH"), "{out}");

    // A reader that stops early (`simverify verify … | head -1`): the pipe
    // is closed before the answer comes, and the command still ends well.
    let mut piped = simverify(&dir, &db)
        .args([
            "verify",
            "--server",
            &server_url,
            "--msisdn",
            "0912345678",
            "--id",
            person[0],
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(piped.stdout.take());
    let closed = piped.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&closed.stderr);
    assert!(closed.status.success(), "{}: {err}", closed.status);
    assert!(!err.contains("panicked"), "{err}");

    let bad = simverify(&dir, &db)
        .args([
            "verify",
            "--server",
            &server_url,
            "--msisdn",
            "0912345678",
            "--id",
            "123456789",
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("id_number: 9-digit CMND"));

    // SIGTERM: graceful stop with exit 0.
    let log = server.stop(log);
    assert!(log.contains("gateway stopped"), "{log}");
    for secret in [person[0], person[1], person[2]] {
        assert!(!log.contains(secret), "log holds {secret:?}:\n{log}");
    }
}

async fn invalid_configuration_stops_before_binding(backend: Backend) {
    let db = TestDb::new(backend).await;
    let dir = db.dir.path().join("data");
    let out = simverify(&dir, &db)
        .env("SIMVERIFY__SERVER__MAX_BATCH_ITEMS", "0")
        .args(["serve", "--demo"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("server.max_batch_items"), "{err}");
    assert!(!dir.join("simverify.db").exists(), "nothing may be created");
    let out = simverify(&dir, &db)
        .env("SIMVERIFY__SERVER__LISTEN", "0.0.0.0:50051")
        .args(["serve", "--insecure-plaintext"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
    let out = simverify(&dir, &db)
        .env("SIMVERIFY__SERVR__LISTEN", "x")
        .args(["config", "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("servr"));
}

async fn unreachable_gateway_is_a_clear_error(backend: Backend) {
    let db = TestDb::new(backend).await;
    let dir = db.dir.path().join("data");
    let out = simverify(&dir, &db)
        .args([
            "verify",
            "--insecure-plaintext",
            "--server",
            "http://127.0.0.1:9",
            "--msisdn",
            "0912345678",
            "--id",
            "001090123456",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is `simverify serve` running?"));
}

/// A supervisor may send SIGTERM the moment the gateway says it is ready;
/// the gateway must already be listening for it and drain, not die of the
/// signal's default action.
async fn sigterm_as_soon_as_ready_is_a_clean_stop(backend: Backend) {
    let db = TestDb::new(backend).await;
    let dir = db.dir.path().join("data");
    let (mut server, _, log, _) = start_server(&mut serve_demo(&dir, &db));
    let log = server.stop(log);
    assert!(log.contains("shutdown requested"), "{log}");
}

/// `simverify serve` on the demo data (200 people), on a free port.
pub(crate) fn serve_demo(data_dir: &Path, db: &TestDb) -> Command {
    let mut c = simverify(data_dir, db);
    c.args([
        "serve",
        "--demo",
        "--demo-size",
        "200",
        "--listen",
        "127.0.0.1:0",
    ]);
    c
}

/// Starts `simverify serve` with `args`; returns the process, its address
/// and a thread collecting the rest of its log.
pub(crate) fn start_server(
    cmd: &mut Command,
) -> (
    Server,
    String,
    std::thread::JoinHandle<String>,
    std::sync::mpsc::Receiver<String>,
) {
    let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let server = Server(child);
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().expect("server exited early").unwrap();
        if let Some(rest) = line.split("addr=").nth(1)
            && line.contains("gateway ready")
        {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let log = std::thread::spawn(move || {
        let mut all = Vec::new();
        for l in lines.map_while(Result::ok) {
            let _ = tx.send(l.clone());
            all.push(l);
        }
        all.join("\n")
    });
    (server, addr, log, rx)
}

async fn certificates_reload_on_sighup(backend: Backend) {
    use crate::helpers::{TestPki, tls_channel};
    use simverify::proto::verification_client::VerificationClient;
    let db = TestDb::new(backend).await;
    let dir = db.dir.path().join("data");
    let pki = TestPki::new();
    let uri = "urn:simverify:carrier:carrier-a";
    let old_id = pki.client("carrier-a", uri);
    let tls = pki.tls();
    let config = db.dir.path().join("simverify.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n\n[[principals]]\nsubject = {uri:?}\ncarrier_id = \"carrier-a\"\nrole = \"carrier\"\n",
            tls.cert, tls.key, tls.client_ca
        ),
    )
    .unwrap();
    let (mut server, addr, log, lines) =
        start_server(simverify(&dir, &db).arg("--config").arg(&config).args([
            "serve",
            "--listen",
            "127.0.0.1:0",
        ]));
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let req = crate::verify::request(
        "001190012345",
        "Nguyễn Thị Minh Khai",
        "1990-05-17",
        simverify::proto::Sex::Female,
    );
    let old_ca = db.dir.path().join("old-ca.pem");
    std::fs::copy(pki.ca_path(), &old_ca).unwrap();
    let mut open =
        VerificationClient::new(tls_channel(addr, &old_ca, Some(&old_id)).await.unwrap());
    open.verify(req.clone()).await.unwrap();

    // Rotate everything to a new CA, in place, and signal.
    let new_ca = simverify::pki::Ca::new("rotated CA", pki.validity).unwrap();
    let (cert, key) = new_ca.server(&["localhost"], pki.validity).unwrap();
    std::fs::write(&tls.cert, cert).unwrap();
    std::fs::write(&tls.key, key).unwrap();
    std::fs::write(&tls.client_ca, &new_ca.cert_pem).unwrap();
    let new_id = pki.client_with(&new_ca, "carrier-a-new", uri, pki.validity);
    server.signal("-HUP");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let l = lines
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("no reload message");
        if l.contains("tls certificates reloaded") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no reload message");
    }
    // The established connection is untouched.
    open.verify(req.clone()).await.unwrap();
    // New connections need the new chain on both sides.
    let stale = match tls_channel(addr, &old_ca, Some(&old_id)).await {
        Ok(c) => VerificationClient::new(c)
            .verify(req.clone())
            .await
            .is_err(),
        Err(_) => true,
    };
    assert!(stale, "old certificates still accepted after reload");
    let mut fresh = VerificationClient::new(
        tls_channel(addr, &tls.client_ca, Some(&new_id))
            .await
            .unwrap(),
    );
    fresh.verify(req).await.unwrap();

    server.stop(log);
}

/// The durability promise end to end, on the real binary: every answer a
/// carrier received is in the audit log after the gateway is SIGKILLed while
/// its records were still only in the local journal (the database was
/// locked against indexing), exactly once, and the log verifies.
async fn answers_survive_a_killed_gateway(backend: Backend) {
    use crate::helpers::tls_channel;
    use simverify::proto::verification_client::VerificationClient;
    use sqlx::Connection;
    let db = TestDb::new(backend).await;
    let dir = db.dir.path().join("data");
    let (mut server, addr, _log, _) = start_server(&mut serve_demo(&dir, &db));
    let addr: std::net::SocketAddr = addr.parse().unwrap();

    // Hold the database's write lock so nothing can be indexed.
    let lock: Box<dyn std::any::Any> = match backend {
        Backend::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut c)
                .await
                .unwrap();
            Box::new(c)
        }
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::query("BEGIN").execute(&mut c).await.unwrap();
            sqlx::query("LOCK TABLE audit_head IN ACCESS EXCLUSIVE MODE")
                .execute(&mut c)
                .await
                .unwrap();
            Box::new(c)
        }
    };

    let pki = dir.join("pki");
    let identity = (pki.join("carrier-a.pem"), pki.join("carrier-a.key"));
    let channel = tls_channel(addr, &pki.join("ca.pem"), Some(&identity))
        .await
        .unwrap();
    let calls = (0..200).map(|i| {
        let mut client = VerificationClient::new(channel.clone());
        async move {
            let id = format!("0011900{i:05}");
            let req = crate::verify::request(
                &id,
                "Nguyễn Văn An",
                "1990-05-17",
                simverify::proto::Sex::Male,
            );
            client.verify(req).await.unwrap().into_inner().audit_id
        }
    });
    let answered: Vec<String> = futures_util::future::join_all(calls).await;
    assert_eq!(answered.len(), 200);

    server.0.kill().unwrap(); // SIGKILL: no drain, no shutdown checkpoint
    server.0.wait().unwrap();
    let store = simverify::store::Store::connect(&db.url).await.unwrap();
    drop(lock); // rolls back; indexing becomes possible
    assert_eq!(
        store.audit_count().await.unwrap(),
        0,
        "records were indexed despite the lock; the test proves nothing"
    );

    // The restarted gateway indexes what the killed one journaled.
    let (mut server, _, log, _) = start_server(&mut serve_demo(&dir, &db));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while store.audit_count().await.unwrap() < 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "journal not indexed after restart"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let rows: Vec<String> = store
        .query_audit(&simverify::domain::AuditFilter::default(), None, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, r)| r.audit_id)
        .collect();
    let mut got = rows;
    got.sort();
    let mut want = answered.clone();
    want.sort();
    assert_eq!(got, want, "every answered audit_id exactly once");

    server.stop(log);
    let (out, _) = run_ok(simverify(&dir, &db).args(["audit", "verify"]));
    assert!(out.contains("audit log intact: 200 records"), "{out}");
}

both_backends!(
    answers_survive_a_killed_gateway,
    sigterm_as_soon_as_ready_is_a_clean_stop,
    certificates_reload_on_sighup,
    import_reports_bad_rows_and_is_idempotent,
    a_file_without_required_columns_is_refused,
    serve_verify_and_stop,
    invalid_configuration_stops_before_binding,
    unreachable_gateway_is_a_clear_error,
);
