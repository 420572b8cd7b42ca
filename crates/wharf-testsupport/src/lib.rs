//! Test support for Wharf's end-to-end tests and benchmarks:
//! - [`browser`]: a headless chromium driven over WebDriver, for the web console's tests;
//! - [`dns`]: a DNS server standing for the host's resolver, answering one name;
//! - [`image`]: builds the testapp binary and packages it as a multi-layer OCI image layout,
//!   with no network access;
//! - [`python`]: a Python image from the host's python3 and packages pip installs from PyPI;
//! - [`node`]: a Node.js base image for source builds from the host's node and npm;
//! - [`server`]: starts a real `wharf server` on free ports in a temporary data directory and
//!   stops it (even when a test fails), in a sealed environment (no developer config);
//! - [`lab`]: [`WharfLab`], a server with the testapp image imported, and the calls every
//!   end-to-end suite makes;
//! - [`leaks`]: finds and removes what a harness's scope left on the machine (mounts, cgroups,
//!   namespaces, links, processes); [`leaks::LeakGuard`] does it on drop, even on panic;
//! - [`wait_until`]: waits for a condition with a deadline, instead of sleeping.

pub mod browser;
pub mod dns;
pub mod image;
pub mod lab;
pub mod leaks;
pub mod node;
pub mod python;
pub mod server;

use std::time::{Duration, Instant};

pub use image::{TestImage, testapp_image};
pub use lab::WharfLab;
pub use node::node_build_image;
pub use python::{python_build_image, python_image};
pub use server::WharfServer;

/// An HTTP client for talking to a test server: no proxy, and pooled connections dropped after
/// 5 s idle. Wharf's listeners close a keep-alive connection that stays idle past their
/// header-read timeout (15 s); a test that blocks its runtime longer than that (a CLI call, a
/// disk scan) would otherwise reuse a connection whose close it has not yet seen and get
/// `IncompleteMessage`. Any client that pools connections must idle them out before the server does.
pub fn http_client() -> reqwest::ClientBuilder {
    reqwest::Client::builder().no_proxy().pool_idle_timeout(Duration::from_secs(5))
}

/// Polls `condition` every 20 ms until it returns `Some`, failing after `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut condition: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = condition() {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The host a service answers on at a test server (default region, domain `localhost`):
/// `{service}-{project hash}.us-central1.localhost`.
pub fn service_host(service: &str, project: &str) -> String {
    let parent = wharf_api::names::Parent { project: project.to_owned(), location: "us-central1".to_owned() };
    wharf_api::names::service_host(service, &parent, "localhost")
}
