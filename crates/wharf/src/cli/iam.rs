//! `wharf iam ...` (roles, users, service accounts and their keys and policies),
//! `wharf projects ...-iam-policy...` and `wharf auth login|print-access-token`, as gcloud has
//! them, against Wharf's IAM v1 / Resource Manager v1 shaped API.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::policy::{BindingArgs, PolicyTarget, read_policy_file};
use super::run::Place;
use super::{Client, ConnectionArgs, check};

#[derive(Debug, clap::Subcommand)]
pub enum IamCommand {
    /// Predefined roles.
    #[command(subcommand)]
    Roles(RolesCommand),
    /// Users (`user:EMAIL`), who authenticate with a token the owner creates for them.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Service accounts (`NAME@PROJECT.iam.gserviceaccount.com`).
    #[command(subcommand, name = "service-accounts")]
    ServiceAccounts(ServiceAccountsCommand),
}

#[derive(Debug, clap::Subcommand)]
pub enum RolesCommand {
    /// List the roles a binding may name.
    List,
    /// Show a role and its permissions.
    Describe { role: String },
}

#[derive(Debug, clap::Subcommand)]
pub enum UsersCommand {
    /// Create a user and print its token (shown once; give it to the user for `wharf auth login`).
    Create {
        email: String,
    },
    List,
    /// Delete a user: its token stops working at once.
    Delete {
        email: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum ServiceAccountsCommand {
    /// Create NAME@PROJECT.iam.gserviceaccount.com.
    Create {
        name: String,
        #[arg(long)]
        display_name: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    List,
    Describe {
        email: String,
    },
    Delete {
        email: String,
    },
    /// Disable an account: none of its credentials are accepted until it is enabled again.
    Disable {
        email: String,
    },
    Enable {
        email: String,
    },
    GetIamPolicy {
        email: String,
    },
    SetIamPolicy {
        email: String,
        file: PathBuf,
    },
    AddIamPolicyBinding {
        email: String,
        #[command(flatten)]
        binding: BindingArgs,
    },
    RemoveIamPolicyBinding {
        email: String,
        #[command(flatten)]
        binding: BindingArgs,
    },
    /// Keys of a service account, in Google's JSON key-file format.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Create a key and write its key file to FILE (mode 0600).
    Create {
        file: PathBuf,
        #[arg(long)]
        iam_account: String,
    },
    List {
        #[arg(long)]
        iam_account: String,
    },
    Delete {
        key_id: String,
        #[arg(long)]
        iam_account: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum ProjectsCommand {
    GetIamPolicy {
        project: String,
    },
    SetIamPolicy {
        project: String,
        file: PathBuf,
    },
    AddIamPolicyBinding {
        project: String,
        #[command(flatten)]
        binding: BindingArgs,
    },
    RemoveIamPolicyBinding {
        project: String,
        #[command(flatten)]
        binding: BindingArgs,
    },
}

/// Prints `value` with `--format` (default: gcloud's for the verb).
fn print(place: &Place, value: &Value, default: &str) -> anyhow::Result<()> {
    let format = place.format.as_deref().unwrap_or(default);
    let text = wharf_format::render(value, format)?;
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(())
}

pub async fn run_iam(connection: &ConnectionArgs, place: &Place, command: IamCommand) -> anyhow::Result<()> {
    if let Some(format) = &place.format {
        wharf_format::check(format)?;
    }
    let client = Client::connect(connection)?;
    let project = place.project();
    match command {
        IamCommand::Roles(RolesCommand::List) => {
            let roles: Value =
                check(client.api_request(reqwest::Method::GET, "/v1/roles").send().await?).await?.json().await?;
            print(place, &roles["roles"], "table(name,title)")
        }
        IamCommand::Roles(RolesCommand::Describe { role }) => {
            let id = role.strip_prefix("roles/").unwrap_or(&role);
            let path = format!("/v1/roles/{id}");
            let role: Value =
                check(client.api_request(reqwest::Method::GET, &path).send().await?).await?.json().await?;
            print(place, &role, "yaml")
        }
        IamCommand::Users(command) => users(&client, place, command).await,
        IamCommand::ServiceAccounts(command) => service_accounts(&client, place, &project, command).await,
    }
}

async fn users(client: &Client, place: &Place, command: UsersCommand) -> anyhow::Result<()> {
    match command {
        UsersCommand::Create { email } => {
            let request = client.api_request(reqwest::Method::POST, "/wharf/v1/users").json(&json!({"email": email}));
            let created: Value = check(request.send().await?).await?.json().await?;
            eprintln!(
                "Created user [{}]. Its token is printed below, once: give it to the user for `wharf auth login`.",
                created["email"].as_str().unwrap_or_default()
            );
            println!("{}", created["token"].as_str().unwrap_or_default());
            Ok(())
        }
        UsersCommand::List => {
            let users: Value =
                check(client.api_request(reqwest::Method::GET, "/wharf/v1/users").send().await?).await?.json().await?;
            print(place, &users["users"], "table(email,createTime)")
        }
        UsersCommand::Delete { email } => {
            let path = format!("/wharf/v1/users/{email}");
            check(client.api_request(reqwest::Method::DELETE, &path).send().await?).await?;
            eprintln!("Deleted user [{email}].");
            Ok(())
        }
    }
}

/// `projects/{project}/serviceAccounts/{email}`; gcloud accepts a bare NAME for
/// NAME@PROJECT.iam.gserviceaccount.com.
fn account_path(project: &str, email: &str) -> String {
    let email = if email.contains('@') {
        email.to_owned()
    } else {
        format!("{email}@{project}.{}", wharf_iam::accounts::SERVICE_ACCOUNT_DOMAIN)
    };
    format!("/v1/projects/{project}/serviceAccounts/{email}")
}

async fn service_accounts(
    client: &Client,
    place: &Place,
    project: &str,
    command: ServiceAccountsCommand,
) -> anyhow::Result<()> {
    use ServiceAccountsCommand as C;
    let accounts = format!("/v1/projects/{project}/serviceAccounts");
    let target = |email: &str| PolicyTarget {
        path: account_path(project, email),
        get_with_post: true,
        label: format!("serviceAccount [{email}]"),
    };
    match command {
        C::Create { name, display_name, description } => {
            let body = json!({
                "accountId": name,
                "serviceAccount": {"displayName": display_name.unwrap_or_default(), "description": description.unwrap_or_default()},
            });
            let request = client.api_request(reqwest::Method::POST, &accounts).json(&body);
            let account: Value = check(request.send().await?).await?.json().await?;
            eprintln!("Created service account [{}].", account["email"].as_str().unwrap_or_default());
            if place.format.is_some() {
                print(place, &account, "yaml")?;
            }
            Ok(())
        }
        C::List => {
            let list: Value =
                check(client.api_request(reqwest::Method::GET, &accounts).send().await?).await?.json().await?;
            print(place, &list["accounts"], "table(displayName,email,disabled)")
        }
        C::Describe { email } => {
            let path = account_path(project, &email);
            let account: Value =
                check(client.api_request(reqwest::Method::GET, &path).send().await?).await?.json().await?;
            print(place, &account, "yaml")
        }
        C::Delete { email } => {
            check(client.api_request(reqwest::Method::DELETE, &account_path(project, &email)).send().await?).await?;
            eprintln!("deleted service account [{email}]");
            Ok(())
        }
        C::Disable { email } => set_enabled(client, project, &email, false).await,
        C::Enable { email } => set_enabled(client, project, &email, true).await,
        C::GetIamPolicy { email } => print(place, &target(&email).get(client).await?, "yaml"),
        C::SetIamPolicy { email, file } => {
            let policy = read_policy_file(&file)?;
            let stored = target(&email).set(client, &policy).await?;
            eprintln!("Updated IAM policy for serviceAccount [{email}].");
            print(place, &stored, "yaml")
        }
        C::AddIamPolicyBinding { email, binding } => {
            print(place, &target(&email).change_binding(client, &binding, true).await?, "yaml")
        }
        C::RemoveIamPolicyBinding { email, binding } => {
            print(place, &target(&email).change_binding(client, &binding, false).await?, "yaml")
        }
        C::Keys(command) => keys(client, place, project, command).await,
    }
}

async fn set_enabled(client: &Client, project: &str, email: &str, enabled: bool) -> anyhow::Result<()> {
    let verb = if enabled { "enable" } else { "disable" };
    let path = format!("{}:{verb}", account_path(project, email));
    check(client.api_request(reqwest::Method::POST, &path).json(&json!({})).send().await?).await?;
    eprintln!("{}d service account [{email}].", if enabled { "Enable" } else { "Disable" });
    Ok(())
}

async fn keys(client: &Client, place: &Place, project: &str, command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create { file, iam_account } => {
            let path = format!("{}/keys", account_path(project, &iam_account));
            let request = client.api_request(reqwest::Method::POST, &path).json(&json!({}));
            let key: Value = check(request.send().await?).await?.json().await?;
            use base64::Engine as _;
            let data = base64::engine::general_purpose::STANDARD
                .decode(key["privateKeyData"].as_str().unwrap_or_default())
                .context("the server's privateKeyData is not base64")?;
            write_private(&file, &data)?;
            let id = key["name"].as_str().unwrap_or_default().rsplit('/').next().unwrap_or_default().to_owned();
            eprintln!("created key [{id}] of type [json] as [{}] for [{iam_account}]", file.display());
            Ok(())
        }
        KeysCommand::List { iam_account } => {
            let path = format!("{}/keys", account_path(project, &iam_account));
            let list: Value =
                check(client.api_request(reqwest::Method::GET, &path).send().await?).await?.json().await?;
            let mut keys = list["keys"].clone();
            for key in keys.as_array_mut().into_iter().flatten() {
                let id = key["name"].as_str().unwrap_or_default().rsplit('/').next().unwrap_or_default().to_owned();
                key["keyId"] = id.into();
            }
            print(place, &keys, "table(keyId,validAfterTime,validBeforeTime)")
        }
        KeysCommand::Delete { key_id, iam_account } => {
            let path = format!("{}/keys/{key_id}", account_path(project, &iam_account));
            check(client.api_request(reqwest::Method::DELETE, &path).send().await?).await?;
            eprintln!("deleted key [{key_id}] for service account [{iam_account}]");
            Ok(())
        }
    }
}

/// Writes a secret file readable by its owner only, never leaving a partial one behind.
fn write_private(path: &std::path::Path, data: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let staged = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&staged)
        .with_context(|| format!("cannot write {}", staged.display()))?;
    file.write_all(data)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", staged.display()))?;
    std::fs::rename(&staged, path).with_context(|| format!("cannot write {}", path.display()))
}

pub async fn run_projects(connection: &ConnectionArgs, place: &Place, command: ProjectsCommand) -> anyhow::Result<()> {
    if let Some(format) = &place.format {
        wharf_format::check(format)?;
    }
    let client = Client::connect(connection)?;
    let target = |project: &str| PolicyTarget {
        path: format!("/v1/projects/{project}"),
        get_with_post: true,
        label: format!("project [{project}]"),
    };
    match command {
        ProjectsCommand::GetIamPolicy { project } => print(place, &target(&project).get(&client).await?, "yaml"),
        ProjectsCommand::SetIamPolicy { project, file } => {
            let stored = target(&project).set(&client, &read_policy_file(&file)?).await?;
            eprintln!("Updated IAM policy for project [{project}].");
            print(place, &stored, "yaml")
        }
        ProjectsCommand::AddIamPolicyBinding { project, binding } => {
            print(place, &target(&project).change_binding(&client, &binding, true).await?, "yaml")
        }
        ProjectsCommand::RemoveIamPolicyBinding { project, binding } => {
            print(place, &target(&project).change_binding(&client, &binding, false).await?, "yaml")
        }
    }
}

/// `wharf auth login`: checks a credential (a user token from `wharf iam users create`) and
/// stores it where the CLI reads it (`~/.config/wharf/config.toml`); from `token_file`, or
/// stdin.
pub async fn login(connection: &ConnectionArgs, token_file: Option<PathBuf>) -> anyhow::Result<()> {
    let mut token = String::new();
    match token_file.as_deref() {
        Some(path) if path != std::path::Path::new("-") => {
            token = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        }
        _ => {
            std::io::stdin().read_to_string(&mut token).context("cannot read the token from stdin")?;
        }
    }
    let token = token.trim().to_owned();
    if token.is_empty() {
        bail!("no token given: pass --token-file FILE (or - and the token on stdin)");
    }
    // Check the credential before keeping it: any authenticated caller may list roles.
    let client = Client::connect_with_token(connection, token.clone())?;
    check(client.api_request(reqwest::Method::GET, "/v1/roles").send().await?)
        .await
        .context("the server refused this token")?;
    let path = super::store_cli_setting("token", &token)?;
    eprintln!("Credentials saved to [{}]; the CLI now sends them (WHARF_TOKEN still wins).", path.display());
    Ok(())
}
