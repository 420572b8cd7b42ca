//! `wharf secrets ...`: the `gcloud secrets` verbs against Wharf's Secret Manager v1 API.
//! Payloads are read from `--data-file` (`-` is stdin) and written by `versions access` to
//! stdout (or `--out-file`) as raw bytes; nothing else prints one. Progress goes to stderr as
//! gcloud prints it; results to stdout, shaped by `--format`.

use std::io::{Read as _, Write as _};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use reqwest::Method;
use zeroize::Zeroizing;

use super::{Client, ConnectionArgs, check};

#[derive(Debug, Clone, clap::Args)]
pub struct SecretsPlace {
    /// The project [default: from config, else "default"]
    #[arg(long, global = true, env = "CLOUDSDK_CORE_PROJECT")]
    pub project: Option<String>,
    /// Output format: json, yaml, value(...), table(...), ... (as gcloud's --format).
    #[arg(long, global = true)]
    pub format: Option<String>,
    /// Do not ask for confirmation.
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum SecretsCommand {
    /// Create a secret, with a first version when --data-file is given.
    Create {
        name: String,
        /// The first version's payload: a file, or - for stdin.
        #[arg(long)]
        data_file: Option<String>,
        /// Labels, KEY=VALUE,...
        #[arg(long)]
        labels: Option<String>,
        /// Only "automatic" (one machine holds one replica).
        #[arg(long, default_value = "automatic")]
        replication_policy: String,
    },
    /// Show a secret (never its payload).
    Describe { name: String },
    /// List the project's secrets.
    List,
    /// Delete a secret and every version of it.
    Delete {
        name: String,
        /// Only if the secret's etag is still this one.
        #[arg(long)]
        etag: Option<String>,
    },
    /// Change a secret's labels.
    Update {
        name: String,
        /// Labels to add or change, KEY=VALUE,...
        #[arg(long)]
        update_labels: Option<String>,
        /// Labels to remove, KEY,...
        #[arg(long)]
        remove_labels: Option<String>,
        /// Remove every label.
        #[arg(long)]
        clear_labels: bool,
    },
    /// Grant a role on a secret to a member (read-modify-write of its IAM policy).
    AddIamPolicyBinding {
        name: String,
        /// user:EMAIL, serviceAccount:EMAIL, allUsers or allAuthenticatedUsers.
        #[arg(long)]
        member: String,
        /// e.g. roles/secretmanager.secretAccessor
        #[arg(long)]
        role: String,
    },
    /// Revoke a role on a secret from a member.
    RemoveIamPolicyBinding {
        name: String,
        #[arg(long)]
        member: String,
        #[arg(long)]
        role: String,
    },
    /// Show a secret's IAM policy.
    GetIamPolicy { name: String },
    /// Replace the key-encryption key with a new one and re-wrap every stored data key (owner
    /// only).
    RotateKey,
    /// Manage a secret's versions.
    #[command(subcommand)]
    Versions(VersionsCommand),
}

#[derive(Debug, clap::Subcommand)]
pub enum VersionsCommand {
    /// Add a version holding the payload of --data-file.
    Add {
        secret: String,
        /// A file, or - for stdin.
        #[arg(long)]
        data_file: String,
    },
    /// Print a version's payload (a number or "latest").
    Access {
        version: String,
        #[arg(long)]
        secret: String,
        /// Write the payload to this file (mode 0600) instead of stdout.
        #[arg(long)]
        out_file: Option<std::path::PathBuf>,
    },
    /// Show a version's metadata.
    Describe {
        version: String,
        #[arg(long)]
        secret: String,
    },
    /// List a secret's versions, newest first.
    List { secret: String },
    /// Make a version accessible again.
    Enable {
        version: String,
        #[arg(long)]
        secret: String,
    },
    /// Make a version inaccessible (reversible).
    Disable {
        version: String,
        #[arg(long)]
        secret: String,
    },
    /// Destroy a version's payload for good.
    Destroy {
        version: String,
        #[arg(long)]
        secret: String,
    },
}

struct SecretsCtx {
    client: Client,
    project: String,
    format: Option<String>,
}

impl SecretsCtx {
    fn path(&self, rest: &str) -> String {
        format!("/v1/projects/{}/secrets{rest}", self.project)
    }

