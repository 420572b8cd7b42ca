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
    Server(server::ServerArgs),
    /// Manage images in Wharf's registry.
    Images {
        #[command(flatten)]
        connection: cli::ConnectionArgs,
        #[command(subcommand)]
        command: cli::images::ImagesCommand,
    },
}

fn main() -> std::process::ExitCode {
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
            Command::Server(server_args) => server::run(server_args).await,
            Command::Images { connection, command } => cli::images::run(&connection, command).await,
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
