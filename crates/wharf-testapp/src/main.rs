//! `wharf-testapp`: the HTTP app inside Wharf's test image, in the role of Knative's test
//! images. It listens on `$PORT` (default 8080) and offers one endpoint per behaviour a test
//! needs to provoke or observe:
//!
//! | path | effect |
//! |---|---|
//! | `/` | `Hello from <K_REVISION>!` |
//! | `/env` | the environment as a JSON object |
//! | `/headers` | the request headers as a JSON object |
//! | `/sleep?ms=N` | answers after N ms |
//! | `/work?ms=N` | answers after N ms with `{"instance", "inflight", "max"}`: the hostname, the `/work` requests in flight here when this one arrived (itself included), and the most ever seen |
//! | `/inflight` | `{"instance", "inflight", "max"}` of `/work` requests now |
//! | `/cpu?ms=N&threads=T` | burns CPU on T threads (default 1) for N ms of wall time, reports iterations done |
//! | `/alloc?mib=N` | allocates and touches N MiB, kept until exit |
//! | `/exit?code=N` | exits with code N |
//! | `/status?code=N` | answers with status N |
//! | `/stream?chunks=N&ms=M` | N chunks, M ms apart |
//! | `/echo` (POST) | streams the request body back |
//! | `/ws` | WebSocket echo |
//! | `/log?message=M&severity=S&stream=stdout\|stderr&json=1` | writes a log line |
//! | `/log?message=M&count=N` | writes N stdout lines `M <i>` as fast as it can (a noisy instance) |
//! | `/file?path=P` | GET reads P, PUT writes the body to P |
//! | `/hostname` | the UTS hostname (Wharf names it after the instance) |
//! | `/ip` | the instance's own IPv4 address (the source address of its default route) |
//! | `/connect?addr=IP:PORT` | opens a TCP connection (1 s timeout), reports `connected` or the error |
//! | `/resolve?name=N` | the IPv4 addresses N resolves to (the libc resolver: `/etc/resolv.conf`), one a line, or the error |
//! | `/fetch?addr=HOST:PORT&path=P&header=NAME:VALUE` | an HTTP/1.1 GET of P (default `/`) at HOST:PORT (resolved as above) with `Host: HOST:PORT` and the one extra header if given; the raw response (5 s timeout) |
//! | `/spin/start` | starts (once) a background thread counting as fast as it can, between requests too |
//! | `/spin/count` | `{"instance", "count", "longestPauseMs"}`: the background count, and the longest time it made no progress (until now) |
//! | `/sandbox?fork_max=N` | tries what the sandbox must refuse, reports operation -> `ok`/errno as JSON (`sandbox.rs`) |
//!
//! As a job task (`testapp job`), it logs `task <index> attempt <attempt>` and, after
//! `TESTAPP_SLEEP_MS` (default 0), exits 0; it exits 1 instead when `TESTAPP_FAIL_TASK` names its
//! index and its attempt is below `TESTAPP_FAIL_ATTEMPTS` (default 1), after
//! `TESTAPP_FAIL_AFTER_MS` when set (instead of `TESTAPP_SLEEP_MS`), and prints `TESTAPP_ECHO`
//! when set. With `TESTAPP_CONNECT=IP:PORT` it first opens a TCP connection there (1 s timeout)
//! and prints `connect IP:PORT: connected` or the error.
//!
//! `testapp grpc` serves gRPC instead (HTTP/2 cleartext only: echo, bidirectional chat and the
//! standard health service; `grpc.rs`).
//!
//! `testapp idle` (the fork-bomb probe's children) waits for its stdin to close, then exits;
//! `testapp unshare-user` tries unshare(CLONE_NEWUSER) single-threaded and prints the errno.
//!
//! On SIGTERM it logs `testapp: received SIGTERM, exiting` and exits 0.
//! With `TESTAPP_NO_LISTEN=1` it never listens; with `TESTAPP_EXIT_CODE=N` it prints
//! `testapp: exiting early with code N` and exits at once (to test startup failures).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, Request};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use futures::StreamExt as _;

/// Memory handed out by `/alloc`, kept so it stays charged to the container.
static HELD: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

mod buildstep;
mod grpc;
mod sandbox;
/// `/work` requests in flight now, and the most ever in flight at once.
static INFLIGHT: AtomicUsize = AtomicUsize::new(0);
static INFLIGHT_MAX: AtomicUsize = AtomicUsize::new(0);

type Params = Query<HashMap<String, String>>;

