//! `wharf run jobs ...`: create, update, describe, list, delete and execute jobs; list,
//! describe, cancel and delete their executions (as `gcloud run jobs`).

use anyhow::{Context as _, bail};
use wharf_api::jobs::{ContainerOverride, Job, Overrides, RunJobRequest};
use wharf_api::{Container, EnvVar};

use crate::cli::check;
use crate::cli::ctx::Ctx;
use crate::cli::flags::{ContainerFlags, VpcFlags, api_duration, split_list, split_pairs};

#[derive(Debug, clap::Subcommand)]
pub enum JobsCommand {
    /// Create a job.
    Create(Box<JobArgs>),
    /// Change a job.
    Update(Box<JobArgs>),
    /// Create or update a job; with --source, build its image from source first.
    Deploy(Box<JobDeployArgs>),
    /// Show a job (--format export: run.googleapis.com/v1 Job YAML to keep and `replace` later).
    Describe { job: String },
    /// Create or update a job from a run.googleapis.com/v1 Job YAML file.
    Replace { file: std::path::PathBuf },
    /// List jobs.
    List,
    /// Delete a job and its executions.
    Delete { job: String },
    /// Show a job's IAM policy.
    GetIamPolicy { job: String },
    /// Replace a job's IAM policy with a JSON or YAML file (its etag must be current).
    SetIamPolicy { job: String, file: std::path::PathBuf },
    /// Grant a role on a job.
    AddIamPolicyBinding {
        job: String,
        #[command(flatten)]
        binding: crate::cli::policy::BindingArgs,
    },
    /// Revoke a role on a job.
    RemoveIamPolicyBinding {
        job: String,
        #[command(flatten)]
        binding: crate::cli::policy::BindingArgs,
    },
    /// Run a job now.
    Execute(ExecuteArgs),
    /// Show a job's usage in Cloud Run's billing units (task seconds, vCPU-seconds,
    /// GiB-seconds) per execution, deleted executions included; kept across restarts.
    Usage { job: String },
    /// Executions of jobs.
    #[command(subcommand)]
    Executions(ExecutionsCommand),
}

