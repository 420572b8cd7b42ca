//! [`WharfLab`]: what most end-to-end tests start from: a real `wharf server` (see
//! [`WharfServer`]) with the testapp image imported into its registry under a tag the test
//! names, plus the few calls every suite makes (the CLI with and without an expected success,
//! a GET through the ingress with the owner's token, the number of running instances).
//! Suites wrap it in their own `Env` for what only they need.

use std::path::Path;
use std::time::Duration;

use crate::{WharfServer, testapp_image};

#[derive(Debug)]
pub struct WharfLab {
    pub server: WharfServer,
    /// The imported testapp image, as a deploy's `--image` names it (`REGISTRY/TAG`).
    pub image: String,
    /// Holds the image layout; removed with the lab.
    pub work: tempfile::TempDir,
}

impl WharfLab {
    /// Starts `wharf` (a test's `env!("CARGO_BIN_EXE_wharf")`) with `env` added to the
    /// server's environment, and imports the testapp image as `tag` (e.g. `testapp:v1`).
    pub fn start(wharf: &Path, env: &[(&str, &str)], tag: &str) -> WharfLab {
        let work = tempfile::tempdir().expect("a temporary directory");
        let built = testapp_image(work.path(), "v1").expect("the testapp image");
        let server = WharfServer::start_with_env(wharf, env).expect("a started wharf server");
        let layout = built.layout.to_string_lossy();
        let out = server.cli(&["images", "import", &layout, "--tag", tag]).expect("wharf images import");
        assert!(out.status.success(), "importing the testapp image: {}", String::from_utf8_lossy(&out.stderr));
        let image = format!("{}/{tag}", server.addrs.registry_addr);
        WharfLab { server, image, work }
    }

    /// Runs the CLI: whether it succeeded, its stdout and its stderr.
    pub fn wharf(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.server.cli(args).expect("the wharf CLI runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs the CLI, which must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.wharf(args);
        assert!(ok, "wharf {args:?} failed:\n{stderr}");
        stdout
    }

    /// GET `path` on a service's `host` through the ingress (the Host header a browser would
    /// send for the service's URL; see [`crate::service_host`]), with the owner's token, so
    /// private services answer too.
    pub async fn get(&self, host: &str, path: &str) -> (u16, String) {
        let client = self.server.client_builder().timeout(Duration::from_secs(60)).build().expect("an HTTP client");
        let r = client
            .get(format!("http://{}{path}", self.server.addrs.ingress_addr))
            .header("Host", host)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} on {host}: {e}"));
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }

    /// How many instances the server runs now (its `instances/` directories).
    pub fn instances(&self) -> usize {
        std::fs::read_dir(self.server.data_dir().join("instances")).map(|d| d.count()).unwrap_or(0)
    }
}

/// Declares a suite's own lab type: a newtype over [`WharfLab`] that derefs to it, so the
/// suite adds the calls only it needs (`impl Env { .. }`) and keeps the lab's own.
///
/// ```ignore
/// wharf_testsupport::suite_lab!(Env);
/// fn setup() -> Env { Env(WharfLab::start(Path::new(env!("CARGO_BIN_EXE_wharf")), &[], "testapp:v1")) }
/// ```
#[macro_export]
macro_rules! suite_lab {
    ($name:ident) => {
        /// The suite's lab: [`WharfLab`] and what only these tests need.
        struct $name($crate::WharfLab);

        impl ::std::ops::Deref for $name {
            type Target = $crate::WharfLab;
            fn deref(&self) -> &$crate::WharfLab {
                &self.0
            }
        }

        impl ::std::ops::DerefMut for $name {
            fn deref_mut(&mut self) -> &mut $crate::WharfLab {
                &mut self.0
            }
        }
    };
}
