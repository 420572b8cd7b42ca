//! Wharf's source builds: what `wharf run deploy --source` and `wharf builds submit` run on the
//! server. A client uploads its source as a gzipped tarball ([`Builder::store_source`], packed
//! by [`ignore::pack`]); a submit ([`Builder::submit`]) records a build and runs it in the
//! background: unpack the source ([`context`]), take its Dockerfile or generate one
//! ([`detect`]), `buildah bud` it with the layer cache ([`buildah`]) in its own bounded cgroup
//! ([`cgroup`]), and `buildah push` the image into Wharf's own registry. Builds are resources
//! with a status, a duration, the image digest and a kept log ([`record`]).
//!
//! Bounds of a build: a deadline (`timeout`), memory and CPU (its cgroup), the source's size
//! (compressed upload and unpacked), a disk quota on what it writes to the build storage
//! (checked while it runs: [`quota`]), and the build storage's size (past it the layer cache is
//! cleared after a build). `RUN` steps run in runc containers with no network by default
//! ([`buildah::BuildNetwork`]). Builds run one at a time by default; later ones wait as
//! `QUEUED`. A build can be cancelled ([`Builder::cancel`]): its processes are killed.
//!
//! Not owned here: HTTP (the server's API turns requests into these calls), deploying the
//! image (the CLI deploys the digest a build reports), the registry itself.

pub mod buildah;
pub mod cgroup;
pub mod cloudbuild;
pub mod context;
pub mod detect;
pub mod dockerfile;
pub mod egress;
pub mod ignore;
pub mod quota;
pub mod record;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use buildah::BuildNetwork;
pub use detect::BaseImages;
pub use egress::{EgressNetwork, EgressNetworks};
pub use record::{Build, BuildStatus};

/// Bounds of each build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildLimits {
    pub timeout: Duration,
    pub memory_bytes: u64,
    pub cpu_millis: u64,
    /// Largest source upload (compressed), and the most its files may unpack to.
    pub max_source_bytes: u64,
    pub max_unpacked_source_bytes: u64,
    /// Past this, the build storage (layer cache) is cleared after a build.
    pub max_storage_bytes: u64,
    /// Builds that run at once; later ones queue.
    pub concurrent: usize,
    /// The most one build may write to the build storage (new layers, its working
    /// containers' files); past it the build is stopped and fails.
    pub disk_quota_bytes: u64,
    /// The network `RUN` steps get.
    pub network: BuildNetwork,
    /// With [`BuildNetwork::Egress`], the only destinations `RUN` steps reach (CIDRs, the
    /// server's `--build-egress-allow`, enforced by the runtime's nftables policy; shown in
    /// the build log); empty: every public address.
    pub egress_allow: Vec<String>,
}

impl Default for BuildLimits {
    fn default() -> BuildLimits {
        BuildLimits {
            timeout: Duration::from_secs(600),
            memory_bytes: 2 << 30,
            cpu_millis: 2000,
            max_source_bytes: 256 << 20,
            max_unpacked_source_bytes: 1 << 30,
            max_storage_bytes: 20 << 30,
            concurrent: 1,
            disk_quota_bytes: 10 << 30,
            network: BuildNetwork::None,
            egress_allow: Vec::new(),
        }
    }
}

/// Where and how the server builds.
#[derive(Debug, Clone)]
pub struct BuilderConfig {
    /// `<data-dir>/build`.
    pub dir: PathBuf,
    /// The registry builds push to and pull base images from, as buildah reaches it
    /// (loopback), e.g. `127.0.0.1:5000`.
    pub registry: String,
    /// Every name of that registry in image references (`localhost:5000`, ...).
    pub registry_names: Vec<String>,
    /// The credential buildah presents to the registry.
    pub registry_token: String,
    /// The server's cgroup parent; builds get `<parent>/build-<id>`.
    pub cgroup_parent: String,
    pub limits: BuildLimits,
    pub base_images: BaseImages,
    pub buildah: PathBuf,
    pub storage_driver: String,
}

/// A build request, as the API parsed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitRequest {
    /// `projects/{p}/locations/{l}`.
    pub parent: String,
    /// The uploaded source ([`Builder::store_source`]'s object name).
    pub source: String,
    /// Where to push, e.g. `127.0.0.1:5000/p/cloud-run-source-deploy/svc` (`:latest` implied).
    pub image_uri: String,
    /// The Dockerfile's path in the source; `None`: `Dockerfile`, else a generated one.
    pub dockerfile: Option<String>,
    /// The base image of a generated Dockerfile.
    pub base_image: Option<String>,
    /// Build environment variables (gcloud's `--set-build-env-vars`): `--build-arg`s of the
    /// build; a generated Dockerfile declares each (`ARG NAME` after `FROM`), so its `RUN`
    /// steps see them in their environment; a source's Dockerfile sees those it declares.
    /// Checked by [`check_build_env`].
    pub build_env: std::collections::BTreeMap<String, String>,
}

