//! Privacy is a correctness property: after an import and a verification
//! workload, no plaintext ID, name, date of birth or phone number is in the
//! store — searched byte by byte in the SQLite files and as text in every
//! PostgreSQL table.

use simverify::proto::Sex;
use sqlx::{Connection, Row};
use unicode_normalization::UnicodeNormalization;

use crate::both_backends;
use crate::helpers::{Backend, population_secrets, spawn_app};
use crate::verify::request;

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn store_holds_no_plaintext_identity(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.client().await;
    let mut secrets = population_secrets();
    for (id, name, dob) in [
        ("001190012345", "Nguyễn Thị Minh Khai", "1990-05-17"),
        ("001190099999", "Đỗ Văn Bí Mật", "1990-01-23"),
        ("079085001234", "TRAN VAN HOA", "1985-03-02"),
    ] {
        let mut req = request(id, name, dob, Sex::Female);
        req.msisdn = "0987001122".into();
        client.verify(req).await.unwrap();
        secrets.extend([
            id.to_owned(),
            name.to_owned(),
            name.nfd().collect(),
            dob.to_owned(),
        ]);
    }
    secrets.extend([
        "0987001122".to_owned(),
        "84987001122".to_owned(),
        "987001122".to_owned(),
    ]);
    // Folded forms too: the store must not hold them either.
    secrets.extend(["nguyen thi minh khai".to_owned(), "minh khai".to_owned()]);
    // Stop first so SQLite's WAL is checkpointed and everything is on disk.
    let db = app.stop().await;
    let (db_backend, url) = (db.backend, db.url.clone());
    let files = db.sqlite_files();

    match db_backend {
        Backend::Sqlite => {
            assert!(!files.is_empty());
            for f in &files {
                let bytes = std::fs::read(f).unwrap();
                for s in &secrets {
                    assert!(
                        !contains(&bytes, s.as_bytes()),
                        "{} holds {s:?}",
                        f.display()
                    );
                }
            }
        }
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'",
            )
            .fetch_all(&mut c)
            .await
            .unwrap();
            assert!(tables.contains(&"mirror_records".to_owned()));
            assert!(tables.contains(&"audit_log".to_owned()));
            for t in tables {
                let sql = format!("SELECT t::text AS row FROM {t} t");
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .fetch_all(&mut c)
                    .await
                    .unwrap();
                for row in rows {
                    let text: String = row.get("row");
                    // bytea renders as hex; search the hex of each secret too.
                    for s in &secrets {
                        assert!(!text.contains(s.as_str()), "{t} holds {s:?}");
                        assert!(
                            !text.contains(&hex::encode(s.as_bytes())),
                            "{t} holds hex of {s:?}"
                        );
                    }
                }
            }
        }
    }
}

both_backends!(store_holds_no_plaintext_identity);