fn param<T: std::str::FromStr>(q: &HashMap<String, String>, key: &str, default: T) -> T {
    q.get(key).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("idle") => sandbox::idle(),
        Some("unshare-user") => sandbox::unshare_user(),
        Some("grpc") => grpc::serve(),
        Some("build-probe") => buildstep::probe(&std::env::args().skip(2).collect::<Vec<_>>()),
        Some("fill") => {
            let path = std::env::args().nth(2).unwrap_or_else(|| "/fill".to_owned());
            buildstep::fill(&path, std::env::args().nth(3).and_then(|n| n.parse().ok()).unwrap_or(1))
        }
        _ => {}
    }
    serve();
}

#[tokio::main(flavor = "current_thread")]
async fn serve() {
    let port: u16 = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(8080);
    tokio::spawn(async {
        let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else { return };
        term.recv().await;
        println!("testapp: received SIGTERM, exiting");
        std::process::exit(0);
    });
    if std::env::args().nth(1).as_deref() == Some("job") {
        run_task().await;
    }
    if let Some(code) = std::env::var("TESTAPP_EXIT_CODE").ok().and_then(|c| c.parse::<i32>().ok()) {
        println!("testapp: exiting early with code {code}");
        std::process::exit(code);
    }
    if std::env::var("TESTAPP_NO_LISTEN").is_ok_and(|v| v == "1") {
        println!("testapp: TESTAPP_NO_LISTEN set, not listening");
        std::future::pending::<()>().await;
    }
    let app = Router::new()
        .route("/", get(hello))
        .route("/env", get(env))
        .route("/headers", get(headers))
        .route("/sleep", get(sleep))
        .route("/work", get(work))
        .route("/inflight", get(inflight))
        .route("/cpu", get(cpu))
        .route("/alloc", get(alloc))
        .route("/exit", get(exit))
        .route("/status", get(status))
        .route("/stream", get(stream))
        .route("/echo", any(echo))
        .route("/ws", get(ws))
        .route("/log", get(log))
        .route("/file", get(read_file).put(write_file))
        .route("/connect", get(connect))
        .route("/resolve", get(resolve))
        .route("/fetch", get(fetch))
        .route("/hostname", get(hostname))
        .route("/spin/start", get(spin_start))
        .route("/spin/count", get(spin_count))
        .route("/ip", get(own_ip))
        .route("/sandbox", get(probe_sandbox));
    let listener = match tokio::net::TcpListener::bind(("0.0.0.0", port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("testapp: cannot listen on port {port}: {e}");
            std::process::exit(1);
        }
    };
    println!("testapp: listening on port {port}");
    if let Err(e) = axum::serve(listener, app).await {
        eprintln!("testapp: server failed: {e}");
        std::process::exit(1);
    }
}

async fn hello() -> String {
    format!("Hello from {}!\n", std::env::var("K_REVISION").unwrap_or_else(|_| "unknown".into()))
}

async fn env() -> impl IntoResponse {
    axum::Json(std::env::vars().collect::<HashMap<_, _>>())
}

async fn headers(headers: HeaderMap) -> impl IntoResponse {
    let map: HashMap<String, String> =
        headers.iter().map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect();
    axum::Json(map)
}

async fn sleep(Query(q): Params) -> String {
    let ms: u64 = param(&q, "ms", 0);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    format!("slept {ms} ms\n")
}

/// Decrements the in-flight gauge when a `/work` request ends, even if it is cancelled.
struct InFlight;