/// Names a build environment variable may not have: what the base image, buildah or Wharf
/// set for steps or the running service (`PATH`, `HOME`, `HOSTNAME`, `PORT`), and the
/// prefixes Wharf, buildah and Cloud Run keep for themselves.
const RESERVED_BUILD_ENV: [&str; 4] = ["PATH", "HOME", "HOSTNAME", "PORT"];
const RESERVED_BUILD_ENV_PREFIXES: [&str; 5] = ["WHARF_", "BUILDAH_", "K_", "CLOUD_RUN_", "CONTAINERS_"];

/// Refuses build environment variables the builder does not allow, naming the first: names
/// must be shell identifiers (`[A-Za-z_][A-Za-z0-9_]*`) and not reserved; at most 100.
pub fn check_build_env(env: &std::collections::BTreeMap<String, String>) -> Result<(), BuildError> {
    if env.len() > 100 {
        return Err(BuildError::Invalid(format!("{} build environment variables: at most 100 are allowed", env.len())));
    }
    for name in env.keys() {
        let mut chars = name.chars();
        let identifier = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !identifier {
            return Err(BuildError::Invalid(format!(
                "build environment variable name {name:?} is not allowed: use letters, digits and _, not starting with a digit"
            )));
        }
        if RESERVED_BUILD_ENV.contains(&name.as_str()) {
            return Err(BuildError::Invalid(format!(
                "build environment variable {name} is not allowed: the base image or Wharf sets it"
            )));
        }
        if let Some(prefix) = RESERVED_BUILD_ENV_PREFIXES.iter().find(|p| name.starts_with(**p)) {
            return Err(BuildError::Invalid(format!(
                "build environment variable {name} is not allowed: names starting with {prefix} are reserved"
            )));
        }
    }
    Ok(())
}

