//! The TLS stack. Clients: one rustls configuration (the `ring` provider, TLS 1.2 and 1.3), which
//! trusts the platform's certificate authorities (`/etc/ssl/certs`, or `SSL_CERT_FILE` /
//! `SSL_CERT_DIR` when set; read once per process) plus the CA bundle a setting names, and presents a client
//! certificate when one is given (mutual TLS). The MLflow client and the OTLP exporter use it.
//! Servers (the listeners' optional TLS): a certificate reloaded when its files change, ALPN
//! `h2` and `http/1.1`, and optionally a client certificate required (mutual TLS).
//!
//! Nothing here runs per request: configurations are built at start or on a reload, and a
//! handshake only looks up the certificate served now.

use std::path::{Path, PathBuf};

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::stamp::FileStamp;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// How a TLS client checks the servers it reaches and, for mutual TLS, presents itself. The
/// files are read each time a configuration is built, so a rotated CA or certificate is used
/// from the next reload on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsClient {
    /// A PEM bundle of certificate authorities trusted besides the platform's (a private CA).
    pub ca_file: Option<PathBuf>,
    /// The PEM certificate chain presented to servers that ask for one.
    pub cert_file: Option<PathBuf>,
    /// The PEM private key of `cert_file` (the same file when it holds both, as MLflow's
    /// `MLFLOW_TRACKING_CLIENT_CERT_PATH` does).
    pub key_file: Option<PathBuf>,
}

impl TlsClient {
    /// The certificate authorities trusted: the platform's and `ca_file`'s. Empty when the
    /// platform has none (a distroless image) and no `ca_file` is set.
    pub fn roots(&self) -> Result<RootCertStore, String> {
        let mut roots = RootCertStore::empty();
        // Read once per process (a few hundred files, parsed): a config check or a client
        // built on an async thread must not pay it again. Unreadable platform certificates are
        // skipped, as every rustls user does: one bad file in /etc/ssl/certs must not stop the
        // others from being trusted.
        static PLATFORM: std::sync::OnceLock<Vec<CertificateDer<'static>>> =
            std::sync::OnceLock::new();
        let platform = PLATFORM.get_or_init(|| rustls_native_certs::load_native_certs().certs);
        roots.add_parsable_certificates(platform.iter().cloned());
        if let Some(path) = &self.ca_file {
            for cert in certificates(path)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: not a CA certificate: {e}", path.display()))?;
            }
        }
        Ok(roots)
    }

    /// The files' metadata (symlinks followed, so a Kubernetes Secret's swap is seen): it
    /// changes when a file is rotated. One `stat` per file.
    pub fn stamp(&self) -> Vec<Option<FileStamp>> {
        [&self.ca_file, &self.cert_file, &self.key_file]
            .into_iter()
            .flatten()
            .map(|path| FileStamp::read(path))
            .collect()
    }

    /// An HTTP client from `builder` speaking TLS with these settings. Every reqwest client of
    /// the project is built here: with reqwest's `rustls-no-provider` feature, a client built
    /// without a TLS configuration panics in `build()`.
    pub fn reqwest_client(
        &self,
        builder: reqwest::ClientBuilder,
    ) -> Result<reqwest::Client, String> {
        builder
            .tls_backend_preconfigured(self.client_config()?)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))
    }

    /// A rustls client configuration from these settings, reading the files now.
    pub fn client_config(&self) -> Result<ClientConfig, String> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(self.roots()?);
        match (&self.cert_file, &self.key_file) {
            (None, None) => Ok(builder.with_no_client_auth()),
            (Some(cert), key) => {
                let key_path = key.as_deref().unwrap_or(cert);
                let key = PrivateKeyDer::from_pem_file(key_path)
                    .map_err(|e| format!("{}: no private key read: {e}", key_path.display()))?;
                builder
                    .with_client_auth_cert(certificates(cert)?, key)
                    .map_err(|e| {
                        format!(
                            "{} and {}: not a certificate and its key: {e}",
                            cert.display(),
                            key_path.display()
                        )
                    })
            }
            (None, Some(key)) => Err(format!(
                "{}: a client key without its certificate",
                key.display()
            )),
        }
    }
}

/// The crypto provider of every TLS configuration here.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    // `ring`, not the aws-lc-rs default: no C++/cmake toolchain and a fraction of the build
    // time. rustls 0.23.48 deprecated it for lacking post-quantum key exchange (X25519MLKEM768);
    // classical X25519 and P-256 remain, which every MLflow, collector and client speaks.
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    Arc::new(provider)
}

/// A listener's TLS: its certificate chain and key (PEM), and the CAs whose client
/// certificates it requires, when set (mutual TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsServer {
    /// The certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// Its private key.
    pub key_file: PathBuf,
    /// Client certificates must chain to one of these CAs.
    pub client_ca_file: Option<PathBuf>,
}

