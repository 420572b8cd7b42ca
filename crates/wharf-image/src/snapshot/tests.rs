//! Unpacking tests with hand-built tars, including the malicious shapes real attacks use.

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use super::*;

/// Builds tar entries with raw names, bypassing the `tar` crate's own path checks so
/// the tests can produce the archives an attacker would.
struct LayerBuilder {
    out: Vec<u8>,
}

impl LayerBuilder {
    fn new() -> Self {
        LayerBuilder { out: Vec::new() }
    }

    fn entry(&mut self, name: &str, kind: tar::EntryType, link: &str, data: &[u8], mode: u32, ids: (u64, u64)) {
        let mut header = tar::Header::new_ustar();
        {
            let old = header.as_old_mut();
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_uid(ids.0);
        header.set_gid(ids.1);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.out.extend(std::iter::repeat_n(0u8, pad));
    }

    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.entry(name, tar::EntryType::Regular, "", data, 0o644, (0, 0));
        self
    }

    fn dir(&mut self, name: &str) -> &mut Self {
        self.entry(name, tar::EntryType::Directory, "", b"", 0o755, (0, 0));
        self
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(name, tar::EntryType::Symlink, target, b"", 0o777, (0, 0));
        self
    }

    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(name, tar::EntryType::Link, target, b"", 0o644, (0, 0));
        self
    }

    fn pax_xattr(&mut self, key: &str, value: &str) -> &mut Self {
        let record_body = format!(" SCHILY.xattr.{key}={value}\n");
        // The length prefix counts itself.
        let mut len = record_body.len() + 2;
        if format!("{len}{record_body}").len() != len {
            len += 1;
        }
        let record = format!("{len}{record_body}");
        self.entry("PaxHeaders/x", tar::EntryType::XHeader, "", record.as_bytes(), 0o644, (0, 0));
        self
    }

    fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.out);
        out.extend(std::iter::repeat_n(0u8, 1024));
        out
    }
}

fn unpack(bytes: &[u8], root: &Path) -> Result<(), ImageError> {
    unpack_layer(bytes, root, &Digest::of(bytes))
}

fn assert_unsafe(result: Result<(), ImageError>, expected_reason: &str) {
    match result {
        Err(ImageError::UnsafeLayer { reason, .. }) => assert_eq!(reason, expected_reason),
        other => panic!("expected UnsafeLayer({expected_reason}), got {other:?}"),
    }
}

#[test]
fn refuses_parent_directory_traversal() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("snap");
    fs::create_dir(&root).unwrap();
    let layer = LayerBuilder::new().file("ok", b"1").file("../escaped", b"pwned").finish();
    assert_unsafe(unpack(&layer, &root), "path contains '..'");
    assert!(!outer.path().join("escaped").exists());
    let layer = LayerBuilder::new().file("a/../../escaped2", b"pwned").finish();
    assert_unsafe(unpack(&layer, &root), "path contains '..'");
    assert!(!outer.path().join("escaped2").exists());
}

#[test]
fn absolute_paths_land_inside_the_snapshot() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("snap");
    fs::create_dir(&root).unwrap();
    let absolute = outer.path().join("absolute-target");
    let layer = LayerBuilder::new().file(absolute.to_str().unwrap(), b"data").finish();
    unpack(&layer, &root).unwrap();
    assert!(!absolute.exists(), "absolute path was written outside the snapshot");
    let inside = root.join(absolute.strip_prefix("/").unwrap());
    assert_eq!(fs::read(inside).unwrap(), b"data");
}

#[test]
fn refuses_writing_through_a_symlink() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("snap");
    let victim = outer.path().join("victim");
    fs::create_dir(&root).unwrap();
    fs::create_dir(&victim).unwrap();
    for target in [victim.to_str().unwrap(), "../victim"] {
        let layer = LayerBuilder::new().symlink("link", target).file("link/pwned", b"x").finish();
        assert_unsafe(unpack(&layer, &root), "path passes through a symlink");
        assert_eq!(fs::read_dir(&victim).unwrap().count(), 0);
    }
    // A symlink replaced by a file in the same layer must not be followed either.
    fs::write(victim.join("keep"), b"original").unwrap();
    let layer =
        LayerBuilder::new().symlink("f", victim.join("keep").to_str().unwrap()).file("f", b"overwritten").finish();
    unpack(&layer, &root).unwrap();
    assert_eq!(fs::read(victim.join("keep")).unwrap(), b"original");
    assert_eq!(fs::read(root.join("f")).unwrap(), b"overwritten");
}

