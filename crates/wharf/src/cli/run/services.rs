//! `wharf run services list|describe|replace|update|update-traffic|delete` and the policy
//! verbs `get-iam-policy|set-iam-policy|add-iam-policy-binding|remove-iam-policy-binding`.

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
    /// Show a service: a summary, or the Knative YAML with --format yaml, or a document to
    /// keep and `replace` later with --format export.
    Describe { service: String },
    /// Create or update a service from a Knative serving.knative.dev/v1 Service YAML file.
    Replace {
        file: std::path::PathBuf,
        /// Return without waiting for the new revision to be ready.
        #[arg(long = "async")]
        no_wait: bool,
    },
    /// Change a service's settings (creates a new revision when the template changes).
    Update(Box<DeployArgs>),
    /// Split traffic between revisions, move tags, roll back.
    UpdateTraffic(UpdateTrafficArgs),
    /// Show a service's usage in Cloud Run's billing units (vCPU-seconds, GiB-seconds,
    /// requests), both with CPU throttled (request time) and with CPU always allocated
    /// (instance time), per revision (deleted ones included); kept across restarts.
    Usage { service: String },
    /// Show a service's IAM policy.
    GetIamPolicy { service: String },
    /// Replace a service's IAM policy with a JSON or YAML file (its etag must be current).
    SetIamPolicy { service: String, file: std::path::PathBuf },
    /// Grant a role on a service, e.g. --member=serviceAccount:EMAIL --role=roles/run.invoker.
    AddIamPolicyBinding {
        service: String,
        #[command(flatten)]
        binding: crate::cli::policy::BindingArgs,
    },
    /// Revoke a role on a service.
    RemoveIamPolicyBinding {
        service: String,
        #[command(flatten)]
        binding: crate::cli::policy::BindingArgs,
    },
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
        ServicesCommand::Usage { service } => {
            let path = format!("/wharf/v1/projects/{}/locations/{}/services/{service}/usage", ctx.project, ctx.region);
            let response = ctx.client.api_request(reqwest::Method::GET, &path).send().await?;
            if response.status() == reqwest::StatusCode::NOT_FOUND {
                anyhow::bail!("{}", ctx.missing(&service));
            }
            let usage: serde_json::Value = crate::cli::check(response).await?.json().await?;
            ctx.print(&usage, "yaml")
        }
        ServicesCommand::Describe { service } => {
            let s = ctx.get_service(&service).await?.with_context(|| ctx.missing(&service))?;
            match ctx.format.as_deref() {
                None => {
                    print!("{}", summary(&s));
                    Ok(())
                }
                Some("export") => {
                    print!("{}", serde_norway::to_string(&wharf_api::knative::export(&s))?);
                    Ok(())
                }
                Some(_) => ctx.print(&wharf_api::knative::service(&s), "yaml"),
            }
        }
        ServicesCommand::Replace { file, no_wait } => replace(ctx, &file, no_wait).await,
        ServicesCommand::GetIamPolicy { service } => {
            ctx.print(&ctx.service_policy(&service).get(&ctx.client).await?, "yaml")
        }
        ServicesCommand::SetIamPolicy { service, file } => {
            let policy = crate::cli::policy::read_policy_file(&file)?;
            let stored = ctx.service_policy(&service).set(&ctx.client, &policy).await?;
            eprintln!("Updated IAM policy for service [{service}].");
            ctx.print(&stored, "yaml")
        }
        ServicesCommand::AddIamPolicyBinding { service, binding } => {
            ctx.print(&ctx.service_policy(&service).change_binding(&ctx.client, &binding, true).await?, "yaml")
        }
        ServicesCommand::RemoveIamPolicyBinding { service, binding } => {
            ctx.print(&ctx.service_policy(&service).change_binding(&ctx.client, &binding, false).await?, "yaml")
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

/// `services replace FILE`: the document's service created, or updated in full.
async fn replace(ctx: &Ctx, file: &std::path::Path, no_wait: bool) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let doc =
        wharf_api::knative::input::service(&text).with_context(|| format!("{} is not a service", file.display()))?;
    if let Some(namespace) = doc.namespace.as_deref().filter(|n| *n != ctx.project) {
        bail!(
            "{}: metadata.namespace {namespace:?} is not the project {:?}; use --project {namespace} or change it",
            file.display(),
            ctx.project
        );
    }
    if let Some(location) = doc.location.as_deref().filter(|l| *l != ctx.region) {
        bail!(
            "{}: label cloud.googleapis.com/location {location:?} is not the region {:?}; use --region {location} or change it",
            file.display(),
            ctx.region
        );
    }
    let name = &doc.name;
    let request = match ctx.get_service(name).await? {
        Some(_) => ctx.client.api_request(reqwest::Method::PATCH, &ctx.service_path(name)),
        None => ctx
            .client
            .api_request(reqwest::Method::POST, &format!("{}/services", ctx.parent()))
            .query(&[("serviceId", name.as_str())]),
    };
    let op: wharf_api::Operation = check(request.json(&doc.service).send().await?).await?.json().await?;
    if !no_wait {
        ctx.wait(&op).await?;
    }
    let service = ctx.get_service(name).await?.with_context(|| ctx.missing(name))?;
    eprintln!("Service [{name}] revision [{}] is serving.", last_segment(&service.latest_ready_revision));
    if ctx.format.is_some() {
        ctx.print(&wharf_api::knative::service(&service), "yaml")?;
    }
    Ok(())
}

