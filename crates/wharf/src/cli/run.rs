//! `wharf run ...`: the `gcloud run` verbs and flags, against Wharf's Cloud Run v2 API.
//! Progress goes to stderr as gcloud prints it; results to stdout, shaped by `--format` over
//! the Knative v1 view gcloud shows (so `value(status.url)` works as it does with gcloud).

use std::collections::BTreeMap;
use std::io::Write as _;

use anyhow::{Context as _, bail};
use wharf_api::{Container, EnvVar, ResourceRequirements, RevisionScaling, Service};

use super::traffic::{Target, Traffic, resolve_revision};
use super::{Client, ConnectionArgs, check};

#[derive(Debug, Clone, clap::Args)]
pub struct Place {
    /// The region (Cloud Run location) [default: from config, else us-central1]
    #[arg(long, global = true, env = "CLOUDSDK_RUN_REGION")]
    pub region: Option<String>,
    /// The project [default: from config, else "default"]
    #[arg(long, global = true, env = "CLOUDSDK_CORE_PROJECT")]
    pub project: Option<String>,
    /// gcloud's platform flag; Wharf is always "managed"-like and accepts it with a notice.
    #[arg(long, global = true, hide = true)]
    pub platform: Option<String>,
    /// Output format: json, yaml, value(...), table(...), ... (as gcloud's --format).
    #[arg(long, global = true)]
    pub format: Option<String>,
    /// Do not ask for confirmation.
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum RunCommand {
    /// Deploy a container image to a service (creating it if needed).
    Deploy(Box<DeployArgs>),
    /// Manage services.
    #[command(subcommand)]
    Services(ServicesCommand),
    /// Manage revisions.
    #[command(subcommand)]
    Revisions(RevisionsCommand),
    /// Manage and run jobs.
    #[command(subcommand)]
    Jobs(super::jobs::JobsCommand),
}

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

#[derive(Debug, Clone, clap::Args)]
pub struct DeployArgs {
    /// The service name.
    pub service: String,
    /// The container image, e.g. 127.0.0.1:5000/hello:v1
    #[arg(long)]
    pub image: Option<String>,
    #[arg(long)]
    pub port: Option<u16>,
    /// Memory limit, e.g. 512Mi, 2Gi.
    #[arg(long)]
    pub memory: Option<String>,
    /// CPU limit, e.g. 1, 0.5, 500m.
    #[arg(long)]
    pub cpu: Option<String>,
    /// Maximum concurrent requests per instance (1-1000, or "default").
    #[arg(long)]
    pub concurrency: Option<String>,
    #[arg(long)]
    pub min_instances: Option<String>,
    #[arg(long)]
    pub max_instances: Option<String>,
    /// Request timeout: seconds, or a duration like 5m (max 3600s).
    #[arg(long)]
    pub timeout: Option<String>,
    /// Replace all env vars: KEY=VALUE,...
    #[arg(long, value_name = "KEY=VALUE,...")]
    pub set_env_vars: Option<String>,
    /// Add or change env vars: KEY=VALUE,...
    #[arg(long, value_name = "KEY=VALUE,...")]
    pub update_env_vars: Option<String>,
    /// Remove env vars: KEY,...
    #[arg(long, value_name = "KEY,...")]
    pub remove_env_vars: Option<String>,
    /// Remove all env vars.
    #[arg(long)]
    pub clear_env_vars: bool,
    /// Replace all env vars with those of a YAML file of KEY: VALUE.
    #[arg(long)]
    pub env_vars_file: Option<std::path::PathBuf>,
    /// Entrypoint override, comma-separated.
    #[arg(long)]
    pub command: Option<String>,
    /// Arguments, comma-separated.
    #[arg(long)]
    pub args: Option<String>,
    /// Labels: KEY=VALUE,...
    #[arg(long)]
    pub labels: Option<String>,
    /// Name the new revision {service}-{suffix}.
    #[arg(long)]
    pub revision_suffix: Option<String>,
    /// Return without waiting for the deployment.
    #[arg(long = "async")]
    pub no_wait: bool,
    /// Public access (the default until IAM lands).
    #[arg(long, overrides_with = "no_allow_unauthenticated")]
    pub allow_unauthenticated: bool,
    /// Require authentication to invoke (not available yet: refused).
    #[arg(long)]
    pub no_allow_unauthenticated: bool,
    /// Give the new revision no traffic (traffic stays where it is).
    #[arg(long)]
    pub no_traffic: bool,
    /// Give the new revision this tag: it gets its own URL, {tag}---{service host}.
    #[arg(long)]
    pub tag: Option<String>,
    /// Send a client's requests to the same instance (cookie-based, best effort).
    #[arg(long, overrides_with = "no_session_affinity")]
    pub session_affinity: bool,
    #[arg(long)]
    pub no_session_affinity: bool,
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

pub async fn run(connection: &ConnectionArgs, place: &Place, command: RunCommand) -> anyhow::Result<()> {
    if let Some(platform) = &place.platform {
        eprintln!("Note: --platform={platform} is accepted for gcloud compatibility; Wharf has one platform.");
    }
    if let Some(format) = &place.format {
        wharf_format::check(format)?;
    }
    let client = Client::connect(connection)?;
    let ctx = Ctx { client, project: place.project(), region: place.region(), format: place.format.clone() };
    match command {
        RunCommand::Deploy(args) => deploy(&ctx, *args, true).await,
        RunCommand::Services(ServicesCommand::Update(args)) => deploy(&ctx, *args, false).await,
        RunCommand::Services(ServicesCommand::List) => list_services(&ctx).await,
        RunCommand::Services(ServicesCommand::UpdateTraffic(args)) => update_traffic(&ctx, args).await,
        RunCommand::Services(ServicesCommand::Describe { service }) => {
            let s = ctx.get_service(&service).await?.with_context(|| ctx.missing(&service))?;
            ctx.print(&wharf_api::knative::service(&s), "yaml")
        }
        RunCommand::Services(ServicesCommand::Delete { service, no_wait }) => {
            if !place.quiet {
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
        RunCommand::Revisions(command) => revisions(&ctx, command).await,
        RunCommand::Jobs(command) => super::jobs::run(&ctx, command).await,
    }
}

impl Place {
    fn project(&self) -> String {
        self.project.clone().or_else(|| super::cli_setting("project")).unwrap_or_else(|| "default".to_owned())
    }

    fn region(&self) -> String {
        self.region.clone().or_else(|| super::cli_setting("region")).unwrap_or_else(|| "us-central1".to_owned())
    }
}

pub struct Ctx {
    pub client: Client,
    project: String,
    region: String,
    format: Option<String>,
}

impl Ctx {
    pub fn parent(&self) -> String {
        format!("/v2/projects/{}/locations/{}", self.project, self.region)
    }

    fn service_path(&self, service: &str) -> String {
        format!("{}/services/{service}", self.parent())
    }

    fn missing(&self, service: &str) -> String {
        format!("Cannot find service [{service}] in project [{}] region [{}]", self.project, self.region)
    }

    async fn get_service(&self, name: &str) -> anyhow::Result<Option<Service>> {
        let response = self.client.api_request(reqwest::Method::GET, &self.service_path(name)).send().await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(Some(check(response).await?.json().await?))
    }

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

fn split_pairs(flag: &str, text: &str) -> anyhow::Result<Vec<(String, String)>> {
    text.split(',')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
                .with_context(|| format!("{flag}: {pair:?} is not KEY=VALUE"))
        })
        .collect()
}

fn split_list(text: &str) -> Vec<String> {
    text.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// gcloud's `--timeout`: plain seconds or a duration such as 10m.
pub fn timeout_seconds(text: &str) -> anyhow::Result<String> {
    let text = text.trim();
    let secs: u64 = if let Ok(n) = text.parse() {
        n
    } else {
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (n, unit) = text.split_at(split);
        let n: u64 = n.parse().with_context(|| format!("--timeout {text:?} is not seconds or a duration like 5m"))?;
        match unit {
            "s" => n,
            "m" => n * 60,
            "h" => n * 3600,
            _ => bail!("--timeout {text:?} is not seconds or a duration like 5m"),
        }
    };
    Ok(format!("{secs}s"))
}

fn count(flag: &str, text: &str) -> anyhow::Result<i32> {
    if text == "default" {
        return Ok(0);
    }
    text.parse().with_context(|| format!("--{flag} {text:?} is not a number"))
}

/// Applies the deploy/update flags to a template (the current one when updating).
fn apply(args: &DeployArgs, service: &mut Service) -> anyhow::Result<()> {
    if args.no_allow_unauthenticated {
        bail!(
            "--no-allow-unauthenticated is not available yet: Wharf has no invoker IAM, so every service is public. \
             Deploy without it (or with --allow-unauthenticated)."
        );
    }
    let template = &mut service.template;
    if template.containers.is_empty() {
        template.containers.push(Container::default());
    }
    let c = &mut template.containers[0];
    if let Some(image) = &args.image {
        c.image = image.clone();
    }
    if c.image.is_empty() {
        bail!("--image is required to deploy a new service");
    }
    if let Some(port) = args.port {
        c.ports = vec![wharf_api::ContainerPort { name: "http1".into(), container_port: i32::from(port) }];
    }
    if args.memory.is_some() || args.cpu.is_some() {
        let resources = c.resources.get_or_insert_with(ResourceRequirements::default);
        if let Some(m) = &args.memory {
            resources.limits.insert("memory".into(), m.clone());
        }
        if let Some(cpu) = &args.cpu {
            resources.limits.insert("cpu".into(), cpu.clone());
        }
    }
    let mut env: Vec<(String, String)> =
        c.env.iter().map(|e| (e.name.clone(), e.value.clone().unwrap_or_default())).collect();
    if args.clear_env_vars {
        env.clear();
    }
    if let Some(path) = &args.env_vars_file {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let map: BTreeMap<String, serde_norway::Value> = serde_norway::from_str(&text)
            .with_context(|| format!("{} is not a YAML map of KEY: VALUE", path.display()))?;
        env = map
            .into_iter()
            .map(|(k, v)| match v {
                serde_norway::Value::String(s) => Ok((k, s)),
                serde_norway::Value::Number(n) => Ok((k, n.to_string())),
                serde_norway::Value::Bool(b) => Ok((k, b.to_string())),
                _ => bail!("{}: the value of {k} must be a string, number or boolean", path.display()),
            })
            .collect::<anyhow::Result<_>>()?;
    }
    if let Some(set) = &args.set_env_vars {
        env = split_pairs("--set-env-vars", set)?;
    }
    if let Some(update) = &args.update_env_vars {
        for (k, v) in split_pairs("--update-env-vars", update)? {
            env.retain(|(name, _)| *name != k);
            env.push((k, v));
        }
    }
    if let Some(remove) = &args.remove_env_vars {
        let remove = split_list(remove);
        env.retain(|(name, _)| !remove.contains(name));
    }
    c.env = env.into_iter().map(|(name, value)| EnvVar { name, value: Some(value), value_source: None }).collect();
    if let Some(command) = &args.command {
        c.command = split_list(command);
    }
    if let Some(a) = &args.args {
        c.args = split_list(a);
    }
    if let Some(n) = &args.concurrency {
        template.max_instance_request_concurrency = count("concurrency", n)?;
    }
    if args.min_instances.is_some() || args.max_instances.is_some() {
        let scaling = template.scaling.get_or_insert_with(RevisionScaling::default);
        if let Some(n) = &args.min_instances {
            scaling.min_instance_count = count("min-instances", n)?;
        }
        if let Some(n) = &args.max_instances {
            scaling.max_instance_count = count("max-instances", n)?;
        }
    }
    if let Some(t) = &args.timeout {
        template.timeout = Some(timeout_seconds(t)?);
    }
    if args.session_affinity {
        template.session_affinity = true;
    }
    if args.no_session_affinity {
        template.session_affinity = false;
    }
    template.revision = args.revision_suffix.as_ref().map(|s| format!("{}-{s}", args.service)).unwrap_or_default();
    if let Some(labels) = &args.labels {
        service.labels = split_pairs("--labels", labels)?.into_iter().collect();
    }
    Ok(())
}

async fn deploy(ctx: &Ctx, args: DeployArgs, create_if_missing: bool) -> anyhow::Result<()> {
    let existing = ctx.get_service(&args.service).await?;
    if existing.is_none() && !create_if_missing {
        bail!("{}", ctx.missing(&args.service));
    }
    let name = args.service.clone();
    eprintln!("Deploying container to Cloud Run service [{name}] in project [{}] region [{}]", ctx.project, ctx.region);
    let creating = existing.is_none();
    let mut service = existing.unwrap_or_default();
    apply(&args, &mut service)?;
    if args.no_traffic || args.tag.is_some() {
        if creating && args.no_traffic {
            bail!(
                "--no-traffic is not supported when creating a service: deploy it first, then deploy new revisions with --no-traffic"
            );
        }
        // Name the new revision here, as gcloud does, so the traffic spec can refer to it.
        if service.template.revision.is_empty() {
            service.template.revision = next_revision_name(&name, &service.latest_created_revision);
        }
        let mut traffic = Traffic::of(&service);
        if args.no_traffic {
            let latest = service.latest_ready_revision.rsplit('/').next().unwrap_or("").to_owned();
            if let Some(p) = traffic.percents.remove(&Target::Latest) {
                if latest.is_empty() {
                    bail!("service [{name}] has no ready revision to keep its traffic on");
                }
                *traffic.percents.entry(Target::Revision(latest)).or_default() += p;
            }
        }
        if let Some(tag) = &args.tag {
            traffic.tags.insert(tag.clone(), Target::Revision(service.template.revision.clone()));
        }
        service.traffic = traffic.to_api();
    }
    let request = if creating {
        eprintln!("Deploying new service...");
        ctx.client
            .api_request(reqwest::Method::POST, &format!("{}/services", ctx.parent()))
            .query(&[("serviceId", &name)])
            .json(&service)
    } else {
        eprintln!("Deploying...");
        ctx.client.api_request(reqwest::Method::PATCH, &ctx.service_path(&name)).json(&service)
    };
    let op: wharf_api::Operation = check(request.send().await?).await?.json().await?;
    eprintln!("  Creating Revision...");
    if args.no_wait {
        eprintln!("Service [{name}] is deploying asynchronously.");
        return Ok(());
    }
    ctx.wait(&op).await.map_err(|e| anyhow::anyhow!("Deployment failed: {e}"))?;
    eprintln!("  Routing traffic...");
    let service = ctx.get_service(&name).await?.with_context(|| ctx.missing(&name))?;
    let revision = service.latest_ready_revision.rsplit('/').next().unwrap_or("").to_owned();
    let percent: i32 = service.traffic_statuses.iter().filter(|t| t.revision == revision).map(|t| t.percent).sum();
    eprintln!("Done.");
    eprintln!("Service [{name}] revision [{revision}] has been deployed and is serving {percent} percent of traffic.");
    if ctx.format.is_some() {
        ctx.print(&wharf_api::knative::service(&service), "yaml")?;
    } else {
        println!("Service URL: {}", service.uri);
    }
    Ok(())
}

/// `{service}-{NNNNN}-{abc}` with the number after the latest created revision's.
fn next_revision_name(service: &str, latest_created: &str) -> String {
    let latest = latest_created.rsplit('/').next().unwrap_or("");
    let number = latest
        .strip_prefix(&format!("{service}-"))
        .and_then(|rest| rest.split('-').next())
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0);
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let suffix: String = uuid::Uuid::new_v4().as_bytes()[..3]
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect();
    format!("{service}-{:05}-{suffix}", number + 1)
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
        let assigned = super::traffic::pairs("--to-revisions", revisions)?
            .into_iter()
            .map(|(r, p)| Ok((resolve_revision(&r, &known)?, super::traffic::percent("--to-revisions", &p)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        traffic.assign(assigned)?;
    }
    if let Some(tags) = &args.to_tags {
        let assigned = super::traffic::pairs("--to-tags", tags)?
            .into_iter()
            .map(|(tag, p)| {
                let target =
                    traffic.tags.get(&tag).cloned().with_context(|| format!("--to-tags: there is no tag {tag:?}"))?;
                Ok((target, super::traffic::percent("--to-tags", &p)?))
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
        for (tag, revision) in super::traffic::pairs("--set-tags", set)? {
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

async fn revisions(ctx: &Ctx, command: RevisionsCommand) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_read_like_gcloud() {
        assert_eq!(timeout_seconds("300").unwrap(), "300s");
        assert_eq!(timeout_seconds("5m").unwrap(), "300s");
        timeout_seconds("soon").unwrap_err();
    }

    #[test]
    fn env_flags_compose() {
        let args = |f: &dyn Fn(&mut DeployArgs)| {
            let mut a = DeployArgs {
                service: "s".into(),
                image: Some("x".into()),
                port: None,
                memory: None,
                cpu: None,
                concurrency: None,
                min_instances: None,
                max_instances: None,
                timeout: None,
                set_env_vars: None,
                update_env_vars: None,
                remove_env_vars: None,
                clear_env_vars: false,
                env_vars_file: None,
                command: None,
                args: None,
                labels: None,
                revision_suffix: None,
                no_wait: false,
                allow_unauthenticated: false,
                no_allow_unauthenticated: false,
                no_traffic: false,
                tag: None,
                session_affinity: false,
                no_session_affinity: false,
            };
            f(&mut a);
            a
        };
        let mut s = Service::default();
        apply(&args(&|a| a.set_env_vars = Some("A=1,B=2".into())), &mut s).unwrap();
        apply(&args(&|a| a.update_env_vars = Some("B=3,C=4".into())), &mut s).unwrap();
        apply(&args(&|a| a.remove_env_vars = Some("A".into())), &mut s).unwrap();
        let env: Vec<(String, String)> =
            s.template.containers[0].env.iter().map(|e| (e.name.clone(), e.value.clone().unwrap())).collect();
        assert_eq!(env, [("B".to_owned(), "3".to_owned()), ("C".to_owned(), "4".to_owned())]);
        let e = apply(&args(&|a| a.no_allow_unauthenticated = true), &mut s).unwrap_err();
        assert!(e.to_string().contains("not available yet"), "{e}");
        apply(&args(&|a| a.set_env_vars = Some("oops".into())), &mut s).unwrap_err();
    }
}
