//! `wharf builds submit --config cloudbuild.yaml`: the part of Cloud Build's config that Wharf
//! runs, which is the simple one-step Docker build:
//!
//! ```yaml
//! steps:
//! - name: gcr.io/cloud-builders/docker
//!   args: ['build', '-t', 'IMAGE', '-f', 'Dockerfile', '.']
//! images: ['IMAGE']
//! ```
//!
//! `$PROJECT_ID` is substituted. Everything else (other builders, several steps, `secrets`,
//! `options`, `substitutions`, `artifacts`, docker flags other than `-t`/`--tag`, `-f`/`--file`)
//! is refused by name, never ignored.

/// What a config asks for, as a Wharf build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerBuildStep {
    /// The image to build and push (`-t`).
    pub tag: String,
    /// The Dockerfile (`-f`), relative to the source directory.
    pub dockerfile: Option<String>,
    /// The build context, relative to the source directory (`.` mostly).
    pub context: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CloudBuildError {
    #[error("the build config is not valid YAML: {0}")]
    Yaml(#[source] serde_norway::Error),
    #[error("the build config's {0}")]
    Unsupported(String),
}

const DOCKER_BUILDERS: &[&str] = &["gcr.io/cloud-builders/docker", "docker", "gcr.io/cloud-builders/docker:latest"];

/// Reads a `cloudbuild.yaml` (its text) into the one Docker build Wharf runs.
pub fn parse(text: &str, project: &str) -> Result<DockerBuildStep, CloudBuildError> {
    let unsupported = |what: String| CloudBuildError::Unsupported(what);
    let doc: serde_norway::Value = serde_norway::from_str(text).map_err(CloudBuildError::Yaml)?;
    let serde_norway::Value::Mapping(top) = doc else {
        return Err(unsupported("top level must be a mapping with `steps`".into()));
    };
    let mut steps = None;
    let mut images = Vec::new();
    for (key, value) in &top {
        let key = key.as_str().unwrap_or_default();
        match key {
            "steps" => steps = value.as_sequence().cloned(),
            "images" => {
                images = value
                    .as_sequence()
                    .map(|s| s.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                    .ok_or_else(|| unsupported("`images` must be a list of image names".into()))?;
            }
            other => {
                return Err(unsupported(format!(
                    "field `{other}` is not supported by Wharf's builds (only `steps` with one docker build step, and `images`); remove it"
                )));
            }
        }
    }
    let steps = steps.ok_or_else(|| unsupported("`steps` is missing: add one docker build step".into()))?;
    let [step] = steps.as_slice() else {
        return Err(unsupported(format!(
            "has {} steps; Wharf runs exactly one `gcr.io/cloud-builders/docker` build step",
            steps.len()
        )));
    };
    let serde_norway::Value::Mapping(step) = step else {
        return Err(unsupported("step must be a mapping with `name` and `args`".into()));
    };
    let mut name = None;
    let mut args: Vec<String> = Vec::new();
    for (key, value) in step {
        match key.as_str().unwrap_or_default() {
            "name" => name = value.as_str().map(str::to_owned),
            "args" => {
                args = value
                    .as_sequence()
                    .map(|s| s.iter().map(|v| v.as_str().unwrap_or_default().replace("$PROJECT_ID", project)).collect())
                    .ok_or_else(|| unsupported("step `args` must be a list".into()))?;
            }
            other => {
                return Err(unsupported(format!("step field `{other}` is not supported by Wharf's builds; remove it")));
            }
        }
    }
    let name = name.unwrap_or_default();
    if !DOCKER_BUILDERS.contains(&name.as_str()) {
        return Err(unsupported(format!(
            "step uses builder {name:?}; Wharf runs only `gcr.io/cloud-builders/docker` with `build` arguments"
        )));
    }
    let mut rest = args.iter();
    if rest.next().map(String::as_str) != Some("build") {
        return Err(unsupported("docker step must run `build` (args: ['build', '-t', IMAGE, '.'])".into()));
    }
    let (mut tag, mut dockerfile, mut context) = (None, None, None);
    while let Some(arg) = rest.next() {
        let mut value = |flag: &str| {
            rest.next().cloned().ok_or_else(|| unsupported(format!("docker build flag {flag} needs a value")))
        };
        match arg.as_str() {
            "-t" | "--tag" => tag = Some(value(arg)?),
            "-f" | "--file" => dockerfile = Some(value(arg)?),
            a if a.starts_with("--tag=") => tag = Some(a["--tag=".len()..].to_owned()),
            a if a.starts_with("--file=") => dockerfile = Some(a["--file=".len()..].to_owned()),
            a if a.starts_with('-') => {
                return Err(unsupported(format!(
                    "docker build flag {a} is not supported by Wharf's builds (only -t/--tag and -f/--file)"
                )));
            }
            a if context.is_none() => context = Some(a.to_owned()),
            a => return Err(unsupported(format!("docker build has a second context argument {a:?}"))),
        }
    }
    let tag = tag.ok_or_else(|| unsupported("docker build step has no -t IMAGE".into()))?;
    let images: Vec<String> = images.iter().map(|i| i.replace("$PROJECT_ID", project)).collect();
    if images.iter().any(|i| *i != tag) {
        return Err(unsupported(format!("`images` {images:?} must name only the image the step builds ({tag})")));
    }
    Ok(DockerBuildStep { tag, dockerfile, context: context.unwrap_or_else(|| ".".into()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_docker_build_step() {
        let text = "steps:\n- name: 'gcr.io/cloud-builders/docker'\n  args: ['build', '-t', 'reg/$PROJECT_ID/app:v1', '-f', 'docker/Dockerfile', '.']\nimages: ['reg/$PROJECT_ID/app:v1']\n";
        assert_eq!(
            parse(text, "p1").unwrap(),
            DockerBuildStep {
                tag: "reg/p1/app:v1".into(),
                dockerfile: Some("docker/Dockerfile".into()),
                context: ".".into()
            }
        );
    }

    #[test]
    fn refuses_what_it_cannot_run_by_name() {
        let cases = [
            ("steps: []\noptions: {machineType: E2_HIGHCPU_8}\n", "field `options` is not supported"),
            (
                "steps:\n- name: gcr.io/cloud-builders/gcloud\n  args: [run, deploy]\n",
                "builder \"gcr.io/cloud-builders/gcloud\"",
            ),
            (
                "steps:\n- name: docker\n  args: [build, --build-arg, X=1, -t, a, .]\n",
                "flag --build-arg is not supported",
            ),
            ("steps:\n- name: docker\n  args: [build, -t, a, .]\n  secretEnv: [X]\n", "step field `secretEnv`"),
            ("steps:\n- name: docker\n  args: [build, -t, a, .]\n- name: docker\n  args: [push, a]\n", "has 2 steps"),
        ];
        for (text, expected) in cases {
            let e = parse(text, "p").unwrap_err().to_string();
            assert!(e.contains(expected), "{text:?}: {e}");
        }
    }
}
