//! The HTTPS ingress over real sockets on 127.0.0.1: a client that trusts the local CA
//! reaches a routed host over h2 and http/1.1 (TLS 1.3 and 1.2), the instance learns the
//! request came over HTTPS, a name the ingress does not route gets no certificate, the CA
//! survives a reopen with its key private, and a client that never finishes its handshake is
//! cut off at the handshake timeout.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::listener::{Listener, ListenerLimits};
use crate::pool::RevisionPool;
use crate::table::{RoutingTable, ServiceRoute};
use crate::testing::{FakeLauncher, config};

const HOST: &str = "hello-p.us-central1.localhost";

/// An instance stand-in answering with the `X-Forwarded-Proto` it was given.
async fn instance() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let proto = req.headers().get("x-forwarded-proto").map(|v| v.to_str().unwrap().to_owned());
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(proto.unwrap_or_default()))))
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    addr
}

struct Https {
    addr: SocketAddr,
    ca_pem: String,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
    _iam_dir: tempfile::TempDir,
}

impl Drop for Https {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(limits: ListenerLimits) -> Https {
    let dir = tempfile::tempdir().unwrap();
    let table = Arc::new(RoutingTable::default());
    let pool = RevisionPool::start("hello-00001", config(80, 0, 10), FakeLauncher::instant(instance().await).arc());
    table.set(
        HOST,
        ServiceRoute { service: "hello".into(), targets: vec![(pool, 100)], access: crate::testing::open_access() },
    );
    let routed = table.clone();
    // Created, then opened again as a restarted server would: the handshakes below use
    // the reloaded CA.
    drop(LocalCa::open(dir.path()).unwrap());
    let certificates = Certificates::new(
        Some(LocalCa::open(dir.path()).unwrap()),
        Arc::new(move |name| routed.lookup(name).is_some()),
    );
    let ca_pem = certificates.local_ca().unwrap().cert_pem.clone();
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let tls = server_config(certificates).unwrap();
    let (iam_dir, iam, _) = crate::testing::iam();
    let gate = crate::access::Gate::new(iam, vec![]);
    tokio::spawn(crate::proxy::serve_tls(
        socket,
        Listener::new("ingress", limits),
        table,
        gate,
        None,
        tls,
        shutdown.clone(),
    ));
    Https { addr, ca_pem, shutdown, _dir: dir, _iam_dir: iam_dir }
}

fn client_config(
    ca_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

async fn connect(
    https: &Https,
    config: rustls::ClientConfig,
    name: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(https.addr).await?;
    let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await
}

/// GET / over the negotiated protocol; the body.
async fn get(stream: tokio_rustls::client::TlsStream<TcpStream>) -> String {
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let request = Request::get(format!("https://{HOST}/")).header("host", HOST).body(Empty::<Bytes>::new()).unwrap();
    let response = if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        sender.send_request(request).await.unwrap()
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        sender.send_request(request).await.unwrap()
    };
    assert_eq!(response.status(), 200);
    String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

#[tokio::test]
async fn a_routed_host_is_served_over_h2_and_http1_with_tls_13_and_12() {
    let https = start(ListenerLimits::default()).await;
    let both: &[&[u8]] = &[b"h2", b"http/1.1"];

    let stream = connect(&https, client_config(&https.ca_pem, &[&rustls::version::TLS13], both), HOST).await.unwrap();
    let session = stream.get_ref().1;
    assert_eq!(
        (session.alpn_protocol(), session.protocol_version()),
        (Some(&b"h2"[..]), Some(rustls::ProtocolVersion::TLSv1_3))
    );
    assert_eq!(get(stream).await, "https", "the instance is told the client used HTTPS");

    let config = client_config(&https.ca_pem, &[&rustls::version::TLS12], &[b"http/1.1"]);
    let stream = connect(&https, config, HOST).await.unwrap();
    let session = stream.get_ref().1;
    assert_eq!(
        (session.alpn_protocol(), session.protocol_version()),
        (Some(&b"http/1.1"[..]), Some(rustls::ProtocolVersion::TLSv1_2))
    );
    assert_eq!(get(stream).await, "https");

    // SNI picks the certificate: a name the ingress does not route gets none.
    let refused =
        connect(&https, client_config(&https.ca_pem, &[&rustls::version::TLS13], both), "other.localhost").await;
    let error = refused.expect_err("no certificate for a name the ingress does not serve");
    assert!(error.to_string().contains("alert"), "{error}");
}

#[tokio::test]
async fn the_local_ca_is_kept_across_restarts_with_a_private_key() {
    let dir = tempfile::tempdir().unwrap();
    let first = LocalCa::open(dir.path()).unwrap();
    let again = LocalCa::open(dir.path()).unwrap();
    assert_eq!(first.cert_pem, again.cert_pem);
    let mode = std::fs::metadata(dir.path().join(CA_KEY_FILE)).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // A certificate the reopened CA issues verifies against the first CA's certificate.
    let issued = again.issue("x.localhost").unwrap();
    assert_eq!(issued.cert.len(), 2, "leaf and CA");
    assert_eq!(issued.cert[1], ca_der(&first.cert_pem).unwrap());
}

#[tokio::test]
async fn a_client_that_stalls_its_handshake_is_cut_off() {
    use tokio::io::AsyncReadExt as _;
    let limits = ListenerLimits { tls_handshake_timeout: Duration::from_millis(300), ..ListenerLimits::default() };
    let https = start(limits).await;
    let mut tcp = TcpStream::connect(https.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await.expect("closed in time");
    assert_eq!(read.map_err(|e| e.kind()).unwrap_or(0), 0, "the server closed the connection");
}
