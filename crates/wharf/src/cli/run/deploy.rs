//! `wharf run deploy` and `wharf run services update`: apply the flags to the service's
//! template (a new service's when it does not exist yet) and wait for the new revision.

use anyhow::{Context as _, bail};
use wharf_api::{Container, RevisionScaling, Service};

use crate::cli::check;
use crate::cli::ctx::Ctx;
use crate::cli::flags::{ContainerFlags, VpcFlags, api_duration, split_pairs};
use crate::cli::traffic::{Target, Traffic};

#[derive(Debug, Clone, clap::Args)]
pub struct DeployArgs {
    /// The service name.
    pub service: String,
    #[command(flatten)]
    pub container: ContainerFlags,
    #[arg(long)]
    pub port: Option<u16>,
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
    /// Labels: KEY=VALUE,...
    #[arg(long)]
    pub labels: Option<String>,
    /// Name the new revision {service}-{suffix}.
    #[arg(long)]
    pub revision_suffix: Option<String>,
    /// Return without waiting for the deployment.
    #[arg(long = "async")]
    pub no_wait: bool,
    /// Let anyone invoke the service: binds allUsers to roles/run.invoker.
    #[arg(long, overrides_with = "no_allow_unauthenticated")]
    pub allow_unauthenticated: bool,
    /// Require authentication to invoke: removes allUsers from roles/run.invoker.
    #[arg(long, overrides_with = "allow_unauthenticated")]
    pub no_allow_unauthenticated: bool,
    /// The service account the revision runs as (you need iam.serviceAccounts.actAs on it).
    #[arg(long)]
    pub service_account: Option<String>,
    /// Who may reach the service: all, internal (Wharf's instances and loopback only) or
    /// internal-and-cloud-load-balancing (as internal: Wharf has no load balancer).
    #[arg(long, value_parser = ["all", "internal", "internal-and-cloud-load-balancing"])]
    pub ingress: Option<String>,
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
    #[command(flatten)]
    pub source: SourceFlags,
    #[command(flatten)]
    pub vpc: VpcFlags,
    /// End-to-end HTTP/2: the ingress speaks HTTP/2 cleartext (h2c) to the container (gRPC
    /// servers need this). Names the container port `h2c`.
    #[arg(long, overrides_with = "no_use_http2")]
    pub use_http2: bool,
    /// Speak HTTP/1.1 to the container again (the port is named `http1`).
    #[arg(long)]
    pub no_use_http2: bool,
    /// CPU only while requests are in flight: idle instances are frozen (the default).
    #[arg(long, overrides_with = "no_cpu_throttling")]
    pub cpu_throttling: bool,
    /// CPU always allocated, also between requests (background work keeps running).
    #[arg(long)]
    pub no_cpu_throttling: bool,
    /// Twice the CPU limit (at most 8 cores) while an instance starts, until it is ready.
    #[arg(long, overrides_with = "no_cpu_boost")]
    pub cpu_boost: bool,
    /// No start-up CPU boost (the default).
    #[arg(long)]
    pub no_cpu_boost: bool,
}

/// `--source DIR` and what shapes its build (deploy and `jobs deploy`).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct SourceFlags {
    /// Build the image on the server from this source directory, then deploy it (pushed to
    /// {project}/cloud-run-source-deploy/{name} in Wharf's registry, or to --image when given).
    #[arg(long)]
    pub source: Option<std::path::PathBuf>,
    /// With --source: the Dockerfile, relative to the source directory.
    #[arg(long, requires = "source")]
    pub dockerfile: Option<String>,
    /// With --source and no Dockerfile: the base image of the generated Dockerfile.
    #[arg(long, requires = "source")]
    pub base_image: Option<String>,
    /// With --source: build environment variables, KEY=VALUE[,KEY=VALUE...] (repeatable), seen
    /// by a generated Dockerfile's RUN steps (e.g. PIP_INDEX_URL), and as build args by a
    /// Dockerfile that declares them (ARG KEY).
    #[arg(long = "set-build-env-vars", value_name = "KEY=VALUE,...", requires = "source")]
    pub set_build_env_vars: Vec<String>,
}

impl SourceFlags {
    fn describe(&self) -> String {
        match (&self.dockerfile, &self.base_image) {
            (Some(d), _) => format!("Dockerfile {d}"),
            (None, Some(b)) => format!("the source's Dockerfile, else one generated on base image {b}"),
            (None, None) => "the source's Dockerfile, else one generated for its language".into(),
        }
    }

