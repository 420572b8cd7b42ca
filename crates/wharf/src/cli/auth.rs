//! `wharf auth`: tokens for calling private services and Wharf's APIs, as `gcloud auth`
//! prints them (`print-identity-token`, `print-access-token`, with
//! `--impersonate-service-account`), `login` (storing a user's credential), and the rotation
//! of the ID token signing key.

use anyhow::bail;

use super::{Client, ConnectionArgs, check};

#[derive(Debug, clap::Subcommand)]
pub enum AuthCommand {
    /// Store a credential (a user token from `wharf iam users create`) where the CLI reads it
    /// (`~/.config/wharf/config.toml`). Reads it from --token-file, or stdin.
    Login {
        /// File holding the token; `-` for stdin.
        #[arg(long)]
        token_file: Option<std::path::PathBuf>,
    },
    /// Print an ID token (a JWT signed by this server) for the audience, e.g. a service URL.
    PrintIdentityToken {
        /// The token's audience: the URL of the service it is for.
        #[arg(long)]
        audiences: Option<String>,
        /// Print a token of this service account instead (needs
        /// iam.serviceAccounts.getOpenIdToken on it).
        #[arg(long)]
        impersonate_service_account: Option<String>,
    },
    /// Print an access token: the credential the CLI uses, or one of a service account.
    PrintAccessToken {
        /// Mint a token of this service account (needs iam.serviceAccounts.getAccessToken).
        #[arg(long)]
        impersonate_service_account: Option<String>,
    },
    /// Make a new key sign ID tokens (owner only); tokens signed by the old key stay valid
    /// until they expire.
    RotateSigningKey,
}

pub async fn run(connection: &ConnectionArgs, command: AuthCommand) -> anyhow::Result<()> {
    if let AuthCommand::Login { token_file } = command {
        return super::iam::login(connection, token_file).await;
    }
    let client = Client::connect(connection)?;
    match command {
        AuthCommand::Login { .. } => unreachable!("handled before connecting"),
        AuthCommand::PrintIdentityToken { audiences, impersonate_service_account } => {
            // gcloud's default audience for user tokens is its client id; Wharf has none, so
            // the audience is needed to call anything.
            let Some(audience) = audiences.filter(|a| !a.is_empty()) else {
                bail!("--audiences is required: pass the URL of the service the token is for");
            };
            let body = serde_json::json!({ "audience": audience });
            let path = match &impersonate_service_account {
                Some(email) => format!("/v1/projects/-/serviceAccounts/{email}:generateIdToken"),
                None => "/wharf/v1/idToken".to_owned(),
            };
            let answer: serde_json::Value =
                check(client.api_request(reqwest::Method::POST, &path).json(&body).send().await?).await?.json().await?;
            println!("{}", answer["token"].as_str().unwrap_or_default());
        }
        AuthCommand::PrintAccessToken { impersonate_service_account: None } => println!("{}", client.token()),
        AuthCommand::PrintAccessToken { impersonate_service_account: Some(email) } => {
            let path = format!("/v1/projects/-/serviceAccounts/{email}:generateAccessToken");
            let body = serde_json::json!({ "scope": ["https://www.googleapis.com/auth/cloud-platform"] });
            let answer: serde_json::Value =
                check(client.api_request(reqwest::Method::POST, &path).json(&body).send().await?).await?.json().await?;
            println!("{}", answer["accessToken"].as_str().unwrap_or_default());
        }
        AuthCommand::RotateSigningKey => {
            let answer: serde_json::Value =
                check(client.api_request(reqwest::Method::POST, "/wharf/v1/signingKeys:rotate").send().await?)
                    .await?
                    .json()
                    .await?;
            eprintln!("ID tokens are now signed with key {}", answer["kid"].as_str().unwrap_or_default());
        }
    }
    Ok(())
}
