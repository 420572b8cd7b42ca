//! `wharf run domain-mappings create|describe|list|delete`, as gcloud's, against the v1
//! domain mappings API (`/apis/domains.cloudrun.com/v1/namespaces/{project}/domainmappings`).

use crate::cli::check;
use crate::cli::ctx::Ctx;

#[derive(Debug, clap::Subcommand)]
pub enum DomainMappingsCommand {
    /// Map a custom domain to a service; prints the DNS records to create.
    Create {
        /// The service to map the domain to.
        #[arg(long)]
        service: String,
        /// The domain, e.g. api.example.com.
        #[arg(long)]
        domain: String,
    },
    /// Show a domain mapping: its DNS records and its Ready, CertificateProvisioned and
    /// DomainRoutable conditions.
    Describe {
        #[arg(long)]
        domain: String,
    },
    /// List the project's domain mappings.
    List,
    /// Unmap a domain: it stops serving at once.
    Delete {
        #[arg(long)]
        domain: String,
    },
}

fn path(ctx: &Ctx, domain: Option<&str>) -> String {
    let base = format!("/apis/domains.cloudrun.com/v1/namespaces/{}/domainmappings", ctx.project);
    match domain {
        Some(domain) => format!("{base}/{domain}"),
        None => base,
    }
}

pub async fn run(ctx: &Ctx, command: DomainMappingsCommand) -> anyhow::Result<()> {
    match command {
        DomainMappingsCommand::Create { service, domain } => {
            let body = serde_json::json!({
                "apiVersion": wharf_api::domains::API_VERSION,
                "kind": wharf_api::domains::KIND,
                "metadata": {
                    "name": domain,
                    "namespace": ctx.project,
                    "labels": {wharf_api::domains::LOCATION_LABEL: ctx.region},
                },
                "spec": {"routeName": service, "certificateMode": "AUTOMATIC"},
            });
            let response = ctx.client.api_request(reqwest::Method::POST, &path(ctx, None)).json(&body).send().await?;
            let mapping: serde_json::Value = check(response).await?.json().await?;
            eprintln!("Created domain mapping [{domain}] to service [{service}].");
            eprintln!(
                "Waiting for certificate provisioning. You must configure your DNS records for certificate issuance \
                 to begin."
            );
            let records = mapping.pointer("/status/resourceRecords").cloned().unwrap_or_default();
            ctx.print(&records, "table(name:label=NAME, type:label='RECORD TYPE', rrdata:label=CONTENTS)")
        }
        DomainMappingsCommand::Describe { domain } => {
            let response = ctx.client.api_request(reqwest::Method::GET, &path(ctx, Some(&domain))).send().await?;
            let mapping: serde_json::Value = check(response).await?.json().await?;
            ctx.print(&mapping, "yaml")
        }
        DomainMappingsCommand::List => {
            let response = ctx.client.api_request(reqwest::Method::GET, &path(ctx, None)).send().await?;
            let list: serde_json::Value = check(response).await?.json().await?;
            let items = list.get("items").cloned().unwrap_or_else(|| serde_json::json!([]));
            ctx.print(
                &items,
                "table(status.conditions[0].status:label=READY, metadata.name:label=DOMAIN, \
                 spec.routeName:label=SERVICE, metadata.labels.'cloud.googleapis.com/location':label=REGION)",
            )
        }
        DomainMappingsCommand::Delete { domain } => {
            let response = ctx.client.api_request(reqwest::Method::DELETE, &path(ctx, Some(&domain))).send().await?;
            check(response).await?;
            eprintln!("Mappings to [{domain}] now have been deleted.");
            Ok(())
        }
    }
}
