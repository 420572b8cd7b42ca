//! HTTP/2, gRPC and HTTPS end to end.
//!
//! gRPC: a revision deployed with `--use-http2` (its port named `h2c`) runs the test
//! app's tonic server (`testapp grpc`), and a real tonic client calls it through Wharf's
//! ingress: unary calls with metadata and trailers, a bidirectional stream whose replies
//! interleave with its requests, a client deadline and an abandoned stream that cancel the
//! call inside the instance, and the revision's request timeout as DEADLINE_EXCEEDED. The
//! second test deploys with `grpc` startup and liveness probes (the standard health protocol).
//!
//! HTTPS: a server started with `WHARF_HTTPS_ADDR` serves service hosts over TLS with
//! certificates of its local CA (which the test trusts): h2 by ALPN, `X-Forwarded-Proto:
//! https`, gRPC over TLS, and no certificate for a name it does not serve.

use std::path::Path;
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use serde_json::{Value, json};
use wharf_testsupport::{WharfServer, service_host, testapp_image};

const PARENT: &str = "/v2/projects/demo/locations/us-central1";

/// The test app's messages (`crates/wharf-testapp/src/grpc.rs` holds the same structs: the
/// wire contract, as a `.proto` would be).
#[derive(Clone, PartialEq, prost::Message)]
struct EchoRequest {
    #[prost(string, tag = "1")]
    message: String,
    #[prost(uint64, tag = "2")]
    sleep_ms: u64,
    #[prost(int32, tag = "3")]
    fail_code: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct EchoReply {
    #[prost(string, tag = "1")]
    message: String,
    #[prost(string, tag = "2")]
    revision: String,
    #[prost(string, tag = "3")]
    forwarded_proto: String,
    #[prost(string, tag = "4")]
    forwarded_for: String,
}

struct Env {
    server: WharfServer,
    image: String,
    _work: tempfile::TempDir,
}

fn setup() -> Env {
    setup_with(&[])
}

fn setup_with(env: &[(&str, &str)]) -> Env {
    let work = tempfile::tempdir().unwrap();
    let built = testapp_image(work.path(), "v1").unwrap();
    let server = WharfServer::start_with_env(Path::new(env!("CARGO_BIN_EXE_wharf")), env).unwrap();
    let out = server.cli(&["images", "import", &built.layout.to_string_lossy(), "--tag", "grpc:v1"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let image = format!("{}/grpc:v1", server.addrs.registry_addr);
    // These tests are about protocols, not invocation rights: the project's services are
    // public (a project binding of allUsers to run.invoker, which every service inherits).
    let out = server
        .cli(&["projects", "add-iam-policy-binding", "demo", "--member=allUsers", "--role=roles/run.invoker"])
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Env { server, image, _work: work }
}

impl Env {
    fn ok(&self, args: &[&str]) -> String {
        let out = self.server.cli(args).unwrap();
        assert!(out.status.success(), "wharf {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A gRPC client of `service` through the ingress (the service's host as `:authority`).
    async fn grpc(&self, service: &str) -> tonic::client::Grpc<tonic::transport::Channel> {
        let origin = format!("http://{}", service_host(service, "demo")).parse().unwrap();
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.server.addrs.ingress_addr))
            .unwrap()
            .origin(origin)
            .connect()
            .await
            .unwrap();
        tonic::client::Grpc::new(channel)
    }

    async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let client = wharf_testsupport::http_client().timeout(Duration::from_secs(60)).build().unwrap();
        let mut request = client.request(method, self.server.api_url(path)).bearer_auth(&self.server.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Creates a service from `template` through the API and waits for its operation.
    async fn create(&self, id: &str, template: Value) -> Value {
        let (status, op) = self
            .api(
                reqwest::Method::POST,
                &format!("{PARENT}/services?serviceId={id}"),
                Some(json!({"template": template})),
            )
            .await;
        assert_eq!(status, 200, "{op}");
        let name = op["name"].as_str().unwrap().to_owned();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (status, op) = self.api(reqwest::Method::GET, &format!("/v2/{name}"), None).await;
            assert_eq!(status, 200, "{op}");
            if op["done"] == true {
                return op;
            }
            assert!(Instant::now() < deadline, "operation {name} never completed: {op}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn unary(
    grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
    method: &'static str,
    request: tonic::Request<EchoRequest>,
) -> Result<tonic::Response<EchoReply>, tonic::Status> {
    grpc.ready().await.unwrap();
    grpc.unary(request, PathAndQuery::from_static(method), tonic_prost::ProstCodec::default()).await
}

fn echo(message: &str) -> EchoRequest {
    EchoRequest { message: message.to_owned(), ..EchoRequest::default() }
}

/// What the instance's Stats call reports: `cancelled=N abandoned=M`.
async fn stats(grpc: &mut tonic::client::Grpc<tonic::transport::Channel>) -> String {
    unary(grpc, "/wharf.test.Echo/Stats", tonic::Request::new(echo(""))).await.unwrap().into_inner().message
}

async fn wait_for_stats(grpc: &mut tonic::client::Grpc<tonic::transport::Channel>, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = stats(grpc).await;
        if now == want {
            return;
        }
        assert!(Instant::now() < deadline, "the instance reports {now:?}, never {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Opens a Chat stream with a raw HTTP/2 client, exchanges one message, then resets the
/// stream with CANCEL while both directions are open.
async fn cancel_a_chat_midway(env: &Env, service: &str) {
    use prost::Message as _;
    let tcp = tokio::net::TcpStream::connect(env.server.addrs.ingress_addr.as_str()).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post(format!("http://{}/wharf.test.Echo/Chat", service_host(service, "demo")))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();
    let message = echo("before the cancel").encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&message);
    send.send_data(bytes::Bytes::from(frame), false).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(20), response).await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let reply = tokio::time::timeout(Duration::from_secs(20), body.data()).await.unwrap().unwrap().unwrap();
    let reply = EchoReply::decode(&reply[5..]).unwrap();
    assert_eq!(reply.message, "before the cancel");
    send.send_reset(h2::Reason::CANCEL);
    drop((body, send, client));
    connection.abort();
}

#[tokio::test]
async fn grpc_unary_and_bidirectional_streams_pass_through_wharf() {
    let env = setup();
    #[rustfmt::skip]
    let out = env.ok(&["run", "deploy", "echo", "--image", &env.image, "--project", "demo", "--use-http2",
        "--args=grpc", "--timeout=3s", "--max-instances=1"]);
    assert!(out.contains("Service URL"), "{out}");
    let mut grpc = env.grpc("echo").await;

    // Unary, with the forwarding headers the instance saw.
    let reply = unary(&mut grpc, "/wharf.test.Echo/Unary", tonic::Request::new(echo("hello"))).await.unwrap();
    let reply = reply.into_inner();
    assert_eq!(reply.message, "hello");
    assert!(reply.revision.starts_with("echo-00001-"), "{reply:?}");
    assert_eq!((reply.forwarded_proto.as_str(), reply.forwarded_for.as_str()), ("http", "127.0.0.1"));

    // A failed call: its status, message and custom metadata come back in the trailers.
    let failing = EchoRequest { message: "no such thing".into(), fail_code: 5, ..EchoRequest::default() };
    let status = unary(&mut grpc, "/wharf.test.Echo/Unary", tonic::Request::new(failing)).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (tonic::Code::NotFound, "no such thing"));
    assert_eq!(status.metadata().get("x-testapp").map(|v| v.to_str().unwrap()), Some("failed"));

    // Bidirectional: each reply arrives before the next request is sent.
    let (requests, outbound) = tokio::sync::mpsc::channel::<EchoRequest>(4);
    grpc.ready().await.unwrap();
    let response = grpc
        .streaming(
            tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(outbound)),
            PathAndQuery::from_static("/wharf.test.Echo/Chat"),
            tonic_prost::ProstCodec::<EchoRequest, EchoReply>::default(),
        )
        .await
        .unwrap();
    let mut replies = response.into_inner();
    for word in ["one", "two", "three"] {
        requests.send(echo(word)).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(20), replies.message()).await.unwrap().unwrap();
        assert_eq!(reply.map(|r| r.message).as_deref(), Some(word));
    }
    // The client ends its side: the server ends the call with OK.
    drop(requests);
    let end = tokio::time::timeout(Duration::from_secs(20), replies.message()).await.unwrap();
    assert_eq!(end.map(|r| r.map(|r| r.message)).unwrap(), None);
    assert_eq!(stats(&mut grpc).await, "cancelled=0 abandoned=0");

    // A client cancels a stream mid-way (RST_STREAM CANCEL, what grpc-go sends when its
    // context is cancelled): the reset reaches the handler in the instance.
    cancel_a_chat_midway(&env, "echo").await;
    wait_for_stats(&mut grpc, "cancelled=1 abandoned=0").await;

    // A client deadline shorter than the call: the client gives up, and the call is
    // cancelled inside the instance too.
    let mut slow = tonic::Request::new(EchoRequest { message: "slow".into(), sleep_ms: 2000, fail_code: 0 });
    slow.set_timeout(Duration::from_millis(300));
    let status = unary(&mut grpc, "/wharf.test.Echo/Unary", slow).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Cancelled, "tonic reports its own deadline as Cancelled: {status:?}");
    wait_for_stats(&mut grpc, "cancelled=1 abandoned=1").await;

    // Past the revision's request timeout (3s), Wharf answers DEADLINE_EXCEEDED, as gRPC.
    let too_slow = EchoRequest { message: "too slow".into(), sleep_ms: 30_000, fail_code: 0 };
    let status = unary(&mut grpc, "/wharf.test.Echo/Unary", tonic::Request::new(too_slow)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("upstream request timeout"), "{status:?}");
    wait_for_stats(&mut grpc, "cancelled=1 abandoned=2").await;

    // The revision stores its protocol as it was given.
    let (status, service) = env.api(reqwest::Method::GET, &format!("{PARENT}/services/echo"), None).await;
    assert_eq!(status, 200, "{service}");
    assert_eq!(service["template"]["containers"][0]["ports"][0]["name"], "h2c", "{service}");
}

#[tokio::test]
async fn grpc_health_probes_decide_readiness_and_say_why_they_failed() {
    let env = setup();
    let probe = |service: &str| json!({"grpc": {"service": service}, "periodSeconds": 1, "failureThreshold": 2});
    let container = |extra: Value| {
        let mut c = json!({"image": env.image, "args": ["grpc"], "ports": [{"name": "h2c", "containerPort": 8080}],
            "startupProbe": probe(""), "livenessProbe": probe("wharf.test.Echo")});
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        c
    };

    // Healthy: SERVING for the server and for the named service.
    let op = env.create("healthy", json!({"containers": [container(json!({}))]})).await;
    assert_eq!(op["error"], Value::Null, "{op}");
    let mut grpc = env.grpc("healthy").await;
    let reply = unary(&mut grpc, "/wharf.test.Echo/Unary", tonic::Request::new(echo("up"))).await.unwrap();
    assert_eq!(reply.into_inner().message, "up");

    // NOT_SERVING: the revision never becomes ready, and the reason names the answer.
    let sick = container(json!({"env": [{"name": "TESTAPP_GRPC_NOT_SERVING", "value": "1"}]}));
    let op = env.create("sick", json!({"containers": [sick]})).await;
    let message = op["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("gRPC health probe on port 8080") && message.contains("NOT_SERVING"), "{op}");

    // A server without the health service (the HTTP/1 test app): the probe says so.
    let http1 = json!({"image": env.image, "startupProbe": probe("")});
    let op = env.create("plain", json!({"containers": [http1]})).await;
    let message = op["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("gRPC health probe on port 8080 failed: HTTP status 404"), "{op}");
}

#[tokio::test]
async fn https_serves_service_hosts_with_the_local_ca_over_h2_grpc_streams_and_websockets() {
    let env = setup_with(&[("WHARF_HTTPS_ADDR", "127.0.0.1:0")]);
    let https: std::net::SocketAddr =
        env.server.addrs.https_addr.as_deref().expect("httpsAddr in server.json").parse().unwrap();
    let ca_path = env.server.data_dir().join("tls/local-ca.pem");
    let ca = std::fs::read(&ca_path).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    let key_mode = std::fs::metadata(env.server.data_dir().join("tls/local-ca-key.pem")).unwrap().permissions().mode();
    assert_eq!(key_mode & 0o777, 0o600);
    env.ok(&["run", "deploy", "web", "--image", &env.image, "--project", "demo"]);
    #[rustfmt::skip]
    env.ok(&["run", "deploy", "echo", "--image", &env.image, "--project", "demo", "--use-http2", "--args=grpc"]);
    let web = service_host("web", "demo");

    // HTTP/2 over TLS (ALPN), and the app learns the client used HTTPS.
    let client = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .resolve(&web, https)
        .resolve("unknown.us-central1.localhost", https)
        .build()
        .unwrap();
    let r = client.get(format!("https://{web}:{}/headers", https.port())).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.version()), (200, reqwest::Version::HTTP_2));
    let headers: Value = r.json().await.unwrap();
    assert_eq!(headers["x-forwarded-proto"], "https", "{headers}");

    // A streamed response arrives over HTTPS chunk by chunk, as it does over plain HTTP.
    let streamed = client.get(format!("https://{web}:{}/stream?chunks=3&ms=50", https.port())).send().await.unwrap();
    assert_eq!(streamed.status().as_u16(), 200);
    assert_eq!(streamed.text().await.unwrap(), "chunk 0\nchunk 1\nchunk 2\n");

    // A WebSocket over HTTPS (HTTP/1.1 upgrade through TLS): a text frame comes back echoed.
    let http1 = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .resolve(&web, https)
        .build()
        .unwrap();
    let upgrade = http1
        .get(format!("https://{web}:{}/ws", https.port()))
        .header("Upgrade", "websocket")
        .header("Connection", "Upgrade")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("Sec-WebSocket-Version", "13")
        .send()
        .await
        .unwrap();
    assert_eq!(upgrade.status().as_u16(), 101);
    let mut ws = upgrade.upgrade().await.unwrap();
    let (mask, text) = ([7u8, 1, 8, 2], b"over tls");
    let mut frame = vec![0x81, 0x80 | u8::try_from(text.len()).unwrap()];
    frame.extend_from_slice(&mask);
    frame.extend(text.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    ws.write_all(&frame).await.unwrap();
    let mut header = [0u8; 2];
    ws.read_exact(&mut header).await.unwrap();
    assert_eq!(header[0], 0x81, "a final text frame");
    let mut echoed = vec![0u8; usize::from(header[1] & 0x7f)];
    ws.read_exact(&mut echoed).await.unwrap();
    assert_eq!(echoed, text);

    // A name the ingress does not serve gets no certificate at all.
    let refused = client.get(format!("https://unknown.us-central1.localhost:{}/", https.port())).send().await;
    assert!(refused.is_err(), "{refused:?}");

    // gRPC over TLS.
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ca))
        .domain_name(service_host("echo", "demo"));
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{https}"))
        .unwrap()
        .origin(format!("https://{}", service_host("echo", "demo")).parse().unwrap())
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    let reply = unary(&mut grpc, "/wharf.test.Echo/Unary", tonic::Request::new(echo("secure"))).await.unwrap();
    let reply = reply.into_inner();
    assert_eq!((reply.message.as_str(), reply.forwarded_proto.as_str()), ("secure", "https"));

    // Plain HTTP keeps working on the ingress for local use.
    let plain = wharf_testsupport::http_client().build().unwrap();
    let r = plain.get(format!("http://{}/", env.server.addrs.ingress_addr)).header("Host", &web).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}
