//! The IAM policy verbs every resource kind shares, as gcloud has them:
//! `get-iam-policy`, `set-iam-policy FILE` (JSON or YAML), `add-iam-policy-binding` and
//! `remove-iam-policy-binding --member --role`. A binding change is a read-modify-write that
//! sends the etag it read, and is retried when another writer got in between (409 ABORTED).

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::{Client, check};

/// Where a resource's policy lives.
#[derive(Debug, Clone)]
pub struct PolicyTarget {
    /// The resource's URL path without the `:method` suffix.
    pub path: String,
    /// Cloud Run v2 reads a policy with GET; Resource Manager and IAM v1 with POST.
    pub get_with_post: bool,
    /// How gcloud names the resource in messages, e.g. `service [api]`.
    pub label: String,
}

#[derive(Debug, Clone, clap::Args)]
pub struct BindingArgs {
    /// The member: user:EMAIL, serviceAccount:EMAIL, allUsers or allAuthenticatedUsers.
    #[arg(long)]
    pub member: String,
    /// The role, e.g. roles/run.invoker (see `wharf iam roles list`).
    #[arg(long)]
    pub role: String,
}

impl PolicyTarget {
    pub async fn get(&self, client: &Client) -> anyhow::Result<Value> {
        let url = format!("{}:getIamPolicy", self.path);
        let request = if self.get_with_post {
            client.api_request(reqwest::Method::POST, &url).json(&json!({}))
        } else {
            client.api_request(reqwest::Method::GET, &url)
        };
        Ok(check(request.send().await?).await?.json().await?)
    }

    pub async fn set(&self, client: &Client, policy: &Value) -> anyhow::Result<Value> {
        let request = client
            .api_request(reqwest::Method::POST, &format!("{}:setIamPolicy", self.path))
            .json(&json!({ "policy": policy }));
        Ok(check(request.send().await?).await?.json().await?)
    }

    /// Adds (or removes) one member from one role, retrying on a concurrent change. Removing
    /// a binding that is not there is an error, as in gcloud.
    pub async fn change_binding(&self, client: &Client, args: &BindingArgs, add: bool) -> anyhow::Result<Value> {
        match self.ensure_binding(client, args, add).await? {
            (policy, true) => Ok(policy),
            (policy, false) if add => Ok(policy),
            (_, false) => {
                bail!("Policy binding with the specified principal and role not found: {} {}", args.member, args.role)
            }
        }
    }

    /// Makes the binding present (or absent); returns the policy and whether it changed.
    pub async fn ensure_binding(
        &self,
        client: &Client,
        args: &BindingArgs,
        present: bool,
    ) -> anyhow::Result<(Value, bool)> {
        let add = present;
        for _ in 0..5 {
            let mut policy = self.get(client).await?;
            if !edit_bindings(&mut policy, &args.role, &args.member, add) {
                return Ok((policy, false));
            }
            let request = client
                .api_request(reqwest::Method::POST, &format!("{}:setIamPolicy", self.path))
                .json(&json!({ "policy": policy }));
            let response = request.send().await?;
            if response.status() == reqwest::StatusCode::CONFLICT {
                continue;
            }
            let updated: Value = check(response).await?.json().await?;
            eprintln!("Updated IAM policy for {}.", self.label);
            return Ok((updated, true));
        }
        bail!("the policy of {} kept changing under this update (5 attempts); try again", self.label)
    }
}

/// Adds or removes `member` in `role`'s binding. Returns whether the policy changed.
pub fn edit_bindings(policy: &mut Value, role: &str, member: &str, add: bool) -> bool {
    let bindings = policy.as_object_mut().map(|p| p.entry("bindings").or_insert_with(|| json!([])));
    let Some(Value::Array(bindings)) = bindings else { return false };
    let position = bindings.iter().position(|b| b["role"] == role);
    match (position, add) {
        (Some(i), true) => {
            let members = bindings[i].as_object_mut().map(|b| b.entry("members").or_insert_with(|| json!([])));
            match members {
                Some(Value::Array(members)) if !members.iter().any(|m| m == member) => {
                    members.push(member.into());
                    true
                }
                _ => false,
            }
        }
        (None, true) => {
            bindings.push(json!({"role": role, "members": [member]}));
            true
        }
        (Some(i), false) => match bindings[i].get_mut("members") {
            Some(Value::Array(members)) => {
                let before = members.len();
                members.retain(|m| m != member);
                let changed = members.len() != before;
                if members.is_empty() {
                    bindings.remove(i);
                }
                changed
            }
            _ => false,
        },
        (None, false) => false,
    }
}

/// Reads a policy file for `set-iam-policy`: JSON or YAML, either the policy itself or a
/// `{policy: ...}` wrapper.
pub fn read_policy_file(path: &std::path::Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(_) => serde_norway::from_str(&text)
            .with_context(|| format!("{} is neither JSON nor YAML of an IAM policy", path.display()))?,
    };
    let policy = match value.get("policy") {
        Some(inner) if value.as_object().is_some_and(|o| o.len() == 1) => inner.clone(),
        _ => value,
    };
    if !policy.is_object() {
        bail!("{} does not hold a policy (an object with bindings and etag)", path.display());
    }
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_are_added_once_and_removed_with_their_empty_role() {
        let mut policy = json!({"etag": "ACAB"});
        assert!(edit_bindings(&mut policy, "roles/run.invoker", "allUsers", true));
        assert!(!edit_bindings(&mut policy, "roles/run.invoker", "allUsers", true));
        assert!(edit_bindings(&mut policy, "roles/run.invoker", "user:a@b.co", true));
        assert_eq!(policy["bindings"][0]["members"], json!(["allUsers", "user:a@b.co"]));
        assert!(edit_bindings(&mut policy, "roles/run.invoker", "allUsers", false));
        assert!(edit_bindings(&mut policy, "roles/run.invoker", "user:a@b.co", false));
        assert_eq!(policy["bindings"], json!([]));
        assert!(!edit_bindings(&mut policy, "roles/run.invoker", "allUsers", false));
    }
}
