//! Builds as resources: one JSON record and one log file per build under
//! `<data-dir>/build/builds/`, written whole (a temporary file renamed over the old one), so a
//! crash never leaves half a record. Kept as files rather than SQLite tables: a build's log is
//! a file anyway, records are read one at a time or listed newest first, and the build crate
//! then needs nothing of the state database.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A build's state, as Cloud Build names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BuildStatus {
    Queued,
    Working,
    Success,
    Failure,
    Timeout,
    InternalError,
    Cancelled,
}

impl BuildStatus {
    pub fn is_done(self) -> bool {
        !matches!(self, BuildStatus::Queued | BuildStatus::Working)
    }
}

/// One build: what was asked, where it stands, and what it made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Build {
    /// `projects/{p}/locations/{l}/builds/{id}`.
    pub name: String,
    pub id: String,
    pub status: BuildStatus,
    /// The image as asked, e.g. `127.0.0.1:5000/p/cloud-run-source-deploy/svc:latest`.
    pub image_uri: String,
    /// The pushed image pinned by digest, once the build succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    /// The Dockerfile used (in the source), or the language whose generated Dockerfile was.
    pub dockerfile: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detected_language: Option<String>,
    pub create_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_time: Option<String>,
    /// Seconds from start to finish, e.g. `"12.345s"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// Steps buildah took from its layer cache.
    #[serde(default)]
    pub cached_steps: u32,
    /// Where the log is on the server, and the API path that reads it.
    pub log_file: String,
    pub log_url: String,
    /// Why it failed, with the log's last lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_detail: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot write build record {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read build records in {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("build record {path} is not valid")]
    Invalid {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// The directory of build records and logs.
#[derive(Debug, Clone)]
pub struct Records {
    dir: PathBuf,
}

impl Records {
    pub fn open(dir: &Path) -> Result<Records, RecordError> {
        std::fs::create_dir_all(dir).map_err(|source| RecordError::Write { path: dir.to_owned(), source })?;
        Ok(Records { dir: dir.to_owned() })
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.log"))
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes `build` whole: a reader sees the old record or the new one.
    pub fn save(&self, build: &Build) -> Result<(), RecordError> {
        let path = self.record_path(&build.id);
        let staged = path.with_extension("json.tmp");
        let write = |p: &Path, e| RecordError::Write { path: p.to_owned(), source: e };
        let bytes = serde_json::to_vec_pretty(build).unwrap_or_default();
        std::fs::write(&staged, bytes).map_err(|e| write(&staged, e))?;
        std::fs::rename(&staged, &path).map_err(|e| write(&path, e))
    }

    /// The build `id`, if there is one. `id` must already be checked as a build id.
    pub fn get(&self, id: &str) -> Result<Option<Build>, RecordError> {
        let path = self.record_path(id);
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map(Some).map_err(|source| RecordError::Invalid { path, source })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(RecordError::Read { path, source }),
        }
    }

    /// Every build, newest first.
    pub fn list(&self) -> Result<Vec<Build>, RecordError> {
        let read_err = |source| RecordError::Read { path: self.dir.clone(), source };
        let mut builds = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(read_err)? {
            let name = entry.map_err(read_err)?.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".json")
                && let Some(build) = self.get(id)?
            {
                builds.push(build);
            }
        }
        // By time, not by text: RFC 3339 strings with fractions of varying length do not sort.
        let created = |b: &Build| b.create_time.parse::<jiff::Timestamp>().ok();
        builds.sort_by(|a, b| created(b).cmp(&created(a)).then_with(|| b.id.cmp(&a.id)));
        Ok(builds)
    }
}

/// Whether `id` has the form of a build id (so it is safe in a file name).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(id: &str, created: &str) -> Build {
        Build {
            name: format!("projects/p/locations/l/builds/{id}"),
            id: id.into(),
            status: BuildStatus::Success,
            image_uri: "a".into(),
            image: None,
            image_digest: None,
            dockerfile: "Dockerfile".into(),
            detected_language: None,
            create_time: created.into(),
            start_time: None,
            finish_time: None,
            duration: None,
            cached_steps: 0,
            log_file: String::new(),
            log_url: String::new(),
            failure_detail: None,
        }
    }

    #[test]
    fn records_round_trip_and_list_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::open(dir.path()).unwrap();
        // Text order would put .38Z after .383Z; time order is the other way round.
        records.save(&build("a", "2026-11-24T01:15:47.38Z")).unwrap();
        records.save(&build("b", "2026-11-24T01:15:47.383Z")).unwrap();
        records.save(&build("c", "2026-11-24T01:15:46Z")).unwrap();
        let ids: Vec<String> = records.list().unwrap().into_iter().map(|b| b.id).collect();
        assert_eq!(ids, ["b", "a", "c"]);
        assert_eq!(records.get("a").unwrap(), Some(build("a", "2026-11-24T01:15:47.38Z")));
        assert_eq!(records.get("zz").unwrap(), None);
        assert!(!valid_id("../x") && !valid_id("") && valid_id("8bedff51-1592"));
    }
}