    /// With `--source`: builds it and sets `image` to the built image's digest. `image` as
    /// given names where to push (gcloud's meaning of --image with --source).
    pub async fn build_into(&self, ctx: &Ctx, name: &str, image: &mut Option<String>) -> anyhow::Result<()> {
        let Some(dir) = &self.source else { return Ok(()) };
        let target = image.clone().unwrap_or_else(|| crate::cli::builds::source_deploy_image(&ctx.project, name));
        let request = crate::cli::builds::SourceBuild {
            dir,
            image_uri: &target,
            dockerfile: self.dockerfile.as_deref(),
            base_image: self.base_image.as_deref(),
            build_env: crate::cli::builds::parse_build_env(&self.set_build_env_vars)?,
        };
        let build = crate::cli::builds::build_source(ctx, &request).await?;
        *image = Some(build.image.context("the build succeeded but reported no image")?);
        Ok(())
    }
}

fn count(flag: &str, text: &str) -> anyhow::Result<i32> {
    if text == "default" {
        return Ok(0);
    }
    text.parse().with_context(|| format!("--{flag} {text:?} is not a number"))
}

/// Applies the deploy/update flags to a template (the current one when updating).
fn apply(args: &DeployArgs, service: &mut Service) -> anyhow::Result<()> {
    if let Some(ingress) = &args.ingress {
        service.ingress = Some(
            match ingress.as_str() {
                "internal" => "INGRESS_TRAFFIC_INTERNAL_ONLY",
                "internal-and-cloud-load-balancing" => "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER",
                _ => "INGRESS_TRAFFIC_ALL",
            }
            .to_owned(),
        );
    }
    let template = &mut service.template;
    if let Some(account) = &args.service_account {
        template.service_account = account.clone();
    }
    if template.containers.is_empty() {
        template.containers.push(Container::default());
    }
    let c = &mut template.containers[0];
    args.container.apply(c, &mut template.volumes)?;
    if c.image.is_empty() {
        bail!("--image is required to deploy a new service");
    }
    if let Some(port) = args.port {
        // A new port number keeps the protocol (--use-http2) the service has.
        let name = c.ports.first().map(|p| p.name.clone()).filter(|n| !n.is_empty()).unwrap_or_else(|| "http1".into());
        c.ports = vec![wharf_api::ContainerPort { name, container_port: i32::from(port) }];
    }
    if args.use_http2 || args.no_use_http2 {
        let name = if args.use_http2 { "h2c" } else { "http1" };
        match c.ports.first_mut() {
            Some(port) => port.name = name.into(),
            None => c.ports = vec![wharf_api::ContainerPort { name: name.into(), container_port: 8080 }],
        }
    }
    if args.cpu_throttling || args.no_cpu_throttling || args.cpu_boost || args.no_cpu_boost {
        let resources = c.resources.get_or_insert_with(wharf_api::ResourceRequirements::default);
        if args.cpu_throttling || args.no_cpu_throttling {
            resources.cpu_idle = Some(args.cpu_throttling);
        }
        if args.cpu_boost || args.no_cpu_boost {
            resources.startup_cpu_boost = args.cpu_boost;
        }
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
        template.timeout = Some(api_duration("--timeout", t)?);
    }
    if args.session_affinity {
        template.session_affinity = true;
    }
    if args.no_session_affinity {
        template.session_affinity = false;
    }
    args.vpc.apply(&mut template.vpc_access)?;
    template.revision = args.revision_suffix.as_ref().map(|s| format!("{}-{s}", args.service)).unwrap_or_default();
    if let Some(labels) = &args.labels {
        service.labels = split_pairs("--labels", labels)?.into_iter().collect();
    }
    Ok(())
}