/// `text` (a generated Dockerfile) with `ARG NAME` for each of `names` after its first `FROM`.
fn declare_build_args<'a>(text: &str, names: impl Iterator<Item = &'a String>) -> String {
    let declarations: String = names.map(|n| format!("ARG {n}\n")).collect();
    if declarations.is_empty() {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + declarations.len());
    let mut declared = false;
    for line in text.split_inclusive('\n') {
        out.push_str(line);
        if !declared && line.trim_start().to_ascii_uppercase().starts_with("FROM ") {
            if !line.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&declarations);
            declared = true;
        }
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The request is wrong; the message says how.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// The build is in no state for the request (a cancel of a finished build).
    #[error("{0}")]
    NotRunning(String),
    #[error(
        "the source upload is larger than the server accepts ({limit} bytes, set by the build max_source_size setting); leave files out with .gcloudignore"
    )]
    SourceTooLarge { limit: u64 },
    #[error("cannot store the source upload {path}")]
    Source {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot receive the source upload")]
    Upload(#[source] std::io::Error),
    #[error(transparent)]
    Record(#[from] record::RecordError),
    #[error(transparent)]
    Buildah(#[from] buildah::BuildahError),
}

/// The server's builder; cheap to clone.
#[derive(Debug, Clone)]
pub struct Builder {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: BuilderConfig,
    buildah: buildah::Buildah,
    records: record::Records,
    slots: tokio::sync::Semaphore,
    tasks: TaskTracker,
    cancel: CancellationToken,
    /// Builds queued or running, by id: how to stop each and learn that it ended.
    running: std::sync::Mutex<std::collections::HashMap<String, Running>>,
    /// Where builds get their network with `--build-network egress` (set by the server once
    /// its runtime is open).
    egress: std::sync::OnceLock<Arc<dyn EgressNetworks>>,
}

/// A queued or running build's handles.
#[derive(Debug, Clone)]
struct Running {
    /// Cancels this build only (a child of the server's shutdown token).
    cancel: CancellationToken,
    /// Why it was stopped, set before `cancel` fires.
    reason: Arc<std::sync::Mutex<Option<StopReason>>>,
    /// Becomes true once the build's end is recorded.
    done: tokio::sync::watch::Receiver<bool>,
}

/// Why a build was stopped before it ended by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StopReason {
    /// `:cancel` (who asked).
    Cancelled { by: String },
    /// It wrote more than its disk quota.
    DiskQuota { used: u64 },
}

const SOURCE_BUCKET: &str = "wharf-build-sources";
/// How long an upload waits for the submit that builds it.
const SOURCE_EXPIRY: Duration = Duration::from_secs(3600);

impl Builder {
    /// Prepares `<data-dir>/build`: registry configuration, storage, records. Builds a
    /// previous server left unfinished are marked failed, and what is left of them (processes
    /// in their cgroups, working containers and their mounts) is removed.
    pub fn open(config: BuilderConfig) -> Result<Builder, BuildError> {
        let buildah = buildah::Buildah {
            program: config.buildah.clone(),
            dir: config.dir.clone(),
            storage_driver: config.storage_driver.clone(),
        };
        buildah.write_registry_config(&config.registry, &config.registry_names, &config.registry_token)?;
        let records = record::Records::open(&config.dir.join("builds"))?;
        for mut build in records.list()? {
            if !build.status.is_done() {
                // Its buildah outlived the server that ran it: kill it with its cgroup.
                cgroup::BuildCgroup::existing(&config.cgroup_parent, &format!("build-{}", build.id)).kill_and_remove();
                build.status = BuildStatus::InternalError;
                build.failure_detail = Some("The server restarted before this build completed.".into());
                build.finish_time = Some(now());
                records.save(&build)?;
            }
        }
        // Unpacked sources of builds that are over, and uploads no build will use now.
        for dir in ["work", "sources"] {
            let path = config.dir.join(dir);
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).map_err(|source| BuildError::Source { path, source })?;
        }
        // Working containers a killed server's buildah left (mounted), before anything builds.
        if let Err(e) = buildah.remove_containers_now(&config.dir.join("cleanup.log")) {
            tracing::warn!(error = %error_chain(&e), "cannot remove buildah's working containers");
        }
        buildah.forget_killed_steps();
        let slots = tokio::sync::Semaphore::new(config.limits.concurrent.max(1));
        Ok(Builder {
            inner: Arc::new(Inner {
                config,
                buildah,
                records,
                slots,
                tasks: TaskTracker::new(),
                cancel: CancellationToken::new(),
                running: std::sync::Mutex::new(std::collections::HashMap::new()),
                egress: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Gives the builder what makes builds' networks for `--build-network egress`. Only the
    /// first call counts; builds that start before it fail with `INTERNAL_ERROR` naming it.
    pub fn set_egress_networks(&self, networks: Arc<dyn EgressNetworks>) {
        let _ = self.inner.egress.set(networks);
    }

    /// Stores an uploaded source tarball; answers `(bucket, object)` to name it in a submit.
    pub async fn store_source<S, E>(&self, mut body: S) -> Result<(String, String), BuildError>
    where
        S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        use futures::StreamExt as _;
        self.expire_sources();
        let object = format!("{}.tar.gz", uuid::Uuid::new_v4().simple());
        let path = self.inner.config.dir.join("sources").join(&object);
        let file_err = |source| BuildError::Source { path: path.clone(), source };
        let mut file = tokio::fs::File::create(&path).await.map_err(file_err)?;
        let limit = self.inner.config.limits.max_source_bytes;
        let mut size = 0u64;
        let result = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| BuildError::Upload(std::io::Error::other(e)))?;
                size += chunk.len() as u64;
                if size > limit {
                    return Err(BuildError::SourceTooLarge { limit });
                }
                file.write_all(&chunk).await.map_err(file_err)?;
            }
            file.flush().await.map_err(file_err)
        }
        .await;
        if let Err(e) = result {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(e);
        }
        Ok((SOURCE_BUCKET.to_owned(), object))
    }

    /// Removes uploads older than [`SOURCE_EXPIRY`] that no build took.
    fn expire_sources(&self) {
        let dir = self.inner.config.dir.join("sources");
        let Ok(entries) = std::fs::read_dir(&dir) else { return };
        for entry in entries.flatten() {
            let old = entry.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
            if old.is_some_and(|age| age > SOURCE_EXPIRY) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Records a build and starts it in the background; answers the `QUEUED` build.
    pub fn submit(&self, request: SubmitRequest) -> Result<Build, BuildError> {
        let inner = &self.inner;
        let object = request.source.as_str();
        let valid_object = object.strip_suffix(".tar.gz").is_some_and(record::valid_id);
        let source_path = inner.config.dir.join("sources").join(object);
        if !valid_object || !source_path.is_file() {
            return Err(BuildError::Invalid(format!(
                "storageSource.object {object:?} is not an uploaded source of bucket {SOURCE_BUCKET}; upload the source first"
            )));
        }
        let target = self.target(&request.image_uri)?;
        if let Some(dockerfile) = &request.dockerfile {
            check_relative("dockerfile", dockerfile)?;
        }
        check_build_env(&request.build_env)?;
        let id = uuid::Uuid::new_v4().to_string();
        let name = format!("{}/builds/{id}", request.parent);
        let build = Build {
            name: name.clone(),
            id: id.clone(),
            status: BuildStatus::Queued,
            image_uri: request.image_uri.clone(),
            image: None,
            image_digest: None,
            dockerfile: request.dockerfile.clone().unwrap_or_else(|| "Dockerfile".into()),
            detected_language: None,
            create_time: now(),
            start_time: None,
            finish_time: None,
            duration: None,
            cached_steps: 0,
            log_file: inner.records.log_path(&id).display().to_string(),
            log_url: format!("/v2/{name}/log"),
            failure_detail: None,
        };
        inner.records.save(&build)?;
        let (done_tx, done) = tokio::sync::watch::channel(false);
        let running =
            Running { cancel: inner.cancel.child_token(), reason: Arc::new(std::sync::Mutex::new(None)), done };
        inner.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id, running.clone());
        let job = Job { builder: self.clone(), build: build.clone(), request, target, source_path, running, done_tx };
        inner.tasks.spawn(job.run());
        Ok(build)
    }

    /// Cancels a queued or running build (`:cancel`): its processes are killed, its working
    /// container removed, and it ends as `CANCELLED`. Waits (up to a minute) for that to be
    /// recorded and answers the build. A build that already ended is refused.
    pub async fn cancel(&self, parent: &str, id: &str, by: &str) -> Result<Build, BuildError> {
        let build = self.get(parent, id)?;
        let running = self.inner.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(id).cloned();
        let Some(mut running) = running.filter(|_| !build.status.is_done()) else {
            let status = serde_json::to_value(build.status).ok().and_then(|v| v.as_str().map(str::to_owned));
            return Err(BuildError::NotRunning(format!(
                "build {} has ended ({}); only QUEUED and WORKING builds can be cancelled",
                build.name,
                status.unwrap_or_default()
            )));
        };
        running
            .reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert(StopReason::Cancelled { by: by.to_owned() });
        running.cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(60), running.done.wait_for(|done| *done)).await;
        self.get(parent, id)
    }

    /// `HOST/repo[:tag]` (or `repo[:tag]`) in this server's registry -> `(repo, tag)`.
    fn target(&self, image_uri: &str) -> Result<(String, String), BuildError> {
        let bad = |why: String| BuildError::Invalid(format!("imageUri {image_uri:?} {why}"));
        let (host, rest) = match image_uri.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => (Some(first), rest),
            _ => (None, image_uri),
        };
        if let Some(host) = host
            && !self.inner.config.registry_names.iter().any(|n| n == host)
        {
            return Err(bad(format!(
                "names registry {host}; Wharf builds push only to its own registry ({})",
                self.inner.config.registry
            )));
        }
        if rest.contains('@') {
            return Err(bad("has a digest; name a tag to push to (the build reports the digest)".into()));
        }
        let slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (repo, tag) = match rest[slash..].rfind(':') {
            Some(i) => (&rest[..slash + i], &rest[slash + i + 1..]),
            None => (rest, "latest"),
        };
        wharf_image::reference::validate_repository(repo).map_err(|e| bad(e.to_string()))?;
        wharf_image::reference::validate_tag(tag).map_err(|e| bad(e.to_string()))?;
        Ok((repo.to_owned(), tag.to_owned()))
    }

    /// The build `id` of `parent`.
    pub fn get(&self, parent: &str, id: &str) -> Result<Build, BuildError> {
        let missing = || BuildError::NotFound(format!("build {parent}/builds/{id} was not found"));
        if !record::valid_id(id) {
            return Err(missing());
        }
        match self.inner.records.get(id)? {
            Some(build) if build.name == format!("{parent}/builds/{id}") => Ok(build),
            _ => Err(missing()),
        }
    }

    /// The builds of `parent`, newest first.
    pub fn list(&self, parent: &str) -> Result<Vec<Build>, BuildError> {
        let prefix = format!("{parent}/builds/");
        Ok(self.inner.records.list()?.into_iter().filter(|b| b.name.starts_with(&prefix)).collect())
    }

    /// The build's log from byte `offset` on, and the build (to know whether more may come).
    pub fn log(&self, parent: &str, id: &str, offset: u64) -> Result<(Vec<u8>, Build), BuildError> {
        use std::io::{Read as _, Seek as _};
        let build = self.get(parent, id)?;
        let path = self.inner.records.log_path(id);
        let mut bytes = Vec::new();
        match std::fs::File::open(&path) {
            Ok(mut file) => {
                file.seek(std::io::SeekFrom::Start(offset))
                    .and_then(|_| file.take(4 << 20).read_to_end(&mut bytes))
                    .map_err(|source| BuildError::Source { path, source })?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(BuildError::Source { path, source }),
        }
        Ok((bytes, build))
    }

    /// Stops running builds (their processes are killed) and waits for them to record it.
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        // A killed buildah leaves its working container mounted; nothing is building now.
        let log = self.inner.config.dir.join("cleanup.log");
        if let Err(e) = self.inner.buildah.remove_containers(&log).await {
            tracing::warn!(error = %error_chain(&e), "cannot remove buildah's working containers");
        }
        self.inner.buildah.forget_killed_steps();
    }

    /// A base image name as buildah should pull it: a name without a registry host is
    /// looked up in Wharf's registry.
    fn qualify(&self, image: &str) -> String {
        if dockerfile::has_registry_host(image) {
            image.to_owned()
        } else {
            format!("{}/{image}", self.inner.config.registry)
        }
    }
}

/// A relative path inside the source, without `..`.
fn check_relative(what: &str, path: &str) -> Result<(), BuildError> {
    let p = Path::new(path);
    if path.is_empty() || p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(BuildError::Invalid(format!(
            "{what} {path:?} must be a path inside the source directory, like Dockerfile or docker/Dockerfile"
        )));
    }
    Ok(())
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

/// One build's run, in the background.
struct Job {
    builder: Builder,
    build: Build,
    request: SubmitRequest,
    target: (String, String),
    source_path: PathBuf,
    running: Running,
    done_tx: tokio::sync::watch::Sender<bool>,
}

/// How a build ended, before it is recorded.
struct Failure {
    status: BuildStatus,
    message: String,
}

impl Failure {
    fn failed(message: impl Into<String>) -> Failure {
        Failure { status: BuildStatus::Failure, message: message.into() }
    }
}

impl Job {
    async fn run(mut self) {
        let inner = self.builder.inner.clone();
        let span = tracing::info_span!("build", id = %self.build.id, image = %self.build.image_uri);
        let _permit = tokio::select! {
            permit = inner.slots.acquire() => permit.ok(),
            () = self.running.cancel.cancelled() => None,
        };
        let started = Instant::now();
        self.build.status = BuildStatus::Working;
        self.build.start_time = Some(now());
        let _ = inner.records.save(&self.build);
        let log = inner.records.log_path(&self.build.id);
        let work = inner.config.dir.join("work").join(&self.build.id);
        let result = tracing::Instrument::instrument(self.steps(&log, &work, started), span.clone()).await;
        let _ = std::fs::remove_dir_all(&work);
        let _ = std::fs::remove_file(&self.source_path);
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        self.build.cached_steps =
            u32::try_from(text.lines().filter(|l| l.starts_with("--> Using cache")).count()).unwrap_or(u32::MAX);
        match result {
            Ok(digest) => {
                self.build.status = BuildStatus::Success;
                self.build.image = Some(format!("{}/{}@{digest}", inner.config.registry, self.target.0));
                self.build.image_digest = Some(digest);
            }
            Err(failure) => {
                let tail: Vec<&str> = text.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
                append(&log, &format!("wharf: build failed: {}\n", failure.message));
                self.build.status = failure.status;
                self.build.failure_detail = Some(format!("{}\n{}", failure.message, tail.join("\n")));
            }
        }
        self.build.finish_time = Some(now());
        self.build.duration = Some(format!("{:.3}s", started.elapsed().as_secs_f64()));
        span.in_scope(
            || tracing::info!(status = ?self.build.status, duration = ?self.build.duration, "build finished"),
        );
        if let Err(e) = inner.records.save(&self.build) {
            tracing::error!(error = %e, "cannot record the build's end");
        }
        inner.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.build.id);
        let _ = self.done_tx.send(true);
        // Bound the build storage: past its limit, the layer cache goes.
        let storage = inner.buildah.storage_dir();
        let used = tokio::task::spawn_blocking(move || buildah::disk_usage(&storage)).await.unwrap_or(0);
        if used > inner.config.limits.max_storage_bytes {
            tracing::info!(
                used,
                limit = inner.config.limits.max_storage_bytes,
                "build storage over its limit: clearing the layer cache"
            );
            let _ = inner.buildah.clear_cache(&inner.config.dir.join("cache-clear.log")).await;
        }
    }

    /// How a build stopped by its token ends: cancelled, over its disk quota, or cut by the
    /// server's shutdown.
    /// The build's `RUN` steps' network for `--build-network egress`.
    async fn create_egress_network(&self) -> Result<EgressNetwork, Failure> {
        let Some(networks) = self.builder.inner.egress.get() else {
            return Err(Failure {
                status: BuildStatus::InternalError,
                message:
                    "the server has --build-network egress but no way to make build networks (its runtime is not open)"
                        .into(),
            });
        };
        networks.create(&self.build.id).await.map_err(|e| Failure {
            status: BuildStatus::InternalError,
            message: format!("cannot create the build's network (--build-network egress): {}", error_chain(&*e)),
        })
    }

    fn stopped(&self) -> Failure {
        let reason = self.running.reason.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        match reason {
            Some(StopReason::Cancelled { by }) => {
                Failure { status: BuildStatus::Cancelled, message: format!("cancelled by {by}") }
            }
            Some(StopReason::DiskQuota { used }) => Failure::failed(format!(
                "the build wrote {} MiB to the build storage, more than its disk quota ({} MiB, the server's \
                 --build-disk-quota); make the image smaller or raise the quota",
                used >> 20,
                self.builder.inner.config.limits.disk_quota_bytes >> 20
            )),
            None => Failure { status: BuildStatus::Cancelled, message: "the server is shutting down".into() },
        }
    }

    /// After a killed buildah: its working containers (mounted) go, when no other build
    /// runs (`buildah rm --all` would take theirs too; the next server start removes any left).
    async fn remove_working_containers(&self, log: &Path) {
        let inner = &self.builder.inner;
        let others = inner.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len() > 1;
        if !others {
            if let Err(e) = inner.buildah.remove_containers(log).await {
                tracing::warn!(error = %error_chain(&e), "cannot remove buildah's working containers");
            }
            inner.buildah.forget_killed_steps();
        }
    }

    /// Unpack, find or generate the Dockerfile, build, push; answers the pushed digest.
    async fn steps(&mut self, log: &Path, work: &Path, started: Instant) -> Result<String, Failure> {
        let inner = self.builder.inner.clone();
        let config = &inner.config;
        let deadline = started + config.limits.timeout;
        let (repo, tag) = self.target.clone();
        let push_to = format!("{}/{repo}:{tag}", config.registry);
        append(log, &format!("wharf: build {} of {push_to}\n", self.build.id));
        if self.running.cancel.is_cancelled() {
            return Err(self.stopped());
        }

        let source = work.join("source");
        let (archive, dest, max) = (self.source_path.clone(), source.clone(), config.limits.max_unpacked_source_bytes);
        let unpacked = tokio::task::spawn_blocking(move || context::unpack(&archive, &dest, max))
            .await
            .map_err(|e| Failure { status: BuildStatus::InternalError, message: e.to_string() })?
            .map_err(|e| Failure::failed(error_chain(&e)))?;
        append(log, &format!("wharf: source unpacked ({unpacked} bytes)\n"));

        let given = match &self.request.dockerfile {
            Some(path) => {
                let full = source.join(path);
                if !full.is_file() {
                    return Err(Failure::failed(format!(
                        "the Dockerfile {path:?} is not in the source (--dockerfile is relative to the source directory)"
                    )));
                }
                Some(full)
            }
            None if source.join("Dockerfile").is_file() => Some(source.join("Dockerfile")),
            None => None,
        };
        let text = match given {
            Some(path) => std::fs::read_to_string(&path)
                .map_err(|e| Failure::failed(format!("cannot read the Dockerfile {}: {e}", path.display())))?,
            None => {
                let base = self.request.base_image.as_deref().map(|b| self.builder.qualify(b));
                let defaults = BaseImages {
                    python: self.builder.qualify(&config.base_images.python),
                    nodejs: self.builder.qualify(&config.base_images.nodejs),
                    go: self.builder.qualify(&config.base_images.go),
                };
                let mut detected = detect::detect(&source, base.as_deref(), &defaults)
                    .map_err(|e| Failure::failed(error_chain(&e)))?;
                detected.dockerfile = declare_build_args(&detected.dockerfile, self.request.build_env.keys());
                append(
                    log,
                    &format!(
                        "wharf: no Dockerfile; detected {} ({}); building with this Dockerfile:\n{}",
                        detected.language.name(),
                        detected.evidence,
                        detected.dockerfile
                    ),
                );
                self.build.detected_language = Some(detected.language.name().to_owned());
                self.build.dockerfile = format!("(generated for {})", detected.language.name());
                detected.dockerfile
            }
        };
        // Base images come from Wharf's registry (see `dockerfile`).
        let (text, rewrites) = dockerfile::qualify_base_images(&text, &config.registry);
        for rewrite in &rewrites {
            append(log, &format!("wharf: FROM {} is read as FROM {}\n", rewrite.from, rewrite.to));
        }
        // Written outside the source, so the build context stays what the user sent.
        let dockerfile = work.join("Dockerfile.wharf");
        std::fs::write(&dockerfile, text)
            .map_err(|e| Failure { status: BuildStatus::InternalError, message: e.to_string() })?;
        let _ = inner.records.save(&self.build);

        let cgroup_name = format!("build-{}", self.build.id);
        let cgroup = cgroup::BuildCgroup::create(
            &config.cgroup_parent,
            &cgroup_name,
            config.limits.memory_bytes,
            config.limits.cpu_millis,
        )
        .map_err(|e| Failure { status: BuildStatus::InternalError, message: error_chain(&e) })?;
        let local_tag = format!("localhost/wharf-build/{repo}:latest");
        let digest_file = work.join("digest");
        let network = config.limits.network;
        let network_note = match network {
            BuildNetwork::None => "wharf: RUN steps run in containers with no network (the server's --build-network none): \
                 a step that downloads (pip, npm, go mod) fails; vendor dependencies into the source or the base image\n"
                .to_owned(),
            BuildNetwork::Host => "wharf: RUN steps use the host's network (the server's --build-network host)\n".to_owned(),
            BuildNetwork::Egress if config.limits.egress_allow.is_empty() => {
                "wharf: RUN steps reach the internet but not this host, private or link-local \
                 addresses (the server's --build-network egress)\n"
                    .to_owned()
            }
            BuildNetwork::Egress => format!(
                "wharf: RUN steps reach only {} (the server's --build-egress-allow), never this host, private or \
                 link-local addresses (--build-network egress); names resolve through Wharf's resolver\n",
                config.limits.egress_allow.join(", ")
            ),
        };
        append(log, &network_note);
        let egress = match network {
            BuildNetwork::Egress => match self.create_egress_network().await {
                Ok(egress) => Some(egress),
                Err(failure) => {
                    tokio::task::spawn_blocking(move || cgroup.kill_and_remove()).await.ok();
                    return Err(failure);
                }
            },
            _ => None,
        };
        let network_arg = match &egress {
            Some(egress) => format!("ns:{}", egress.netns_path.display()),
            None => network.name().to_owned(),
        };
        let dns_args: Vec<String> =
            egress.iter().filter_map(|e| e.nameserver).map(|ns| format!("--dns={ns}")).collect();
        // Values only on buildah's command line (root's, like the build), never in the log.
        let build_args: Vec<String> =
            self.request.build_env.iter().flat_map(|(k, v)| ["--build-arg".to_owned(), format!("{k}={v}")]).collect();
        if !self.request.build_env.is_empty() {
            let names: Vec<&str> = self.request.build_env.keys().map(String::as_str).collect();
            append(log, &format!("wharf: build environment variables: {}\n", names.join(", ")));
        }
        let quota = quota::Watch::start(
            &inner.buildah.storage_dir(),
            config.limits.disk_quota_bytes,
            self.running.cancel.clone(),
            self.running.reason.clone(),
            |used| StopReason::DiskQuota { used },
        );
        let steps_cgroup = cgroup::BuildCgroup::steps_path(&config.cgroup_parent, &cgroup_name);
        let runc_root = format!("root={}", inner.buildah.runc_root().display());
        let result = async {
            let mut bud: Vec<&std::ffi::OsStr> = vec![
                "bud".as_ref(),
                "--layers".as_ref(),
                // A failed step's working container (and its overlay mount) goes too.
                "--force-rm".as_ref(),
                // RUN steps in runc containers: their own PID, mount, IPC, UTS and network
                // namespaces, seccomp and a reduced capability set, in the build's cgroup.
                "--isolation".as_ref(),
                "oci".as_ref(),
                "--runtime".as_ref(),
                "runc".as_ref(),
                "--runtime-flag".as_ref(),
                runc_root.as_ref(),
                "--network".as_ref(),
                network_arg.as_ref(),
                "--cgroup-parent".as_ref(),
                steps_cgroup.as_ref(),
                "-f".as_ref(),
                dockerfile.as_os_str(),
                "-t".as_ref(),
                local_tag.as_ref(),
            ];
            bud.extend(dns_args.iter().chain(&build_args).map(std::ffi::OsStr::new));
            bud.push(source.as_os_str());
            inner.buildah.run("bud", &bud, log, Some(&cgroup), deadline, &self.running.cancel).await?;
            append(log, &format!("wharf: pushing to {push_to}\n"));
            let destination = format!("docker://{push_to}");
            let push: Vec<&std::ffi::OsStr> = vec![
                "push".as_ref(),
                "--tls-verify=false".as_ref(),
                "--digestfile".as_ref(),
                digest_file.as_os_str(),
                local_tag.as_ref(),
                destination.as_ref(),
            ];
            inner.buildah.run("push", &push, log, Some(&cgroup), deadline, &self.running.cancel).await
        }
        .await;
        quota.stop().await;
        let oom = cgroup.oom_killed();
        tokio::task::spawn_blocking(move || cgroup.kill_and_remove()).await.ok();
        // After the cgroup: no step process is left in the namespace.
        if egress.is_some()
            && let Some(networks) = inner.egress.get()
        {
            networks.remove(&self.build.id).await;
        }
        if result.is_err() {
            self.remove_working_containers(log).await;
        }
        match result {
            Ok(()) => {}
            Err(buildah::BuildahError::Timeout) => {
                return Err(Failure {
                    status: BuildStatus::Timeout,
                    message: format!("the build ran longer than its timeout ({}s)", config.limits.timeout.as_secs()),
                });
            }
            Err(buildah::BuildahError::Cancelled) => return Err(self.stopped()),
            Err(e) if oom => {
                return Err(Failure::failed(format!(
                    "{e}: the build ran out of memory (its limit is {} MiB, the build memory_limit setting)",
                    config.limits.memory_bytes >> 20
                )));
            }
            Err(e @ buildah::BuildahError::Failed { .. }) => return Err(Failure::failed(e.to_string())),
            Err(e) => return Err(Failure { status: BuildStatus::InternalError, message: error_chain(&e) }),
        }
        let digest = std::fs::read_to_string(&digest_file).unwrap_or_default().trim().to_owned();
        if !digest.starts_with("sha256:") {
            return Err(Failure { status: BuildStatus::InternalError, message: "buildah push wrote no digest".into() });
        }
        append(log, &format!("wharf: pushed {push_to}@{digest}\n"));
        Ok(digest)
    }
}

