//! Configuration: a TOML file, overlaid by `SIMVERIFY__SECTION__KEY`
//! environment variables, overlaid by command-line flags. Validated as a
//! whole before anything binds; an error names the key.
//!
//! Secrets (the hash key, private keys, database passwords) are referenced by
//! path or URL and never printed: [`Config::redacted_database_url`] is what
//! logs see.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Prefix of environment overrides: `SIMVERIFY__SERVER__LISTEN=…` sets
/// `server.listen`.
pub const ENV_PREFIX: &str = "SIMVERIFY__";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration: {}{message}", if key.is_empty() { String::new() } else { format!("{key}: ") })]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May verify; may read its own audit records.
    Carrier,
    /// May read every audit record; may not verify.
    Auditor,
    /// Mirror operations.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Carrier => "carrier",
            Self::Auditor => "auditor",
            Self::Admin => "admin",
        }
    }
}

/// Maps a client certificate to a principal. `subject` is compared with the
/// certificate's SAN URIs and DNS names and its subject CN.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalEntry {
    pub subject: String,
    pub carrier_id: String,
    pub role: Role,
    /// Sustained verifications per second (token bucket refill).
    pub rate_per_sec: Option<f64>,
    /// Bucket size: the most verifications at once.
    pub burst: Option<u64>,
    /// Verifications per calendar day (Vietnam time).
    pub daily_quota: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    pub listen: SocketAddr,
    /// Serve without TLS. Allowed on loopback addresses only.
    pub insecure_plaintext: bool,
    pub max_batch_items: usize,
    pub max_message_bytes: usize,
    /// Requests (or stream batches) worked on at once; more are shed with
    /// UNAVAILABLE instead of queueing.
    pub max_concurrent_requests: usize,
    /// How long in-flight calls may run after SIGTERM.
    pub shutdown_grace_secs: u64,
    /// Mirror records (found or not found) the cache holds at most: about
    /// 210 bytes each, so the default of 1M takes about 210 MB.
    pub cache_entries: u64,
    /// How often a signed audit checkpoint is published (when the log grew).
    pub checkpoint_secs: u64,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            insecure_plaintext: false,
            max_batch_items: 5000,
            max_message_bytes: 16 * 1024 * 1024,
            max_concurrent_requests: 512,
            shutdown_grace_secs: 30,
            cache_entries: 1_000_000,
            checkpoint_secs: 60,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM).
    pub key: PathBuf,
    /// CA bundle that client certificates must chain to (PEM).
    pub client_ca: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    pub rate_per_sec: f64,
    pub burst: u64,
    pub daily_quota: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            rate_per_sec: 50_000.0,
            burst: 100_000,
            daily_quota: 100_000_000,
        }
    }
}

/// Where an audit record becomes durable before its answer may leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditCommit {
    /// Append to a local journal (one fsync per group of answers), index
    /// into the database in the background. The default: the fastest way,
    /// as long as the journal's disk outlives the gateway.
    Journal,
    /// Commit into the database before answering. For hosts whose local
    /// disk is lost with them (ephemeral containers).
    Database,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSection {
    pub commit: AuditCommit,
    /// The journal's directory [default: DATA_DIR/audit-journal]. One per
    /// gateway; it must be on a disk that survives the gateway.
    pub journal_dir: Option<PathBuf>,
    /// Records durable in the journal but not yet indexed before answers
    /// wait for the indexer.
    pub max_backlog: u64,
    /// How far behind the answers (seconds) indexing into the store may
    /// fall while it yields the CPU to a burst of requests; past it, it
    /// catches up at full speed. 0: never yield.
    pub max_index_lag_secs: u64,
    /// While the gateway's CPU is saturated, journal group commits begin at
    /// most once per this many microseconds, so that more answers share
    /// each fsync. 0: each begins as soon as the previous one is durable.
    pub busy_group_interval_us: u64,
    /// How long a stopping gateway keeps indexing its journal; what is left
    /// is indexed at the next start.
    pub drain_secs: u64,
}

