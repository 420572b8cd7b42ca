//! Base images of a Dockerfile come from Wharf's registry: every `FROM` naming an image
//! without a registry host (`FROM python:3.12-slim`) is rewritten to name Wharf's registry
//! (`FROM 127.0.0.1:5000/python:3.12-slim`) before buildah reads it. Unqualified-search
//! registries alone would not do it: Debian's short-name aliases
//! (`/etc/containers/registries.conf.d/shortnames.conf`) send `python`, `node`, `golang` and
//! others to docker.io first. Left as written: `scratch`, earlier stage names, names with a
//! registry host, and names built from `ARG`s (`FROM $BASE`), which unqualified-search
//! registries still resolve in Wharf's registry unless an alias lists them.

/// One rewritten `FROM`, for the build log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    pub from: String,
    pub to: String,
}

/// Whether an image name starts with a registry host (`host.name/`, `host:port/`, `localhost/`).
pub fn has_registry_host(image: &str) -> bool {
    match image.split_once('/') {
        Some((first, _)) => first.contains(['.', ':']) || first == "localhost",
        None => false,
    }
}

/// `text` with its unqualified `FROM` images prefixed by `registry`, and what changed.
pub fn qualify_base_images(text: &str, registry: &str) -> (String, Vec<Rewrite>) {
    let mut stages: Vec<String> = Vec::new();
    let mut rewrites = Vec::new();
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let is_from = trimmed.len() > 5 && trimmed[..5].eq_ignore_ascii_case("FROM ");
        if !is_from {
            out.push_str(line);
            continue;
        }
        let words: Vec<&str> = trimmed[5..].split_whitespace().collect();
        // FROM [--platform=...] image [AS name]
        let Some(image_index) = words.iter().position(|w| !w.starts_with("--")) else {
            out.push_str(line);
            continue;
        };
        let image = words[image_index];
        // An earlier stage's name refers to that stage, not to an image.
        let keep = image.eq_ignore_ascii_case("scratch")
            || image.contains('$')
            || has_registry_host(image)
            || stages.contains(&image.to_ascii_lowercase());
        if let Some(as_index) = words.iter().position(|w| w.eq_ignore_ascii_case("as"))
            && let Some(name) = words.get(as_index + 1)
        {
            stages.push(name.to_ascii_lowercase());
        }
        if keep {
            out.push_str(line);
            continue;
        }
        let qualified = format!("{registry}/{image}");
        let indent = &line[..line.len() - trimmed.len()];
        let mut rebuilt: Vec<String> = words.iter().map(|w| (*w).to_owned()).collect();
        rebuilt[image_index] = qualified.clone();
        out.push_str(&format!("{indent}{} {}", &trimmed[..4], rebuilt.join(" ")));
        if line.ends_with('\n') {
            out.push('\n');
        }
        rewrites.push(Rewrite { from: image.to_owned(), to: qualified });
    }
    (out, rewrites)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unqualified_bases_name_wharfs_registry() {
        let text = "# build\nFROM --platform=linux/amd64 golang:1.23 AS build\nRUN go build\n\
                    FROM python:3.12-slim\nFROM build\nfrom scratch\nFROM $BASE\nFROM ghcr.io/x/y:1\nFROM localhost:5000/z\n";
        let (out, rewrites) = qualify_base_images(text, "127.0.0.1:5000");
        assert_eq!(
            out,
            "# build\nFROM --platform=linux/amd64 127.0.0.1:5000/golang:1.23 AS build\nRUN go build\n\
             FROM 127.0.0.1:5000/python:3.12-slim\nFROM build\nfrom scratch\nFROM $BASE\nFROM ghcr.io/x/y:1\nFROM localhost:5000/z\n"
        );
        assert_eq!(
            rewrites,
            [
                Rewrite { from: "golang:1.23".into(), to: "127.0.0.1:5000/golang:1.23".into() },
                Rewrite { from: "python:3.12-slim".into(), to: "127.0.0.1:5000/python:3.12-slim".into() },
            ]
        );
    }

    #[test]
    fn a_stage_named_like_an_image_is_the_stage() {
        let (out, rewrites) = qualify_base_images("FROM node:22 AS node\nFROM node\n", "r:1");
        assert_eq!(out, "FROM r:1/node:22 AS node\nFROM node\n");
        assert_eq!(rewrites.len(), 1);
    }
}
