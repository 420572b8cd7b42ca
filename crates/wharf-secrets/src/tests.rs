//! The store against a real SQLite database and key file in a temporary directory.

use std::path::Path;

use super::*;

const SECRET_BYTES: &[u8] = b"s3cr3t-db-password-7f1c2a";

fn open(dir: &Path) -> SecretManager {
    let db = Store::open(&dir.join("state.db")).unwrap();
    SecretManager::open(db, &dir.join(DEFAULT_KEY_FILE), true).unwrap()
}

/// Every file under `dir` (database, WAL, key file), searched for `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() && std::fs::read(&path).unwrap().windows(needle.len()).any(|w| w == needle) {
            found.push(path.display().to_string());
        }
    }
    found
}

#[test]
fn versions_round_trip_encrypted_with_latest_and_states() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = open(dir.path());
    secrets.create_secret("p", "db-password", &SecretInput::default()).unwrap();
    assert!(matches!(
        secrets.create_secret("p", "db-password", &SecretInput::default()),
        Err(SecretsError::AlreadyExists(_))
    ));
    let v1 = secrets.add_version("p", "db-password", SECRET_BYTES, Some(crc32c::crc32c(SECRET_BYTES))).unwrap();
    assert_eq!(v1.name, "projects/p/secrets/db-password/versions/1");
    assert!(v1.client_specified_payload_checksum);
    let v2 = secrets.add_version("p", "db-password", b"second", None).unwrap();
    assert_eq!(v2.name, "projects/p/secrets/db-password/versions/2");

    let latest = secrets.access("p", "db-password", VersionRef::Latest).unwrap();
    assert_eq!((latest.version.as_str(), latest.data.as_slice()), (v2.name.as_str(), &b"second"[..]));
    let first = secrets.access("p", "db-password", VersionRef::Number(1)).unwrap();
    assert_eq!(first.data.as_slice(), SECRET_BYTES);
    assert_eq!(first.crc32c, crc32c::crc32c(SECRET_BYTES));

    // Nothing of the payload in clear in the database, its WAL or the key file.
    assert_eq!(files_containing(dir.path(), SECRET_BYTES), Vec::<String>::new());

    secrets.change_state("p", "db-password", VersionRef::Number(2), VersionAction::Disable, None).unwrap();
    let err = secrets.access("p", "db-password", VersionRef::Latest).unwrap_err();
    assert_eq!(err.to_string(), "Secret Version [projects/p/secrets/db-password/versions/2] is in DISABLED state.");
    assert_eq!(err.code(), Code::FailedPrecondition);
    secrets.change_state("p", "db-password", VersionRef::Number(2), VersionAction::Enable, None).unwrap();
    secrets.access("p", "db-password", VersionRef::Latest).unwrap();

    let stale = secrets.get_version("p", "db-password", VersionRef::Number(1)).unwrap().etag;
    let destroyed =
        secrets.change_state("p", "db-password", VersionRef::Number(1), VersionAction::Destroy, Some(&stale));
    assert_eq!(destroyed.unwrap().state, VersionState::Destroyed);
    let err = secrets.access("p", "db-password", VersionRef::Number(1)).unwrap_err();
    assert_eq!(err.to_string(), "Secret Version [projects/p/secrets/db-password/versions/1] is in DESTROYED state.");
    assert!(matches!(
        secrets.change_state("p", "db-password", VersionRef::Number(1), VersionAction::Enable, None),
        Err(SecretsError::NotAccessible { .. })
    ));
    let versions = secrets.list_versions("p", "db-password", 1, "").unwrap();
    assert_eq!(versions.items[0].name, v2.name);
    let rest = secrets.list_versions("p", "db-password", 1, &versions.next_page_token).unwrap();
    assert_eq!((rest.items[0].name.as_str(), rest.next_page_token.as_str()), (v1.name.as_str(), ""));
}

