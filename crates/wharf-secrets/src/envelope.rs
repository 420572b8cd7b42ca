//! Envelope encryption of secret payloads, and the key-encryption key (KEK) file.
//!
//! Every payload gets its own random 256-bit data key; the payload is sealed with AES-256-GCM
//! under it, and the data key is sealed (wrapped) under the KEK. The database holds only the
//! ciphertext, the wrapped data key and the KEK's id; the KEK lives in a file outside the
//! database (`<data-dir>/secrets.kek` by default, mode 0600, created on first start; or a file
//! an operator's KMS tooling provides, named by `--secrets-key-file`). Both seals bind the
//! version's resource name as associated data, so a ciphertext moved to another row does not
//! open.
//!
//! Rotation ([`KeyFile::stage_rotation`]) writes the new KEK next to the current one as
//! `<key-file>.new` before the database is re-wrapped in one transaction, and renames it over
//! the current file after the commit; a crash at any point leaves the rows wrapped by exactly
//! one of the two files, and [`KeyFile::open`] finishes or abandons the rotation.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

const NONCE_LEN: usize = 12;

/// A failure reading, creating or using the key-encryption key, or opening a sealed value.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot {op} the secrets key file {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the secrets key file {path} does not exist; create one with `head -c 32 /dev/urandom | base64 > {path}` (mode 0600), or omit --secrets-key-file to use <data-dir>/secrets.kek"
    )]
    Missing { path: PathBuf },
    #[error("the secrets key file {path} must hold 32 bytes in base64 (44 characters): {why}")]
    Format { path: PathBuf, why: String },
    #[error("the secrets key file {path} is readable by others (mode {mode:o}); run `chmod 600 {path}`")]
    Permissions { path: PathBuf, mode: u32 },
    #[error(
        "a stored secret was wrapped by key {kek_id}, which is neither the key in {path} nor a staged rotation; start wharf with the key file that encrypted this database"
    )]
    UnknownKey { kek_id: String, path: PathBuf },
    #[error("a sealed value of {name} did not open: the stored data or the key is not the one it was sealed with")]
    Open { name: String },
    #[error("sealing a value of {name} failed")]
    Seal { name: String },
}

/// A 256-bit key-encryption key and its id (the first 8 bytes of its SHA-256, in hex), which
/// rows record so the key that wrapped them is known.
pub struct Kek {
    key: Zeroizing<[u8; 32]>,
    id: String,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kek").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Kek {
    fn from_bytes(key: [u8; 32]) -> Kek {
        let id = hex::encode(&Sha256::digest(key)[..8]);
        Kek { key: Zeroizing::new(key), id }
    }

    fn generate() -> Kek {
        let key = Aes256Gcm::generate_key(OsRng);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(&key);
        Kek::from_bytes(bytes)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(self.key.as_slice()))
    }

    /// Wraps a fresh data key for `name`.
    fn wrap(&self, data_key: &[u8; 32], name: &str) -> Result<Vec<u8>, KeyError> {
        seal(&self.cipher(), data_key, &wrap_aad(name), name)
    }

    fn unwrap_key(&self, wrapped: &[u8], name: &str) -> Result<Zeroizing<[u8; 32]>, KeyError> {
        let plain = open(&self.cipher(), wrapped, &wrap_aad(name), name)?;
        let mut key = Zeroizing::new([0u8; 32]);
        if plain.len() != 32 {
            return Err(KeyError::Open { name: name.to_owned() });
        }
        key.copy_from_slice(&plain);
        Ok(key)
    }
}

fn wrap_aad(name: &str) -> Vec<u8> {
    format!("wharf-secrets-data-key:{name}").into_bytes()
}

fn seal(cipher: &Aes256Gcm, plain: &[u8], aad: &[u8], name: &str) -> Result<Vec<u8>, KeyError> {
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let sealed =
        cipher.encrypt(&nonce, Payload { msg: plain, aad }).map_err(|_| KeyError::Seal { name: name.to_owned() })?;
    let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

fn open(cipher: &Aes256Gcm, sealed: &[u8], aad: &[u8], name: &str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    if sealed.len() < NONCE_LEN {
        return Err(KeyError::Open { name: name.to_owned() });
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: body, aad })
        .map(Zeroizing::new)
        .map_err(|_| KeyError::Open { name: name.to_owned() })
}