/// Deploys `args` to its service; creates the service when it is missing only if `create_if_missing`.
pub async fn deploy(ctx: &Ctx, mut args: DeployArgs, create_if_missing: bool) -> anyhow::Result<()> {
    let existing = ctx.get_service(&args.service).await?;
    if existing.is_none() && !create_if_missing {
        bail!("{}", ctx.missing(&args.service));
    }
    if args.source.source.is_some() {
        eprintln!(
            "Building using {} and deploying container to Cloud Run service [{}]",
            args.source.describe(),
            args.service
        );
        let service = args.service.clone();
        args.source.build_into(ctx, &service, &mut args.container.image).await?;
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
    if args.allow_unauthenticated || args.no_allow_unauthenticated {
        // As gcloud: the invoker binding for allUsers, set once the service exists.
        eprintln!("  Setting IAM Policy...");
        let binding = crate::cli::policy::BindingArgs { member: "allUsers".into(), role: "roles/run.invoker".into() };
        let target = ctx.service_policy(&name);
        target.ensure_binding(&ctx.client, &binding, args.allow_unauthenticated).await?;
    }
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

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        deploy: DeployArgs,
    }

    fn applied(flags: &[&str], service: &mut Service) -> anyhow::Result<()> {
        let cli = Cli::try_parse_from(["deploy", "s"].iter().chain(flags))?;
        apply(&cli.deploy, service)
    }

    #[test]
    fn deploy_flags_shape_the_template() {
        let mut s = Service::default();
        let err = applied(&[], &mut s).unwrap_err();
        assert_eq!(err.to_string(), "--image is required to deploy a new service");
        applied(
            &["--image=x", "--port=9000", "--concurrency=5", "--max-instances=3", "--timeout=5m", "--labels=team=a"],
            &mut s,
        )
        .unwrap();
        let t = &s.template;
        assert_eq!(t.containers[0].image, "x");
        assert_eq!(t.containers[0].ports[0].container_port, 9000);
        assert_eq!(t.max_instance_request_concurrency, 5);
        assert_eq!(t.scaling.as_ref().unwrap().max_instance_count, 3);
        assert_eq!(t.timeout.as_deref(), Some("300s"));
        assert_eq!(s.labels.get("team").map(String::as_str), Some("a"));
        applied(&["--set-env-vars=A=1,B=2"], &mut s).unwrap();
        applied(&["--update-env-vars=B=3,C=4", "--remove-env-vars=A"], &mut s).unwrap();
        let env: Vec<(String, String)> =
            s.template.containers[0].env.iter().map(|e| (e.name.clone(), e.value.clone().unwrap())).collect();
        assert_eq!(env, [("B".to_owned(), "3".to_owned()), ("C".to_owned(), "4".to_owned())]);
        assert_eq!(s.template.containers[0].image, "x", "an update keeps the image");

        let port = |s: &Service| {
            (s.template.containers[0].ports[0].name.clone(), s.template.containers[0].ports[0].container_port)
        };
        applied(&["--use-http2"], &mut s).unwrap();
        assert_eq!(port(&s), ("h2c".to_owned(), 9000));
        applied(&["--port=9001"], &mut s).unwrap();
        assert_eq!(port(&s), ("h2c".to_owned(), 9001), "a new port keeps HTTP/2");
        applied(&["--no-use-http2"], &mut s).unwrap();
        assert_eq!(port(&s), ("http1".to_owned(), 9001));
        let mut fresh = Service::default();
        applied(&["--image=x", "--use-http2"], &mut fresh).unwrap();
        assert_eq!(port(&fresh), ("h2c".to_owned(), 8080));
    }

    #[test]
    fn source_flags_parse_and_dockerfile_needs_source() {
        let cli = Cli::try_parse_from(["deploy", "s", "--source", "app", "--dockerfile", "docker/Dockerfile"]).unwrap();
        assert_eq!(cli.deploy.source.source.as_deref(), Some(std::path::Path::new("app")));
        assert_eq!(cli.deploy.source.dockerfile.as_deref(), Some("docker/Dockerfile"));
        let e = Cli::try_parse_from(["deploy", "s", "--dockerfile", "Dockerfile"]).unwrap_err();
        assert!(e.to_string().contains("--source"), "{e}");
    }

    #[test]
    fn refuses_what_wharf_cannot_do() {
        let mut s = Service::default();
        applied(&["--image=x", "--no-allow-unauthenticated", "--service-account=a@p.iam.gserviceaccount.com"], &mut s)
            .unwrap();
        assert_eq!(s.template.service_account, "a@p.iam.gserviceaccount.com");
        applied(&["--image=x", "--set-env-vars=oops"], &mut s).unwrap_err();
        applied(&["--image=x", "--timeout=soon"], &mut s).unwrap_err();
    }
}
