//! `wharf builds submit|list|describe|cancel|log` (as `gcloud builds`), and [`build_source`], which
//! `wharf run deploy --source` and `wharf run jobs deploy --source` use: pack the directory
//! with its ignore rules, upload it, submit the build, and follow its log on stderr until it
//! ends. The build itself runs on the server (`wharf_build`), so a remote CLI works too.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use wharf_build::{Build, BuildStatus};

use crate::cli::check;
use crate::cli::ctx::Ctx;
use crate::cli::run::Place;
use crate::cli::{Client, ConnectionArgs};

/// Most bytes of source the CLI packs (the server has its own, usually lower, limit).
const MAX_PACK_BYTES: u64 = 4 << 30;

#[derive(Debug, clap::Subcommand)]
pub enum BuildsCommand {
    /// Build an image from a source directory on the server and push it to Wharf's registry.
    Submit(SubmitArgs),
    /// List builds, newest first.
    List,
    /// Show a build: status, duration, image digest, log location.
    Describe { build: String },
    /// Cancel a queued or running build: its processes are killed, its status is CANCELLED.
    Cancel { build: String },
    /// Print a build's log (following it while it runs with --stream).
    Log {
        build: String,
        #[arg(long)]
        stream: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// The source directory [default: .]
    pub source: Option<PathBuf>,
    /// The image to build, in Wharf's registry, e.g. 127.0.0.1:5000/team/app:v1
    #[arg(long)]
    pub tag: Option<String>,
    /// A cloudbuild.yaml with one `gcr.io/cloud-builders/docker` build step.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The Dockerfile, relative to the source directory [default: Dockerfile, else one is
    /// generated for the detected language]
    #[arg(long)]
    pub dockerfile: Option<String>,
    /// Base image of a generated Dockerfile (no Dockerfile in the source).
    #[arg(long)]
    pub base_image: Option<String>,
    /// Build environment variables, KEY=VALUE[,KEY=VALUE...] (repeatable): seen by a generated
    /// Dockerfile's RUN steps, and as build args by a Dockerfile that declares them (ARG KEY).
    #[arg(long = "set-build-env-vars", value_name = "KEY=VALUE,...")]
    pub set_build_env_vars: Vec<String>,
    /// Return once the build is submitted.
    #[arg(long = "async")]
    pub no_wait: bool,
}

/// What to build, for [`build_source`].
#[derive(Debug, Clone)]
pub struct SourceBuild<'a> {
    pub dir: &'a Path,
    pub image_uri: &'a str,
    pub dockerfile: Option<&'a str>,
    pub base_image: Option<&'a str>,
    /// `--set-build-env-vars`, parsed by [`parse_build_env`].
    pub build_env: std::collections::BTreeMap<String, String>,
}

/// `--set-build-env-vars KEY=VALUE[,KEY=VALUE...]`, each flag possibly repeated. Names are
/// checked by the server (it says which it refuses).
pub fn parse_build_env(values: &[String]) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let mut env = std::collections::BTreeMap::new();
    for pair in values.iter().flat_map(|v| v.split(',')).filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("--set-build-env-vars {pair:?} has no '=': give KEY=VALUE[,KEY=VALUE...]");
        };
        env.insert(key.trim().to_owned(), value.to_owned());
    }
    Ok(env)
}

pub async fn run(connection: &ConnectionArgs, place: &Place, command: BuildsCommand) -> anyhow::Result<()> {
    if let Some(format) = place.format.as_deref() {
        wharf_format::check(format)?;
    }
    let client = Client::connect(connection)?;
    let ctx = Ctx { client, project: place.project(), region: place.region(), format: place.format.clone() };
    match command {
        BuildsCommand::Submit(args) => submit(&ctx, args).await,
        BuildsCommand::List => {
            let r = ctx.client.api_request(reqwest::Method::GET, &format!("{}/builds", ctx.parent())).send().await?;
            let list: serde_json::Value = check(r).await?.json().await?;
            let builds = list.get("builds").cloned().unwrap_or_else(|| serde_json::json!([]));
            ctx.print(&builds, "table(id,createTime:label=CREATE_TIME,duration,imageUri:label=IMAGES,status)")
        }
        BuildsCommand::Describe { build } => {
            let build = get_build(&ctx, &build).await?;
            ctx.print(&serde_json::to_value(&build)?, "yaml")
        }
        BuildsCommand::Cancel { build } => {
            let path = format!("{}/builds/{build}:cancel", ctx.parent());
            let r = ctx.client.api_request(reqwest::Method::POST, &path).json(&serde_json::json!({})).send().await?;
            let build: Build = check(r).await?.json().await?;
            eprintln!("Cancelled [{}].", build.name);
            if ctx.format.is_some() {
                ctx.print(&serde_json::to_value(&build)?, "yaml")?;
            }
            Ok(())
        }
        BuildsCommand::Log { build, stream } => {
            if stream {
                follow(&ctx, &build).await.map(|_| ())
            } else {
                let (bytes, _, _) = read_log(&ctx, &build, 0).await?;
                std::io::stdout().lock().write_all(&bytes)?;
                Ok(())
            }
        }
    }
}

