//! TLS through rustls, checked the way libpq's `sslmode` says: the modes, the certificate
//! verifiers and the connector.

use std::fmt;
use std::fs;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::settings::{home_file, invalid};
use crate::error::{Error, Result};

/// How a connection uses TLS; the libpq `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SslMode {
    /// Never use TLS.
    Disable,
    /// Use TLS when the server offers it, without checking the certificate. Unlike libpq,
    /// TLS is tried first.
    Allow,
    /// Use TLS when the server offers it, without checking the certificate (the default).
    #[default]
    Prefer,
    /// Insist on TLS; check the certificate chain only when a root certificate is available.
    Require,
    /// Insist on TLS and check the certificate chain, but not the host name.
    VerifyCa,
    /// Insist on TLS, check the certificate chain and that the certificate names the host.
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling (`verify-full`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = Error;

    /// Reads a libpq `sslmode` value.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidDsn`] for anything but the six libpq values.
    fn from_str(s: &str) -> Result<SslMode> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(invalid(format!(
                    "invalid sslmode {other:?} (expected disable, allow, prefer, require, \
                     verify-ca or verify-full)"
                )))
            }
        })
    }
}

/// Where trust comes from for certificate checks.
#[derive(Clone, Debug)]
pub(super) enum RootCert {
    /// A PEM file of CA certificates.
    File(PathBuf),
    /// The Mozilla root set (`sslrootcert=system`).
    System,
}

/// What the TLS connector checks, derived from `sslmode` and the certificate settings.
#[derive(Clone, Debug)]
pub(super) struct TlsPolicy {
    pub(super) mode: SslMode,
    pub(super) root_cert: Option<RootCert>,
    pub(super) client_cert: Option<PathBuf>,
    pub(super) client_key: Option<PathBuf>,
}

impl TlsPolicy {
    /// Builds the rustls connector, reading the certificate files.
    pub(super) fn connector(&self) -> Result<MakeTls> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|err| tls_error(format!("cannot set up TLS: {err}")))?
            .dangerous()
            .with_custom_certificate_verifier(self.verifier(&provider)?);
        let config = match self.client_identity()? {
            Some((certs, key)) => builder
                .with_client_auth_cert(certs, key)
                .map_err(|err| tls_error(format!("cannot use the client certificate: {err}")))?,
            None => builder.with_no_client_auth(),
        };
        Ok(MakeTls(MakeRustlsConnect::new(config)))
    }

    fn verifier(&self, provider: &Arc<CryptoProvider>) -> Result<Arc<dyn ServerCertVerifier>> {
        let default_root = || {
            home_file(".postgresql/root.crt")
                .filter(|path| path.exists())
                .map(RootCert::File)
        };
        let (root, check_name) = match self.mode {
            SslMode::Disable | SslMode::Allow | SslMode::Prefer => (None, false),
            SslMode::Require => (self.root_cert.clone().or_else(default_root), false),
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let root = self
                    .root_cert
                    .clone()
                    .or_else(default_root)
                    .ok_or_else(|| {
                        tls_error(format!(
                            "sslmode={} needs a root certificate: set sslrootcert (a file, or \
                         \"system\") or create ~/.postgresql/root.crt",
                            self.mode
                        ))
                    })?;
                (Some(root), self.mode == SslMode::VerifyFull)
            }
        };
        let Some(root) = root else {
            return Ok(Arc::new(Lenient {
                provider: Arc::clone(provider),
                chain: None,
            }));
        };
        let webpki = WebPkiServerVerifier::builder_with_provider(
            Arc::new(root_store(&root)?),
            Arc::clone(provider),
        )
        .build()
        .map_err(|err| tls_error(format!("cannot set up certificate checks: {err}")))?;
        Ok(if check_name {
            webpki
        } else {
            Arc::new(Lenient {
                provider: Arc::clone(provider),
                chain: Some(webpki),
            })
        })
    }

    /// The client certificate chain and key: `sslcert`/`sslkey`, else
    /// `~/.postgresql/postgresql.crt`/`.key` when the certificate file exists.
    fn client_identity(
        &self,
    ) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>> {
        if self.mode == SslMode::Disable {
            return Ok(None);
        }
        let cert_path = match &self.client_cert {
            Some(path) => path.clone(),
            None => match home_file(".postgresql/postgresql.crt").filter(|path| path.exists()) {
                Some(path) => path,
                None => return Ok(None),
            },
        };
        let key_path = match &self.client_key {
            Some(path) => path.clone(),
            None => home_file(".postgresql/postgresql.key").ok_or_else(|| {
                tls_error(format!(
                    "client certificate {} given but no sslkey",
                    cert_path.display()
                ))
            })?,
        };
        let certs = read_pem_certs(&cert_path, "sslcert")?;
        let file = open(&key_path, "sslkey")?;
        let key = rustls_pemfile::private_key(&mut BufReader::new(file))
            .map_err(|err| tls_error(format!("cannot read sslkey {}: {err}", key_path.display())))?
            .ok_or_else(|| {
                tls_error(format!(
                    "no private key found in sslkey {}",
                    key_path.display()
                ))
            })?;
        Ok(Some((certs, key)))
    }
}

fn root_store(root: &RootCert) -> Result<RootCertStore> {
    let path = match root {
        RootCert::System => {
            return Ok(RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            })
        }
        RootCert::File(path) => path,
    };
    let mut store = RootCertStore::empty();
    for cert in read_pem_certs(path, "sslrootcert")? {
        store.add(cert).map_err(|err| {
            tls_error(format!(
                "bad certificate in sslrootcert {}: {err}",
                path.display()
            ))
        })?;
    }
    Ok(store)
}

fn read_pem_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>> {
    let file = open(path, key)?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|err| tls_error(format!("cannot read {key} {}: {err}", path.display())))?;
    if certs.is_empty() {
        return Err(tls_error(format!(
            "no PEM certificates found in {key} {}",
            path.display()
        )));
    }
    Ok(certs)
}

fn open(path: &Path, key: &str) -> Result<fs::File> {
    fs::File::open(path)
        .map_err(|err| tls_error(format!("cannot open {key} {}: {err}", path.display())))
}

fn tls_error(reason: String) -> Error {
    Error::Tls { reason }
}

/// The checks of the modes below `verify-full`; the handshake signatures are always checked.
#[derive(Debug)]
struct Lenient {
    provider: Arc<CryptoProvider>,
    /// `None`: any server certificate is accepted (`sslmode` `allow`, `prefer`, `require`
    /// without a root certificate). `Some`: `verify-ca`, the full webpki check except that the
    /// certificate need not name the host; webpki checks the name last, so ignoring that one
    /// error skips no other check.
    chain: Option<Arc<WebPkiServerVerifier>>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
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
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
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

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.chain
            .as_ref()
            .and_then(|chain| chain.root_hint_subjects())
    }
}

/// The rustls connector, accepting the empty host name tokio-postgres passes for Unix sockets
/// (PostgreSQL never offers TLS there, so the placeholder name is never checked).
#[derive(Clone)]
pub(super) struct MakeTls(MakeRustlsConnect);

impl<S> MakeTlsConnect<S> for MakeTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type TlsConnect = <MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect;
    type Error = <MakeRustlsConnect as MakeTlsConnect<S>>::Error;

    fn make_tls_connect(
        &mut self,
        hostname: &str,
    ) -> std::result::Result<Self::TlsConnect, Self::Error> {
        let name = if hostname.is_empty() {
            "localhost"
        } else {
            hostname
        };
        MakeTlsConnect::<S>::make_tls_connect(&mut self.0, name)
    }
}