fn append(log: &Path, text: &str) {
    use std::io::Write as _;
    if let Ok(mut file) = std::fs::OpenOptions::new().append(true).create(true).open(log) {
        let _ = file.write_all(text.as_bytes());
    }
}

/// An error and its sources on one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(&format!(": {e}"));
        source = e.source();
    }
    text
}

#[cfg(test)]
mod build_env_tests {
    use super::*;

    #[test]
    fn build_env_names_are_checked_by_name() {
        let env = |name: &str| std::collections::BTreeMap::from([(name.to_owned(), "x".to_owned())]);
        check_build_env(&env("PIP_INDEX_URL")).unwrap();
        check_build_env(&env("_private1")).unwrap();
        for (name, says) in [
            ("PATH", "PATH is not allowed: the base image or Wharf sets it"),
            ("WHARF_X", "names starting with WHARF_ are reserved"),
            ("1ABC", "\"1ABC\" is not allowed: use letters"),
            ("A-B", "\"A-B\" is not allowed"),
            ("", "\"\" is not allowed"),
        ] {
            let error = check_build_env(&env(name)).unwrap_err().to_string();
            assert!(error.contains(says), "{name}: {error}");
        }
    }

    #[test]
    fn a_generated_dockerfile_declares_build_args_after_from() {
        let names = ["PIP_FIND_LINKS".to_owned(), "PIP_NO_INDEX".to_owned()];
        let text = declare_build_args("FROM python\nWORKDIR /app\nRUN pip install x\n", names.iter());
        assert_eq!(text, "FROM python\nARG PIP_FIND_LINKS\nARG PIP_NO_INDEX\nWORKDIR /app\nRUN pip install x\n");
        assert_eq!(declare_build_args("FROM a\n", std::iter::empty()), "FROM a\n");
    }
}