async fn submit(ctx: &Ctx, args: SubmitArgs) -> anyhow::Result<()> {
    let source = args.source.clone().unwrap_or_else(|| PathBuf::from("."));
    let (tag, dockerfile, dir) = match &args.config {
        Some(config) => {
            if args.tag.is_some() || args.dockerfile.is_some() {
                bail!("--config names the image and Dockerfile itself; give --config or --tag/--dockerfile, not both");
            }
            let text = std::fs::read_to_string(config)
                .with_context(|| format!("cannot read the build config {}", config.display()))?;
            let step = wharf_build::cloudbuild::parse(&text, &ctx.project)?;
            (step.tag, step.dockerfile, source.join(step.context))
        }
        None => {
            let Some(tag) = args.tag.clone() else {
                bail!("--tag IMAGE or --config cloudbuild.yaml is required: name the image to build");
            };
            (tag, args.dockerfile.clone(), source)
        }
    };
    let request = SourceBuild {
        dir: &dir,
        image_uri: &tag,
        dockerfile: dockerfile.as_deref(),
        base_image: args.base_image.as_deref(),
        build_env: parse_build_env(&args.set_build_env_vars)?,
    };
    if args.no_wait {
        let build = start_build(ctx, &request).await?;
        eprintln!("Build [{}] submitted; follow it with `wharf builds log {} --stream`.", build.id, build.id);
        return Ok(());
    }
    let build = build_source(ctx, &request).await?;
    if ctx.format.is_some() {
        ctx.print(&serde_json::to_value(&build)?, "yaml")?;
    } else {
        println!("{}", build.image.unwrap_or_default());
    }
    Ok(())
}

/// Packs, uploads and submits; answers the build as submitted.
async fn start_build(ctx: &Ctx, request: &SourceBuild<'_>) -> anyhow::Result<Build> {
    let dir = request.dir.to_owned();
    let staged = tempfile::NamedTempFile::new().context("cannot create a temporary file for the source archive")?;
    let file = staged.reopen().context("cannot open the temporary source archive")?;
    let summary = tokio::task::spawn_blocking(move || wharf_build::ignore::pack(&dir, file, MAX_PACK_BYTES))
        .await?
        .with_context(|| format!("cannot pack {}", request.dir.display()))?;
    let size = staged.as_file().metadata()?.len();
    let rules = summary.rules_from.map(|f| format!(", {} ignored by {f}", summary.ignored)).unwrap_or_default();
    eprintln!(
        "Uploading sources from [{}]: {} files, {} bytes compressed{rules}.",
        request.dir.display(),
        summary.files,
        size
    );
    let body = tokio::fs::File::open(staged.path()).await?;
    let upload = ctx
        .client
        .api_request(reqwest::Method::POST, &format!("/wharf/v1{}/sources", ctx.parent().trim_start_matches("/v2")))
        .header(reqwest::header::CONTENT_TYPE, "application/gzip")
        .header(reqwest::header::CONTENT_LENGTH, size)
        .body(reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(body, 1 << 20)))
        .send()
        .await
        .context("cannot upload the source")?;
    let stored: serde_json::Value = check(upload).await?.json().await?;
    let mut submit = serde_json::json!({
        "storageSource": {"bucket": stored["bucket"], "object": stored["object"]},
        "imageUri": request.image_uri,
    });
    if request.base_image.is_some() && request.dockerfile.is_some() {
        bail!(
            "--base-image is for sources without a Dockerfile; with --dockerfile, the Dockerfile's FROM names the base"
        );
    }
    let env = &request.build_env;
    match (request.dockerfile, request.base_image) {
        (Some(dockerfile), _) => {
            submit["dockerBuild"] = serde_json::json!({ "dockerfile": dockerfile, "environmentVariables": env });
        }
        (None, Some(base)) => {
            submit["buildpackBuild"] = serde_json::json!({ "baseImage": base, "environmentVariables": env });
        }
        (None, None) if !env.is_empty() => {
            submit["buildpackBuild"] = serde_json::json!({ "environmentVariables": env });
        }
        (None, None) => {}
    }
    let r = ctx
        .client
        .api_request(reqwest::Method::POST, &format!("{}/builds:submit", ctx.parent()))
        .json(&submit)
        .send()
        .await?;
    let response: serde_json::Value = check(r).await?.json().await?;
    let build: Build = serde_json::from_value(response["buildOperation"]["metadata"]["build"].clone())
        .context("the server's SubmitBuildResponse has no build")?;
    Ok(build)
}

