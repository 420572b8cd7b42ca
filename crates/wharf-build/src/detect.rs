//! Builds without a Dockerfile: which language a source directory is written in, in the
//! spirit of Google's buildpacks, and the Dockerfile that builds and runs it.
//!
//! | language | detected by | runs |
//! |---|---|---|
//! | Python | `requirements.txt`, `Procfile`, `main.py`, `app.py` (or any `*.py`) | the `web:` line of `Procfile`; else `gunicorn main:app` (or `app:app`) when `requirements.txt` names gunicorn; else `python main.py` / `python app.py` |
//! | Node.js | `package.json` | `npm start` when it has a `start` script; else `node` on its `main`, `server.js` or `index.js` |
//! | Go | `go.mod` | the binary `go build` makes of the module's root package |
//!
//! The base image is `--base-image` when given, else the server's default for the language
//! ([`BaseImages`], documented in `docs/builds.md`). Dependencies are installed in the build
//! (`pip install -r requirements.txt`, `npm ci`/`npm install`, `go build`), so they need the
//! network unless the base image already holds them. Not owned here: running the build.

use std::path::Path;

/// A language this module can build without a Dockerfile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Language {
    Python,
    Nodejs,
    Go,
}

impl Language {
    pub fn name(self) -> &'static str {
        match self {
            Language::Python => "Python",
            Language::Nodejs => "Node.js",
            Language::Go => "Go",
        }
    }
}

/// The base image per language when the build names none (`--base-image`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseImages {
    pub python: String,
    pub nodejs: String,
    pub go: String,
}

impl Default for BaseImages {
    /// Short names, looked up in Wharf's own registry: push images under these names there.
    fn default() -> BaseImages {
        BaseImages { python: "python:3.12-slim".into(), nodejs: "node:22-slim".into(), go: "golang:1.23".into() }
    }
}

impl BaseImages {
    pub fn for_language(&self, language: Language) -> &str {
        match language {
            Language::Python => &self.python,
            Language::Nodejs => &self.nodejs,
            Language::Go => &self.go,
        }
    }
}

/// Why no Dockerfile could be made.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error(
        "the source has no Dockerfile and no language Wharf can build was detected: looked for Dockerfile, \
         requirements.txt, Procfile, main.py, app.py or other *.py files (Python), package.json (Node.js) and go.mod (Go) \
         at the top of the source directory; add a Dockerfile or one of these"
    )]
    NothingDetected,
    #[error("{language} app detected ({found}), but {why}")]
    NoEntrypoint { language: &'static str, found: String, why: String },
    #[error("cannot read {file} of the source")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("package.json is not valid JSON: {0}")]
    PackageJson(#[source] serde_json::Error),
}

/// A detected language and the Dockerfile generated for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    pub language: Language,
    pub base_image: String,
    /// What was found, for the build log ("requirements.txt with gunicorn, main.py").
    pub evidence: String,
    pub dockerfile: String,
}

