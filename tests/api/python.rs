//! An independent client written in Python (grpcio, stubs generated from our
//! .proto at test time) over mutual TLS. It needs python3 with venv and pip
//! access to PyPI; the virtualenv is cached under the target directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use simverify::config::{Config, Role};

use crate::helpers::{Backend, TestPki, principal, spawn_tls_app};

/// A virtualenv with tests/python/requirements.txt installed, reused while
/// the requirements do not change.
fn python_env() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let reqs = root.join("tests/python/requirements.txt");
    let text = std::fs::read_to_string(&reqs).unwrap();
    let tag = format!(
        "{:016x}",
        text.bytes()
            .fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b))
                .wrapping_mul(0x100000001b3))
    );
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("pyenv-{tag}"));
    let python = venv.join("bin/python");
    if !venv.join(".installed").exists() {
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 is required");
        assert!(status.success(), "python3 -m venv failed");
        let status = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "-q",
                "-r",
            ])
            .arg(&reqs)
            .status()
            .unwrap();
        assert!(status.success(), "pip install -r {} failed", reqs.display());
        std::fs::write(venv.join(".installed"), "").unwrap();
    }
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_over_mtls() {
    let pki = TestPki::new();
    let cfg = Config {
        principals: vec![principal(
            "urn:simverify:carrier:py",
            "python-carrier",
            Role::Carrier,
        )],
        ..Config::default()
    };
    let app = spawn_tls_app(Backend::Sqlite, &pki, cfg).await;
    let (cert, key) = pki.client("py", "urn:simverify:carrier:py");
    let python = tokio::task::spawn_blocking(python_env).await.unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/independent_client.py");
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let port = app.addr.port().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(port)
            .arg(pki.ca_path())
            .arg(cert)
            .arg(key)
            .arg(proto)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python client failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("health SERVING"), "{stdout}");
    assert!(
        stdout.contains("reflection ") && stdout.contains("simverify.v1.Verification"),
        "{stdout}"
    );
    assert!(stdout.contains("verify DECISION_VERIFIED"), "{stdout}");
    assert!(
        stdout.contains("id_number:CMND_NO_LONGER_VALID"),
        "{stdout}"
    );
    let audit_id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("verify DECISION_VERIFIED "))
        .unwrap()
        .trim();
    app.synced().await;
    let rec = app
        .store
        .audit_by_id(audit_id)
        .await
        .unwrap()
        .expect("audited");
    assert_eq!(&*rec.caller, "python-carrier");
    app.stop().await;
}