/// A payload sealed for storage: its ciphertext (nonce first), its data key wrapped by the
/// KEK, and that KEK's id.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub ciphertext: Vec<u8>,
    pub wrapped_key: Vec<u8>,
    pub kek_id: String,
}

/// Seals `payload` for the version called `name` under a fresh data key wrapped by `kek`.
pub fn seal_payload(kek: &Kek, payload: &[u8], name: &str) -> Result<Sealed, KeyError> {
    let data_key = Kek::generate();
    let ciphertext = seal(&data_key.cipher(), payload, name.as_bytes(), name)?;
    let wrapped_key = kek.wrap(&data_key.key, name)?;
    Ok(Sealed { ciphertext, wrapped_key, kek_id: kek.id.clone() })
}

/// Opens a payload sealed by [`seal_payload`]; `kek` must be the key `sealed.kek_id` names.
pub fn open_payload(kek: &Kek, sealed: &Sealed, name: &str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let data_key = Kek::from_bytes(*kek.unwrap_key(&sealed.wrapped_key, name)?);
    open(&data_key.cipher(), &sealed.ciphertext, name.as_bytes(), name)
}

/// Re-wraps a data key wrapped by `from` under `to`; the payload's ciphertext is unchanged.
pub fn rewrap(from: &Kek, to: &Kek, wrapped_key: &[u8], name: &str) -> Result<Vec<u8>, KeyError> {
    let data_key = from.unwrap_key(wrapped_key, name)?;
    to.wrap(&data_key, name)
}

/// The key file and the key it holds. A rotation in progress has its new key staged beside it.
#[derive(Debug)]
pub struct KeyFile {
    path: PathBuf,
    pub current: Kek,
    /// The key of a rotation that was staged (and maybe committed) but not finished.
    pub staged: Option<Kek>,
}

impl KeyFile {
    /// Reads the key at `path`, creating it (mode 0600) when `create` is set and it does not
    /// exist. A staged rotation key (`<path>.new`) is read too; the caller decides with
    /// [`KeyFile::finish_rotation`] or [`KeyFile::abandon_rotation`] which one the database uses.
    pub fn open(path: &Path, create: bool) -> Result<KeyFile, KeyError> {
        let current = match read_key(path)? {
            Some(key) => key,
            None if create => {
                let key = Kek::generate();
                write_key(path, &key)?;
                tracing::info!(path = %path.display(), kek_id = %key.id, "created the secrets key-encryption key");
                key
            }
            None => return Err(KeyError::Missing { path: path.to_owned() }),
        };
        let staged = read_key(&staged_path(path))?;
        Ok(KeyFile { path: path.to_owned(), current, staged })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The key with this id, current or staged.
    pub fn key(&self, kek_id: &str) -> Result<&Kek, KeyError> {
        if self.current.id == kek_id {
            return Ok(&self.current);
        }
        match &self.staged {
            Some(staged) if staged.id == kek_id => Ok(staged),
            _ => Err(KeyError::UnknownKey { kek_id: kek_id.to_owned(), path: self.path.clone() }),
        }
    }

    /// Generates a new key and writes it (synced) to `<path>.new`. Nothing uses it until the
    /// database is re-wrapped and [`KeyFile::finish_rotation`] renames it into place.
    pub fn stage_rotation(&mut self) -> Result<&Kek, KeyError> {
        let key = Kek::generate();
        write_key(&staged_path(&self.path), &key)?;
        Ok(self.staged.insert(key))
    }

    /// Makes the staged key the current one (rename over the key file).
    pub fn finish_rotation(&mut self) -> Result<(), KeyError> {
        let Some(staged) = self.staged.take() else { return Ok(()) };
        let from = staged_path(&self.path);
        fs::rename(&from, &self.path).map_err(|source| KeyError::Io {
            op: "replace",
            path: self.path.clone(),
            source,
        })?;
        sync_dir(&self.path);
        tracing::info!(path = %self.path.display(), old = %self.current.id, new = %staged.id, "rotated the secrets key-encryption key");
        self.current = staged;
        Ok(())
    }

    /// Drops a staged key the database never used.
    pub fn abandon_rotation(&mut self) -> Result<(), KeyError> {
        if self.staged.take().is_some() {
            let staged = staged_path(&self.path);
            fs::remove_file(&staged).map_err(|source| KeyError::Io { op: "remove", path: staged, source })?;
        }
        Ok(())
    }
}

fn staged_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".new");
    PathBuf::from(name)
}