/// Detects the language of the source in `dir` and writes its Dockerfile.
pub fn detect(dir: &Path, base_image: Option<&str>, defaults: &BaseImages) -> Result<Detected, DetectError> {
    let has = |name: &str| dir.join(name).is_file();
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name)).map_err(|source| DetectError::Read { file: name.into(), source })
    };
    let base = |language| base_image.map_or_else(|| defaults.for_language(language).to_owned(), str::to_owned);

    if has("go.mod") {
        let base = base(Language::Go);
        let dockerfile = format!(
            "FROM {base}\nWORKDIR /src\nCOPY . .\nRUN CGO_ENABLED=0 go build -o /app/server .\nENV PORT=8080\n\
             CMD [\"/app/server\"]\n"
        );
        return Ok(Detected { language: Language::Go, base_image: base, evidence: "go.mod".into(), dockerfile });
    }

    if has("package.json") {
        let package: serde_json::Value =
            serde_json::from_str(&read("package.json")?).map_err(DetectError::PackageJson)?;
        let start = package.pointer("/scripts/start").and_then(|s| s.as_str()).is_some();
        let main = package.get("main").and_then(|m| m.as_str()).map(str::to_owned);
        let command = if start {
            "npm start".to_owned()
        } else if let Some(main) = main.filter(|m| has(m)) {
            format!("node {}", shell_word(&main))
        } else if has("server.js") {
            "node server.js".to_owned()
        } else if has("index.js") {
            "node index.js".to_owned()
        } else {
            return Err(DetectError::NoEntrypoint {
                language: Language::Nodejs.name(),
                found: "package.json".into(),
                why: "it has no \"start\" script, no \"main\" file, server.js or index.js: add \"scripts\": {\"start\": \"node server.js\"} to package.json".into(),
            });
        };
        // No audit or funding requests: an install talks to the registry for packages only
        // (a mirror given with NPM_CONFIG_REGISTRY need not answer npm's audit API).
        let install = if has("package-lock.json") {
            "npm ci --omit=dev --no-audit --no-fund"
        } else {
            "npm install --omit=dev --no-audit --no-fund"
        };
        let base = base(Language::Nodejs);
        let dockerfile = format!(
            "FROM {base}\nWORKDIR /app\nCOPY package*.json ./\nRUN {install}\nCOPY . .\nENV PORT=8080 NODE_ENV=production\n{}",
            shell_cmd(&command)
        );
        let evidence = format!("package.json, runs `{command}`");
        return Ok(Detected { language: Language::Nodejs, base_image: base, evidence, dockerfile });
    }

    let any_py = std::fs::read_dir(dir)
        .map_err(|source| DetectError::Read { file: ".".into(), source })?
        .flatten()
        .any(|e| e.file_name().to_string_lossy().ends_with(".py"));
    if has("requirements.txt") || has("Procfile") || any_py {
        let requirements = if has("requirements.txt") { read("requirements.txt")? } else { String::new() };
        let gunicorn = requirements.lines().any(|l| {
            let name = l.trim().split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')).next();
            name.is_some_and(|n| n.eq_ignore_ascii_case("gunicorn"))
        });
        let procfile_web = if has("Procfile") {
            read("Procfile")?.lines().find_map(|l| l.trim().strip_prefix("web:").map(|c| c.trim().to_owned()))
        } else {
            None
        };
        let module = ["main", "app"].into_iter().find(|m| has(&format!("{m}.py")));
        let command = match (procfile_web, module) {
            (Some(web), _) => web,
            (None, Some(module)) if gunicorn => {
                format!("gunicorn --bind :$PORT --workers 1 --threads 8 --timeout 0 {module}:app")
            }
            (None, Some(module)) => format!("python {module}.py"),
            (None, None) => {
                return Err(DetectError::NoEntrypoint {
                    language: Language::Python.name(),
                    found: python_evidence(has("requirements.txt"), false, any_py),
                    why: "there is no Procfile with a `web:` line, no main.py and no app.py to run: add one of them"
                        .into(),
                });
            }
        };
        let mut dockerfile = format!("FROM {}\nWORKDIR /app\n", base(Language::Python));
        if has("requirements.txt") {
            dockerfile.push_str("COPY requirements.txt ./\nRUN pip install --no-cache-dir -r requirements.txt\n");
        }
        dockerfile.push_str("COPY . .\nENV PORT=8080 PYTHONUNBUFFERED=1\n");
        dockerfile.push_str(&shell_cmd(&command));
        let mut evidence = python_evidence(has("requirements.txt"), gunicorn, any_py);
        evidence.push_str(&format!(", runs `{command}`"));
        return Ok(Detected { language: Language::Python, base_image: base(Language::Python), evidence, dockerfile });
    }
    Err(DetectError::NothingDetected)
}

fn python_evidence(requirements: bool, gunicorn: bool, any_py: bool) -> String {
    let mut found = Vec::new();
    if requirements {
        found.push(if gunicorn { "requirements.txt with gunicorn" } else { "requirements.txt" });
    }
    if any_py {
        found.push("*.py files");
    }
    if found.is_empty() {
        found.push("Procfile");
    }
    found.join(", ")
}

/// A `CMD` running `command` through the shell, so `$PORT` expands at start.
fn shell_cmd(command: &str) -> String {
    let exec = format!("exec {command}");
    format!("CMD [\"/bin/sh\", \"-c\", {}]\n", serde_json::Value::String(exec))
}

