//! The `real app` row: a Flask app served by gunicorn, the way Cloud Run's Python quickstart
//! runs it (`gunicorn --bind :$PORT --workers 1 --threads 8 main:app`), in an image of the
//! host's python3 with Flask and gunicorn from PyPI (`wharf_testsupport::python_image`).
//! wrk at 64 connections through Wharf against the same instance reached directly, in
//! alternating rounds: with an app that spends real time per request, the share the proxy
//! takes of the machine matters less than with the testapp.

use std::path::Path;
use std::time::Duration;

use wharf_testsupport::WharfServer;

use crate::system::{Row, cli, percentile, which, wrk};

/// The app: one JSON route, as a small API would answer.
const MAIN_PY: &[u8] = br#"from flask import Flask, jsonify

app = Flask(__name__)


@app.get("/")
def index():
    return jsonify(message="hello from flask", service="realapp")
"#;

/// Builds and imports the image, deploys it warm (exactly one instance, always there, CPU
/// always on, so the direct runs find it running: see [`crate::proxy::deploy_warm`]), and
/// measures it. Before each run the instance's address is checked to be the one measured.
pub async fn rows(server: &WharfServer, dir: &Path, rounds: usize, duration: &str) -> anyhow::Result<Vec<Row>> {
    if !which("wrk") {
        return Ok(Vec::new());
    }
    let image = wharf_testsupport::python_image(dir, "realapp", &["flask", "gunicorn"], &[("main.py", MAIN_PY)])?;
    cli(server, &["images", "import", &image.layout.to_string_lossy(), "--tag", "realapp:v1"])?;
    let image_ref = format!("{}/realapp:v1", server.addrs.registry_addr);
    cli(
        server,
        &[
            "run",
            "deploy",
            "realapp",
            "--image",
            &image_ref,
            "--project",
            "bench",
            "--min-instances",
            "1",
            "--max-instances",
            "1",
            "--no-cpu-throttling",
            "--command",
            "python3",
            // One argument: clap would take a leading "-m" for a flag of its own.
            "--args=-m,gunicorn,--bind,:8080,--workers,1,--threads,8,main:app",
        ],
    )?;
    let host = wharf_testsupport::service_host("realapp", "bench");
    let ingress = format!("http://{}/", server.addrs.ingress_addr);
    let client = server.client_builder().timeout(Duration::from_secs(60)).build()?;
    let body = client.get(&ingress).header("Host", &host).send().await?.error_for_status()?.text().await?;
    anyhow::ensure!(body.contains("hello from flask"), "the Flask app answered {body:?}");
    let direct = format!("http://{}/", crate::system::instance_address(server, "realapp")?);
    let (mut through, mut straight, mut failed) = (Vec::new(), Vec::new(), 0.0);
    for _ in 0..rounds {
        for (results, url, auth) in
            [(&mut through, &ingress, Some((host.as_str(), server.token.as_str()))), (&mut straight, &direct, None)]
        {
            // wrk counts failed answers in its rate: a run with failures is reported, not hidden.
            anyhow::ensure!(
                format!("http://{}/", crate::system::instance_address(server, "realapp")?) == direct,
                "the realapp instance changed during the benchmark: the direct runs would miss it"
            );
            let run = wrk(url, auth, duration)?;
            failed += run["errors"];
            results.push(run["rps"]);
        }
    }
    cli(server, &["run", "services", "delete", "realapp", "--project", "bench", "--quiet"])?;
    Ok(vec![Row {
        metric: "real app throughput: Flask on gunicorn (1 worker, 8 threads), 64 connections".into(),
        wharf: percentile(&through, 0.5),
        baseline: Some(percentile(&straight, 0.5)),
        baseline_name: if failed > 0.0 {
            format!("direct to the instance, median of {rounds}; {failed} FAILED requests, not comparable")
        } else {
            format!("direct to the instance, median of {rounds} (target: >= 0.95x)")
        },
        unit: "req/s",
        higher_is_better: true,
    }])
}