impl Drop for InFlight {
    fn drop(&mut self) {
        INFLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

fn instance_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_owned()
}

async fn work(Query(q): Params) -> impl IntoResponse {
    let now = INFLIGHT.fetch_add(1, Ordering::SeqCst) + 1;
    let _guard = InFlight;
    let max = INFLIGHT_MAX.fetch_max(now, Ordering::SeqCst).max(now);
    tokio::time::sleep(Duration::from_millis(param(&q, "ms", 0))).await;
    axum::Json(serde_json::json!({"instance": instance_name(), "inflight": now, "max": max}))
}

async fn inflight() -> impl IntoResponse {
    axum::Json(serde_json::json!({
        "instance": instance_name(),
        "inflight": INFLIGHT.load(Ordering::SeqCst),
        "max": INFLIGHT_MAX.load(Ordering::SeqCst),
    }))
}

async fn cpu(Query(q): Params) -> String {
    let ms: u64 = param(&q, "ms", 100);
    let threads: usize = param(&q, "threads", 1usize).clamp(1, 64);
    let burners: Vec<_> = (0..threads)
        .map(|_| {
            tokio::task::spawn_blocking(move || {
                let start = Instant::now();
                let mut x: u64 = 1;
                let mut iterations: u64 = 0;
                while start.elapsed() < Duration::from_millis(ms) {
                    for _ in 0..10_000 {
                        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    }
                    iterations += 1;
                }
                std::hint::black_box(x);
                (iterations, start.elapsed())
            })
        })
        .collect();
    let (mut iterations, mut elapsed) = (0, Duration::ZERO);
    for burner in burners {
        let (i, e) = burner.await.unwrap_or_default();
        iterations += i;
        elapsed = elapsed.max(e);
    }
    format!("burned {} ms, {iterations} iterations\n", elapsed.as_millis())
}

async fn alloc(Query(q): Params) -> String {
    let mib: usize = param(&q, "mib", 1);
    for _ in 0..mib {
        // Touch every page so the memory is really charged.
        HELD.lock().unwrap_or_else(|p| p.into_inner()).push(vec![1u8; 1 << 20]);
    }
    format!("allocated {mib} MiB\n")
}

async fn exit(Query(q): Params) -> String {
    let code: i32 = param(&q, "code", 0);
    println!("testapp: exiting with code {code}");
    std::process::exit(code);
}

async fn status(Query(q): Params) -> Response {
    let code: u16 = param(&q, "code", 200);
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
    (status, format!("status {code}\n")).into_response()
}

async fn stream(Query(q): Params) -> Response {
    let chunks: usize = param(&q, "chunks", 5);
    let ms: u64 = param(&q, "ms", 100);
    let body = futures::stream::unfold(0usize, move |i| async move {
        if i == chunks {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        Some((Ok::<_, std::io::Error>(format!("chunk {i}\n")), i + 1))
    });
    Body::from_stream(body).into_response()
}

async fn echo(request: Request) -> Response {
    Body::from_stream(request.into_body().into_data_stream()).into_response()
}

async fn ws(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(|mut socket: WebSocket| async move {
        while let Some(Ok(message)) = socket.next().await {
            let reply = match message {
                Message::Text(t) => Message::Text(t),
                Message::Binary(b) => Message::Binary(b),
                Message::Close(_) => break,
                _ => continue,
            };
            if socket.send(reply).await.is_err() {
                break;
            }
        }
    })
}

async fn log(Query(q): Params) -> String {
    let message = q.get("message").cloned().unwrap_or_else(|| "hello log".into());
    if let Some(count) = q.get("count").and_then(|c| c.parse::<u64>().ok()) {
        let written = tokio::task::spawn_blocking(move || {
            use std::io::Write as _;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for i in 0..count {
                writeln!(out, "{message} {i}")?;
            }
            out.flush()
        })
        .await;
        return match written {
            Ok(Ok(())) => format!("logged {count}\n"),
            other => format!("writing failed: {other:?}\n"),
        };
    }
    let line = if q.get("json").is_some_and(|v| v == "1") {
        let severity = q.get("severity").cloned().unwrap_or_else(|| "INFO".into());
        serde_json::json!({"severity": severity, "message": message}).to_string()
    } else {
        message
    };
    if q.get("stream").is_some_and(|s| s == "stderr") {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
    "logged\n".into()
}

async fn read_file(Query(q): Params) -> Response {
    let Some(path) = q.get("path") else { return (StatusCode::BAD_REQUEST, "path= required\n").into_response() };
    match tokio::fs::read(path).await {
        Ok(bytes) => bytes.into_response(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (StatusCode::NOT_FOUND, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn write_file(Query(q): Params, body: axum::body::Bytes) -> Response {
    let Some(path) = q.get("path") else { return (StatusCode::BAD_REQUEST, "path= required\n").into_response() };
    match tokio::fs::write(path, &body).await {
        Ok(()) => (StatusCode::CREATED, format!("wrote {} bytes\n", body.len())).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn connect(Query(q): Params) -> Response {
    let Some(addr) = q.get("addr") else { return (StatusCode::BAD_REQUEST, "addr= required\n").into_response() };
    let attempt = tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr.as_str())).await;
    match attempt {
        Ok(Ok(_)) => "connected\n".into_response(),
        Ok(Err(e)) => (StatusCode::BAD_GATEWAY, format!("{e}\n")).into_response(),
        Err(_) => (StatusCode::GATEWAY_TIMEOUT, "timed out\n").into_response(),
    }
}

async fn resolve(Query(q): Params) -> Response {
    let Some(name) = q.get("name") else { return (StatusCode::BAD_REQUEST, "name= required\n").into_response() };
    match tokio::net::lookup_host((name.as_str(), 0)).await {
        Ok(addrs) => {
            let v4: Vec<String> = addrs.filter(|a| a.is_ipv4()).map(|a| format!("{}\n", a.ip())).collect();
            v4.concat().into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, format!("{e}\n")).into_response(),
    }
}

async fn fetch(Query(q): Params) -> Response {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Some(addr) = q.get("addr") else { return (StatusCode::BAD_REQUEST, "addr= required\n").into_response() };
    let path = q.get("path").map_or("/", String::as_str);
    let header = q.get("header").map(|h| format!("{h}\r\n")).unwrap_or_default();
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr.as_str()).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{header}Connection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).into_owned())
    };
    match tokio::time::timeout(Duration::from_secs(5), exchange).await {
        Ok(Ok(response)) => response.into_response(),
        Ok(Err(e)) => (StatusCode::BAD_GATEWAY, format!("{e}\n")).into_response(),
        Err(_) => (StatusCode::GATEWAY_TIMEOUT, "timed out\n").into_response(),
    }
}

/// The job-task mode: one unit of work, then exit.
async fn run_task() -> ! {
    let var = |k: &str| std::env::var(k).ok();
    let num = |k: &str, d: u64| var(k).and_then(|v| v.parse().ok()).unwrap_or(d);
    let index = num("CLOUD_RUN_TASK_INDEX", 0);
    let attempt = num("CLOUD_RUN_TASK_ATTEMPT", 0);
    println!("task {index} attempt {attempt}");
    if let Some(echo) = var("TESTAPP_ECHO") {
        println!("echo {echo}");
    }
    if let Some(addr) = var("TESTAPP_CONNECT") {
        let attempt = tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr.as_str())).await;
        match attempt {
            Ok(Ok(_)) => println!("connect {addr}: connected"),
            Ok(Err(e)) => println!("connect {addr}: {e}"),
            Err(_) => println!("connect {addr}: timed out"),
        }
    }
    let fails = var("TESTAPP_FAIL_TASK").and_then(|v| v.parse::<u64>().ok()) == Some(index)
        && attempt < num("TESTAPP_FAIL_ATTEMPTS", 1);
    let sleep_ms = num("TESTAPP_SLEEP_MS", 0);
    let sleep_ms = if fails { num("TESTAPP_FAIL_AFTER_MS", sleep_ms) } else { sleep_ms };
    tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
    if fails {
        eprintln!("task {index} attempt {attempt} failing on purpose");
        std::process::exit(1);
    }
    std::process::exit(0);
}

async fn own_ip() -> Response {
    // Connecting a UDP socket sends nothing; it picks the source address of the route.
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").and_then(|s| s.connect("169.254.1.1:9").map(|()| s));
    match probe.and_then(|s| s.local_addr()) {
        Ok(addr) => format!("{}\n", addr.ip()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn probe_sandbox(Query(q): Params) -> Response {
    let fork_max: usize = param(&q, "fork_max", 64);
    match tokio::task::spawn_blocking(move || sandbox::probe(fork_max)).await {
        Ok(report) => axum::Json(report).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("probe failed: {e}\n")).into_response(),
    }
}

/// The background counter of `/spin/*`: iterations, and when (ns after `SPIN_EPOCH`) the last
/// one ran and the longest gap between two.
static SPIN_STARTED: std::sync::Once = std::sync::Once::new();
static SPIN_EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
static SPIN_COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static SPIN_LAST_NS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static SPIN_LONGEST_NS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn spin_now_ns() -> u64 {
    u64::try_from(SPIN_EPOCH.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

async fn spin_start() -> axum::Json<serde_json::Value> {
    SPIN_STARTED.call_once(|| {
        SPIN_LAST_NS.store(spin_now_ns(), Ordering::SeqCst);
        std::thread::spawn(|| {
            loop {
                let now = spin_now_ns();
                let gap = now.saturating_sub(SPIN_LAST_NS.swap(now, Ordering::Relaxed));
                SPIN_LONGEST_NS.fetch_max(gap, Ordering::Relaxed);
                SPIN_COUNT.fetch_add(1, Ordering::Relaxed);
            }
        });
    });
    spin_count().await
}

async fn spin_count() -> axum::Json<serde_json::Value> {
    let current_gap = spin_now_ns().saturating_sub(SPIN_LAST_NS.load(Ordering::Relaxed));
    let longest = SPIN_LONGEST_NS.load(Ordering::Relaxed).max(current_gap);
    axum::Json(serde_json::json!({
        "instance": hostname().await.trim(),
        "count": SPIN_COUNT.load(Ordering::Relaxed),
        "longestPauseMs": longest / 1_000_000,
    }))
}

async fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default()
}
