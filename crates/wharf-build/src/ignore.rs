//! Which files of a source directory go into a build: the rules of its `.gcloudignore`, else
//! its `.dockerignore`, else its `.gitignore` (the order `gcloud run deploy --source` and the
//! issue ask for), and packing what is left into the gzipped tarball the server builds from.
//!
//! Pattern syntax, one per line, as gitignore writes it: `#` comments and blank lines are
//! skipped; `!` re-includes; a trailing `/` matches directories only; `*` and `?` match within
//! one path segment, `[a-z]` / `[!a]` a character class, a whole `**` segment any number of
//! directories. In `.gcloudignore` and `.gitignore` a pattern without a `/` (other than a
//! trailing one) matches a name at any depth, one with a `/` is anchored at the directory;
//! `.dockerignore` patterns are always anchored (Docker's rule). `.gcloudignore` also takes
//! gcloud's `#!include:.gitignore` line. The last matching rule wins; an excluded directory
//! is not entered, so a later `!` cannot bring back a file under it (gitignore's rule; Docker
//! allows it, and this is the one difference from Docker kept here).
//!
//! Without a `.gcloudignore`, gcloud's default applies on top of `.gitignore`: `.git/`,
//! `.gitignore` and `.gcloudignore` are left out. Not owned here: what the server does with
//! the tarball ([`crate::context`]).

use std::io::Write;
use std::path::{Path, PathBuf};

/// Failure to read ignore files or pack a source directory.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot add {path} to the source archive")]
    Archive {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a directory: --source takes the directory to build")]
    NotADirectory { path: PathBuf },
    #[error("{file} line {line}: {why}")]
    Pattern { file: String, line: usize, why: String },
    #[error(
        "the source is larger than {limit} bytes after ignore rules ({file} pushed it over); add what the build does not need to .gcloudignore"
    )]
    TooLarge { limit: u64, file: PathBuf },
}

/// Which file the rules came from; decides anchoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Gitignore,
    Dockerignore,
}

#[derive(Debug, Clone)]
struct Rule {
    negate: bool,
    dir_only: bool,
    /// Segments to match from the root (anchored) or against any suffix of the path.
    segments: Vec<String>,
    anchored: bool,
}

/// The ignore rules of one source directory.
#[derive(Debug, Clone, Default)]
pub struct IgnoreRules {
    rules: Vec<Rule>,
    /// The file the rules came from, for the user (`None`: nothing is ignored).
    pub source: Option<String>,
}

impl IgnoreRules {
    /// The rules for `dir`: `.gcloudignore`, else `.dockerignore`, else `.gitignore` with
    /// gcloud's defaults, else none.
    pub fn for_dir(dir: &Path) -> Result<IgnoreRules, PackError> {
        let read = |name: &str| -> Result<Option<String>, PackError> {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => Ok(Some(text)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(PackError::Read { path, source }),
            }
        };
        if let Some(text) = read(".gcloudignore")? {
            let mut expanded = String::new();
            for line in text.lines() {
                match line.trim().strip_prefix("#!include:") {
                    Some(included) => {
                        let included = included.trim();
                        if included.contains('/') {
                            return Err(PackError::Pattern {
                                file: ".gcloudignore".into(),
                                line: 0,
                                why: format!("#!include:{included} must name a file in the source directory"),
                            });
                        }
                        expanded.push_str(&read(included)?.unwrap_or_default());
                        expanded.push('\n');
                    }
                    None => {
                        expanded.push_str(line);
                        expanded.push('\n');
                    }
                }
            }
            return IgnoreRules::parse(&expanded, Flavor::Gitignore, ".gcloudignore");
        }
        if let Some(text) = read(".dockerignore")? {
            return IgnoreRules::parse(&text, Flavor::Dockerignore, ".dockerignore");
        }
        if let Some(text) = read(".gitignore")? {
            let with_defaults = format!(".git/\n.gitignore\n.gcloudignore\n{text}");
            return IgnoreRules::parse(&with_defaults, Flavor::Gitignore, ".gitignore");
        }
        Ok(IgnoreRules::default())
    }

