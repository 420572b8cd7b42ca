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
    // The per-instance container helper, as the supervisor starts it when there is no
    // `wharf-shim` binary beside this one (src/bin/wharf-shim.rs): it skips the CLI's parser
    // too. It forks containers, so it stays single-threaded: no async runtime.
    if raw.get(1).map(String::as_str) == Some("shim") {
        let Some(shim) = wharf_runtime::shim::ShimArgs::parse(&raw[2..]) else {
            eprintln!("usage: wharf shim --id ID --bundle DIR --state-root DIR (internal)");
            return std::process::ExitCode::FAILURE;
        };
        return std::process::ExitCode::from(u8::try_from(wharf_runtime::shim::main(&shim)).unwrap_or(1));
    }
    let args = Wharf::parse();
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
