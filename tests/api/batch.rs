//! `simverify batch`: a real job through the binary against a real gateway.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use simverify::r#gen::{PopulationConfig, SubscriberConfig, write_population, write_subscribers};

use crate::both_backends;
use crate::helpers::{AppOptions, Backend, TestApp, spawn_app_with};

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A generated population and a labelled subscriber file drawn from it.
fn generated(files: &Files, people: u64, seed: u64) -> (String, PathBuf) {
    let today = simverify::clock::today_vn();
    let mut pop = Vec::new();
    write_population(&PopulationConfig::new(people, seed, today), &mut pop).unwrap();
    let subs = files.path("subscribers.csv");
    let cfg = SubscriberConfig {
        label: true,
        ..SubscriberConfig::new(seed, today)
    };
    write_subscribers(&pop[..], &cfg, std::fs::File::create(&subs).unwrap()).unwrap();
    (String::from_utf8(pop).unwrap(), subs)
}

fn batch(app_addr: &str, files: &Files, input: &Path, output: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_simverify"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SIMVERIFY__DATA_DIR", files.path("data"))
        .args([
            "batch",
            "run",
            "--insecure-plaintext",
            "--server",
            app_addr,
            "--input",
        ])
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(extra);
    c
}

fn ok(out: Output) -> (String, String) {
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "exit {}:\n{o}\n{e}", out.status);
    (o, e)
}

fn read_csv(path: &Path) -> Vec<csv::StringRecord> {
    csv::Reader::from_path(path)
        .unwrap()
        .records()
        .map(Result::unwrap)
        .collect()
}

async fn app_with(backend: Backend, population: String) -> TestApp {
    spawn_app_with(
        backend,
        AppOptions {
            population,
            max_batch_items: 5000,
            ..Default::default()
        },
    )
    .await
}

async fn generated_file_gives_the_expected_decisions(backend: Backend) {
    let files = Files::new();
    let (pop, subs) = generated(&files, 1500, 11);
    let app = app_with(backend, pop).await;
    let out = files.path("results.csv");
    let summary = files.path("summary.json");
    let (stdout, stderr) = ok(batch(&app.endpoint(), &files, &subs, &out, &["--summary"])
        .arg(&summary)
        .args(["--batch-size", "200"])
        .output()
        .unwrap());
    assert!(
        stderr.contains("ignoring input columns: error_kind, expected_decision"),
        "{stderr}"
    );
    assert!(stdout.contains("Cleanup report"), "{stdout}");

    let input = read_csv(&subs);
    let results = read_csv(&out);
    assert_eq!(input.len(), results.len());
    for (i, (want, got)) in input.iter().zip(&results).enumerate() {
        assert_eq!(&got[0], (i + 1).to_string().as_str(), "rows in input order");
        assert_eq!(
            &got[3],
            &want[6],
            "row {}: {} expected {}",
            i + 1,
            &want[5],
            &want[6]
        );
        assert!(!got[12].is_empty(), "row {} has no audit id", i + 1);
    }
    // Every answer is in the audit log, under the job's id.
    app.synced().await;
    for r in results.iter().step_by(97) {
        let rec = app
            .store
            .audit_by_id(&r[12])
            .await
            .unwrap()
            .expect("audited");
        assert_eq!(rec.request_id, &r[2]);
        assert!(rec.job_id.as_deref().unwrap().starts_with("job-"));
        assert_eq!(rec.purpose, simverify::domain::Purpose::Cleanup);
    }

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    let sum = |k: &str| {
        json[k]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(json["rows"], results.len() as u64);
    assert_eq!(sum("decisions"), results.len() as u64);
    assert_eq!(sum("recommended_actions"), results.len() as u64);
    let prefixes: u64 = json["msisdn_prefixes"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v["rows"].as_u64().unwrap())
        .sum();
    assert_eq!(prefixes, results.len() as u64);
    let diacritics = input.iter().filter(|r| &r[5] == "no_diacritics").count();
    assert_eq!(
        json["diacritics_only_rows"].as_array().unwrap().len(),
        diacritics
    );
    assert!(
        !json["shared_ids"].as_array().unwrap().is_empty(),
        "the generator puts some people on many lines"
    );
    assert!(
        json["shared_ids"][0].get("id_number").is_none(),
        "IDs only with --show-ids"
    );

    // The report rebuilt from the output alone is the same.
    let rebuilt = files.path("rebuilt.json");
    ok(Command::new(env!("CARGO_BIN_EXE_simverify"))
        .env("SIMVERIFY__DATA_DIR", files.path("data"))
        .args(["batch", "report"])
        .arg(&out)
        .arg("--summary")
        .arg(&rebuilt)
        .output()
        .unwrap());
    let again: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&rebuilt).unwrap()).unwrap();
    assert_eq!(json, again);

    // Re-running a completed job changes nothing and sends nothing.
    app.synced().await;
    let before = app.store.audit_count().await.unwrap();
    let (_, stderr) = ok(batch(&app.endpoint(), &files, &subs, &out, &[])
        .output()
        .unwrap());
    assert!(stderr.contains("already completed"), "{stderr}");
    app.synced().await;
    assert_eq!(app.store.audit_count().await.unwrap(), before);
    app.stop().await;
}

