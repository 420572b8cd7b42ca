//! The registry's request handlers: one per endpoint and method, each a thin layer that turns
//! HTTP into calls on the image store and back.

use std::collections::HashMap;
use std::io::SeekFrom;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};
use wharf_iam::roles::perm;
use wharf_image::{Digest, ImageError, ImageStore};

use crate::RegistryState;
use crate::error::RegistryError;
use crate::route::Route;

/// The largest manifest accepted, as in the spec's recommendation.
const MAX_MANIFEST_BYTES: usize = 4 << 20;
const _: () = assert!(MAX_MANIFEST_BYTES as u64 == wharf_image::manifest::MAX_MANIFEST_BYTES);
/// The page size when a client asks for none.
const DEFAULT_PAGE: usize = 10_000;

type Result<T> = std::result::Result<T, RegistryError>;

pub(crate) async fn dispatch(State(state): State<Arc<RegistryState>>, request: Request) -> Response {
    match handle(&state, request).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn handle(state: &RegistryState, request: Request) -> Result<Response> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let query = parse_query(parts.uri.query());
    let Some(route) = Route::parse(&path) else {
        return Err(RegistryError::NotFound(format!("{path} is not a registry endpoint")));
    };
    let authorization = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let caller = state.iam.authenticate(authorization)?;
    let permission = match (&route, &parts.method) {
        (Route::Base, _) => None,
        (_, &Method::GET | &Method::HEAD) => Some(perm::IMAGES_DOWNLOAD),
        (_, &Method::DELETE) if !matches!(route, Route::Upload { .. }) => Some(perm::IMAGES_DELETE),
        _ => Some(perm::IMAGES_UPLOAD),
    };
    if let Some(permission) = permission {
        let project = wharf_iam::Resource::project(crate::SERVER_WIDE_PROJECT);
        state.iam.authorize(Some(&caller), permission, &project).map_err(|e| match e {
            wharf_iam::AuthorizeError::Denied(denied) => RegistryError::Denied(denied),
            wharf_iam::AuthorizeError::Policy(e) => RegistryError::Policy(e),
        })?;
    }
    let images = &state.images;
    let method = parts.method.clone();
    let unsupported = || RegistryError::Unsupported { method: method.to_string(), path: path.clone() };
    let mut response = match (route, &parts.method) {
        (Route::Base, &Method::GET | &Method::HEAD) => axum::Json(serde_json::json!({})).into_response(),
        (Route::Catalog, &Method::GET) => catalog(images, &query)?,
        (Route::Tags { name }, &Method::GET) => tags(images, &name, &query)?,
        (Route::Blob { name, digest }, &Method::GET | &Method::HEAD) => {
            get_blob(images, &name, &digest, &parts.headers, parts.method == Method::HEAD).await?
        }
        (Route::Blob { name, digest }, &Method::DELETE) => {
            images.unlink_blob(&name, &parse_digest(&digest)?)?;
            StatusCode::ACCEPTED.into_response()
        }
        (Route::Upload { name, id: None }, &Method::POST) => {
            start_upload(images, &name, &query, &parts.headers, body).await?
        }
        (Route::Upload { name, id: Some(id) }, &Method::GET) => {
            let offset = images.upload_offset(&name, &id)?;
            upload_status(StatusCode::NO_CONTENT, &name, &id, offset)
        }
        (Route::Upload { name, id: Some(id) }, &Method::PATCH) => {
            let range = content_range(&parts.headers)?;
            let offset = append_chunk(images, &name, &id, range, &parts.headers, body).await?;
            upload_status(StatusCode::ACCEPTED, &name, &id, offset)
        }
        (Route::Upload { name, id: Some(id) }, &Method::PUT) => {
            let digest = query.get("digest").ok_or_else(|| {
                RegistryError::BadRequest("DIGEST_INVALID", "finishing an upload needs ?digest=".into())
            })?;
            let digest = parse_digest(digest)?;
            let range = content_range(&parts.headers)?;
            append_chunk(images, &name, &id, range, &parts.headers, body).await?;
            finish_upload(images, &name, &id, &digest).await?
        }
        (Route::Upload { name, id: Some(id) }, &Method::DELETE) => {
            images.cancel_upload(&name, &id)?;
            StatusCode::NO_CONTENT.into_response()
        }
        (Route::Manifest { name, reference }, &Method::GET | &Method::HEAD) => {
            get_manifest(images, &name, &reference, parts.method == Method::HEAD)?
        }
        (Route::Manifest { name, reference }, &Method::PUT) => {
            let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
            put_manifest(images, &name, &reference, content_type, body).await?
        }
        (Route::Manifest { name, reference }, &Method::DELETE) => {
            images.delete_manifest(&name, &reference)?;
            StatusCode::ACCEPTED.into_response()
        }
        _ => return Err(unsupported()),
    };
    response.headers_mut().insert("Docker-Distribution-API-Version", HeaderValue::from_static("registry/2.0"));
    Ok(response)
}