impl Default for AuditSection {
    fn default() -> Self {
        Self {
            commit: AuditCommit::Journal,
            journal_dir: None,
            max_backlog: 5_000_000,
            max_index_lag_secs: 10,
            busy_group_interval_us: 1000,
            drain_secs: 60,
        }
    }
}

/// What the CLI's client commands (`verify`, `batch`, `audit`) connect with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientSection {
    pub server: Option<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub insecure_plaintext: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    pub hash_key_file: Option<PathBuf>,
    pub hash_key_id: u16,
    /// Ed25519 key (PKCS#8, hex) that signs audit checkpoints. Defaults to
    /// DATA_DIR/audit-signing.key, created when missing.
    pub audit_signing_key_file: Option<PathBuf>,
    /// Keep audit records for this many calendar months (UTC); older ones
    /// are removed hourly, after a checkpoint covers them. Unset: keep all.
    pub audit_retention_months: Option<u32>,
    pub log: String,
    pub audit: AuditSection,
    pub server: ServerSection,
    pub tls: Option<TlsSection>,
    pub limits: LimitsSection,
    pub principals: Vec<PrincipalEntry>,
    pub client: ClientSection,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("simverify-data"),
            database_url: None,
            hash_key_file: None,
            hash_key_id: 1,
            audit_signing_key_file: None,
            audit_retention_months: None,
            log: "info".to_owned(),
            audit: AuditSection::default(),
            server: ServerSection::default(),
            tls: None,
            limits: LimitsSection::default(),
            principals: Vec::new(),
            client: ClientSection::default(),
        }
    }
}

/// Parses an environment value as a TOML value when it is one (numbers,
/// booleans, arrays), else takes it as a string.
fn env_value(raw: &str) -> toml::Value {
    let probe = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&probe) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

fn set_path(
    table: &mut toml::Table,
    path: &[String],
    value: toml::Value,
) -> Result<(), ConfigError> {
    let (last, parents) = path.split_last().expect("non-empty path");
    let mut cur = table;
    for (i, p) in parents.iter().enumerate() {
        let entry = cur
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| ConfigError::new(path[..=i].join("."), "is not a section"))?;
    }
    cur.insert(last.clone(), value);
    Ok(())
}