    /// Parses the rules of `file` (its name, for errors).
    pub fn parse(text: &str, flavor: Flavor, file: &str) -> Result<IgnoreRules, PackError> {
        let mut rules = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim_end();
            let line = if flavor == Flavor::Dockerignore { line.trim_start() } else { line };
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (negate, pattern) = match line.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, line),
            };
            let pattern = pattern.strip_prefix("./").unwrap_or(pattern);
            let dir_only = pattern.ends_with('/');
            let pattern = pattern.trim_end_matches('/');
            let anchored = flavor == Flavor::Dockerignore || pattern.contains('/');
            let pattern = pattern.trim_start_matches('/');
            if pattern.is_empty() {
                continue;
            }
            if pattern.split('/').any(|s| s == "..") {
                return Err(PackError::Pattern {
                    file: file.into(),
                    line: index + 1,
                    why: format!("{raw:?} points outside the source directory"),
                });
            }
            let segments: Vec<String> = pattern.split('/').filter(|s| !s.is_empty()).map(str::to_owned).collect();
            rules.push(Rule { negate, dir_only, segments, anchored });
        }
        Ok(IgnoreRules { rules, source: Some(file.to_owned()) })
    }

    /// Whether `relative` (a path under the source directory, `/`-separated) is left out.
    pub fn is_ignored(&self, relative: &str, is_dir: bool) -> bool {
        let path: Vec<&str> = relative.split('/').filter(|s| !s.is_empty()).collect();
        let mut ignored = false;
        for rule in &self.rules {
            if rule.dir_only && !is_dir {
                continue;
            }
            let matched = if rule.anchored {
                match_segments(&rule.segments, &path)
            } else {
                // A bare name matches the path's last segment at any depth.
                path.last().is_some_and(|last| rule.segments.len() == 1 && glob(&rule.segments[0], last))
            };
            if matched {
                ignored = !rule.negate;
            }
        }
        ignored
    }
}

/// Matches pattern segments against path segments; `**` takes zero or more segments.
fn match_segments(pattern: &[String], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if first == "**" => (0..=path.len()).any(|skip| match_segments(rest, &path[skip..])),
        Some((first, rest)) => path.split_first().is_some_and(|(p, tail)| glob(first, p) && match_segments(rest, tail)),
    }
}

/// Matches one segment: `*`, `?`, `[...]` classes (with `!` or `^` to negate), `\` escapes.
fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    glob_at(&p, &t)
}

fn glob_at(p: &[char], t: &[char]) -> bool {
    match p.first() {
        None => t.is_empty(),
        Some('*') => (0..=t.len()).any(|skip| glob_at(&p[1..], &t[skip..])),
        Some('?') => !t.is_empty() && glob_at(&p[1..], &t[1..]),
        Some('[') => {
            let Some(close) = p.iter().skip(2).position(|c| *c == ']').map(|i| i + 2) else {
                return t.first() == Some(&'[') && glob_at(&p[1..], &t[1..]);
            };
            let Some(c) = t.first() else { return false };
            let (negated, class) = match p[1] {
                '!' | '^' => (true, &p[2..close]),
                _ => (false, &p[1..close]),
            };
            let mut found = false;
            let mut i = 0;
            while i < class.len() {
                if i + 2 < class.len() && class[i + 1] == '-' {
                    found |= (class[i]..=class[i + 2]).contains(c);
                    i += 3;
                } else {
                    found |= class[i] == *c;
                    i += 1;
                }
            }
            found != negated && glob_at(&p[close + 1..], &t[1..])
        }
        Some('\\') if p.len() > 1 => t.first() == Some(&p[1]) && glob_at(&p[2..], &t[1..]),
        Some(c) => t.first() == Some(c) && glob_at(&p[1..], &t[1..]),
    }
}

/// What [`pack`] put in the archive.
#[derive(Debug, Clone, Default)]
pub struct PackSummary {
    pub files: u64,
    pub bytes: u64,
    pub ignored: u64,
    pub rules_from: Option<String>,
}

