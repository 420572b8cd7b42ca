//! The container runtime contract's environment: what every instance is told about itself
//! (`PORT`, `K_SERVICE`, ... for services; `CLOUD_RUN_JOB`, ... for job tasks), and the rule
//! that user env may not set those names.

pub use wharf_control::backend::Owner;
pub use wharf_control::backend::template::{EnvError, RESERVED_ENV, validate_user_env};

/// The full environment of an instance: the image's env, then the user's, then the contract.
pub fn instance_env(image_env: &[String], user_env: &[(String, String)], owner: &Owner, port: u16) -> Vec<String> {
    fn set(env: &mut Vec<(String, String)>, k: &str, v: String) {
        env.retain(|(name, _)| name != k);
        env.push((k.to_owned(), v));
    }
    let mut env: Vec<(String, String)> = Vec::new();
    for entry in image_env {
        if let Some((k, v)) = entry.split_once('=') {
            set(&mut env, k, v.to_owned());
        }
    }
    for (k, v) in user_env {
        set(&mut env, k, v.clone());
    }
    match owner {
        Owner::Service { service, revision, configuration } => {
            set(&mut env, "PORT", port.to_string());
            set(&mut env, "K_SERVICE", service.clone());
            set(&mut env, "K_REVISION", revision.clone());
            set(&mut env, "K_CONFIGURATION", configuration.clone());
        }
        Owner::Task { job, execution, index, attempt, count } => {
            set(&mut env, "CLOUD_RUN_JOB", job.clone());
            set(&mut env, "CLOUD_RUN_EXECUTION", execution.clone());
            set(&mut env, "CLOUD_RUN_TASK_INDEX", index.to_string());
            set(&mut env, "CLOUD_RUN_TASK_ATTEMPT", attempt.to_string());
            set(&mut env, "CLOUD_RUN_TASK_COUNT", count.to_string());
        }
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        set(&mut env, "PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned());
    }
    if !env.iter().any(|(k, _)| k == "HOME") {
        set(&mut env, "HOME", "/root".to_owned());
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_names_are_refused() {
        let e = validate_user_env(["FOO", "K_REVISION"]).unwrap_err();
        assert_eq!(e, EnvError::Reserved { name: "K_REVISION".to_owned() });
        assert!(e.to_string().contains("K_REVISION is reserved"), "{e}");
        assert_eq!(validate_user_env(["A=B"]), Err(EnvError::InvalidName { name: "A=B".to_owned() }));
        assert_eq!(validate_user_env(["FOO", "BAR_2"]), Ok(()));
    }

    #[test]
    fn contract_wins_over_image_and_user() {
        let owner = Owner::Service { service: "s".into(), revision: "s-00001-abc".into(), configuration: "s".into() };
        let env = instance_env(&["PATH=/bin".into(), "A=image".into()], &[("A".into(), "user".into())], &owner, 8080);
        assert!(env.contains(&"A=user".to_owned()));
        assert!(env.contains(&"PORT=8080".to_owned()));
        assert!(env.contains(&"K_REVISION=s-00001-abc".to_owned()));
        assert!(env.contains(&"PATH=/bin".to_owned()));
        let task = Owner::Task { job: "j".into(), execution: "j-x".into(), index: 3, attempt: 1, count: 10 };
        let env = instance_env(&[], &[], &task, 8080);
        assert!(env.contains(&"CLOUD_RUN_TASK_INDEX=3".to_owned()));
        assert!(!env.iter().any(|e| e.starts_with("PORT=")));
    }
}