impl Config {
    /// Reads `file` (if any), then applies `SIMVERIFY__…` variables from
    /// `env`. Does not validate: see [`Config::validate`].
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table = match file {
            None => toml::Table::new(),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    ConfigError::new("config", format!("cannot read {}: {e}", p.display()))
                })?;
                text.parse::<toml::Table>().map_err(|e| {
                    ConfigError::new(
                        "config",
                        format!("{} is not valid TOML: {}", p.display(), e.message()),
                    )
                })?
            }
        };
        let mut vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        vars.sort();
        for (k, v) in vars {
            let path: Vec<String> = k[ENV_PREFIX.len()..]
                .split("__")
                .map(|s| s.to_ascii_lowercase())
                .collect();
            if path.iter().any(String::is_empty) {
                return Err(ConfigError::new(k, "malformed variable name"));
            }
            set_path(&mut table, &path, env_value(&v))?;
        }
        Config::deserialize(toml::Value::Table(table)).map_err(|e| {
            // serde names the offending key in its message; keep it on one line.
            let msg = e.to_string().replace('\n', " ");
            ConfigError::new("", msg.trim().to_owned())
        })
    }

    /// Checks everything that can be checked without binding or connecting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        if s.max_batch_items == 0 || s.max_batch_items > 100_000 {
            return Err(ConfigError::new(
                "server.max_batch_items",
                "must be between 1 and 100000",
            ));
        }
        if s.max_message_bytes < 4096 {
            return Err(ConfigError::new(
                "server.max_message_bytes",
                "must be at least 4096",
            ));
        }
        if self.audit_retention_months == Some(0) {
            return Err(ConfigError::new(
                "audit_retention_months",
                "must be at least 1",
            ));
        }
        if self.audit.max_backlog < 10_000 {
            return Err(ConfigError::new(
                "audit.max_backlog",
                "must be at least 10000",
            ));
        }
        if self.audit.busy_group_interval_us > 100_000 {
            return Err(ConfigError::new(
                "audit.busy_group_interval_us",
                "must be at most 100000 (every answer may wait this long for its fsync)",
            ));
        }
        if s.checkpoint_secs == 0 {
            return Err(ConfigError::new(
                "server.checkpoint_secs",
                "must be at least 1",
            ));
        }
        if s.max_concurrent_requests == 0 {
            return Err(ConfigError::new(
                "server.max_concurrent_requests",
                "must be at least 1",
            ));
        }
        if s.insecure_plaintext && !s.listen.ip().is_loopback() {
            return Err(ConfigError::new(
                "server.listen",
                "plaintext is only allowed on a loopback address",
            ));
        }
        Self::check_limits(
            "limits",
            self.limits.rate_per_sec,
            self.limits.burst,
            self.limits.daily_quota,
        )?;
        let mut seen = std::collections::HashSet::new();
        for (i, p) in self.principals.iter().enumerate() {
            let key = |f: &str| format!("principals[{i}].{f}");
            if p.subject.trim().is_empty() {
                return Err(ConfigError::new(key("subject"), "must not be empty"));
            }
            if !seen.insert(p.subject.as_str()) {
                return Err(ConfigError::new(key("subject"), "is listed twice"));
            }
            if !crate::domain::request::is_printable_token(&p.carrier_id, 64) {
                return Err(ConfigError::new(
                    key("carrier_id"),
                    "must be 1–64 printable ASCII characters",
                ));
            }
            Self::check_limits(
                &format!("principals[{i}]"),
                p.rate_per_sec.unwrap_or(self.limits.rate_per_sec),
                p.burst.unwrap_or(self.limits.burst),
                p.daily_quota.unwrap_or(self.limits.daily_quota),
            )?;
        }
        if let Some(url) = &self.database_url
            && !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
        {
            return Err(ConfigError::new(
                "database_url",
                "must start with sqlite:// or postgres://",
            ));
        }
        Ok(())
    }

    fn check_limits(at: &str, rate: f64, burst: u64, quota: u64) -> Result<(), ConfigError> {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(ConfigError::new(
                format!("{at}.rate_per_sec"),
                "must be a positive number",
            ));
        }
        if burst == 0 {
            return Err(ConfigError::new(
                format!("{at}.burst"),
                "must be at least 1",
            ));
        }
        if quota == 0 {
            return Err(ConfigError::new(
                format!("{at}.daily_quota"),
                "must be at least 1",
            ));
        }
        Ok(())
    }

    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("simverify.db").display()))
    }

    /// The database URL with any password replaced, for logs.
    pub fn redacted_database_url(&self) -> String {
        redact_url(&self.database_url())
    }

    /// The checkpoint signing key's path, and whether it may be created.
    pub fn audit_signing_key(&self) -> (PathBuf, bool) {
        match &self.audit_signing_key_file {
            Some(p) => (p.clone(), false),
            None => (self.data_dir.join("audit-signing.key"), true),
        }
    }

    /// How audit records are made durable, as the verifier takes it.
    pub fn audit_commit_mode(&self) -> crate::audit::CommitMode {
        match self.audit.commit {
            AuditCommit::Database => crate::audit::CommitMode::Database {
                max_batch: 4096,
                queue: 4096,
            },
            AuditCommit::Journal => {
                let mut j = crate::audit::JournalConfig::new(
                    self.audit
                        .journal_dir
                        .clone()
                        .unwrap_or_else(|| self.data_dir.join("audit-journal")),
                );
                j.max_backlog = self.audit.max_backlog;
                j.max_lag = Duration::from_secs(self.audit.max_index_lag_secs);
                j.busy_group_interval = Duration::from_micros(self.audit.busy_group_interval_us);
                crate::audit::CommitMode::Journal(j)
            }
        }
    }

    /// Where the development PKI lives (`simverify pki init` default).
    pub fn pki_dir(&self) -> PathBuf {
        self.data_dir.join("pki")
    }
}

pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// The first instant (unix µs, UTC) of the month `months` before the one
/// containing `now_us`: retention's cutoff.
pub fn retention_cutoff(now_us: i64, months: u32) -> i64 {
    let today = crate::domain::CivilDate::from_unix_days(now_us.div_euclid(86_400_000_000));
    let m = today.year * 12 + i32::from(today.month) - 1 - months as i32;
    let first = crate::domain::CivilDate {
        year: m.div_euclid(12),
        month: (m.rem_euclid(12) + 1) as u8,
        day: 1,
    };
    first.to_unix_days() * 86_400_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn env_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "[server]\nlisten = \"127.0.0.1:6000\"\nmax_batch_items = 10\n\n[[principals]]\nsubject = \"a\"\ncarrier_id = \"a\"\nrole = \"carrier\"\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&f),
            env(&[
                ("SIMVERIFY__SERVER__MAX_BATCH_ITEMS", "20"),
                ("SIMVERIFY__DATA_DIR", "/x"),
                ("OTHER", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.listen.port(), 6000);
        assert_eq!(c.server.max_batch_items, 20);
        assert_eq!(c.data_dir, PathBuf::from("/x"));
        assert_eq!(c.principals[0].role, Role::Carrier);
        c.validate().unwrap();
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::load(None, env(&[("SIMVERIFY__SERVER__LISTEN", "nowhere")])).unwrap_err();
        assert!(e.to_string().contains("listen"), "{e}");
        let e = Config::load(None, env(&[("SIMVERIFY__SERVER__LISTN", "x")])).unwrap_err();
        assert!(e.to_string().contains("listn"), "{e}");
        let mut c = Config::default();
        c.server.insecure_plaintext = true;
        c.server.listen = "0.0.0.0:1".parse().unwrap();
        assert_eq!(c.validate().unwrap_err().key, "server.listen");
        let mut c = Config::default();
        c.principals.push(PrincipalEntry {
            subject: "s".into(),
            carrier_id: "c".into(),
            role: Role::Carrier,
            rate_per_sec: Some(-1.0),
            burst: None,
            daily_quota: None,
        });
        assert_eq!(c.validate().unwrap_err().key, "principals[0].rate_per_sec");
        let c = Config::load(
            None,
            env(&[("SIMVERIFY__AUDIT__BUSY_GROUP_INTERVAL_US", "250000")]),
        )
        .unwrap();
        assert_eq!(
            c.validate().unwrap_err().key,
            "audit.busy_group_interval_us"
        );
    }

    #[test]
    fn the_busy_group_interval_reaches_the_journal() {
        let interval = |vars: &[(&str, &str)]| {
            let c = Config::load(None, env(vars)).unwrap();
            c.validate().unwrap();
            match c.audit_commit_mode() {
                crate::audit::CommitMode::Journal(j) => j.busy_group_interval,
                other => panic!("not the journal: {other:?}"),
            }
        };
        assert_eq!(interval(&[]), Duration::from_millis(1));
        assert_eq!(
            interval(&[("SIMVERIFY__AUDIT__BUSY_GROUP_INTERVAL_US", "0")]),
            Duration::ZERO
        );
    }

    #[test]
    fn retention_cutoff_is_a_month_start() {
        // 2026-11-22 → keep 1 month: from 2026-10-01.
        let now = CivilDateExt::days(2026, 11, 22) * 86_400_000_000 + 5;
        assert_eq!(
            retention_cutoff(now, 1),
            CivilDateExt::days(2026, 10, 1) * 86_400_000_000
        );
        assert_eq!(
            retention_cutoff(now, 11),
            CivilDateExt::days(2025, 12, 1) * 86_400_000_000
        );
    }

    struct CivilDateExt;
    impl CivilDateExt {
        fn days(y: i32, m: u8, d: u8) -> i64 {
            crate::domain::CivilDate::new(y, m, d)
                .unwrap()
                .to_unix_days()
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
    }
}