/// Builds `request` on the server, printing progress and the log to stderr; answers the
/// successful build (its `image` is pinned by digest) or fails with the build's last lines.
pub async fn build_source(ctx: &Ctx, request: &SourceBuild<'_>) -> anyhow::Result<Build> {
    let build = start_build(ctx, request).await?;
    eprintln!("Building [{}] as build [{}].", request.image_uri, build.id);
    eprintln!(
        "Logs are available at [{}{}] (and with `wharf builds log {}`).",
        ctx.client.api, build.log_url, build.id
    );
    let build = follow(ctx, &build.id).await?;
    if build.status != BuildStatus::Success {
        bail!(
            "Build [{}] failed ({:?}): {}",
            build.id,
            build.status,
            build.failure_detail.as_deref().unwrap_or("see its log")
        );
    }
    eprintln!(
        "Build [{}] finished in {}: {}{}.",
        build.id,
        build.duration.as_deref().unwrap_or("?"),
        build.image.as_deref().unwrap_or_default(),
        if build.cached_steps > 0 {
            format!(" ({} steps from the layer cache)", build.cached_steps)
        } else {
            String::new()
        }
    );
    Ok(build)
}

/// Prints the log of build `id` to stderr as it grows, until the build ends; answers it.
async fn follow(ctx: &Ctx, id: &str) -> anyhow::Result<Build> {
    let mut offset = 0;
    loop {
        let (bytes, next, done) = read_log(ctx, id, offset).await?;
        std::io::stderr().lock().write_all(&bytes)?;
        offset = next;
        if done && bytes.is_empty() {
            return get_build(ctx, id).await;
        }
        if bytes.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
    }
}

/// The log from `offset`; answers the bytes, the next offset and whether the build is done.
async fn read_log(ctx: &Ctx, id: &str, offset: u64) -> anyhow::Result<(Vec<u8>, u64, bool)> {
    let r = ctx
        .client
        .api_request(reqwest::Method::GET, &format!("{}/builds/{id}/log", ctx.parent()))
        .query(&[("offset", offset)])
        .send()
        .await?;
    let r = check(r).await?;
    let header = |name: &str| r.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let status = header("x-wharf-build-status").unwrap_or_default();
    let next = header("x-wharf-log-offset").and_then(|n| n.parse().ok());
    let done = !matches!(status.as_str(), "QUEUED" | "WORKING");
    let bytes = r.bytes().await?.to_vec();
    let next = next.unwrap_or(offset + bytes.len() as u64);
    Ok((bytes, next, done))
}

async fn get_build(ctx: &Ctx, id: &str) -> anyhow::Result<Build> {
    let r = ctx.client.api_request(reqwest::Method::GET, &format!("{}/builds/{id}", ctx.parent())).send().await?;
    Ok(check(r).await?.json().await?)
}

/// The image a source deploy of `name` builds: `{project}/cloud-run-source-deploy/{name}` in
/// Wharf's registry (Cloud Run's `{region}-docker.pkg.dev/{project}/cloud-run-source-deploy/{name}`).
pub fn source_deploy_image(project: &str, name: &str) -> String {
    format!("{project}/cloud-run-source-deploy/{name}")
}
