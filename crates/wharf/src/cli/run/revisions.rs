//! `wharf run revisions list|describe|delete`.

use crate::cli::check;
use crate::cli::ctx::Ctx;

#[derive(Debug, clap::Subcommand)]
pub enum RevisionsCommand {
    /// List revisions (of one service with --service).
    List {
        #[arg(long)]
        service: Option<String>,
    },
    /// Show a revision.
    Describe { revision: String },
    /// Delete a revision that serves no traffic.
    Delete { revision: String },
}

pub async fn run(ctx: &Ctx, command: RevisionsCommand) -> anyhow::Result<()> {
    match command {
        RevisionsCommand::List { service } => {
            let path = format!("{}/services/{}/revisions", ctx.parent(), service.as_deref().unwrap_or("-"));
            let response =
                ctx.client.api_request(reqwest::Method::GET, &path).query(&[("pageSize", "1000")]).send().await?;
            let list: wharf_api::ListRevisionsResponse = check(response).await?.json().await?;
            let view: Vec<serde_json::Value> = list.revisions.iter().map(wharf_api::knative::revision).collect();
            ctx.print(
                &serde_json::Value::Array(view),
                "table(metadata.name:label=REVISION, status.conditions[0].status:label=ACTIVE, \
                 metadata.labels.'serving.knative.dev/service':label=SERVICE, metadata.creationTimestamp:label=DEPLOYED)",
            )
        }
        RevisionsCommand::Describe { revision } => {
            let r = get_revision(ctx, &revision).await?;
            ctx.print(&wharf_api::knative::revision(&r), "yaml")
        }
        RevisionsCommand::Delete { revision } => {
            let r = get_revision(ctx, &revision).await?;
            let response = ctx.client.api_request(reqwest::Method::DELETE, &format!("/v2/{}", r.name)).send().await?;
            let op: wharf_api::Operation = check(response).await?.json().await?;
            ctx.wait(&op).await?;
            eprintln!("Deleted revision [{revision}].");
            Ok(())
        }
    }
}

async fn get_revision(ctx: &Ctx, revision: &str) -> anyhow::Result<wharf_api::Revision> {
    let path = format!("{}/services/-/revisions/{revision}", ctx.parent());
    let response = ctx.client.api_request(reqwest::Method::GET, &path).send().await?;
    Ok(check(response).await?.json().await?)
}