#[derive(Debug, Clone, clap::Args)]
pub struct JobArgs {
    pub job: String,
    #[command(flatten)]
    pub container: ContainerFlags,
    /// Number of tasks (1-10000, default 1).
    #[arg(long, allow_negative_numbers = true)]
    pub tasks: Option<i32>,
    /// Tasks run at once (default: as many as the machine can).
    #[arg(long, allow_negative_numbers = true)]
    pub parallelism: Option<i32>,
    /// Retries per task (0-10, default 3).
    #[arg(long, allow_negative_numbers = true)]
    pub max_retries: Option<i32>,
    /// Per-attempt timeout: seconds or a duration like 10m (default 10m, max 24h).
    #[arg(long)]
    pub task_timeout: Option<String>,
    #[command(flatten)]
    pub vpc: VpcFlags,
    /// The service account tasks run as (you need iam.serviceAccounts.actAs on it).
    #[arg(long)]
    pub service_account: Option<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct JobDeployArgs {
    #[command(flatten)]
    pub job: JobArgs,
    #[command(flatten)]
    pub source: crate::cli::run::deploy::SourceFlags,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ExecuteArgs {
    pub job: String,
    /// Wait for the execution to finish.
    #[arg(long)]
    pub wait: bool,
    /// Env for this execution only: KEY=VALUE,...
    #[arg(long, value_name = "KEY=VALUE,...")]
    pub update_env_vars: Option<String>,
    /// Task count for this execution only.
    #[arg(long)]
    pub tasks: Option<i32>,
    /// Args for this execution only.
    #[arg(long)]
    pub args: Option<String>,
    #[arg(long)]
    pub task_timeout: Option<String>,
    #[arg(long = "async")]
    pub no_wait: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum ExecutionsCommand {
    List {
        #[arg(long)]
        job: Option<String>,
    },
    Describe {
        execution: String,
    },
    Cancel {
        execution: String,
    },
    Delete {
        execution: String,
    },
}

fn apply(args: &JobArgs, job: &mut Job) -> anyhow::Result<()> {
    let t = &mut job.template;
    if let Some(account) = &args.service_account {
        t.template.service_account = account.clone();
    }
    if t.template.containers.is_empty() {
        t.template.containers.push(Container::default());
    }
    let c = &mut t.template.containers[0];
    args.container.apply(c, &mut t.template.volumes)?;
    if c.image.is_empty() {
        bail!("--image is required to create a job");
    }
    if let Some(n) = args.tasks {
        t.task_count = n;
    }
    if let Some(n) = args.parallelism {
        t.parallelism = n;
    }
    if let Some(n) = args.max_retries {
        t.template.max_retries = Some(n);
    }
    if let Some(timeout) = &args.task_timeout {
        t.template.timeout = Some(api_duration("--task-timeout", timeout)?);
    }
    args.vpc.apply(&mut t.template.vpc_access)?;
    Ok(())
}

/// Creates the job `args` describe.
async fn create(ctx: &Ctx, jobs: &str, args: &JobArgs) -> anyhow::Result<()> {
    let mut job = Job::default();
    apply(args, &mut job)?;
    let r =
        ctx.client.api_request(reqwest::Method::POST, jobs).query(&[("jobId", &args.job)]).json(&job).send().await?;
    let op: wharf_api::Operation = check(r).await?.json().await?;
    ctx.wait(&op).await?;
    eprintln!("Job [{}] has successfully been created.", args.job);
    Ok(())
}

/// Applies `args` to the existing job.
async fn update(ctx: &Ctx, jobs: &str, args: &JobArgs) -> anyhow::Result<()> {
    let r = ctx.client.api_request(reqwest::Method::GET, &format!("{jobs}/{}", args.job)).send().await?;
    let mut job: Job = check(r).await?.json().await?;
    apply(args, &mut job)?;
    let r = ctx.client.api_request(reqwest::Method::PATCH, &format!("{jobs}/{}", args.job)).json(&job).send().await?;
    let op: wharf_api::Operation = check(r).await?.json().await?;
    ctx.wait(&op).await?;
    eprintln!("Job [{}] has been updated.", args.job);
    Ok(())
}

pub async fn run(ctx: &Ctx, command: JobsCommand) -> anyhow::Result<()> {
    let jobs = format!("{}/jobs", ctx.parent());
    match command {
        JobsCommand::Deploy(deploy) => {
            let mut deploy = *deploy;
            let name = deploy.job.job.clone();
            deploy.source.build_into(ctx, &name, &mut deploy.job.container.image).await?;
            let r = ctx.client.api_request(reqwest::Method::GET, &format!("{jobs}/{name}")).send().await?;
            if r.status() == reqwest::StatusCode::NOT_FOUND {
                create(ctx, &jobs, &deploy.job).await
            } else {
                check(r).await?;
                update(ctx, &jobs, &deploy.job).await
            }
        }
        JobsCommand::Create(args) => create(ctx, &jobs, &args).await,
        JobsCommand::Update(args) => update(ctx, &jobs, &args).await,
        JobsCommand::Describe { job } => {
            let r = ctx.client.api_request(reqwest::Method::GET, &format!("{jobs}/{job}")).send().await?;
            let job: serde_json::Value = check(r).await?.json().await?;
            if ctx.format.as_deref() == Some("export") {
                let job: Job = serde_json::from_value(job).context("the server's job")?;
                print!("{}", serde_norway::to_string(&wharf_api::knative::job_export(&job))?);
                return Ok(());
            }
            ctx.print(&job, "yaml")
        }
        JobsCommand::Replace { file } => replace(ctx, &jobs, &file).await,
        JobsCommand::Usage { job } => {
            let path = format!("/wharf/v1/projects/{}/locations/{}/jobs/{job}/usage", ctx.project, ctx.region);
            let r = ctx.client.api_request(reqwest::Method::GET, &path).send().await?;
            let usage: serde_json::Value = check(r).await?.json().await?;
            ctx.print(&usage, "yaml")
        }
        JobsCommand::List => {
            let r = ctx.client.api_request(reqwest::Method::GET, &jobs).send().await?;
            let list: serde_json::Value = check(r).await?.json().await?;
            ctx.print(&list["jobs"], "table(name.basename():label=JOB, latestCreatedExecution.name.basename():label=LAST_EXECUTION, executionCount:label=EXECUTIONS)")
        }
        JobsCommand::GetIamPolicy { job } => ctx.print(&ctx.job_policy(&job).get(&ctx.client).await?, "yaml"),
        JobsCommand::SetIamPolicy { job, file } => {
            let policy = crate::cli::policy::read_policy_file(&file)?;
            let stored = ctx.job_policy(&job).set(&ctx.client, &policy).await?;
            eprintln!("Updated IAM policy for job [{job}].");
            ctx.print(&stored, "yaml")
        }
        JobsCommand::AddIamPolicyBinding { job, binding } => {
            ctx.print(&ctx.job_policy(&job).change_binding(&ctx.client, &binding, true).await?, "yaml")
        }
        JobsCommand::RemoveIamPolicyBinding { job, binding } => {
            ctx.print(&ctx.job_policy(&job).change_binding(&ctx.client, &binding, false).await?, "yaml")
        }
        JobsCommand::Delete { job } => {
            let r = ctx.client.api_request(reqwest::Method::DELETE, &format!("{jobs}/{job}")).send().await?;
            check(r).await?;
            eprintln!("Deleted job [{job}].");
            Ok(())
        }
        JobsCommand::Execute(args) => execute(ctx, &jobs, args).await,
        JobsCommand::Executions(command) => executions(ctx, &jobs, command).await,
    }
}

async fn execute(ctx: &Ctx, jobs: &str, args: ExecuteArgs) -> anyhow::Result<()> {
    let mut container = ContainerOverride::default();
    if let Some(update) = &args.update_env_vars {
        container.env = split_pairs("--update-env-vars", update)?
            .into_iter()
            .map(|(name, v)| EnvVar { name, value: Some(v), value_source: None })
            .collect();
    }
    if let Some(a) = &args.args {
        container.args = split_list(a);
    }
    let overrides = Overrides {
        container_overrides: vec![container],
        task_count: args.tasks,
        timeout: args.task_timeout.as_deref().map(|t| api_duration("--task-timeout", t)).transpose()?,
    };
    let request = RunJobRequest { overrides: Some(overrides), ..RunJobRequest::default() };
    let r = ctx
        .client
        .api_request(reqwest::Method::POST, &format!("{jobs}/{}:run", args.job))
        .json(&request)
        .send()
        .await?;
    let op: wharf_api::Operation = check(r).await?.json().await?;
    let execution =
        op.metadata.as_ref().and_then(|m| m["name"].as_str()).unwrap_or("").rsplit('/').next().unwrap_or("").to_owned();
    eprintln!("Execution [{execution}] has successfully started running.");
    if args.wait && !args.no_wait {
        ctx.wait(&op).await.with_context(|| format!("Execution [{execution}] failed"))?;
        eprintln!("Execution [{execution}] has successfully completed.");
    }
    println!("{execution}");
    Ok(())
}

async fn find_execution(ctx: &Ctx, jobs: &str, execution: &str) -> anyhow::Result<serde_json::Value> {
    let r = ctx.client.api_request(reqwest::Method::GET, &format!("{jobs}/-/executions/{execution}")).send().await?;
    Ok(check(r).await?.json().await?)
}

async fn executions(ctx: &Ctx, jobs: &str, command: ExecutionsCommand) -> anyhow::Result<()> {
    match command {
        ExecutionsCommand::List { job } => {
            let path = format!("{jobs}/{}/executions", job.as_deref().unwrap_or("-"));
            let r = ctx.client.api_request(reqwest::Method::GET, &path).send().await?;
            let list: serde_json::Value = check(r).await?.json().await?;
            ctx.print(
                &list["executions"],
                "table(name.basename():label=EXECUTION, job.basename():label=JOB, taskCount:label=TASKS, succeededCount:label=SUCCEEDED, failedCount:label=FAILED, conditions[0].state:label=STATE)",
            )
        }
        ExecutionsCommand::Describe { execution } => {
            let e = find_execution(ctx, jobs, &execution).await?;
            let job = e["job"].as_str().unwrap_or("").rsplit('/').next().unwrap_or("-").to_owned();
            let r = ctx
                .client
                .api_request(reqwest::Method::GET, &format!("{jobs}/{job}/executions/{execution}/tasks"))
                .send()
                .await?;
            let tasks: serde_json::Value = check(r).await?.json().await?;
            let mut view = e.clone();
            view["tasks"] = tasks["tasks"].clone();
            ctx.print(&view, "yaml")
        }
        ExecutionsCommand::Cancel { execution } => {
            let e = find_execution(ctx, jobs, &execution).await?;
            let job = e["job"].as_str().unwrap_or("").rsplit('/').next().unwrap_or("-").to_owned();
            let r = ctx
                .client
                .api_request(reqwest::Method::POST, &format!("{jobs}/{job}/executions/{execution}:cancel"))
                .send()
                .await?;
            check(r).await?;
            eprintln!("Execution [{execution}] is being cancelled.");
            Ok(())
        }
        ExecutionsCommand::Delete { execution } => {
            let e = find_execution(ctx, jobs, &execution).await?;
            let job = e["job"].as_str().unwrap_or("").rsplit('/').next().unwrap_or("-").to_owned();
            let r = ctx
                .client
                .api_request(reqwest::Method::DELETE, &format!("{jobs}/{job}/executions/{execution}"))
                .send()
                .await?;
            check(r).await?;
            eprintln!("Deleted execution [{execution}].");
            Ok(())
        }
    }
}

/// `jobs replace FILE`: the document's job created, or updated in full (an unchanged one is
/// left as it is).
async fn replace(ctx: &Ctx, jobs: &str, file: &std::path::Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let doc = wharf_api::knative::input::job(&text).with_context(|| format!("{} is not a job", file.display()))?;
    if let Some(namespace) = doc.namespace.as_deref().filter(|n| *n != ctx.project) {
        bail!(
            "{}: metadata.namespace {namespace:?} is not the project {:?}; use --project {namespace}",
            file.display(),
            ctx.project
        );
    }
    if let Some(location) = doc.location.as_deref().filter(|l| *l != ctx.region) {
        bail!(
            "{}: label cloud.googleapis.com/location {location:?} is not the region {:?}; use --region {location}",
            file.display(),
            ctx.region
        );
    }
    let name = &doc.name;
    let request = ctx
        .client
        .api_request(reqwest::Method::PATCH, &format!("{jobs}/{name}"))
        .query(&[("allowMissing", "true")])
        .json(&doc.job);
    let op: wharf_api::Operation = check(request.send().await?).await?.json().await?;
    ctx.wait(&op).await?;
    eprintln!("Job [{name}] is up to date.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        job: JobArgs,
    }

    fn applied(flags: &[&str], job: &mut Job) -> anyhow::Result<()> {
        let cli = Cli::try_parse_from(["create", "j"].iter().chain(flags))?;
        apply(&cli.job, job)
    }

    #[test]
    fn job_flags_shape_the_template() {
        let mut job = Job::default();
        let err = applied(&["--tasks=2"], &mut job).unwrap_err();
        assert_eq!(err.to_string(), "--image is required to create a job");
        applied(&["--image=x", "--tasks=3", "--max-retries=0", "--task-timeout=1h", "--set-env-vars=A= a"], &mut job)
            .unwrap();
        assert_eq!(job.template.task_count, 3);
        assert_eq!(job.template.template.max_retries, Some(0));
        assert_eq!(job.template.template.timeout.as_deref(), Some("3600s"));
        let c = &job.template.template.containers[0];
        assert_eq!((c.env[0].name.as_str(), c.env[0].value.as_deref()), ("A", Some(" a")));
        applied(&["--remove-env-vars=A"], &mut job).unwrap();
        assert_eq!(job.template.template.containers[0].env, []);
    }
}