async fn bad_rows_are_reported_and_the_job_goes_on(backend: Backend) {
    let files = Files::new();
    let app = spawn_app_with(backend, AppOptions::default()).await;
    let nfd: String =
        unicode_normalization::UnicodeNormalization::nfd("Nguyễn Thị Minh Khai").collect();
    let mut text: Vec<u8> = "\u{feff}msisdn,id_number,full_name,date_of_birth,sex,note\n".into();
    let rows: Vec<String> = vec![
        format!("0912345678,001190012345,{nfd},1990-05-17,F,ok"),
        "0241234567,001190012345,Nguyễn Thị Minh Khai,1990-05-17,F,bad phone".into(),
        "0912345678,123456789,Nguyễn Thị Minh Khai,1990-05-17,F,cmnd".into(),
        "0912345678,001190012345,Nguyễn Thị Minh Khai,1990-02-30,F,impossible date".into(),
        "0912345678,001190012345,Nguyễn Thị Minh Khai,1990-05-17,X,bad sex".into(),
        "0912345678,001190012345,Nguyễn Thị Minh Khai,1990-05-17".into(),
        "0912345678,001190099999,Ai Đó,1990-05-17,,unknown".into(),
    ];
    for r in &rows {
        text.extend(r.as_bytes());
        text.push(b'\n');
    }
    text.extend(b"0912345678,001190012345,Nguy\xff\xfen,1990-05-17,F,latin1\n");
    let input = files.path("bad.csv");
    std::fs::write(&input, text).unwrap();
    let out = files.path("out.csv");
    ok(batch(&app.endpoint(), &files, &input, &out, &["--quiet"])
        .output()
        .unwrap());
    let results = read_csv(&out);
    let decisions: Vec<&str> = results.iter().map(|r| r.get(3).unwrap()).collect();
    assert_eq!(
        decisions,
        [
            "VERIFIED",
            "INVALID",
            "INVALID",
            "INVALID",
            "INVALID",
            "INVALID",
            "NOT_FOUND",
            "INVALID"
        ]
    );
    let errors: Vec<&str> = results.iter().map(|r| r.get(13).unwrap()).collect();
    assert!(
        errors[1].contains("msisdn: does not carry a Vietnamese mobile prefix"),
        "{}",
        errors[1]
    );
    assert!(
        errors[2].contains("id_number: 9-digit CMND"),
        "{}",
        errors[2]
    );
    assert!(
        errors[3].contains("date_of_birth: is not a real calendar date"),
        "{}",
        errors[3]
    );
    assert!(errors[4].contains("sex: must be M or F"), "{}", errors[4]);
    assert!(
        errors[5].contains("row: has 4 fields; the header has 6"),
        "{}",
        errors[5]
    );
    assert!(errors[7].contains("not valid UTF-8"), "{}", errors[7]);
    // Only the two valid rows reached the gateway.
    app.synced().await;
    assert_eq!(app.store.audit_count().await.unwrap(), 2);

    // A file without a required column stops before anything is sent.
    let broken = files.path("broken.csv");
    std::fs::write(
        &broken,
        "msisdn,id_number,full_name,sex\n0912345678,001190012345,A,F\n",
    )
    .unwrap();
    let out = batch(&app.endpoint(), &files, &broken, &files.path("o2.csv"), &[])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lacks the column `date_of_birth`"));

    // Batches larger than the gateway allows stop at once with the remedy,
    // instead of being retried.
    let (_, many) = generated(&files, 300, 9);
    let out = batch(
        &app.endpoint(),
        &files,
        &many,
        &files.path("o3.csv"),
        &["--batch-size", "200"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(65));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("lower --batch-size") && !err.contains("retrying"),
        "{err}"
    );
    app.stop().await;
}