#[test]
fn refuses_hard_links_outside_the_snapshot() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("snap");
    fs::create_dir(&root).unwrap();
    fs::write(outer.path().join("secret"), b"s").unwrap();
    let layer = LayerBuilder::new().hardlink("h", "../secret").finish();
    assert_unsafe(unpack(&layer, &root), "path contains '..'");
    let layer = LayerBuilder::new().symlink("d", outer.path().to_str().unwrap()).hardlink("h", "d/secret").finish();
    assert_unsafe(unpack(&layer, &root), "hard link target passes through a symlink");
    assert!(!root.join("h").exists());
}

#[test]
fn preserves_ownership_modes_xattrs_and_hard_links() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path();
    let mut b = LayerBuilder::new();
    b.dir("bin/");
    b.entry("bin/tool", tar::EntryType::Regular, "", b"#!/bin/sh\n", 0o4755, (1234, 5678));
    b.pax_xattr("user.origin", "wharf");
    b.file("bin/data", b"payload");
    b.hardlink("bin/data-link", "bin/data");
    b.symlink("bin/sh", "busybox");
    b.entry("dev/null", tar::EntryType::Char, "", b"", 0o666, (0, 0));
    unpack(&b.finish(), root).unwrap();

    let tool = fs::metadata(root.join("bin/tool")).unwrap();
    assert_eq!(tool.mode() & 0o7777, 0o4755);
    if Uid::effective().is_root() {
        assert_eq!((tool.uid(), tool.gid()), (1234, 5678));
    }
    assert_eq!(tool.mtime(), 1_700_000_000);
    let data = fs::metadata(root.join("bin/data")).unwrap();
    assert_eq!(data.ino(), fs::metadata(root.join("bin/data-link")).unwrap().ino());
    assert_eq!(xattr::get(root.join("bin/data"), "user.origin").unwrap().as_deref(), Some(&b"wharf"[..]));
    assert_eq!(fs::read_link(root.join("bin/sh")).unwrap(), Path::new("busybox"));
    assert!(!root.join("dev/null").exists(), "device nodes must not be created from layers");
}

#[test]
fn whiteouts_become_overlay_whiteouts() {
    if !Uid::effective().is_root() {
        return; // mknod and trusted.* xattrs need root
    }
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path();
    let layer = LayerBuilder::new().file("etc/.wh.removed", b"").file("var/cache/.wh..wh..opq", b"").finish();
    unpack(&layer, root).unwrap();
    let whiteout = fs::symlink_metadata(root.join("etc/removed")).unwrap();
    assert!(whiteout.file_type().is_char_device());
    assert_eq!(whiteout.rdev(), 0);
    assert!(!root.join("etc/.wh.removed").exists());
    let opaque = xattr::get(root.join("var/cache"), "trusted.overlay.opaque").unwrap();
    assert_eq!(opaque.as_deref(), Some(&b"y"[..]));
}

#[test]
fn drops_trusted_xattrs_from_layers() {
    let outer = tempfile::tempdir().unwrap();
    let mut b = LayerBuilder::new();
    b.pax_xattr("trusted.overlay.redirect", "/etc");
    b.dir("d/");
    unpack(&b.finish(), outer.path()).unwrap();
    assert_eq!(xattr::get(outer.path().join("d"), "trusted.overlay.redirect").unwrap(), None);
}

#[test]
fn decompresses_gzip_zstd_and_plain() {
    let tar = LayerBuilder::new().file("hello.txt", b"hi").finish();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&tar[..], 1).unwrap();
    for bytes in [tar.clone(), gz, zst] {
        let dir = tempfile::tempdir().unwrap();
        let reader = decompress(io::Cursor::new(bytes.clone())).unwrap();
        unpack_layer(reader, dir.path(), &Digest::of(&bytes)).unwrap();
        assert_eq!(fs::read(dir.path().join("hello.txt")).unwrap(), b"hi");
    }
}

#[test]
fn failed_unpack_leaves_no_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = BlobStore::open(&dir.path().join("blobs")).unwrap();
    let snapshots = SnapshotStore::open(&dir.path().join("snapshots"), blobs.clone()).unwrap();
    let bad = LayerBuilder::new().file("a", b"1").file("../b", b"2").finish();
    let bad_digest = Digest::of(&bad);
    blobs.put(&bad, &bad_digest).unwrap();
    assert!(matches!(snapshots.ensure(&bad_digest), Err(ImageError::UnsafeLayer { .. })));
    assert!(!snapshots.path(&bad_digest).exists());
    assert_eq!(fs::read_dir(dir.path().join("snapshots/tmp")).unwrap().count(), 0);

    let good = LayerBuilder::new().file("a", b"1").finish();
    let good_digest = Digest::of(&good);
    blobs.put(&good, &good_digest).unwrap();
    let path = snapshots.ensure(&good_digest).unwrap();
    assert_eq!(fs::read(path.join("a")).unwrap(), b"1");
    assert_eq!(snapshots.ensure(&good_digest).unwrap(), path);
}
