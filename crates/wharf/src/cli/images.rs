//! `wharf images list|import|pull|delete|gc`.
//!
//! `import` reads an OCI layout directory or a docker-archive tarball and pushes it to the
//! server's registry over the distribution API, the same way skopeo or docker would, so it
//! works against a remote server too.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use wharf_image::Digest;
use wharf_image::archive::ImageArchive;

use super::{Client, ConnectionArgs, check};

#[derive(Debug, clap::Subcommand)]
pub enum ImagesCommand {
    /// List the images in Wharf's registry.
    List {
        /// Output format: table (default) or json.
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Import an OCI image layout directory or a docker-archive tarball into Wharf's registry.
    Import {
        /// The OCI layout directory or `docker save` tarball.
        path: PathBuf,
        /// The name to give the image, NAME:TAG (e.g. hello:v1).
        #[arg(long)]
        tag: String,
    },
    /// Pull an image from a remote registry into Wharf's store.
    Pull {
        /// e.g. registry.example.com/team/app:v1
        image: String,
    },
    /// Delete an image: NAME:TAG removes the tag, NAME@DIGEST the manifest and its tags.
    /// The server then collects what no image needs any more.
    Delete { reference: String },
    /// Remove blobs and layer snapshots no image, revision or job needs, and expire abandoned
    /// uploads. Blobs younger than the server's --image-gc-grace are kept.
    Gc {
        /// Output format: text (default) or json.
        #[arg(long, default_value = "text")]
        format: String,
    },
}

pub async fn run(args: &ConnectionArgs, command: ImagesCommand) -> anyhow::Result<()> {
    let client = Client::connect(args)?;
    match command {
        ImagesCommand::List { format } => list(&client, &format).await,
        ImagesCommand::Import { path, tag } => import(&client, &path, &tag).await,
        ImagesCommand::Pull { image } => {
            let response = client
                .api_request(reqwest::Method::POST, "/wharf/v1/images:pull")
                .json(&serde_json::json!({ "image": image }))
                .send()
                .await?;
            let body: serde_json::Value = check(response).await?.json().await?;
            println!("Pulled {image} ({})", body["digest"].as_str().unwrap_or("?"));
            Ok(())
        }
        ImagesCommand::Delete { reference } => {
            let response = client
                .api_request(reqwest::Method::DELETE, "/wharf/v1/images")
                .query(&[("reference", &reference)])
                .send()
                .await?;
            check(response).await?;
            println!("Deleted {reference}");
            Ok(())
        }
        ImagesCommand::Gc { format } => {
            if format != "text" && format != "json" {
                bail!("unknown --format {format:?}; use text or json");
            }
            let response = client.api_request(reqwest::Method::POST, "/wharf/v1/images:gc").send().await?;
            let body: serde_json::Value = check(response).await?.json().await?;
            if format == "json" {
                println!("{}", serde_json::to_string_pretty(&body)?);
            } else {
                let n = |key: &str| body[key].as_u64().unwrap_or(0);
                println!(
                    "Removed {} blobs ({}) and {} snapshots; expired {} uploads",
                    n("blobsRemoved"),
                    human_size(n("bytesFreed")),
                    n("snapshotsRemoved"),
                    n("uploadsExpired")
                );
            }
            Ok(())
        }
    }
}

async fn list(client: &Client, format: &str) -> anyhow::Result<()> {
    let response = client.api_request(reqwest::Method::GET, "/wharf/v1/images").send().await?;
    let body: serde_json::Value = check(response).await?.json().await?;
    match format {
        "json" => println!("{}", serde_json::to_string_pretty(&body["images"])?),
        "table" => {
            println!("{:<40} {:<16} {:<20} {:>10}", "REPOSITORY", "TAG", "DIGEST", "SIZE");
            for image in body["images"].as_array().into_iter().flatten() {
                let digest = image["digest"].as_str().unwrap_or("");
                let short = digest.get(..19).unwrap_or(digest);
                println!(
                    "{:<40} {:<16} {:<20} {:>10}",
                    format!("{}/{}", client.registry, image["repository"].as_str().unwrap_or("")),
                    image["tag"].as_str().unwrap_or("<none>"),
                    short,
                    human_size(image["size"].as_u64().unwrap_or(0)),
                );
            }
        }
        other => bail!("unknown --format {other:?}; use table or json"),
    }
    Ok(())
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// Splits `[registry/]name:tag` into the repository and tag, checking both.
fn parse_target(target: &str) -> anyhow::Result<(String, String)> {
    let slash = target.rfind('/').map_or(0, |i| i + 1);
    let Some(colon) = target[slash..].rfind(':') else {
        bail!("--tag {target:?} needs the form NAME:TAG, e.g. hello:v1");
    };
    let (name, tag) = (&target[..slash + colon], &target[slash + colon + 1..]);
    let name = match name.split_once('/') {
        Some((first, rest)) if first.contains(':') || first.contains('.') || first == "localhost" => rest,
        _ => name,
    };
    wharf_image::reference::validate_repository(name)?;
    wharf_image::reference::validate_tag(tag)?;
    Ok((name.to_owned(), tag.to_owned()))
}

async fn import(client: &Client, path: &std::path::Path, target: &str) -> anyhow::Result<()> {
    let (name, tag) = parse_target(target)?;
    let archive = {
        let path = path.to_owned();
        let tag = tag.clone();
        tokio::task::spawn_blocking(move || ImageArchive::open(&path, Some(&tag))).await??
    };
    for (digest, file) in &archive.blobs {
        push_blob(client, &name, digest, file).await?;
    }
    let (count, mut top) = (archive.manifests.len(), None);
    for (i, (digest, media_type, bytes)) in archive.manifests.iter().enumerate() {
        let reference = if i + 1 == count { tag.clone() } else { digest.to_string() };
        let response = client
            .http
            .put(client.registry_url(&format!("/v2/{name}/manifests/{reference}")))
            .basic_auth("wharf", Some(client.token()))
            .header(reqwest::header::CONTENT_TYPE, media_type)
            .body(bytes.clone())
            .send()
            .await?;
        check(response).await.with_context(|| format!("pushing manifest {digest}"))?;
        top = Some(digest.clone());
    }
    let digest = top.context("the archive holds no manifest")?;
    println!("Imported {}/{name}:{tag} ({digest})", client.registry);
    Ok(())
}

async fn push_blob(client: &Client, name: &str, digest: &Digest, file: &std::path::Path) -> anyhow::Result<()> {
    let blob_url = client.registry_url(&format!("/v2/{name}/blobs/{digest}"));
    let head = client.http.head(&blob_url).basic_auth("wharf", Some(client.token())).send().await?;
    if head.status().is_success() {
        return Ok(());
    }
    let response = client
        .http
        .post(client.registry_url(&format!("/v2/{name}/blobs/uploads/")))
        .basic_auth("wharf", Some(client.token()))
        .send()
        .await?;
    let response = check(response).await.with_context(|| format!("starting upload of {digest}"))?;
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .context("registry did not say where to upload")?;
    let mut url = if location.starts_with("http") { location.to_owned() } else { client.registry_url(location) };
    url.push(if url.contains('?') { '&' } else { '?' });
    url.push_str(&format!("digest={digest}"));
    let body = tokio::fs::File::open(file).await.with_context(|| format!("cannot open {}", file.display()))?;
    let len = body.metadata().await?.len();
    let response = client
        .http
        .put(url)
        .basic_auth("wharf", Some(client.token()))
        .header(reqwest::header::CONTENT_LENGTH, len)
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        // 1 MiB chunks: the 4 KiB default costs seconds per 100 MB layer in debug builds.
        .body(reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(body, 1 << 20)))
        .send()
        .await?;
    check(response).await.with_context(|| format!("uploading {digest}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_import_targets() {
        assert_eq!(parse_target("hello:v1").unwrap(), ("hello".into(), "v1".into()));
        assert_eq!(parse_target("127.0.0.1:5000/a/b:latest").unwrap(), ("a/b".into(), "latest".into()));
        parse_target("hello").unwrap_err();
        parse_target("Hello:v1").unwrap_err();
        parse_target("hello:-x").unwrap_err();
    }
}
