//! Invoker check rows: what authenticating one request to a private service costs the
//! ingress (`Iam::authenticate_invoker`, which the router's gate calls for every request
//! carrying a token), measured in-process so nothing else is in the figure. Three cases: an
//! ID token seen for the first time (an RS256 signature check), the same token again (the
//! verified-token cache: what a client reusing its token costs), and an access token minted
//! by Wharf (a hash looked up in the remembered-token cache). The issue's bound is "tens of
//! microseconds"; the RS256 row is the cost a client pays once per token.

use std::time::Instant;

use wharf_iam::{Iam, Principal};
use wharf_store::Store;

use crate::system::Row;

const AUDIENCE: &str = "http://hello-123.us-central1.localhost";

pub fn rows(iterations: usize) -> anyhow::Result<Vec<Row>> {
    let dir = tempfile::Builder::new().prefix("wharf-bench-iam-").tempdir()?;
    let db = Store::open(&dir.path().join("state.db"))?;
    let iam = Iam::open(db, dir.path())?;
    iam.issuer.set_url("http://127.0.0.1:8080");
    iam.issuer.load()?;
    let caller = Principal::User("bench@example.com".into());
    let audience_ok = |aud: &str| aud == AUDIENCE;

    // First use of each token: a fresh token per iteration, signed beforehand.
    let first_uses = iterations.min(2_000);
    let tokens: Vec<String> = (0..first_uses)
        .map(|_| iam.issuer.sign_id_token(&caller, AUDIENCE).map(|(t, _)| t))
        .collect::<Result<_, _>>()?;
    let started = Instant::now();
    for token in &tokens {
        iam.authenticate_invoker(token, audience_ok)?;
    }
    let first = per_call_us(started, first_uses);

    let token = &tokens[0];
    let started = Instant::now();
    for _ in 0..iterations {
        iam.authenticate_invoker(token, audience_ok)?;
    }
    let cached = per_call_us(started, iterations);

    let access = iam.mint_access_token(&caller, 3600)?;
    iam.authenticate_invoker(&access.token, audience_ok)?;
    let started = Instant::now();
    for _ in 0..iterations {
        iam.authenticate_invoker(&access.token, audience_ok)?;
    }
    let access = per_call_us(started, iterations);

    let row = |metric: &str, value: f64| Row {
        metric: metric.into(),
        wharf: value,
        baseline: None,
        baseline_name: "(target: tens of µs)".into(),
        unit: "µs",
        higher_is_better: false,
    };
    Ok(vec![
        row("invoker check per request, ID token first seen (RS256)", first),
        row("invoker check per request, ID token seen before", cached),
        row("invoker check per request, Wharf access token", access),
    ])
}

fn per_call_us(started: Instant, calls: usize) -> f64 {
    started.elapsed().as_secs_f64() * 1e6 / calls.max(1) as f64
}
