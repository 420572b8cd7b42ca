//! What the ingress's access check ([`wharf_router::Gate::admit`]) costs per request, for each
//! kind of caller, measured side by side in one run: `cargo run --release -p wharf-router
//! --example access_check`. The first check of a token pays for its lookup (SQLite for
//! access tokens, an RSA verification for ID tokens); every later one is served from memory.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use hyper::header::{HeaderMap, HeaderValue};
use wharf_iam::policy::{Binding, Policy};
use wharf_iam::{Iam, Principal, Resource};
use wharf_router::{Access, Gate, IngressSetting};

const HOST: &str = "api-abc.us-central1.localhost";
const ROUNDS: u32 = 100_000;

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let iam =
        Iam::open(wharf_store::Store::open(&dir.path().join("state.db")).expect("store"), dir.path()).expect("iam");
    iam.issuer.set_url("http://127.0.0.1:8000");
    let owner = std::fs::read_to_string(dir.path().join(wharf_iam::OWNER_TOKEN_FILE)).expect("owner token");
    let access = Access {
        resource: Resource::service("p", "us-central1", "api"),
        hosts: vec![HOST.to_owned()],
        invoker_iam_disabled: false,
        ingress: IngressSetting::All,
    };
    let sa = Principal::ServiceAccount("caller@p.iam.gserviceaccount.com".into());
    let invoker = Binding { role: "roles/run.invoker".into(), members: vec![sa.name()], condition: None };
    iam.policies.set(&access.resource, &Policy { bindings: vec![invoker], ..Policy::default() }).expect("policy");
    let gate = Gate::new(iam.clone(), vec![(Ipv4Addr::new(10, 213, 0, 0), 16)]);
    let (id_token, _) = iam.issuer.sign_id_token(&sa, &format!("http://{HOST}:8080")).expect("id token");
    let access_token = iam.mint_access_token(&sa, 3600).expect("access token").token;

    let callers = [
        ("owner token", format!("Bearer {}", owner.trim())),
        ("service account ID token", format!("Bearer {id_token}")),
        ("service account access token", format!("Bearer {access_token}")),
    ];
    println!("{:<32} {:>14} {:>16}", "caller", "first check", "then per check");
    for (what, authorization) in callers {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_str(&authorization).expect("header"));
        let remote = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let first = Instant::now();
        gate.admit(&access, &headers, remote).expect("admitted");
        let first = first.elapsed();
        let start = Instant::now();
        for _ in 0..ROUNDS {
            gate.admit(&access, &headers, remote).expect("admitted");
        }
        let each = start.elapsed() / ROUNDS;
        println!("{what:<32} {:>11.1} us {:>13.2} us", first.as_secs_f64() * 1e6, each.as_secs_f64() * 1e6);
    }
}
