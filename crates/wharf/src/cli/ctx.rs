//! What every `wharf run` verb works with: a connected client, the project and region it
//! addresses, and the `--format` to print results with. Knows the API's paths, not the verbs.

use std::io::Write as _;

use anyhow::bail;
use wharf_api::Service;

use super::{Client, check};

#[derive(Debug)]
pub struct Ctx {
    pub client: Client,
    pub project: String,
    pub region: String,
    pub format: Option<String>,
}

impl Ctx {
    /// `/v2/projects/{project}/locations/{region}`, the parent of services and jobs.
    pub fn parent(&self) -> String {
        format!("/v2/projects/{}/locations/{}", self.project, self.region)
    }

    pub fn service_path(&self, service: &str) -> String {
        format!("{}/services/{service}", self.parent())
    }

    /// Where a service's IAM policy lives.
    pub fn service_policy(&self, service: &str) -> crate::cli::policy::PolicyTarget {
        crate::cli::policy::PolicyTarget {
            path: self.service_path(service),
            get_with_post: false,
            label: format!("service [{service}]"),
        }
    }

    /// Where a job's IAM policy lives.
    pub fn job_policy(&self, job: &str) -> crate::cli::policy::PolicyTarget {
        crate::cli::policy::PolicyTarget {
            path: format!("{}/jobs/{job}", self.parent()),
            get_with_post: false,
            label: format!("job [{job}]"),
        }
    }

    /// gcloud's message for a service that does not exist.
    pub fn missing(&self, service: &str) -> String {
        format!("Cannot find service [{service}] in project [{}] region [{}]", self.project, self.region)
    }

    /// The service, or `None` when the API says it does not exist.
    pub async fn get_service(&self, name: &str) -> anyhow::Result<Option<Service>> {
        let response = self.client.api_request(reqwest::Method::GET, &self.service_path(name)).send().await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(Some(check(response).await?.json().await?))
    }

    /// Prints `value` to stdout with `--format`, else with `default`.
    pub fn print(&self, value: &serde_json::Value, default: &str) -> anyhow::Result<()> {
        let format = self.format.as_deref().unwrap_or(default);
        let text = wharf_format::render(value, format)?;
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())?;
        Ok(())
    }

    /// Waits for an operation, returning its response or failing with its error.
    pub async fn wait(&self, op: &wharf_api::Operation) -> anyhow::Result<Option<serde_json::Value>> {
        let mut op = op.clone();
        while !op.done {
            let response = self
                .client
                .api_request(reqwest::Method::POST, &format!("/v2/{}:wait", op.name))
                .json(&serde_json::json!({"timeout": "30s"}))
                .send()
                .await?;
            op = check(response).await?.json().await?;
        }
        if let Some(error) = op.error {
            bail!("{}", error.message);
        }
        Ok(op.response)
    }
}