fn checkpoint_rows(out: &Path) -> Option<(u64, bool)> {
    let mut p = out.as_os_str().to_owned();
    p.push(".checkpoint");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(PathBuf::from(p)).ok()?).ok()?;
    Some((v["rows_done"].as_u64()?, v["completed"].as_bool()?))
}

/// Every column but `audit_id`, which is new for every verification.
fn without_audit_ids(rows: Vec<csv::StringRecord>) -> Vec<Vec<String>> {
    rows.into_iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .filter(|(i, _)| *i != 12)
                .map(|(_, v)| v.to_owned())
                .collect()
        })
        .collect()
}

async fn killed_job_resumes_to_the_same_output(backend: Backend) {
    let files = Files::new();
    let (pop, subs) = generated(&files, 20_000, 3);
    let app = app_with(backend, pop).await;
    let slow = [
        "--batch-size",
        "50",
        "--window",
        "1",
        "--checkpoint-every-ms",
        "50",
        "--quiet",
    ];

    let killed = files.path("killed.csv");
    // Round 0 is killed just after a checkpoint past its start, round 1 while
    // rows it has written may be newer than its last checkpoint.
    for round in 0..2 {
        let size_before = std::fs::metadata(&killed).map_or(0, |m| m.len());
        let mut child = batch(&app.endpoint(), &files, &subs, &killed, &slow)
            .spawn()
            .unwrap();
        let start = checkpoint_rows(&killed).map_or(0, |c| c.0);
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if let Some((rows, done)) = checkpoint_rows(&killed) {
                assert!(
                    !done,
                    "round {round}: the job finished before it could be killed"
                );
                let grown = std::fs::metadata(&killed).map_or(0, |m| m.len());
                if (round == 0 && rows > start + 1000)
                    || (round == 1 && grown > size_before + (64 << 10))
                {
                    break;
                }
            }
            assert!(child.try_wait().unwrap().is_none(), "the job exited early");
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let resumed_summary = files.path("resumed.json");
    let (_, stderr) = ok(
        batch(&app.endpoint(), &files, &subs, &killed, &["--summary"])
            .arg(&resumed_summary)
            .output()
            .unwrap(),
    );
    assert!(stderr.contains("resuming job"), "{stderr}");

    let straight = files.path("straight.csv");
    let straight_summary = files.path("straight.json");
    ok(batch(
        &app.endpoint(),
        &files,
        &subs,
        &straight,
        &["--quiet", "--job-id", &job_id(&killed), "--summary"],
    )
    .arg(&straight_summary)
    .output()
    .unwrap());
    let (a, b) = (read_csv(&killed), read_csv(&straight));
    assert_eq!(a.len(), read_csv(&subs).len());
    assert_eq!(without_audit_ids(a.clone()), without_audit_ids(b));
    // The resumed job's report counts the rows of its earlier runs too.
    let summary = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    assert_eq!(summary(&resumed_summary), summary(&straight_summary));
    assert_eq!(summary(&resumed_summary)["rows"], a.len() as u64);
    // Every answer written after the crash points at a durable audit record.
    app.synced().await;
    for r in a.iter().step_by(251) {
        assert!(app.store.audit_by_id(&r[12]).await.unwrap().is_some());
    }
    app.stop().await;
}

fn job_id(out: &Path) -> String {
    let mut p = out.as_os_str().to_owned();
    p.push(".checkpoint");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(PathBuf::from(p)).unwrap()).unwrap();
    v["job_id"].as_str().unwrap().to_owned()
}

async fn retries_until_the_gateway_is_back(backend: Backend) {
    let files = Files::new();
    let (pop, subs) = generated(&files, 300, 5);
    // A free port, with nothing listening on it yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let out = files.path("results.csv");
    let child = batch(&format!("http://{addr}"), &files, &subs, &out, &["--quiet"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let app = spawn_app_with(
        backend,
        AppOptions {
            population: pop,
            listen: addr,
            max_batch_items: 5000,
            ..Default::default()
        },
    )
    .await;
    let done = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let (_, stderr) = ok(done);
    assert!(stderr.contains("retrying in"), "{stderr}");
    assert_eq!(read_csv(&out).len(), read_csv(&subs).len());
    app.stop().await;
}

both_backends!(
    generated_file_gives_the_expected_decisions,
    bad_rows_are_reported_and_the_job_goes_on,
    killed_job_resumes_to_the_same_output,
    retries_until_the_gateway_is_back,
);
