//! Pulling images from remote registries with `oci-client`, credentials from a docker-style
//! `config.json`. A pulled image is stored like a pushed one, under a local repository named
//! after its origin (`docker.io/library/nginx`, `registry.example.com-5000/app`), so a later
//! instance start needs no network.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use tokio::io::AsyncWriteExt as _;

use crate::content::ImageStore;
use crate::digest::Digest;
use crate::error::ImageError;
use crate::manifest::{MANIFEST_MEDIA_TYPES, Manifest};
use crate::reference::ImageReference;

/// Passes at most `remaining` bytes to `inner` and fails a write past that, so a remote
/// registry that sends more than a blob's descriptor declares cannot fill the disk.
struct CappedWriter<W> {
    inner: W,
    remaining: u64,
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for CappedWriter<W> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if buf.len() as u64 > this.remaining {
            return std::task::Poll::Ready(Err(std::io::Error::other(
                "the registry sent more bytes than the blob's descriptor declares",
            )));
        }
        let written = std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.remaining -= written as u64;
        std::task::Poll::Ready(Ok(written))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A client for remote registries.
pub struct RemoteRegistry {
    client: oci_client::Client,
    docker_config: Option<PathBuf>,
    timeouts: PullTimeouts,
}

/// How long a pull waits on a remote registry. A registry that accepts the connection and
/// never answers, or stops sending mid-blob, fails the pull with an error naming it and the
/// timeout instead of holding the deploy forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullTimeouts {
    /// To open a connection (TCP and TLS).
    pub connect: Duration,
    /// Between two reads of an answer (headers or body): a slow but moving download is fine.
    pub read: Duration,
}

impl Default for PullTimeouts {
    fn default() -> PullTimeouts {
        PullTimeouts { connect: Duration::from_secs(10), read: Duration::from_secs(30) }
    }
}

impl std::fmt::Debug for RemoteRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteRegistry").field("docker_config", &self.docker_config).finish()
    }
}

/// What a pull stored: the manifest the reference named, and the image manifest that runs
/// on linux/amd64 (the same digest unless the reference named an index).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    pub repository: String,
    pub top: Digest,
    pub image: Digest,
}

impl RemoteRegistry {
    /// `docker_config` is the `config.json` to read credentials from; registries on loopback
    /// are spoken to over plain HTTP, all others over HTTPS.
    /// Uses the default [`PullTimeouts`].
    pub fn new(docker_config: Option<PathBuf>) -> RemoteRegistry {
        RemoteRegistry::with_timeouts(docker_config, PullTimeouts::default())
    }

    /// Like [`RemoteRegistry::new`], with the given timeouts.
    pub fn with_timeouts(docker_config: Option<PathBuf>, timeouts: PullTimeouts) -> RemoteRegistry {
        RemoteRegistry { client: oci_client::Client::new(client_config(&[], timeouts)), docker_config, timeouts }
    }