fn read_key(path: &Path) -> Result<Option<Kek>, KeyError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => Zeroizing::new(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(KeyError::Io { op: "read", path: path.to_owned(), source }),
    };
    let mode = fs::metadata(path)
        .map_err(|source| KeyError::Io { op: "stat", path: path.to_owned(), source })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions { path: path.to_owned(), mode: mode & 0o777 });
    }
    let bytes = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| KeyError::Format { path: path.to_owned(), why: e.to_string() })?,
    );
    let key: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| KeyError::Format { path: path.to_owned(), why: format!("it decodes to {} bytes", bytes.len()) })?;
    Ok(Some(Kek::from_bytes(key)))
}

/// Writes `key` to `path` (mode 0600) through a temporary file and a rename, synced.
fn write_key(path: &Path, key: &Kek) -> Result<(), KeyError> {
    let io = |op, source| KeyError::Io { op, path: path.to_owned(), source };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let text = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(key.key.as_slice()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io("create", e))?;
    file.write_all(text.as_bytes()).and_then(|()| file.write_all(b"\n")).map_err(|e| io("write", e))?;
    file.sync_all().map_err(|e| io("sync", e))?;
    fs::rename(&tmp, path).map_err(|e| io("write", e))?;
    sync_dir(path);
    Ok(())
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(dir) = fs::File::open(dir)
    {
        let _ = dir.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_are_bound_to_their_name_and_key() {
        let kek = Kek::generate();
        let sealed = seal_payload(&kek, b"hunter2", "projects/p/secrets/s/versions/1").unwrap();
        assert!(!sealed.ciphertext.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(open_payload(&kek, &sealed, "projects/p/secrets/s/versions/1").unwrap().as_slice(), b"hunter2");
        // Moved to another row, or opened with another key: refused.
        assert!(matches!(open_payload(&kek, &sealed, "projects/p/secrets/s/versions/2"), Err(KeyError::Open { .. })));
        let other = Kek::generate();
        assert!(matches!(open_payload(&other, &sealed, "projects/p/secrets/s/versions/1"), Err(KeyError::Open { .. })));
        // Re-wrapped under a new key it opens with that key only, with the same ciphertext.
        let wrapped = rewrap(&kek, &other, &sealed.wrapped_key, "projects/p/secrets/s/versions/1").unwrap();
        let moved = Sealed { wrapped_key: wrapped, kek_id: other.id.clone(), ..sealed.clone() };
        assert_eq!(open_payload(&other, &moved, "projects/p/secrets/s/versions/1").unwrap().as_slice(), b"hunter2");
        assert!(matches!(open_payload(&kek, &moved, "projects/p/secrets/s/versions/1"), Err(KeyError::Open { .. })));
    }

    #[test]
    fn the_key_file_is_created_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.kek");
        assert!(matches!(KeyFile::open(&path, false), Err(KeyError::Missing { .. })));
        let created = KeyFile::open(&path, true).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let again = KeyFile::open(&path, false).unwrap();
        assert_eq!(again.current.id, created.current.id);

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(KeyFile::open(&path, false), Err(KeyError::Permissions { .. })));
        fs::write(&path, "c2hvcnQ=\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = KeyFile::open(&path, false).unwrap_err().to_string();
        assert!(err.contains("decodes to 5 bytes"), "{err}");
    }

    #[test]
    fn a_staged_rotation_is_read_back_until_finished_or_abandoned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.kek");
        let mut keys = KeyFile::open(&path, true).unwrap();
        let old = keys.current.id.clone();
        let new = keys.stage_rotation().unwrap().id.clone();
        let reopened = KeyFile::open(&path, false).unwrap();
        assert_eq!(reopened.staged.as_ref().map(|k| k.id.clone()), Some(new.clone()));
        keys.key(&old).unwrap();
        keys.key(&new).unwrap();
        keys.finish_rotation().unwrap();
        assert_eq!(KeyFile::open(&path, false).unwrap().current.id, new);
        assert!(matches!(keys.key(&old), Err(KeyError::UnknownKey { .. })));

        keys.stage_rotation().unwrap();
        keys.abandon_rotation().unwrap();
        let after = KeyFile::open(&path, false).unwrap();
        assert!(after.staged.is_none());
        assert_eq!(after.current.id, new);
    }
}