fn parse_query(query: Option<&str>) -> HashMap<String, String> {
    let Some(query) = query else { return HashMap::new() };
    query
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

/// Decodes one `application/x-www-form-urlencoded` key or value: `+` is a space, `%XX` a
/// byte. `None` when the bytes are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let s = s.replace('+', " ");
    percent_encoding::percent_decode_str(&s).decode_utf8().ok().map(|s| s.into_owned())
}

fn parse_digest(s: &str) -> Result<Digest> {
    s.parse().map_err(|e: wharf_image::digest::DigestParseError| ImageError::DigestInvalid(e.to_string()).into())
}

fn page_size(query: &HashMap<String, String>) -> Result<usize> {
    match query.get("n") {
        None => Ok(DEFAULT_PAGE),
        Some(n) => n
            .parse()
            .map_err(|_| RegistryError::BadRequest("PAGINATION_NUMBER_INVALID", format!("n={n} is not a number"))),
    }
}

/// Adds the spec's `Link` header when a page came back full.
fn paginated(mut response: Response, base: &str, n: usize, items: &[String], requested: bool) -> Response {
    if requested
        && items.len() == n
        && let Some(last) = items.last()
        && let Ok(v) = HeaderValue::from_str(&format!("<{base}?n={n}&last={last}>; rel=\"next\""))
    {
        response.headers_mut().insert(header::LINK, v);
    }
    response
}

fn catalog(images: &ImageStore, query: &HashMap<String, String>) -> Result<Response> {
    let n = page_size(query)?;
    let repositories = images.catalog(n, query.get("last").map(String::as_str))?;
    let response = axum::Json(serde_json::json!({ "repositories": repositories })).into_response();
    Ok(paginated(response, "/v2/_catalog", n, &repositories, query.contains_key("n")))
}

fn tags(images: &ImageStore, name: &str, query: &HashMap<String, String>) -> Result<Response> {
    let n = page_size(query)?;
    let tags = images.tags(name, n, query.get("last").map(String::as_str))?;
    let response = axum::Json(serde_json::json!({ "name": name, "tags": tags })).into_response();
    Ok(paginated(response, &format!("/v2/{name}/tags/list"), n, &tags, query.contains_key("n")))
}

/// Parses a single `Range: bytes=a-b` (or `a-`, or `-suffix`) against a blob of `size` bytes.
fn byte_range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>> {
    let Some(value) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else { return Ok(None) };
    let invalid = || RegistryError::RangeInvalid(format!("cannot satisfy Range {value:?} of a {size}-byte blob"));
    let spec = value.strip_prefix("bytes=").ok_or_else(invalid)?;
    let (start, end) = spec.split_once('-').ok_or_else(invalid)?;
    let (start, end) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| invalid())?;
            (size.saturating_sub(n), size.checked_sub(1).ok_or_else(invalid)?)
        }
        (s, "") => (s.parse().map_err(|_| invalid())?, size.checked_sub(1).ok_or_else(invalid)?),
        (s, e) => {
            (s.parse().map_err(|_| invalid())?, e.parse::<u64>().map_err(|_| invalid())?.min(size.saturating_sub(1)))
        }
    };
    if start > end || start >= size {
        return Err(invalid());
    }
    Ok(Some((start, end)))
}

async fn get_blob(images: &ImageStore, name: &str, digest: &str, headers: &HeaderMap, head: bool) -> Result<Response> {
    let digest = parse_digest(digest)?;
    let size = images
        .blob_in_repo(name, &digest)?
        .ok_or_else(|| ImageError::BlobUnknown { repo: name.to_owned(), digest: digest.clone() })?;
    // A client that finds a blob present will name it in a manifest soon: restart its
    // garbage-collection grace period.
    images.blobs().touch(&digest);
    let range = byte_range(headers, size)?;
    let (status, start, len) = match range {
        Some((start, end)) => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        None => (StatusCode::OK, 0, size),
    };
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .header(header::ACCEPT_RANGES, "bytes")
        .header("Docker-Content-Digest", digest.as_str());
    if range.is_some() {
        builder = builder.header(header::CONTENT_RANGE, format!("bytes {start}-{}/{size}", start + len - 1));
    }
    let body = if head {
        Body::empty()
    } else {
        let path = images.blobs().path(&digest);
        let mut file = tokio::fs::File::open(&path).await.map_err(|e| ImageError::Io {
            op: "open blob",
            path: path.clone(),
            source: e,
        })?;
        file.seek(SeekFrom::Start(start)).await.map_err(|e| ImageError::Io {
            op: "seek blob",
            path: path.clone(),
            source: e,
        })?;
        Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file.take(len), 256 << 10))
    };
    builder.body(body).map_err(|e| RegistryError::BadRequest("UNKNOWN", e.to_string()))
}

