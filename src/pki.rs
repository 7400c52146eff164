//! A development PKI (rcgen): a CA, a server certificate for localhost, and
//! client certificates for two carriers, an auditor and an admin, plus the
//! configuration that maps them to principals. Production certificates come
//! from the operator's own CA; only the file paths in the configuration
//! change.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, date_time_ymd,
};

use crate::config::{PrincipalEntry, Role, TlsSection};
use crate::domain::CivilDate;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} already exists; pass --force to replace the development PKI")]
    Exists(String),
}

/// The clients `init` creates: (file stem, carrier id, role).
pub const DEV_CLIENTS: [(&str, &str, Role); 4] = [
    ("carrier-a", "carrier-a", Role::Carrier),
    ("carrier-b", "carrier-b", Role::Carrier),
    ("auditor", "auditor-1", Role::Auditor),
    ("admin", "admin-1", Role::Admin),
];

/// SAN URI that identifies a development client.
pub fn client_uri(carrier_id: &str, role: Role) -> String {
    format!("urn:simverify:{}:{carrier_id}", role.as_str())
}

/// A certificate authority able to sign leaves.
pub struct Ca {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// Validity window of generated certificates.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: CivilDate,
    pub not_after: CivilDate,
}

impl Validity {
    /// From yesterday, for `days`.
    pub fn days_from_today(today: CivilDate, days: i64) -> Self {
        let t = today.to_unix_days();
        Self {
            not_before: CivilDate::from_unix_days(t - 1),
            not_after: CivilDate::from_unix_days(t + days),
        }
    }
}

fn apply(p: &mut CertificateParams, v: Validity) {
    p.not_before = date_time_ymd(v.not_before.year, v.not_before.month, v.not_before.day);
    p.not_after = date_time_ymd(v.not_after.year, v.not_after.month, v.not_after.day);
}

impl Ca {
    pub fn new(name: &str, v: Validity) -> Result<Self, PkiError> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        apply(&mut p, v);
        let key = KeyPair::generate()?;
        let cert = p.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(p, key),
        })
    }

    /// A server certificate for `dns_names` and the loopback addresses.
    pub fn server(&self, dns_names: &[&str], v: Validity) -> Result<(String, String), PkiError> {
        let mut p =
            CertificateParams::new(dns_names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        p.subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        p.subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()));
        p.distinguished_name.push(
            DnType::CommonName,
            dns_names.first().copied().unwrap_or("localhost"),
        );
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        apply(&mut p, v);
        let key = KeyPair::generate()?;
        Ok((p.signed_by(&key, &self.issuer)?.pem(), key.serialize_pem()))
    }

    /// A client certificate with CN `common_name` and SAN URI `uri`.
    pub fn client(
        &self,
        common_name: &str,
        uri: &str,
        v: Validity,
    ) -> Result<(String, String), PkiError> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, common_name);
        p.subject_alt_names.push(SanType::URI(uri.try_into()?));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        apply(&mut p, v);
        let key = KeyPair::generate()?;
        Ok((p.signed_by(&key, &self.issuer)?.pem(), key.serialize_pem()))
    }
}

fn write(path: &Path, contents: &str, secret: bool) -> Result<(), PkiError> {
    let err = |source| PkiError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = opts.open(path).map_err(err)?;
    std::io::Write::write_all(&mut f, contents.as_bytes()).map_err(err)
}

/// What `init` produced.
pub struct DevPki {
    pub dir: PathBuf,
    pub tls: TlsSection,
    pub principals: Vec<PrincipalEntry>,
}

impl DevPki {
    /// The layout `init` writes in `dir` (whether or not it exists yet).
    pub fn at(dir: &Path) -> Self {
        let tls = TlsSection {
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            client_ca: dir.join("ca.pem"),
        };
        let principals = DEV_CLIENTS
            .iter()
            .map(|(_, id, role)| PrincipalEntry {
                subject: client_uri(id, *role),
                carrier_id: (*id).to_owned(),
                role: *role,
                rate_per_sec: None,
                burst: None,
                daily_quota: None,
            })
            .collect();
        Self {
            dir: dir.to_path_buf(),
            tls,
            principals,
        }
    }

    pub fn exists(&self) -> bool {
        self.tls.cert.exists() && self.tls.key.exists() && self.tls.client_ca.exists()
    }

    /// The configuration snippet that serves with these files.
    pub fn config_snippet(&self) -> String {
        let mut s = format!(
            "# Generated by `simverify pki init`: development certificates only.\n\
             [tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n",
            self.tls.cert.display().to_string(),
            self.tls.key.display().to_string(),
            self.tls.client_ca.display().to_string()
        );
        for p in &self.principals {
            s.push_str(&format!(
                "\n[[principals]]\nsubject = {:?}\ncarrier_id = {:?}\nrole = {:?}\n",
                p.subject,
                p.carrier_id,
                p.role.as_str()
            ));
        }
        s.push_str(&format!(
            "\n# For the CLI's client commands (here: as carrier-a).\n[client]\nserver = \"https://localhost:50051\"\n\
             ca = {:?}\ncert = {:?}\nkey = {:?}\n",
            self.dir.join("ca.pem").display().to_string(),
            self.dir.join("carrier-a.pem").display().to_string(),
            self.dir.join("carrier-a.key").display().to_string()
        ));
        s
    }
}

/// Writes a CA, a localhost server certificate, the development clients and
/// `simverify.toml` into `dir`.
pub fn init(dir: &Path, today: CivilDate, force: bool) -> Result<DevPki, PkiError> {
    let pki = DevPki::at(dir);
    if pki.exists() && !force {
        return Err(PkiError::Exists(pki.tls.cert.display().to_string()));
    }
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let validity = Validity::days_from_today(today, 825);
    let ca = Ca::new("simverify development CA", validity)?;
    write(&dir.join("ca.pem"), &ca.cert_pem, false)?;
    let (cert, key) = ca.server(&["localhost"], validity)?;
    write(&pki.tls.cert, &cert, false)?;
    write(&pki.tls.key, &key, true)?;
    for (stem, id, role) in DEV_CLIENTS {
        let (cert, key) = ca.client(id, &client_uri(id, role), validity)?;
        write(&dir.join(format!("{stem}.pem")), &cert, false)?;
        write(&dir.join(format!("{stem}.key")), &key, true)?;
    }
    write(&dir.join("simverify.toml"), &pki.config_snippet(), false)?;
    Ok(pki)
}
