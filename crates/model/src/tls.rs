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
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Why a TLS configuration could not be built. Each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read, or holds nothing usable.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A certificate and a key that do not belong together.
    #[error("{} and {}: not a certificate and its key: {reason}", cert.display(), key.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        reason: String,
    },
    /// A client key without its certificate.
    #[error("{}: a client key without its certificate", .0.display())]
    KeyWithoutCertificate(PathBuf),
    /// A server name that is neither a DNS name nor an IP address.
    #[error("\"{0}\" is not a DNS name or an IP address")]
    ServerName(String),
    /// rustls refused the configuration.
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

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
    pub fn roots(&self) -> Result<RootCertStore, TlsError> {
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
                    .map_err(|e| file_error(path, format!("not a CA certificate: {e}")))?;
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
    ) -> Result<reqwest::Client, TlsError> {
        builder
            .tls_backend_preconfigured(self.client_config()?)
            .build()
            .map_err(|e| TlsError::Client(e.to_string()))
    }

    /// A rustls client configuration from these settings, reading the files now.
    pub fn client_config(&self) -> Result<ClientConfig, TlsError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.roots()?);
        self.identity(builder)
    }

    /// A client configuration that accepts exactly the certificate at the head of `leaf_file`,
    /// whoever signed it (`ca_file` is not used): how the CLI reaches its own sidecar's admin
    /// listener, whose certificate file it reads from the same config. The handshake's
    /// signatures are still checked against that certificate's key.
    pub fn pinned_config(&self, leaf_file: &Path) -> Result<ClientConfig, TlsError> {
        let leaf = certificates(leaf_file)?.swap_remove(0);
        let verifier = Arc::new(Pinned {
            leaf,
            provider: provider(),
        });
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        self.identity(builder)
    }

    /// The client certificate, when one is set.
    fn identity(
        &self,
        builder: rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>,
    ) -> Result<ClientConfig, TlsError> {
        match (&self.cert_file, &self.key_file) {
            (None, None) => Ok(builder.with_no_client_auth()),
            (Some(cert), key) => {
                let key_path = key.as_deref().unwrap_or(cert);
                let key = PrivateKeyDer::from_pem_file(key_path)
                    .map_err(|e| file_error(key_path, format!("no private key read: {e}")))?;
                builder
                    .with_client_auth_cert(certificates(cert)?, key)
                    .map_err(|e| TlsError::Mismatch {
                        cert: cert.clone(),
                        key: key_path.to_path_buf(),
                        reason: e.to_string(),
                    })
            }
            (None, Some(key)) => Err(TlsError::KeyWithoutCertificate(key.clone())),
        }
    }
}

/// How a route reaches model servers over HTTPS (`[routes.upstream_tls]`): the client
/// configuration, built when the config is read, and the name the certificates are checked
/// against. Connections are pooled per upstream and per [`UpstreamTls::id`], so a rotated CA or
/// client certificate (a new `id` after the reload it causes) gets new connections.
#[derive(Debug)]
pub struct UpstreamTls {
    /// A hash of the settings and the bytes of their files: equal for equal settings.
    pub id: u64,
    /// The name checked in the upstream's certificate and sent as SNI; `None`: each upstream's
    /// host (an IP address is checked against the certificate's IP addresses).
    pub server_name: Option<ServerName<'static>>,
    /// Without ALPN (a client that sets its own, as hyper-rustls does).
    pub config: Arc<ClientConfig>,
    /// With ALPN `http/1.1`, for the HTTP/1.1 pool.
    pub http1: Arc<ClientConfig>,
    /// The files it was read from (the reloader watches them).
    pub files: TlsClient,
}

