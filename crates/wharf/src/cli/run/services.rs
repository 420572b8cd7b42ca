//! `wharf run services list|describe|update|update-traffic|delete`.

use anyhow::{Context as _, bail};

use super::deploy::{DeployArgs, deploy};
use crate::cli::check;
use crate::cli::ctx::Ctx;
use crate::cli::flags::split_list;
use crate::cli::traffic::{self, Traffic, resolve_revision};

#[derive(Debug, clap::Subcommand)]
pub enum ServicesCommand {
    /// List services.
    List,
    /// Show a service.
    Describe { service: String },
    /// Change a service's settings (creates a new revision when the template changes).
    Update(Box<DeployArgs>),
    /// Split traffic between revisions, move tags, roll back.
    UpdateTraffic(UpdateTrafficArgs),
    /// Delete a service and its revisions.
    Delete {
        service: String,
        /// Return without waiting for the deletion to finish.
        #[arg(long = "async")]
        no_wait: bool,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct UpdateTrafficArgs {
    pub service: String,
    /// REVISION=PERCENT,... (LATEST names the latest ready revision).
    #[arg(long, value_name = "REVISION=PERCENT,...")]
    pub to_revisions: Option<String>,
    /// Send all traffic to the latest ready revision.
    #[arg(long)]
    pub to_latest: bool,
    /// TAG=PERCENT,...: traffic to the revisions these tags name.
    #[arg(long, value_name = "TAG=PERCENT,...")]
    pub to_tags: Option<String>,
    /// TAG=REVISION,...
    #[arg(long, value_name = "TAG=REVISION,...")]
    pub set_tags: Option<String>,
    /// TAG,...
    #[arg(long, value_name = "TAG,...")]
    pub remove_tags: Option<String>,
    /// Remove every tag.
    #[arg(long)]
    pub clear_tags: bool,
    #[arg(long = "async")]
    pub no_wait: bool,
}

pub async fn run(ctx: &Ctx, quiet: bool, command: ServicesCommand) -> anyhow::Result<()> {
    match command {
        ServicesCommand::Update(args) => deploy(ctx, *args, false).await,
        ServicesCommand::List => list_services(ctx).await,
        ServicesCommand::UpdateTraffic(args) => update_traffic(ctx, args).await,
        ServicesCommand::Describe { service } => {
            let s = ctx.get_service(&service).await?.with_context(|| ctx.missing(&service))?;
            ctx.print(&wharf_api::knative::service(&s), "yaml")
        }
        ServicesCommand::Delete { service, no_wait } => {
            if !quiet {
                eprintln!("Service [{service}] will be deleted.");
            }
            let response = ctx.client.api_request(reqwest::Method::DELETE, &ctx.service_path(&service)).send().await?;
            let op: wharf_api::Operation = check(response).await?.json().await?;
            if !no_wait {
                ctx.wait(&op).await?;
            }
            eprintln!("Deleted service [{service}].");
            Ok(())
        }
    }
}

async fn update_traffic(ctx: &Ctx, args: UpdateTrafficArgs) -> anyhow::Result<()> {
    let name = &args.service;
    let mut service = ctx.get_service(name).await?.with_context(|| ctx.missing(name))?;
    let path = format!("{}/services/{name}/revisions", ctx.parent());
    let response = ctx.client.api_request(reqwest::Method::GET, &path).query(&[("pageSize", "1000")]).send().await?;
    let list: wharf_api::ListRevisionsResponse = check(response).await?.json().await?;
    let known: Vec<String> =
        list.revisions.iter().map(|r| r.name.rsplit('/').next().unwrap_or("").to_owned()).collect();
    let mut traffic = Traffic::of(&service);
    if args.to_latest {
        traffic.send_all_to_latest();
    }
    if let Some(revisions) = &args.to_revisions {
        let assigned = traffic::pairs("--to-revisions", revisions)?
            .into_iter()
            .map(|(r, p)| Ok((resolve_revision(&r, &known)?, traffic::percent("--to-revisions", &p)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        traffic.assign(assigned)?;
    }
    if let Some(tags) = &args.to_tags {
        let assigned = traffic::pairs("--to-tags", tags)?
            .into_iter()
            .map(|(tag, p)| {
                let target =
                    traffic.tags.get(&tag).cloned().with_context(|| format!("--to-tags: there is no tag {tag:?}"))?;
                Ok((target, traffic::percent("--to-tags", &p)?))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        traffic.assign(assigned)?;
    }
    if args.clear_tags {
        traffic.tags.clear();
    }
    if let Some(remove) = &args.remove_tags {
        for tag in split_list(remove) {
            if traffic.tags.remove(&tag).is_none() {
                bail!("--remove-tags: there is no tag {tag:?}");
            }
        }
    }
    if let Some(set) = &args.set_tags {
        for (tag, revision) in traffic::pairs("--set-tags", set)? {
            traffic.tags.insert(tag, resolve_revision(&revision, &known)?);
        }
    }
    service.traffic = traffic.to_api();
    eprintln!("Updating traffic...");
    let request = ctx
        .client
        .api_request(reqwest::Method::PATCH, &ctx.service_path(name))
        .query(&[("updateMask", "traffic")])
        .json(&service);
    let op: wharf_api::Operation = check(request.send().await?).await?.json().await?;
    if args.no_wait {
        return Ok(());
    }
    ctx.wait(&op).await?;
    let service = ctx.get_service(name).await?.with_context(|| ctx.missing(name))?;
    eprintln!("Done.");
    eprintln!("Traffic:");
    for t in &service.traffic_statuses {
        if t.percent > 0 {
            let latest = if t.kind.as_deref() == Some(wharf_api::TRAFFIC_LATEST) { " (LATEST)" } else { "" };
            eprintln!("  {:>3}% {}{latest}", t.percent, t.revision);
        }
        if !t.tag.is_empty() {
            eprintln!("        {}: {}", t.tag, t.uri);
        }
    }
    if ctx.format.is_some() {
        ctx.print(&wharf_api::knative::service(&service), "yaml")?;
    }
    Ok(())
}

async fn list_services(ctx: &Ctx) -> anyhow::Result<()> {
    let mut services = Vec::new();
    let mut token = String::new();
    loop {
        let response = ctx
            .client
            .api_request(reqwest::Method::GET, &format!("{}/services", ctx.parent()))
            .query(&[("pageToken", &token)])
            .send()
            .await?;
        let page: wharf_api::ListServicesResponse = check(response).await?.json().await?;
        services.extend(page.services);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let view: Vec<serde_json::Value> = services.iter().map(wharf_api::knative::service).collect();
    ctx.print(
        &serde_json::Value::Array(view),
        "table(metadata.name:label=SERVICE, metadata.labels.'cloud.googleapis.com/location':label=REGION, \
         status.url:label=URL, status.latestReadyRevisionName:label=LATEST_REVISION)",
    )
}