    /// Why a request to `registry` failed, saying so plainly when it was a timeout.
    fn explain(&self, registry: &str, error: &(dyn std::error::Error + 'static)) -> String {
        if is_timeout(error) {
            format!(
                "registry {registry} did not answer in time (connect timeout {:?}, read timeout {:?}): {error}",
                self.timeouts.connect, self.timeouts.read
            )
        } else {
            error.to_string()
        }
    }

    /// The local repository a remote reference is stored under.
    pub fn local_repository(reference: &ImageReference) -> String {
        format!("{}/{}", reference.registry.replace(':', "-"), reference.repository)
    }

    /// Pulls `reference` (manifest, config and layers) into `store`.
    pub async fn pull(&self, store: &ImageStore, reference: &ImageReference) -> Result<Pulled, ImageError> {
        let fail = |reason: String| ImageError::Pull { reference: reference.to_string(), reason };
        let network = |e: oci_client::errors::OciDistributionError| fail(self.explain(&reference.registry, &e));
        let client = if is_loopback(&reference.registry) {
            oci_client::Client::new(client_config(std::slice::from_ref(&reference.registry), self.timeouts))
        } else {
            self.client.clone()
        };
        let auth = self.credentials(&reference.registry);
        let repo = Self::local_repository(reference);
        let top_ref = oci_reference(reference, &reference.reference());
        let (bytes, _) = client.pull_manifest_raw(&top_ref, &auth, MANIFEST_MEDIA_TYPES).await.map_err(network)?;
        let top = Digest::of(&bytes);
        if let Some(expected) = &reference.digest
            && expected != &top
        {
            return Err(fail(format!("registry returned manifest {top}, not the requested {expected}")));
        }
        let manifest = Manifest::parse(None, &bytes).map_err(|e| fail(e.to_string()))?;
        let (image, image_bytes, image_manifest) = match &manifest {
            Manifest::Index { .. } => {
                let child = manifest
                    .pick_linux_amd64()
                    .ok_or_else(|| fail("the image index has no linux/amd64 image".to_owned()))?;
                let child_ref = oci_reference(reference, child.digest.as_str());
                let (child_bytes, _) =
                    client.pull_manifest_raw(&child_ref, &auth, MANIFEST_MEDIA_TYPES).await.map_err(network)?;
                let actual = Digest::of(&child_bytes);
                if actual != child.digest {
                    return Err(ImageError::DigestMismatch { expected: child.digest.clone(), actual });
                }
                let parsed = Manifest::parse(None, &child_bytes).map_err(|e| fail(e.to_string()))?;
                (actual, child_bytes.to_vec(), parsed)
            }
            Manifest::Image { .. } => (top.clone(), bytes.to_vec(), manifest.clone()),
        };
        let Manifest::Image { config, layers, .. } = &image_manifest else {
            return Err(fail("an index may not name another index for linux/amd64".to_owned()));
        };
        for blob in std::iter::once(config).chain(layers) {
            let limit = store.limits().max_blob_bytes;
            if blob.size > limit {
                return Err(fail(format!(
                    "blob {} is {} bytes, more than the blob size limit of {limit} bytes (server setting --max-blob-size)",
                    blob.digest, blob.size
                )));
            }
            if store.blobs().size(&blob.digest).is_none() {
                self.fetch_blob(&client, store, reference, &blob.digest, blob.size).await?;
            }
            store.link_blob(&repo, &blob.digest)?;
        }
        store.put_manifest(&repo, image.as_str(), None, &image_bytes)?;
        let tag = reference.tag.clone().unwrap_or_else(|| "latest".to_owned());
        let top_reference = if reference.digest.is_some() { top.to_string() } else { tag };
        if top == image {
            store.put_manifest(&repo, &top_reference, None, &bytes)?;
        } else {
            store.put_pulled_index(&repo, &top_reference, &bytes)?;
        }
        Ok(Pulled { repository: repo, top, image })
    }

    async fn fetch_blob(
        &self,
        client: &oci_client::Client,
        store: &ImageStore,
        reference: &ImageReference,
        digest: &Digest,
        declared_size: u64,
    ) -> Result<(), ImageError> {
        let staged = store.blobs().staging_path();
        let file = tokio::fs::File::create(&staged).await.map_err(ImageError::io("create", &staged))?;
        let mut writer =
            CappedWriter { inner: tokio::io::BufWriter::with_capacity(1 << 20, file), remaining: declared_size };
        let image_ref = oci_reference(reference, digest.as_str());
        let result = client.pull_blob(&image_ref, digest.as_str(), &mut writer).await;
        let flushed = writer.shutdown().await;
        if let Err(e) = result {
            let _ = tokio::fs::remove_file(&staged).await;
            let reason = format!("blob {digest}: {}", self.explain(&reference.registry, &e));
            return Err(ImageError::Pull { reference: reference.to_string(), reason });
        }
        flushed.map_err(ImageError::io("write", &staged))?;
        let blobs = store.blobs().clone();
        let digest = digest.clone();
        tokio::task::spawn_blocking(move || blobs.ingest(&staged, &digest))
            .await
            .map_err(|e| ImageError::Task(e.to_string()))??;
        Ok(())
    }

    /// Credentials for `registry` from the docker config file, anonymous if none.
    fn credentials(&self, registry: &str) -> RegistryAuth {
        let Some(path) = &self.docker_config else { return RegistryAuth::Anonymous };
        match read_docker_credentials(path, registry) {
            Ok(Some((user, pass))) => RegistryAuth::Basic(user, pass),
            Ok(None) => RegistryAuth::Anonymous,
            Err(reason) => {
                tracing::warn!(path = %path.display(), %reason, "ignoring unreadable docker config");
                RegistryAuth::Anonymous
            }
        }
    }
}

fn client_config(plain_http: &[String], timeouts: PullTimeouts) -> ClientConfig {
    ClientConfig {
        protocol: ClientProtocol::HttpsExcept(plain_http.to_vec()),
        platform_resolver: None,
        connect_timeout: Some(timeouts.connect),
        read_timeout: Some(timeouts.read),
        ..ClientConfig::default()
    }
}

/// Whether `error` or one of its sources is a timeout (an I/O `TimedOut`, or reqwest's and
/// hyper's "operation timed out").
fn is_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            || e.to_string().contains("timed out")
        {
            return true;
        }
        next = e.source();
    }
    false
}