impl UpstreamTls {
    /// Build from the files, read now. `server_name` is checked to be a DNS name or an IP address.
    pub fn new(files: TlsClient, server_name: Option<&str>) -> Result<Self, TlsError> {
        let server_name = server_name
            .map(|n| {
                ServerName::try_from(n.to_string()).map_err(|_| TlsError::ServerName(n.to_string()))
            })
            .transpose()?;
        let id = |files: &TlsClient| {
            use std::hash::{Hash as _, Hasher as _};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            server_name
                .as_ref()
                .map(|n| n.to_str().into_owned())
                .hash(&mut h);
            for path in [&files.ca_file, &files.cert_file, &files.key_file] {
                path.hash(&mut h);
                path.as_ref()
                    .and_then(|p| std::fs::read(p).ok())
                    .hash(&mut h);
            }
            // 0 is a plain connection's key in the pool.
            h.finish().max(1)
        };
        // The id names the bytes the configuration was built from: files rotated while they
        // were read are refused (the reload that rotation causes reads them again), so a client
        // cached by id never holds other certificates than its id says.
        let before = id(&files);
        let config = files.client_config()?;
        let id = id(&files);
        if id != before {
            let path = (files.cert_file.clone())
                .or_else(|| files.ca_file.clone())
                .unwrap_or_default();
            return Err(TlsError::File {
                path,
                reason: "changed while it was read; it is read again at the next reload".into(),
            });
        }
        let mut http1 = config.clone();
        http1.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            id,
            server_name,
            config: Arc::new(config),
            http1: Arc::new(http1),
            files,
        })
    }

    /// The name to check for `host` (an authority's host, IPv6 brackets included).
    pub fn server_name_for(&self, host: &str) -> Result<ServerName<'static>, TlsError> {
        if let Some(name) = &self.server_name {
            return Ok(name.clone());
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(host.to_string()).map_err(|_| TlsError::ServerName(host.to_string()))
    }
}

/// Accepts one certificate: [`TlsClient::pinned_config`].
#[derive(Debug)]
struct Pinned {
    leaf: CertificateDer<'static>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.leaf.as_ref() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
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
    pub fn server_config(&self) -> Result<(ServerConfig, Arc<ServedCert>), TlsError> {
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
            .with_safe_default_protocol_versions()?;
        let builder = match &self.client_ca_file {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in certificates(path)? {
                    roots
                        .add(cert)
                        .map_err(|e| file_error(path, format!("not a CA certificate: {e}")))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(roots.into(), provider())
                        .build()
                        .map_err(|e| file_error(path, e.to_string()))?;
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
    pub fn refresh(&self) -> Result<bool, TlsError> {
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
fn certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = certificates(cert)?;
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| file_error(key, format!("no private key read: {e}")))?;
    let signing = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| file_error(key, e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| TlsError::Mismatch {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(certified)
}

/// Every certificate of a PEM file; at least one.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error(path, e.to_string()))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate in it".into()));
    }
    Ok(certs)
}

fn file_error(path: &Path, reason: String) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason,
    }
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
        assert_eq!(with_ca.roots().ok().map(|r| r.len()), Some(platform + 1));
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
    fn an_upstream_tls_id_names_the_settings_and_the_bytes_of_their_files() {
        let dir = std::env::temp_dir().join(format!("modelstamp-tls-id-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let ca = dir.join("ca.pem");
        let copy = |from: &str| std::fs::copy(fixture(from), &ca).map(|_| ());
        assert!(copy("ca.pem").is_ok());
        let files = TlsClient {
            ca_file: Some(ca.clone()),
            ..TlsClient::default()
        };
        let id = |name: Option<&str>| {
            UpstreamTls::new(files.clone(), name)
                .map(|t| t.id)
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let first = id(None);
        assert_eq!(id(None), first, "the same settings and bytes, the same id");
        assert_ne!(id(Some("models.example")), first, "another server name");
        // A rotated CA (other bytes at the same path): another id, so new connections use it.
        assert!(copy("server.pem").is_ok());
        assert_ne!(id(None), first);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_files_are_named_with_what_is_wrong() {
        let err = |tls: TlsClient| {
            (tls.client_config().err())
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
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