/// Packs `dir` into a gzipped tarball written to `out`, leaving out what its ignore rules
/// exclude, sockets and other special files. Symlinks are stored as links (the build follows
/// them inside the context only). Fails when the files add up to more than `limit` bytes.
pub fn pack(dir: &Path, out: impl Write, limit: u64) -> Result<PackSummary, PackError> {
    if !dir.is_dir() {
        return Err(PackError::NotADirectory { path: dir.to_owned() });
    }
    let rules = IgnoreRules::for_dir(dir)?;
    let mut summary = PackSummary { rules_from: rules.source.clone(), ..PackSummary::default() };
    let encoder = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    let mut archive = tar::Builder::new(encoder);
    archive.follow_symlinks(false);
    archive.mode(tar::HeaderMode::Deterministic);
    let mut pending = vec![PathBuf::new()];
    while let Some(relative_dir) = pending.pop() {
        let full = dir.join(&relative_dir);
        let mut entries: Vec<_> = std::fs::read_dir(&full)
            .map_err(|source| PackError::Read { path: full.clone(), source })?
            .collect::<Result<_, _>>()
            .map_err(|source| PackError::Read { path: full.clone(), source })?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let relative = relative_dir.join(entry.file_name());
            let path = entry.path();
            let kind = entry.file_type().map_err(|source| PackError::Read { path: path.clone(), source })?;
            let name = relative.to_string_lossy().into_owned();
            if rules.is_ignored(&name, kind.is_dir()) {
                summary.ignored += 1;
                continue;
            }
            let archive_err = |source| PackError::Archive { path: path.clone(), source };
            if kind.is_dir() {
                archive.append_dir(&relative, &path).map_err(archive_err)?;
                pending.push(relative);
            } else if kind.is_file() || kind.is_symlink() {
                if kind.is_file() {
                    let size = entry.metadata().map_err(|source| PackError::Read { path: path.clone(), source })?.len();
                    summary.bytes += size;
                    if summary.bytes > limit {
                        return Err(PackError::TooLarge { limit, file: relative });
                    }
                }
                archive.append_path_with_name(&path, &relative).map_err(archive_err)?;
                summary.files += 1;
            } else {
                summary.ignored += 1;
            }
        }
    }
    let encoder = archive.into_inner().map_err(|source| PackError::Archive { path: dir.to_owned(), source })?;
    encoder.finish().map_err(|source| PackError::Archive { path: dir.to_owned(), source })?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str, flavor: Flavor) -> IgnoreRules {
        IgnoreRules::parse(text, flavor, "test").unwrap()
    }

    #[test]
    fn gitignore_patterns_match_at_any_depth_unless_anchored() {
        let r = rules("*.pyc\n/build\ndocs/*.md\n!docs/keep.md\nnode_modules/\n", Flavor::Gitignore);
        assert!(r.is_ignored("a.pyc", false));
        assert!(r.is_ignored("pkg/sub/a.pyc", false));
        assert!(r.is_ignored("build", true));
        assert!(!r.is_ignored("src/build", true), "a leading / anchors the pattern");
        assert!(r.is_ignored("docs/a.md", false));
        assert!(!r.is_ignored("docs/keep.md", false), "a later ! re-includes");
        assert!(!r.is_ignored("docs/sub/a.md", false), "* does not cross /");
        assert!(r.is_ignored("web/node_modules", true));
        assert!(!r.is_ignored("web/node_modules", false), "a trailing / matches directories only");
        assert!(!r.is_ignored("main.py", false));
    }

    #[test]
    fn dockerignore_patterns_are_anchored_and_take_double_star() {
        let r = rules("*.log\n**/*.tmp\nsecret[0-9].txt\n", Flavor::Dockerignore);
        assert!(r.is_ignored("a.log", false));
        assert!(!r.is_ignored("sub/a.log", false), "dockerignore anchors at the root");
        assert!(r.is_ignored("a.tmp", false));
        assert!(r.is_ignored("x/y/a.tmp", false));
        assert!(r.is_ignored("secret1.txt", false));
        assert!(!r.is_ignored("secretx.txt", false));
    }

    #[test]
    fn a_pattern_leaving_the_directory_is_refused() {
        let e = IgnoreRules::parse("ok\n../x\n", Flavor::Gitignore, ".gitignore").unwrap_err();
        assert_eq!(e.to_string(), ".gitignore line 2: \"../x\" points outside the source directory");
    }

    fn listed(dir: &Path) -> Vec<String> {
        let mut packed = Vec::new();
        pack(dir, &mut packed, 1 << 20).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&packed[..]));
        let mut names: Vec<String> =
            archive.entries().unwrap().map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn packs_with_gcloudignore_first_then_dockerignore_then_gitignore() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for file in ["main.py", "a.log", "sub/b.log", ".git/HEAD", "venv/x.py"] {
            std::fs::create_dir_all(d.join(file).parent().unwrap()).unwrap();
            std::fs::write(d.join(file), "x").unwrap();
        }
        std::fs::write(d.join(".gitignore"), "*.log\nvenv/\n").unwrap();
        assert_eq!(listed(d), ["main.py", "sub"], ".gitignore with gcloud's defaults (.git left out)");
        std::fs::write(d.join(".dockerignore"), "*.log\n").unwrap();
        assert_eq!(
            listed(d),
            [".dockerignore", ".git", ".git/HEAD", ".gitignore", "main.py", "sub", "sub/b.log", "venv", "venv/x.py"],
            ".dockerignore wins over .gitignore and is anchored"
        );
        std::fs::write(d.join(".gcloudignore"), "#!include:.gitignore\n.git\n.*ignore\n").unwrap();
        assert_eq!(listed(d), ["main.py", "sub"], ".gcloudignore wins and includes .gitignore");
    }

    #[test]
    fn packing_stops_at_the_size_limit() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("big"), vec![0u8; 4096]).unwrap();
        let e = pack(dir.path(), std::io::sink(), 1000).unwrap_err();
        assert!(matches!(e, PackError::TooLarge { limit: 1000, .. }), "{e}");
    }
}