fn last_segment(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// What `describe` prints without `--format`, after gcloud: where the service is, where its
/// traffic goes, and how its latest revision runs.
fn summary(s: &wharf_api::Service) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let ready = s.terminal_condition.as_ref().is_some_and(|c| c.state == wharf_api::CONDITION_SUCCEEDED);
    let region = s.name.split('/').nth(3).unwrap_or_default();
    let _ = writeln!(out, "{} Service {} in region {region}\n", if ready { "✔" } else { "✘" }, last_segment(&s.name));
    let _ = writeln!(out, "URL:     {}", s.uri);
    let ingress = match s.ingress.as_deref() {
        Some("INGRESS_TRAFFIC_INTERNAL_ONLY") => "internal",
        Some("INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER") => "internal-and-cloud-load-balancing",
        _ => "all",
    };
    let _ = writeln!(out, "Ingress: {ingress}\nTraffic:");
    for t in &s.traffic_statuses {
        let latest = t.kind.as_deref() == Some(wharf_api::TRAFFIC_LATEST);
        let target = if latest { format!("LATEST (currently {})", t.revision) } else { t.revision.clone() };
        let _ = writeln!(out, "  {:>3}% {target}", t.percent);
        if !t.tag.is_empty() {
            let _ = writeln!(out, "        {}: {}", t.tag, t.uri);
        }
    }
    if let Some(message) = s.terminal_condition.as_ref().filter(|_| !ready).map(|c| &c.message) {
        let _ = writeln!(out, "\nNot ready: {message}");
    }
    let t = &s.template;
    let _ = writeln!(
        out,
        "\nLast updated on {}:\n  Revision {}",
        s.update_time.as_deref().unwrap_or("-"),
        last_segment(&s.latest_created_revision)
    );
    let row = |out: &mut String, key: &str, value: &str| {
        let _ = writeln!(out, "  {:<16} {value}", format!("{key}:"));
    };
    if let Some(c) = t.containers.first() {
        row(&mut out, "Image", &c.image);
        row(&mut out, "Port", &c.ports.first().map_or(8080, |p| p.container_port).to_string());
        let limits = c.resources.as_ref().map(|r| r.limits.clone()).unwrap_or_default();
        row(&mut out, "Memory", limits.get("memory").map_or("512Mi", String::as_str));
        row(&mut out, "CPU", limits.get("cpu").map_or("1000m", String::as_str));
        let throttled = c.resources.as_ref().and_then(|r| r.cpu_idle).unwrap_or(true);
        row(&mut out, "CPU allocation", if throttled { "only during requests" } else { "always" });
        if c.resources.as_ref().is_some_and(|r| r.startup_cpu_boost) {
            row(&mut out, "Startup boost", "on");
        }
        if !c.command.is_empty() {
            row(&mut out, "Command", &c.command.join(" "));
        }
        if !c.args.is_empty() {
            row(&mut out, "Args", &c.args.join(" "));
        }
        if !c.env.is_empty() {
            let _ = writeln!(out, "  Env vars:");
            for e in &c.env {
                let _ = writeln!(out, "    {:<14} {}", e.name, e.value.as_deref().unwrap_or_default());
            }
        }
    }
    let concurrency = match t.max_instance_request_concurrency {
        0 => "80".to_owned(),
        n => n.to_string(),
    };
    row(&mut out, "Concurrency", &concurrency);
    let scaling = t.scaling.clone().unwrap_or_default();
    if scaling.min_instance_count > 0 {
        row(&mut out, "Min Instances", &scaling.min_instance_count.to_string());
    }
    let max = if scaling.max_instance_count > 0 { scaling.max_instance_count.to_string() } else { "100".to_owned() };
    row(&mut out, "Max Instances", &max);
    row(&mut out, "Timeout", t.timeout.as_deref().unwrap_or("300s"));
    out
}