fn shell_word(word: &str) -> String {
    if word.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b)) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    fn detected(files: &[(&str, &str)], base: Option<&str>) -> Result<Detected, DetectError> {
        detect(source(files).path(), base, &BaseImages::default())
    }

    #[test]
    fn the_seed_flask_app_runs_under_gunicorn() {
        let d = detected(&[("requirements.txt", "Flask==3.0.0\ngunicorn==22.0.0\n"), ("main.py", "app = 1")], None)
            .unwrap();
        assert_eq!(d.language, Language::Python);
        assert_eq!(d.base_image, "python:3.12-slim");
        assert_eq!(
            d.dockerfile,
            "FROM python:3.12-slim\nWORKDIR /app\nCOPY requirements.txt ./\nRUN pip install --no-cache-dir -r requirements.txt\n\
             COPY . .\nENV PORT=8080 PYTHONUNBUFFERED=1\n\
             CMD [\"/bin/sh\", \"-c\", \"exec gunicorn --bind :$PORT --workers 1 --threads 8 --timeout 0 main:app\"]\n"
        );
        assert_eq!(
            d.evidence,
            "requirements.txt with gunicorn, *.py files, runs `gunicorn --bind :$PORT --workers 1 --threads 8 --timeout 0 main:app`"
        );
    }

    #[test]
    fn python_without_gunicorn_runs_the_script_and_procfile_wins() {
        let d = detected(&[("app.py", "")], Some("wharf/py:1")).unwrap();
        assert_eq!(d.base_image, "wharf/py:1", "--base-image wins over the default");
        assert!(!d.dockerfile.contains("pip install"), "no requirements.txt, nothing to install");
        assert!(d.dockerfile.ends_with("CMD [\"/bin/sh\", \"-c\", \"exec python app.py\"]\n"), "{}", d.dockerfile);
        let d = detected(&[("Procfile", "web: python serve.py --port $PORT\n"), ("main.py", "")], None).unwrap();
        assert!(d.dockerfile.ends_with("\"exec python serve.py --port $PORT\"]\n"), "{}", d.dockerfile);
        let e = detected(&[("requirements.txt", "flask\n")], None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Python app detected (requirements.txt), but there is no Procfile with a `web:` line, no main.py and no app.py to run: add one of them"
        );
    }

    #[test]
    fn node_uses_npm_start_or_main() {
        let d =
            detected(&[("package.json", r#"{"scripts": {"start": "node s.js"}}"#), ("package-lock.json", "{}")], None)
                .unwrap();
        assert_eq!(d.language, Language::Nodejs);
        assert_eq!(
            d.dockerfile,
            "FROM node:22-slim\nWORKDIR /app\nCOPY package*.json ./\nRUN npm ci --omit=dev --no-audit --no-fund\n\
             COPY . .\nENV PORT=8080 NODE_ENV=production\nCMD [\"/bin/sh\", \"-c\", \"exec npm start\"]\n",
            "dependencies are installed before the rest of the source is copied, so they stay cached"
        );
        let d = detected(&[("package.json", r#"{"main": "srv.js"}"#), ("srv.js", "")], None).unwrap();
        assert!(d.dockerfile.contains("RUN npm install --omit=dev --no-audit --no-fund\n"));
        assert!(d.dockerfile.ends_with("\"exec node srv.js\"]\n"));
        let e = detected(&[("package.json", "{}")], None).unwrap_err();
        assert!(
            e.to_string().starts_with("Node.js app detected (package.json), but it has no \"start\" script"),
            "{e}"
        );
        let e = detected(&[("package.json", "{")], None).unwrap_err();
        assert!(e.to_string().starts_with("package.json is not valid JSON"), "{e}");
    }

    #[test]
    fn go_builds_the_module() {
        let d = detected(&[("go.mod", "module x\n"), ("main.go", "package main")], None).unwrap();
        assert_eq!(d.language, Language::Go);
        assert!(d.dockerfile.starts_with("FROM golang:1.23\n"));
        assert!(d.dockerfile.contains("RUN CGO_ENABLED=0 go build -o /app/server .\n"));
    }

    #[test]
    fn nothing_detected_names_what_was_looked_for() {
        let e = detected(&[("README.md", "hi")], None).unwrap_err();
        let text = e.to_string();
        for looked_for in ["Dockerfile", "requirements.txt", "main.py", "app.py", "Procfile", "package.json", "go.mod"]
        {
            assert!(text.contains(looked_for), "{looked_for} is not named in: {text}");
        }
    }
}