fn upload_location(name: &str, id: &str) -> String {
    format!("/v2/{name}/blobs/uploads/{id}")
}

fn upload_status(status: StatusCode, name: &str, id: &str, offset: u64) -> Response {
    let range = if offset == 0 { "0-0".to_owned() } else { format!("0-{}", offset - 1) };
    Response::builder()
        .status(status)
        .header(header::LOCATION, upload_location(name, id))
        .header(header::RANGE, range)
        .header(header::CONTENT_LENGTH, 0)
        .header("Docker-Upload-UUID", id)
        .body(Body::empty())
        .unwrap_or_else(|_| status.into_response())
}

fn blob_created(name: &str, digest: &Digest) -> Response {
    Response::builder()
        .status(StatusCode::CREATED)
        .header(header::LOCATION, format!("/v2/{name}/blobs/{digest}"))
        .header(header::CONTENT_LENGTH, 0)
        .header("Docker-Content-Digest", digest.as_str())
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::CREATED.into_response())
}

async fn start_upload(
    images: &ImageStore,
    name: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response> {
    if let Some(mount) = query.get("mount") {
        let digest = parse_digest(mount)?;
        if let Some(from) = query.get("from")
            && images.mount_blob(from, name, &digest)?
        {
            return Ok(blob_created(name, &digest));
        }
        // Not mountable: fall through to a regular upload session, as the spec says.
    }
    let id = images.start_upload(name)?;
    if let Some(digest) = query.get("digest") {
        // Monolithic upload in a single POST.
        let digest = match parse_digest(digest) {
            Ok(d) => d,
            Err(e) => {
                let _ = images.cancel_upload(name, &id);
                return Err(e);
            }
        };
        if let Err(e) = append_chunk(images, name, &id, None, headers, body).await {
            let _ = images.cancel_upload(name, &id);
            return Err(e);
        }
        return finish_upload(images, name, &id, &digest).await;
    }
    Ok(upload_status(StatusCode::ACCEPTED, name, &id, 0))
}

/// `Content-Range: <start>-<end>` of a chunk, if the client sent one.
fn content_range(headers: &HeaderMap) -> Result<Option<(u64, u64)>> {
    let Some(value) = headers.get(header::CONTENT_RANGE).and_then(|v| v.to_str().ok()) else { return Ok(None) };
    let invalid = || RegistryError::RangeInvalid(format!("Content-Range {value:?} is not <start>-<end>"));
    let spec = value.trim().trim_start_matches("bytes ").trim_start_matches("bytes=");
    let spec = spec.split('/').next().unwrap_or(spec);
    let (start, end) = spec.split_once('-').ok_or_else(invalid)?;
    let start: u64 = start.trim().parse().map_err(|_| invalid())?;
    let end: u64 = end.trim().parse().map_err(|_| invalid())?;
    if end < start {
        return Err(invalid());
    }
    Ok(Some((start, end)))
}

/// Streams `body` onto the end of upload `id`. If the body fails midway or does not match its
/// `Content-Range`, the upload is cut back to where it was, so a bad chunk leaves no trace.
///
/// An upload may not grow past the store's blob size limit: a `Content-Length` (or
/// `Content-Range`) announcing more is refused before the body is read, and a body that
/// goes on past it is cut off there, with 413 either way. The refused rest of the body is read
/// and thrown away (within [`discard_rest`]'s bounds) so that a client still writing it reads
/// the 413 instead of a broken pipe.
async fn append_chunk(
    images: &ImageStore,
    name: &str,
    id: &str,
    range: Option<(u64, u64)>,
    headers: &HeaderMap,
    body: Body,
) -> Result<u64> {
    let limit = images.limits().max_blob_bytes;
    let (file, offset) = images.open_upload_for_append(name, id, range.map(|r| r.0))?;
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .or(range.map(|(start, end)| end - start + 1));
    if let Some(announced) = announced
        && offset.saturating_add(announced) > limit
    {
        discard_rest(&mut body.into_data_stream()).await;
        return Err(ImageError::BlobTooLarge { size: offset, limit }.into());
    }
    let mut file = tokio::fs::File::from_std(file);
    let mut written: u64 = 0;
    let mut stream = body.into_data_stream();
    let mut failure = None;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => {
                if offset + written + bytes.len() as u64 > limit {
                    failure = Some(RegistryError::Image(ImageError::BlobTooLarge { size: offset + written, limit }));
                    discard_rest(&mut stream).await;
                    break;
                }
                if let Err(e) = file.write_all(&bytes).await {
                    failure = Some(RegistryError::Image(ImageError::Task(format!("writing upload {id}: {e}"))));
                    break;
                }
                written += bytes.len() as u64;
            }
            Err(e) => {
                failure = Some(RegistryError::BadRequest("BLOB_UPLOAD_INVALID", format!("request body failed: {e}")));
                break;
            }
        }
    }
    if failure.is_none()
        && let Some((start, end)) = range
        && end - start + 1 != written
    {
        failure = Some(RegistryError::RangeInvalid(format!(
            "Content-Range {start}-{end} announces {} bytes but the body had {written}",
            end - start + 1
        )));
    }
    if let Some(e) = failure {
        let _ = file.set_len(offset).await;
        return Err(e);
    }
    file.flush().await.map_err(|e| ImageError::Task(format!("flushing upload {id}: {e}")))?;
    Ok(offset + written)
}

