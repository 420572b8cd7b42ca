//! The `wharf` binary. `wharf server` runs the whole platform (see [`server`]); every other
//! subcommand is the command-line client (see [`cli`]), which talks to a running server
//! through its API and registry exactly as a remote user would.

mod cli;
mod server;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "wharf", version, about = "Wharf: a self-hosted serverless container platform, Cloud Run-compatible")]
struct Wharf {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the Wharf platform: API, ingress, registry, runtime and state store.
    Server(Box<server::ServerArgs>),
    /// Internal: the per-instance container helper the instance supervisor starts (not for users).
    #[command(hide = true)]
    Shim {
        #[arg(long)]
        id: String,
        #[arg(long)]
        bundle: std::path::PathBuf,
        #[arg(long)]
        state_root: std::path::PathBuf,
    },
    /// Deploy and manage services (as `gcloud run`).
    Run {
        #[command(flatten)]
        connection: cli::ConnectionArgs,
        #[command(flatten)]
        place: cli::run::Place,
        #[command(subcommand)]
        command: Box<cli::run::RunCommand>,
    },
    /// Build images from source on the server (as `gcloud builds`).
    Builds {
        #[command(flatten)]
        connection: cli::ConnectionArgs,
        #[command(flatten)]
        place: cli::run::Place,
        #[command(subcommand)]
        command: cli::builds::BuildsCommand,
    },
    /// Read instance logs.
    Logs {
        #[command(flatten)]
        connection: cli::ConnectionArgs,
        #[command(subcommand)]
        command: cli::logs::LogsCommand,
    },
    /// Query logs with Cloud Logging's filter language (as `gcloud logging`).
    Logging {
        #[command(flatten)]
        connection: cli::ConnectionArgs,
        #[command(subcommand)]
        command: cli::logging::LoggingCommand,
    },
    /// Manage secrets and their versions (as `gcloud secrets`).
    Secrets {
        #[command(flatten)]
        connection: cli::ConnectionArgs,
        #[command(flatten)]
        place: cli::secrets::SecretsPlace,
        #[command(subcommand)]
        command: Box<cli::secrets::SecretsCommand>,
    },
    /// Roles, users, service accounts and their keys (as `gcloud iam`).
    Iam {
        #[command(flatten)]
        connection: cli::ConnectionArgs,
        #[command(flatten)]
        place: cli::run::Place,
        #[command(subcommand)]
        command: cli::iam::IamCommand,
    },
    /// A project's IAM policy (as `gcloud projects`).
    Projects {
        #[command(flatten)]
        connection: cli::ConnectionArgs,
        #[command(flatten)]
        place: cli::run::Place,
        #[command(subcommand)]
        command: cli::iam::ProjectsCommand,
    },
    /// The CLI's credentials and tokens for private services and Wharf's APIs (as `gcloud auth`).
    Auth {
        #[command(flatten)]
        connection: cli::ConnectionArgs,
        #[command(subcommand)]
        command: cli::auth::AuthCommand,
    },
    /// Manage images in Wharf's registry.
    Images {
        #[command(flatten)]
        connection: cli::ConnectionArgs,
        #[command(subcommand)]
        command: cli::images::ImagesCommand,
    },
}

fn main() -> std::process::ExitCode {
    // The instance supervisor stays small: it starts before any parsing or logging set-up.
    let raw: Vec<String> = std::env::args().collect();
    if raw.get(1).map(String::as_str) == Some("supervise") {
        let state_root = match (raw.get(2).map(String::as_str), raw.get(3)) {
            (Some("--state-root"), Some(dir)) if raw.len() == 4 => std::path::PathBuf::from(dir),
            _ => {
                eprintln!("usage: wharf supervise --state-root DIR (internal)");
                return std::process::ExitCode::FAILURE;
            }
        };
        return std::process::ExitCode::from(u8::try_from(wharf_runtime::supervisor::run(state_root)).unwrap_or(1));
    }
    let args = Wharf::parse();
    // The shim forks containers, so it must stay single-threaded: no async runtime for it.
    if let Command::Shim { id, bundle, state_root } = args.command {
        // The shim's stderr is a file in the instance directory; WHARF_SHIM_LOG=debug shows
        // libcontainer's own account of a failing start.
        let filter = tracing_subscriber::EnvFilter::try_from_env("WHARF_SHIM_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
        let _ =
            tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_writer(std::io::stderr).try_init();
        let code = wharf_runtime::shim::run(&wharf_runtime::shim::ShimArgs { id, bundle, state_root });
        return std::process::ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ERROR: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match args.command {
            Command::Server(server_args) => server::run(*server_args).await,
            Command::Images { connection, command } => cli::images::run(&connection, command).await,
            Command::Auth { connection, command } => cli::auth::run(&connection, command).await,
            Command::Run { connection, place, command } => cli::run::run(&connection, &place, *command).await,
            Command::Builds { connection, place, command } => cli::builds::run(&connection, &place, command).await,
            Command::Logs { connection, command } => cli::logs::run(&connection, command).await,
            Command::Logging { connection, command } => cli::logging::run(&connection, command).await,
            Command::Secrets { connection, place, command } => cli::secrets::run(&connection, &place, *command).await,
            Command::Iam { connection, place, command } => cli::iam::run_iam(&connection, &place, command).await,
            Command::Projects { connection, place, command } => {
                cli::iam::run_projects(&connection, &place, command).await
            }
            Command::Shim { .. } => unreachable!("handled before the async runtime starts"),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ERROR: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
