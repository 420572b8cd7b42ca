//! `wharf run ...`: the `gcloud run` verbs and flags, against Wharf's Cloud Run v2 API, one
//! file per command group. Progress goes to stderr as gcloud prints it; results to stdout,
//! shaped by `--format` over the Knative v1 view gcloud shows (so `value(status.url)` works as
//! it does with gcloud).

pub mod deploy;
pub mod domain_mappings;
pub mod jobs;
pub mod revisions;
pub mod services;

use crate::cli::ctx::Ctx;
use crate::cli::{Client, ConnectionArgs};

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
    Deploy(Box<deploy::DeployArgs>),
    /// Manage services.
    #[command(subcommand)]
    Services(services::ServicesCommand),
    /// Manage revisions.
    #[command(subcommand)]
    Revisions(revisions::RevisionsCommand),
    /// Manage and run jobs.
    #[command(subcommand)]
    Jobs(jobs::JobsCommand),
    /// Map custom domains to services (served over HTTPS with certificates from ACME).
    #[command(subcommand)]
    DomainMappings(domain_mappings::DomainMappingsCommand),
}

pub async fn run(connection: &ConnectionArgs, place: &Place, command: RunCommand) -> anyhow::Result<()> {
    if let Some(platform) = &place.platform {
        eprintln!("Note: --platform={platform} is accepted for gcloud compatibility; Wharf has one platform.");
    }
    match place.format.as_deref() {
        // A document to keep and `replace` later: only a service's describe makes one.
        Some("export")
            if !matches!(
                command,
                RunCommand::Services(services::ServicesCommand::Describe { .. })
                    | RunCommand::Jobs(jobs::JobsCommand::Describe { .. })
            ) =>
        {
            anyhow::bail!("--format export is for `services describe` and `jobs describe`; use yaml or json here")
        }
        Some("export") | None => {}
        Some(format) => wharf_format::check(format)?,
    }
    let client = Client::connect(connection)?;
    let ctx = Ctx { client, project: place.project(), region: place.region(), format: place.format.clone() };
    match command {
        RunCommand::Deploy(args) => deploy::deploy(&ctx, *args, true).await,
        RunCommand::Services(command) => services::run(&ctx, place.quiet, command).await,
        RunCommand::Revisions(command) => revisions::run(&ctx, command).await,
        RunCommand::Jobs(command) => jobs::run(&ctx, command).await,
        RunCommand::DomainMappings(command) => domain_mappings::run(&ctx, command).await,
    }
}

impl Place {
    pub fn project(&self) -> String {
        self.project.clone().or_else(|| crate::cli::cli_setting("project")).unwrap_or_else(|| "default".to_owned())
    }

    pub(crate) fn region(&self) -> String {
        self.region.clone().or_else(|| crate::cli::cli_setting("region")).unwrap_or_else(|| "us-central1".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::flags::ContainerFlags;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        command: RunCommand,
    }

    fn container_flags(args: &[&str]) -> ContainerFlags {
        match Cli::try_parse_from(args).unwrap().command {
            RunCommand::Deploy(a) => a.container,
            RunCommand::Services(services::ServicesCommand::Update(a)) => a.container,
            RunCommand::Jobs(jobs::JobsCommand::Create(a) | jobs::JobsCommand::Update(a)) => a.container,
            other => panic!("{other:?} has no container flags"),
        }
    }

    #[test]
    fn deploy_services_update_and_jobs_share_the_container_flags() {
        let flags = ["--image=x:1", "--set-env-vars=A= 1", "--command=a,b", "--args=c", "--cpu=2", "--memory=1Gi"];
        let expected = ContainerFlags {
            image: Some("x:1".into()),
            command: Some("a,b".into()),
            args: Some("c".into()),
            set_env_vars: Some("A= 1".into()),
            cpu: Some("2".into()),
            memory: Some("1Gi".into()),
            ..ContainerFlags::default()
        };
        for verb in [
            &["run", "deploy", "s"][..],
            &["run", "services", "update", "s"],
            &["run", "jobs", "create", "j"],
            &["run", "jobs", "update", "j"],
        ] {
            let args: Vec<&str> = verb.iter().chain(&flags).copied().collect();
            assert_eq!(container_flags(&args), expected, "{verb:?}");
        }
    }
}