fn oci_reference(reference: &ImageReference, tag_or_digest: &str) -> oci_client::Reference {
    if tag_or_digest.contains(':') {
        oci_client::Reference::with_digest(
            reference.registry.clone(),
            reference.repository.clone(),
            tag_or_digest.to_owned(),
        )
    } else {
        oci_client::Reference::with_tag(
            reference.registry.clone(),
            reference.repository.clone(),
            tag_or_digest.to_owned(),
        )
    }
}

fn is_loopback(registry: &str) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    host == "localhost" || host.starts_with("127.") || host == "[::1]"
}

/// The docker config file to use: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn default_docker_config() -> Option<PathBuf> {
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker")))?;
    let path = dir.join("config.json");
    path.exists().then_some(path)
}

#[derive(serde::Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, DockerAuth>,
}

#[derive(serde::Deserialize)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// Reads `user:password` for `registry` from a docker `config.json` (`auths` entries keyed by
/// host, by `https://host`, or for Docker Hub by its index URL).
pub fn read_docker_credentials(path: &Path, registry: &str) -> Result<Option<(String, String)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let config: DockerConfig = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let mut keys = vec![registry.to_owned(), format!("https://{registry}"), format!("http://{registry}")];
    if registry == "docker.io" {
        keys.push("https://index.docker.io/v1/".to_owned());
    }
    let Some(entry) = keys.iter().find_map(|k| config.auths.get(k)) else { return Ok(None) };
    if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
        return Ok(Some((u.clone(), p.clone())));
    }
    let Some(auth) = &entry.auth else { return Ok(None) };
    let decoded = base64::engine::general_purpose::STANDARD.decode(auth.trim()).map_err(|e| e.to_string())?;
    let decoded = String::from_utf8(decoded).map_err(|e| e.to_string())?;
    let (user, pass) = decoded.split_once(':').ok_or("auth entry is not base64(user:password)")?;
    Ok(Some((user.to_owned(), pass.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn capped_writer_refuses_bytes_past_the_declared_size() {
        let mut out = CappedWriter { inner: Vec::new(), remaining: 5 };
        out.write_all(b"abc").await.unwrap();
        out.write_all(b"de").await.unwrap();
        let err = out.write_all(b"f").await.unwrap_err();
        assert!(err.to_string().contains("more bytes than the blob's descriptor declares"), "{err}");
        assert_eq!(out.inner, b"abcde");
    }

    #[test]
    fn reads_docker_config_auths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        std::fs::write(
            &path,
            format!(r#"{{"auths":{{"reg.example:5000":{{"auth":"{auth}"}},"https://index.docker.io/v1/":{{"username":"bob","password":"pw"}}}}}}"#),
        )
        .unwrap();
        assert_eq!(
            read_docker_credentials(&path, "reg.example:5000").unwrap(),
            Some(("alice".into(), "s3cret".into()))
        );
        assert_eq!(read_docker_credentials(&path, "docker.io").unwrap(), Some(("bob".into(), "pw".into())));
        assert_eq!(read_docker_credentials(&path, "other.example").unwrap(), None);
    }

    #[tokio::test]
    async fn a_registry_that_accepts_and_never_answers_fails_the_pull_naming_it_and_the_timeout() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        // Accepts connections and holds them open without a byte, until the test ends.
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((stream, _)) = silent.accept().await {
                open.push(stream);
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let store =
            ImageStore::open(dir.path(), wharf_store::Store::open(&dir.path().join("state.db")).unwrap()).unwrap();
        let timeouts = PullTimeouts { connect: Duration::from_secs(5), read: Duration::from_millis(300) };
        let remote = RemoteRegistry::with_timeouts(None, timeouts);
        let reference: ImageReference = format!("{addr}/team/app:v1").parse().unwrap();
        let pull = tokio::time::timeout(Duration::from_secs(30), remote.pull(&store, &reference));
        let error = pull.await.expect("the pull gives up by itself").unwrap_err().to_string();
        held.abort();
        assert!(error.contains(&format!("registry {addr} did not answer in time")), "{error}");
        assert!(error.contains("read timeout 300ms"), "{error}");
    }

    #[test]
    fn names_local_copies_validly() {
        let r: ImageReference = "127.0.0.1:5001/team/app:v1".parse().unwrap();
        let repo = RemoteRegistry::local_repository(&r);
        assert_eq!(repo, "127.0.0.1-5001/team/app");
        assert_eq!(crate::reference::validate_repository(&repo), Ok(()));
    }
}