#[test]
fn bad_payloads_and_etags_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = open(dir.path());
    secrets.create_secret("p", "s", &SecretInput::default()).unwrap();
    let err = secrets.add_version("p", "s", &vec![7u8; MAX_PAYLOAD_BYTES + 1], None).unwrap_err();
    assert_eq!(err.field(), Some("payload.data"));
    secrets.add_version("p", "s", &vec![7u8; MAX_PAYLOAD_BYTES], None).unwrap();
    let err = secrets.add_version("p", "s", b"x", Some(12345)).unwrap_err();
    assert_eq!(err.field(), Some("payload.dataCrc32c"));
    assert_eq!(secrets.list_versions("p", "s", 0, "").unwrap().total_size, 1);
    assert!(matches!(secrets.access("p", "nope", VersionRef::Latest), Err(SecretsError::SecretNotFound(_))));
    assert!(matches!(secrets.access("p", "s", VersionRef::Number(9)), Err(SecretsError::VersionNotFound(_))));
    VersionRef::parse("0").unwrap_err();
    VersionRef::parse("-1").unwrap_err();
    assert_eq!(VersionRef::parse("latest").unwrap(), VersionRef::Latest);
    validate_secret_id("has space").unwrap_err();

    let labels = SecretInput { labels: [("team".to_owned(), "db".to_owned())].into(), ..SecretInput::default() };
    let updated = secrets.update_secret("p", "s", &labels, &["labels".to_owned()]).unwrap();
    assert_eq!(updated.labels["team"], "db");
    let err = secrets.update_secret("p", "s", &labels, &["replication".to_owned()]).unwrap_err();
    assert_eq!(err.field(), Some("updateMask"));
    let stale = SecretInput { etag: Some("\"old\"".into()), ..labels };
    assert!(matches!(
        secrets.update_secret("p", "s", &stale, &["labels".to_owned()]),
        Err(SecretsError::EtagMismatch { .. })
    ));
    assert!(matches!(secrets.delete_secret("p", "s", Some("\"old\"")), Err(SecretsError::EtagMismatch { .. })));
    secrets.delete_secret("p", "s", Some(&updated.etag)).unwrap();
    assert!(matches!(secrets.get_secret("p", "s"), Err(SecretsError::SecretNotFound(_))));
}

#[test]
fn rotation_rewraps_every_key_and_the_old_key_no_longer_opens_them() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = open(dir.path());
    secrets.create_secret("p", "a", &SecretInput::default()).unwrap();
    secrets.add_version("p", "a", SECRET_BYTES, None).unwrap();
    secrets.add_version("p", "a", b"two", None).unwrap();
    let old_key = std::fs::read(dir.path().join(DEFAULT_KEY_FILE)).unwrap();

    let report = secrets.rotate_key().unwrap();
    assert_eq!(report.rewrapped, 2);
    assert_ne!(report.old_key_id, report.new_key_id);
    assert_ne!(std::fs::read(dir.path().join(DEFAULT_KEY_FILE)).unwrap(), old_key);
    assert_eq!(secrets.access("p", "a", VersionRef::Number(1)).unwrap().data.as_slice(), SECRET_BYTES);
    drop(secrets);

    // A restart reads with the new key file.
    let reopened = open(dir.path());
    assert_eq!(reopened.access("p", "a", VersionRef::Latest).unwrap().data.as_slice(), b"two");
    drop(reopened);

    // With the old key back in place, the database is refused at start, by name.
    std::fs::write(dir.path().join(DEFAULT_KEY_FILE), &old_key).unwrap();
    let db = Store::open(&dir.path().join("state.db")).unwrap();
    let err = SecretManager::open(db, &dir.path().join(DEFAULT_KEY_FILE), true).unwrap_err();
    assert!(matches!(err, SecretsError::Key(KeyError::UnknownKey { .. })), "{err:?}");
}

#[test]
fn a_rotation_interrupted_after_its_commit_is_finished_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join(DEFAULT_KEY_FILE);
    let secrets = open(dir.path());
    secrets.create_secret("p", "a", &SecretInput::default()).unwrap();
    secrets.add_version("p", "a", SECRET_BYTES, None).unwrap();
    // Crash simulation: the staged key is written and the rows re-wrapped, but the rename
    // never happened. Re-wrap by hand with the staged key.
    let mut keys = KeyFile::open(&key_path, false).unwrap();
    let staged_id = keys.stage_rotation().unwrap().id().to_owned();
    let db = Store::open(&dir.path().join("state.db")).unwrap();
    let (kek_id, wrapped): (String, Vec<u8>) = db
        .read(|c| c.query_row("SELECT kek_id, wrapped_key FROM secret_versions", [], |r| Ok((r.get(0)?, r.get(1)?))))
        .unwrap();
    let name = version_name("p", "a", 1);
    let rewrapped =
        envelope::rewrap(keys.key(&kek_id).unwrap(), keys.key(&staged_id).unwrap(), &wrapped, &name).unwrap();
    db.write(|tx| {
        tx.execute("UPDATE secret_versions SET kek_id = ?1, wrapped_key = ?2", params![staged_id, rewrapped])
            .map_err(wharf_store::StoreError::Query)
    })
    .unwrap();
    drop(secrets);

    let reopened = open(dir.path());
    assert_eq!(reopened.access("p", "a", VersionRef::Number(1)).unwrap().data.as_slice(), SECRET_BYTES);
    assert_eq!(KeyFile::open(&key_path, false).unwrap().current.id(), staged_id);
    assert!(!dir.path().join("secrets.kek.new").exists());
}