    fn secret_path(&self, secret: &str) -> String {
        self.path(&format!("/{secret}"))
    }

    fn version_path(&self, secret: &str, version: &str) -> String {
        self.path(&format!("/{secret}/versions/{version}"))
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let mut request = self.client.api_request(method, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        Ok(check(request.send().await?).await?.json().await?)
    }

    fn print(&self, value: &serde_json::Value, default: &str) -> anyhow::Result<()> {
        let text = wharf_format::render(value, self.format.as_deref().unwrap_or(default))?;
        std::io::stdout().lock().write_all(text.as_bytes())?;
        Ok(())
    }

    async fn add_version(&self, secret: &str, data_file: &str) -> anyhow::Result<serde_json::Value> {
        let data = read_data_file(data_file)?;
        let body = serde_json::json!({"payload": {
            "data": base64::engine::general_purpose::STANDARD.encode(data.as_slice()),
            "dataCrc32c": crc32c::crc32c(&data).to_string(),
        }});
        self.call(Method::POST, &format!("{}:addVersion", self.secret_path(secret)), Some(body)).await
    }
}

const SECRET_TABLE: &str = "table(name.basename():label=NAME,createTime:label=CREATED)";
const VERSION_TABLE: &str =
    "table(name.basename():label=NAME,state:label=STATE,createTime:label=CREATED,destroyTime:label=DESTROYED)";

pub async fn run(connection: &ConnectionArgs, place: &SecretsPlace, command: SecretsCommand) -> anyhow::Result<()> {
    if let Some(format) = place.format.as_deref() {
        wharf_format::check(format)?;
    }
    let project =
        place.project.clone().or_else(|| crate::cli::cli_setting("project")).unwrap_or_else(|| "default".to_owned());
    let ctx = SecretsCtx { client: Client::connect(connection)?, project, format: place.format.clone() };
    match command {
        SecretsCommand::Create { name, data_file, labels, replication_policy } => {
            if replication_policy != "automatic" {
                bail!(
                    "--replication-policy={replication_policy} is not supported by Wharf: a secret lives on this one machine; use automatic"
                );
            }
            let labels: std::collections::BTreeMap<String, String> =
                parse_pairs(labels.as_deref().unwrap_or_default(), "--labels")?.into_iter().collect();
            let body = serde_json::json!({"replication": {"automatic": {}}, "labels": labels});
            let created = ctx.call(Method::POST, &format!("{}?secretId={name}", ctx.path("")), Some(body)).await?;
            eprintln!("Created secret [{name}].");
            if let Some(file) = data_file {
                let version = ctx.add_version(&name, &file).await?;
                eprintln!("Created version [{}] of the secret [{name}].", basename(&version));
            }
            if ctx.format.is_some() {
                ctx.print(&created, "yaml")?;
            }
        }
        SecretsCommand::Describe { name } => {
            ctx.print(&ctx.call(Method::GET, &ctx.secret_path(&name), None).await?, "yaml")?;
        }
        SecretsCommand::List => {
            let mut all = Vec::new();
            let mut token = String::new();
            loop {
                let page = ctx.call(Method::GET, &format!("{}?pageToken={token}", ctx.path("")), None).await?;
                all.extend(page["secrets"].as_array().cloned().unwrap_or_default());
                match page["nextPageToken"].as_str() {
                    Some(next) if !next.is_empty() => token = next.to_owned(),
                    _ => break,
                }
            }
            ctx.print(&serde_json::Value::Array(all), SECRET_TABLE)?;
        }
        SecretsCommand::Delete { name, etag } => {
            if !place.quiet {
                eprintln!("Deleting secret [{name}] and all of its versions.");
            }
            let query = etag.map(|e| format!("?etag={}", percent(&e))).unwrap_or_default();
            ctx.call(Method::DELETE, &format!("{}{query}", ctx.secret_path(&name)), None).await?;
            eprintln!("Deleted secret [{name}].");
        }
        SecretsCommand::Update { name, update_labels, remove_labels, clear_labels } => {
            let current = ctx.call(Method::GET, &ctx.secret_path(&name), None).await?;
            let mut labels: serde_json::Map<String, serde_json::Value> = if clear_labels {
                Default::default()
            } else {
                current["labels"].as_object().cloned().unwrap_or_default()
            };
            for key in remove_labels.as_deref().unwrap_or_default().split(',').filter(|k| !k.is_empty()) {
                labels.remove(key);
            }
            for (key, value) in parse_pairs(update_labels.as_deref().unwrap_or_default(), "--update-labels")? {
                labels.insert(key, value.into());
            }
            let body = serde_json::json!({"labels": labels, "etag": current["etag"]});
            let updated =
                ctx.call(Method::PATCH, &format!("{}?updateMask=labels", ctx.secret_path(&name)), Some(body)).await?;
            eprintln!("Updated secret [{name}].");
            if ctx.format.is_some() {
                ctx.print(&updated, "yaml")?;
            }
        }
        SecretsCommand::AddIamPolicyBinding { name, member, role } => {
            let policy = change_binding(&ctx, &name, &member, &role, true).await?;
            eprintln!("Updated IAM policy for secret [{name}].");
            ctx.print(&policy, "yaml")?;
        }
        SecretsCommand::RemoveIamPolicyBinding { name, member, role } => {
            let policy = change_binding(&ctx, &name, &member, &role, false).await?;
            eprintln!("Updated IAM policy for secret [{name}].");
            ctx.print(&policy, "yaml")?;
        }
        SecretsCommand::GetIamPolicy { name } => {
            let policy = ctx.call(Method::GET, &format!("{}:getIamPolicy", ctx.secret_path(&name)), None).await?;
            ctx.print(&policy, "yaml")?;
        }
        SecretsCommand::RotateKey => {
            let report = ctx.call(Method::POST, "/wharf/v1/secrets:rotateKey", Some(serde_json::json!({}))).await?;
            eprintln!(
                "Rotated the secrets key-encryption key: {} data keys re-wrapped under key {}.",
                report["rewrapped"],
                report["newKeyId"].as_str().unwrap_or_default()
            );
            if ctx.format.is_some() {
                ctx.print(&report, "yaml")?;
            }
        }
        SecretsCommand::Versions(command) => versions(&ctx, command).await?,
    }
    Ok(())
}

async fn versions(ctx: &SecretsCtx, command: VersionsCommand) -> anyhow::Result<()> {
    match command {
        VersionsCommand::Add { secret, data_file } => {
            let version = ctx.add_version(&secret, &data_file).await?;
            eprintln!("Created version [{}] of the secret [{secret}].", basename(&version));
            if ctx.format.is_some() {
                ctx.print(&version, "yaml")?;
            }
        }
        VersionsCommand::Access { version, secret, out_file } => {
            let answer =
                ctx.call(Method::GET, &format!("{}:access", ctx.version_path(&secret, &version)), None).await?;
            let encoded = Zeroizing::new(answer["payload"]["data"].as_str().unwrap_or_default().to_owned());
            let data = Zeroizing::new(
                base64::engine::general_purpose::STANDARD
                    .decode(encoded.as_bytes())
                    .context("the server's payload is not base64")?,
            );
            let sent_crc = answer["payload"]["dataCrc32c"].as_str().and_then(|c| c.parse::<u32>().ok());
            if sent_crc.is_some_and(|crc| crc != crc32c::crc32c(&data)) {
                bail!("the payload of {secret}/{version} arrived corrupted (its CRC32C does not match); try again");
            }
            match out_file {
                Some(path) => {
                    use std::os::unix::fs::OpenOptionsExt as _;
                    let mut file = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(&path)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    file.write_all(&data)?;
                }
                None => std::io::stdout().lock().write_all(&data)?,
            }
        }
        VersionsCommand::Describe { version, secret } => {
            ctx.print(&ctx.call(Method::GET, &ctx.version_path(&secret, &version), None).await?, "yaml")?;
        }
        VersionsCommand::List { secret } => {
            let mut all = Vec::new();
            let mut token = String::new();
            loop {
                let path = format!("{}/versions?pageToken={token}", ctx.secret_path(&secret));
                let page = ctx.call(Method::GET, &path, None).await?;
                all.extend(page["versions"].as_array().cloned().unwrap_or_default());
                match page["nextPageToken"].as_str() {
                    Some(next) if !next.is_empty() => token = next.to_owned(),
                    _ => break,
                }
            }
            ctx.print(&serde_json::Value::Array(all), VERSION_TABLE)?;
        }
        VersionsCommand::Enable { version, secret } => state(ctx, &secret, &version, "enable", "Enabled").await?,
        VersionsCommand::Disable { version, secret } => state(ctx, &secret, &version, "disable", "Disabled").await?,
        VersionsCommand::Destroy { version, secret } => state(ctx, &secret, &version, "destroy", "Destroyed").await?,
    }
    Ok(())
}

async fn state(ctx: &SecretsCtx, secret: &str, version: &str, method: &str, done: &str) -> anyhow::Result<()> {
    let path = format!("{}:{method}", ctx.version_path(secret, version));
    let answer = ctx.call(Method::POST, &path, Some(serde_json::json!({}))).await?;
    eprintln!("{done} version [{}] of the secret [{secret}].", basename(&answer));
    if ctx.format.is_some() {
        ctx.print(&answer, "yaml")?;
    }
    Ok(())
}

/// Adds or removes `member` in `role`'s binding, sending the etag read so a concurrent
/// change is not overwritten.
async fn change_binding(
    ctx: &SecretsCtx,
    secret: &str,
    member: &str,
    role: &str,
    add: bool,
) -> anyhow::Result<serde_json::Value> {
    let mut policy = ctx.call(Method::GET, &format!("{}:getIamPolicy", ctx.secret_path(secret)), None).await?;
    let bindings = policy["bindings"].as_array().cloned().unwrap_or_default();
    let mut bindings: Vec<serde_json::Value> = bindings;
    match bindings.iter_mut().find(|b| b["role"] == role) {
        Some(binding) => {
            let members = binding["members"].as_array_mut().map(std::mem::take).unwrap_or_default();
            let mut members: Vec<serde_json::Value> = members.into_iter().filter(|m| m != member).collect();
            if add {
                members.push(member.into());
            }
            binding["members"] = members.into();
        }
        None if add => bindings.push(serde_json::json!({"role": role, "members": [member]})),
        None => bail!("policy binding with the specified principal and role [{role}] not found"),
    }
    bindings.retain(|b| b["members"].as_array().is_some_and(|m| !m.is_empty()));
    policy["bindings"] = bindings.into();
    ctx.call(
        Method::POST,
        &format!("{}:setIamPolicy", ctx.secret_path(secret)),
        Some(serde_json::json!({"policy": policy})),
    )
    .await
}

/// Reads a payload from a file or, for `-`, stdin.
fn read_data_file(path: &str) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let mut data = Zeroizing::new(Vec::new());
    if path == "-" {
        std::io::stdin().lock().read_to_end(&mut data).context("cannot read the payload from stdin")?;
    } else {
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut data))
            .with_context(|| format!("cannot read --data-file {path}"))?;
    }
    if data.len() > wharf_secrets::MAX_PAYLOAD_BYTES {
        bail!(
            "--data-file {path} holds {} bytes; a secret version holds at most {} bytes (64 KiB)",
            data.len(),
            wharf_secrets::MAX_PAYLOAD_BYTES
        );
    }
    Ok(data)
}

fn parse_pairs(text: &str, flag: &str) -> anyhow::Result<Vec<(String, String)>> {
    text.split(',')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => Ok((k.to_owned(), v.to_owned())),
            None => bail!("{flag}: {pair:?} is not KEY=VALUE"),
        })
        .collect()
}

fn basename(resource: &serde_json::Value) -> String {
    resource["name"].as_str().unwrap_or_default().rsplit('/').next().unwrap_or_default().to_owned()
}

fn percent(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
