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
    unpack_layer(bytes, root, &Digest::of(bytes), &UnpackLimits::default())
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
        unpack_layer(reader, dir.path(), &Digest::of(&bytes), &UnpackLimits::default()).unwrap();
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

// ---- hostile layers: bombs and limits ----------------------------------------------------

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Bytes `dir` really occupies on disk (st_blocks), so a hole or an unwritten file is not
/// mistaken for data and data is not hidden by an apparent size.
fn disk_usage(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let meta = fs::symlink_metadata(entry.path()).unwrap();
            total += meta.blocks() * 512;
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    total
}

fn small_limits(max_bytes: u64) -> UnpackLimits {
    UnpackLimits { max_bytes, max_entries: 100, max_path_bytes: 200, max_depth: 8 }
}

fn assert_limit(result: Result<(), ImageError>, expected: LimitExceeded) {
    match result {
        Err(ImageError::LayerLimit { limit, .. }) => assert_eq!(limit, expected),
        other => panic!("expected LayerLimit({expected}), got {other:?}"),
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// The attack measured in issue 13: a tiny gzip layer holding one GNU sparse file whose
/// apparent size is 8 GiB (one 512-byte chunk at its end), which the old unpacker expanded
/// to real zeros on disk.
fn sparse_bomb() -> Vec<u8> {
    let apparent: u64 = 8 << 30;
    let mut header = tar::Header::new_gnu();
    header.set_path("bomb").unwrap();
    header.set_entry_type(tar::EntryType::GNUSparse);
    header.set_mode(0o644);
    header.set_size(512);
    {
        let gnu = header.as_gnu_mut().unwrap();
        let octal = |field: &mut [u8], value: u64| {
            let text = format!("{value:0width$o}", width = field.len() - 1);
            field[..text.len()].copy_from_slice(text.as_bytes());
        };
        octal(&mut gnu.sparse[0].offset, apparent - 512);
        octal(&mut gnu.sparse[0].numbytes, 512);
        // 8 GiB needs 12 octal digits: use the base-256 form.
        gnu.realsize = [0; 12];
        gnu.realsize[0] = 0x80;
        gnu.realsize[4..].copy_from_slice(&apparent.to_be_bytes());
    }
    header.set_cksum();
    let mut tar = header.as_bytes().to_vec();
    tar.extend(std::iter::repeat_n(0u8, 512 + 1024));
    gzip(&tar)
}

#[test]
fn a_sparse_bomb_is_refused_without_writing() {
    let bomb = sparse_bomb();
    eprintln!("sparse bomb: {} bytes of gzip, 8 GiB apparent size", bomb.len());
    assert!(bomb.len() < 200, "the bomb is {} bytes", bomb.len());
    let dir = tempfile::tempdir().unwrap();
    let reader = decompress(io::Cursor::new(bomb.clone())).unwrap();
    let result = unpack_layer(reader, dir.path(), &Digest::of(&bomb), &small_limits(64 * MIB));
    assert_limit(result, LimitExceeded::Bytes { limit: 64 * MIB });
    assert!(disk_usage(dir.path()) < MIB, "{} bytes on disk", disk_usage(dir.path()));

    // Within the size limit, a sparse entry is still refused rather than filled with zeros.
    let dir = tempfile::tempdir().unwrap();
    let reader = decompress(io::Cursor::new(bomb.clone())).unwrap();
    let result = unpack_layer(reader, dir.path(), &Digest::of(&bomb), &small_limits(16 << 30));
    assert_unsafe(result, "GNU sparse files are not supported; rebuild the layer without --sparse");
    assert!(disk_usage(dir.path()) < MIB);
}

#[test]
fn pax_sparse_entries_are_refused() {
    let mut b = LayerBuilder::new();
    let record = " GNU.sparse.major=1\n";
    let record = format!("{}{record}", record.len() + 2);
    b.entry("PaxHeaders/x", tar::EntryType::XHeader, "", record.as_bytes(), 0o644, (0, 0));
    b.file("GNUSparseFile.0/data", b"1\n0\n4\nabcd");
    let dir = tempfile::tempdir().unwrap();
    assert_unsafe(
        unpack(&b.finish(), dir.path()),
        "pax sparse files are not supported; rebuild the layer without --sparse",
    );
}

/// A 2 GiB file of zeros, gzipped, generated as it is read (the test never holds it).
#[test]
fn a_zero_filled_gzip_bomb_is_refused_before_its_data_is_written() {
    let size: u64 = 2 << 30;
    let mut header = tar::Header::new_ustar();
    header.set_path("zeros").unwrap();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_size(size);
    header.set_cksum();
    let tar = io::Cursor::new(header.as_bytes().to_vec()).chain(io::repeat(0).take(size + 1024));
    let gz = flate2::read::GzEncoder::new(tar, flate2::Compression::fast());
    let reader = decompress(io::BufReader::new(gz)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let result = unpack_layer(reader, dir.path(), &Digest::of(b"zeros"), &small_limits(64 * MIB));
    assert_limit(result, LimitExceeded::Bytes { limit: 64 * MIB });
    assert!(!dir.path().join("zeros").exists());
    assert!(disk_usage(dir.path()) < MIB);
}

#[test]
fn many_files_stop_at_the_size_limit() {
    let mut b = LayerBuilder::new();
    let chunk = vec![7u8; 1 << 20];
    for i in 0..12 {
        b.file(&format!("f{i}"), &chunk);
    }
    let layer = gzip(&b.finish());
    let dir = tempfile::tempdir().unwrap();
    let reader = decompress(io::Cursor::new(layer.clone())).unwrap();
    let result = unpack_layer(reader, dir.path(), &Digest::of(&layer), &small_limits(8 * MIB));
    match &result {
        Err(ImageError::LayerLimit { entry, limit, .. }) => {
            assert_eq!(entry, "f8");
            assert_eq!(limit, &LimitExceeded::Bytes { limit: 8 * MIB });
            assert_eq!(
                result.as_ref().unwrap_err().to_string(),
                format!(
                    "layer {} is refused at entry \"f8\": it goes past the unpacked size limit of 8388608 bytes per image, all layers together (server setting --max-image-size)",
                    Digest::of(&layer)
                )
            );
        }
        other => panic!("expected the size limit, got {other:?}"),
    }
    let used = disk_usage(dir.path());
    assert!(used <= 8 * MIB + 64 * 1024, "{used} bytes on disk with an 8 MiB limit");
    assert!(!dir.path().join("f8").exists());
}

#[test]
fn entry_count_path_length_and_depth_are_limited() {
    let mut b = LayerBuilder::new();
    for i in 0..101 {
        b.file(&format!("e{i}"), b"");
    }
    let dir = tempfile::tempdir().unwrap();
    let layer = b.finish();
    assert_limit(
        unpack_layer(&layer[..], dir.path(), &Digest::of(&layer), &small_limits(MIB)),
        LimitExceeded::Entries { limit: 100 },
    );

    let deep = "a/".repeat(9) + "f";
    let layer = LayerBuilder::new().file(&deep, b"x").finish();
    let dir = tempfile::tempdir().unwrap();
    assert_limit(
        unpack_layer(&layer[..], dir.path(), &Digest::of(&layer), &small_limits(MIB)),
        LimitExceeded::PathDepth { limit: 8 },
    );
    assert!(!dir.path().join("a").exists());

    // A GNU long name (an 'L' entry) longer than the path limit.
    let mut long = tar::Header::new_gnu();
    long.set_path("././@LongLink").unwrap();
    long.set_entry_type(tar::EntryType::GNULongName);
    let name = "n".repeat(300);
    long.set_size(name.len() as u64 + 1);
    long.set_cksum();
    let mut layer = long.as_bytes().to_vec();
    layer.extend_from_slice(name.as_bytes());
    layer.extend(std::iter::repeat_n(0u8, 512 - name.len() - 1 + 1));
    layer.extend(LayerBuilder::new().file("short", b"x").finish());
    let dir = tempfile::tempdir().unwrap();
    assert_limit(
        unpack_layer(&layer[..], dir.path(), &Digest::of(&layer), &small_limits(MIB)),
        LimitExceeded::PathLength { limit: 200 },
    );
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// A long-name entry declaring 1 TiB: the tar reader would read it all into memory; the
/// meter stops it at the metadata limit. The stream is endless zeros after the header.
#[test]
fn a_huge_long_name_is_refused_without_reading_it() {
    let mut long = tar::Header::new_gnu();
    long.set_path("././@LongLink").unwrap();
    long.set_entry_type(tar::EntryType::GNULongName);
    long.set_size(1 << 40);
    long.set_cksum();
    let stream = io::Cursor::new(long.as_bytes().to_vec()).chain(io::repeat(b'n'));
    let dir = tempfile::tempdir().unwrap();
    assert_limit(
        unpack_layer(stream, dir.path(), &Digest::of(b"long"), &UnpackLimits::default()),
        LimitExceeded::Metadata { limit: UnpackLimits::MAX_METADATA_BYTES },
    );
}

#[test]
fn whiteouts_of_dot_and_dot_dot_are_refused() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("snap");
    fs::create_dir(&root).unwrap();
    fs::write(outer.path().join("sibling"), b"keep").unwrap();
    for name in ["etc/.wh..", "etc/.wh...", ".wh...", "etc/.wh."] {
        let layer = LayerBuilder::new().file("etc/keep", b"1").file(name, b"").finish();
        assert_unsafe(unpack(&layer, &root), "whiteout does not name an entry (.wh., .wh.. and .wh... are refused)");
        assert_eq!(fs::read(root.join("etc/keep")).unwrap(), b"1", "{name} removed its directory");
        assert_eq!(fs::read(outer.path().join("sibling")).unwrap(), b"keep", "{name} escaped the snapshot");
    }
}

#[test]
fn the_default_size_limit_follows_the_free_space() {
    // Half the free space, within 1 MiB and the cap. (Computed from given figures: the free
    // space of a real directory moves while other tests write.)
    for (free, expected) in [
        (0, MIB),
        (MIB, MIB),
        (3 * MIB, 3 * MIB / 2),
        (10 * GIB, 5 * GIB),
        (1 << 50, UnpackLimits::DEFAULT_MAX_BYTES_CAP),
    ] {
        let limits = UnpackLimits::for_free_space(free);
        assert_eq!(limits.max_bytes, expected, "{free} bytes free");
        assert_eq!(limits.max_entries, UnpackLimits::DEFAULT_MAX_ENTRIES);
    }
    let dir = tempfile::tempdir().unwrap();
    let limits = UnpackLimits::sized_for(dir.path()).unwrap();
    assert!((MIB..=UnpackLimits::DEFAULT_MAX_BYTES_CAP).contains(&limits.max_bytes));
}

#[test]
fn an_image_is_limited_across_its_layers() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = BlobStore::open(&dir.path().join("blobs")).unwrap();
    let snapshots =
        SnapshotStore::open(&dir.path().join("snapshots"), blobs.clone()).unwrap().with_limits(small_limits(8 * MIB));
    let chunk = vec![5u8; 5 << 20];
    let mut layers = Vec::new();
    for name in ["lower", "upper"] {
        let layer = gzip(&LayerBuilder::new().file(name, &chunk).finish());
        let digest = Digest::of(&layer);
        blobs.put(&layer, &digest).unwrap();
        layers.push(digest);
    }
    // Each layer fits alone; together they do not, and the second is not written at all.
    match snapshots.ensure_image(&layers) {
        Err(ImageError::LayerLimit { layer, limit, .. }) => {
            assert_eq!(layer, layers[1]);
            assert_eq!(limit, LimitExceeded::Bytes { limit: 8 * MIB });
        }
        other => panic!("expected the image limit, got {other:?}"),
    }
    assert!(!snapshots.path(&layers[1]).exists());
    let used = disk_usage(&dir.path().join("snapshots"));
    assert!(used <= 6 * MIB, "{used} bytes of snapshots with an 8 MiB limit");
    assert_eq!(snapshots.ensure_image(&layers[1..]).unwrap().len(), 1, "alone, the upper layer fits");
    if Uid::effective().is_root() {
        // Both unpacked now (for two images): stacked, their recorded sizes still add up.
        assert_eq!(snapshots.unpacked_size(&layers[0]), 5 << 20);
        assert!(matches!(snapshots.ensure_image(&layers), Err(ImageError::LayerLimit { .. })));
    }
}