/// How much of a refused body is read and thrown away before answering, and for how long: enough
/// for a client that sent the rest of a chunk without waiting to see the answer, not enough for a
/// sender to keep the connection busy. Past either bound the answer goes out and the connection
/// closes under the client.
const DISCARD_BYTES: u64 = 16 << 20;
const DISCARD_TIME: std::time::Duration = std::time::Duration::from_secs(2);

async fn discard_rest<S, E>(stream: &mut S)
where
    S: futures::Stream<Item = std::result::Result<axum::body::Bytes, E>> + Unpin,
{
    let mut discarded: u64 = 0;
    let drain = async {
        while let Some(Ok(bytes)) = stream.next().await {
            discarded += bytes.len() as u64;
            if discarded > DISCARD_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DISCARD_TIME, drain).await;
}

async fn finish_upload(images: &ImageStore, name: &str, id: &str, digest: &Digest) -> Result<Response> {
    let (store, name_owned, id, digest_owned) = (images.clone(), name.to_owned(), id.to_owned(), digest.clone());
    tokio::task::spawn_blocking(move || store.finish_upload(&name_owned, &id, &digest_owned))
        .await
        .map_err(|e| ImageError::Task(e.to_string()))??;
    Ok(blob_created(name, digest))
}

fn get_manifest(images: &ImageStore, name: &str, reference: &str, head: bool) -> Result<Response> {
    let (digest, media_type, size, body) = if head {
        let (digest, media_type, size) = images.manifest_info(name, reference)?;
        (digest, media_type, size, Body::empty())
    } else {
        let stored = images.get_manifest(name, reference)?;
        let size = stored.bytes.len() as u64;
        (stored.digest, stored.media_type, size, Body::from(stored.bytes))
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, media_type)
        .header(header::CONTENT_LENGTH, size)
        .header("Docker-Content-Digest", digest.as_str())
        .body(body)
        .map_err(|e| RegistryError::BadRequest("UNKNOWN", e.to_string()))
}

async fn put_manifest(
    images: &ImageStore,
    name: &str,
    reference: &str,
    content_type: Option<&str>,
    body: Body,
) -> Result<Response> {
    let bytes = axum::body::to_bytes(body, MAX_MANIFEST_BYTES).await.map_err(|_| {
        RegistryError::BadRequest("MANIFEST_INVALID", format!("manifest is larger than {MAX_MANIFEST_BYTES} bytes"))
    })?;
    let digest = images.put_manifest(name, reference, content_type, &bytes)?;
    Response::builder()
        .status(StatusCode::CREATED)
        .header(header::LOCATION, format!("/v2/{name}/manifests/{digest}"))
        .header(header::CONTENT_LENGTH, 0)
        .header("Docker-Content-Digest", digest.as_str())
        .body(Body::empty())
        .map_err(|e| RegistryError::BadRequest("UNKNOWN", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        let q = parse_query(Some("mount=sha256%3Aabc&from=team%2Fapp&n=a+b&bad=%FF&empty"));
        assert_eq!(q.get("mount").map(String::as_str), Some("sha256:abc"));
        assert_eq!(q.get("from").map(String::as_str), Some("team/app"));
        assert_eq!(q.get("n").map(String::as_str), Some("a b"));
        assert_eq!(q.get("bad"), None, "invalid UTF-8 is refused");
        assert_eq!(q.get("empty").map(String::as_str), Some(""));
        assert_eq!(parse_query(None).len(), 0);
    }
}