impl TlsServer {
    /// The server configuration (ALPN `h2`, `http/1.1`) and the certificate it serves, which
    /// [`ServedCert::refresh`] replaces when the files change.
    pub fn server_config(&self) -> Result<(ServerConfig, Arc<ServedCert>), String> {
        let files = TlsClient {
            ca_file: None,
            cert_file: Some(self.cert_file.clone()),
            key_file: Some(self.key_file.clone()),
        };
        // Stamped before reading: a write while reading is seen by the next refresh.
        let stamp = std::sync::Mutex::new(files.stamp());
        let served = Arc::new(ServedCert {
            key: ArcSwap::from_pointee(certified_key(&self.cert_file, &self.key_file)?),
            files,
            stamp,
        });
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let builder = match &self.client_ca_file {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in certificates(path)? {
                    roots
                        .add(cert)
                        .map_err(|e| format!("{}: not a CA certificate: {e}", path.display()))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(roots.into(), provider())
                        .build()
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(served.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok((config, served))
    }
}

/// The certificate a listener serves, replaced in place when its files are rotated (handshakes
/// from then on use the new one; open connections keep theirs).
#[derive(Debug)]
pub struct ServedCert {
    files: TlsClient,
    key: ArcSwap<CertifiedKey>,
    stamp: std::sync::Mutex<Vec<Option<FileStamp>>>,
}

impl ServedCert {
    /// Read the files again if their metadata moved: `Ok(true)` when a new certificate is
    /// served, `Err` (the old one kept) when the new files are not a certificate and its key.
    /// Reads files: call off the proxy threads.
    pub fn refresh(&self) -> Result<bool, String> {
        let now = self.files.stamp();
        let mut stamp = self
            .stamp
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *stamp == now {
            return Ok(false);
        }
        // Remembered either way: a broken rotation is reported once, not at every look.
        *stamp = now;
        let (Some(cert), Some(key)) = (&self.files.cert_file, &self.files.key_file) else {
            return Ok(false);
        };
        let fresh = certified_key(cert, key)?;
        let changed = fresh.cert != self.key.load().cert;
        self.key.store(Arc::new(fresh));
        Ok(changed)
    }
}

impl ResolvesServerCert for ServedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.key.load_full())
    }
}

/// A certificate chain and its key, checked to match.
fn certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain = certificates(cert)?;
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("{}: no private key read: {e}", key.display()))?;
    let signing = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("{}: {e}", key.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        format!(
            "{} and {}: not a certificate and its key: {e}",
            cert.display(),
            key.display()
        )
    })?;
    Ok(certified)
}

/// Every certificate of a PEM file; at least one.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tls")
            .join(name)
    }

    #[test]
    fn a_ca_bundle_is_trusted_besides_the_platform() {
        let platform = TlsClient::default()
            .roots()
            .unwrap_or_else(|e| panic!("{e}"))
            .len();
        let with_ca = TlsClient {
            ca_file: Some(fixture("ca.pem")),
            ..TlsClient::default()
        };
        assert_eq!(with_ca.roots().map(|r| r.len()), Ok(platform + 1));
        assert!(with_ca.client_config().is_ok());
    }

    #[test]
    fn a_client_identity_is_a_certificate_and_its_key_in_one_file_or_two() {
        for (cert, key) in [
            ("client.pem", Some("client.key")),
            ("client-combined.pem", None),
        ] {
            let tls = TlsClient {
                ca_file: Some(fixture("ca.pem")),
                cert_file: Some(fixture(cert)),
                key_file: key.map(fixture),
            };
            let config = tls
                .client_config()
                .unwrap_or_else(|e| panic!("{cert}: {e}"));
            assert!(config.client_auth_cert_resolver.has_certs(), "{cert}");
        }
    }

    #[test]
    fn bad_files_are_named_with_what_is_wrong() {
        let err = |tls: TlsClient| tls.client_config().err().unwrap_or_default();
        let missing = err(TlsClient {
            ca_file: Some(fixture("absent.pem")),
            ..TlsClient::default()
        });
        assert!(missing.contains("absent.pem"), "{missing}");
        let key_as_ca = err(TlsClient {
            ca_file: Some(fixture("client.key")),
            ..TlsClient::default()
        });
        assert!(
            key_as_ca.contains("client.key: no PEM certificate in it"),
            "{key_as_ca}"
        );
        let no_key = err(TlsClient {
            cert_file: Some(fixture("ca.pem")),
            ..TlsClient::default()
        });
        assert!(no_key.contains("ca.pem: no private key read"), "{no_key}");
        let wrong_key = err(TlsClient {
            cert_file: Some(fixture("client.pem")),
            key_file: Some(fixture("server.key")),
            ..TlsClient::default()
        });
        assert!(
            wrong_key.contains("not a certificate and its key"),
            "{wrong_key}"
        );
        let key_only = err(TlsClient {
            key_file: Some(fixture("client.key")),
            ..TlsClient::default()
        });
        assert!(key_only.contains("without its certificate"), "{key_only}");
    }
}
