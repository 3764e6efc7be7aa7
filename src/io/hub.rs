//! Resolving models and datasets through the Hugging Face hub cache, and downloading into it.
//!
//! Cache layout (the one `huggingface_hub` uses, so both tools share files):
//! `$HF_HUB_CACHE` (default `$HF_HOME/hub`, `$HF_HOME` default `~/.cache/huggingface`) holds
//! `models--ORG--NAME/` (or `datasets--ORG--NAME/`) with `refs/<revision>` (a commit hash),
//! `blobs/<etag>` (file contents) and `snapshots/<commit>/<file>` (symlinks into `blobs/`).

use super::paths::home_dir;
use anyhow::{Context, Result, bail};
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    Model,
    Dataset,
}

impl RepoKind {
    fn folder_prefix(self) -> &'static str {
        match self {
            Self::Model => "models",
            Self::Dataset => "datasets",
        }
    }
    /// Prefix of the repository in hub URLs (`/datasets/org/name/...`, models have none).
    fn url_prefix(self) -> &'static str {
        match self {
            Self::Model => "",
            Self::Dataset => "datasets/",
        }
    }
}

pub fn hf_home() -> PathBuf {
    std::env::var_os("HF_HOME").map(PathBuf::from).unwrap_or_else(|| home_dir().join(".cache/huggingface"))
}

pub fn hub_cache() -> PathBuf {
    std::env::var_os("HF_HUB_CACHE").map(PathBuf::from).unwrap_or_else(|| hf_home().join("hub"))
}

pub fn endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| "https://huggingface.co".into())
        .trim_end_matches('/')
        .to_string()
}

fn offline() -> bool {
    ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|s| matches!(s.as_str(), "1" | "true" | "TRUE" | "yes" | "ON" | "on")))
}

/// `models--org--name`.
pub fn repo_folder(kind: RepoKind, repo_id: &str) -> String {
    format!("{}--{}", kind.folder_prefix(), repo_id.replace('/', "--"))
}

fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// Does `spec` name a hub repository (`org/name` or `name`) rather than a filesystem path?
pub fn looks_like_repo_id(spec: &str) -> bool {
    !spec.is_empty()
        && !spec.starts_with(['.', '/', '~'])
        && spec.split('/').count() <= 2
        && spec.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        && !spec.contains("..")
}

/// The snapshot directory of `repo_id` at `revision` in the local cache, if present.
pub fn cached_snapshot(cache: &Path, kind: RepoKind, repo_id: &str, revision: &str) -> Option<PathBuf> {
    let repo = cache.join(repo_folder(kind, repo_id));
    let commit = if is_commit_hash(revision) {
        revision.to_string()
    } else {
        std::fs::read_to_string(repo.join("refs").join(revision)).ok()?.trim().to_string()
    };
    let dir = repo.join("snapshots").join(commit);
    dir.is_dir().then_some(dir)
}

/// Resolve `spec` (a directory, or a hub id) to a local directory holding `files`.
/// Hub ids are looked up in the cache first; missing files are downloaded from `HF_ENDPOINT`
/// unless `HF_HUB_OFFLINE=1`.
pub fn resolve(spec: &str, kind: RepoKind, revision: &str, files: &[&str]) -> Result<PathBuf> {
    let as_path = super::paths::expand_path(spec);
    if as_path.is_dir() {
        return Ok(as_path);
    }
    if !looks_like_repo_id(spec) {
        bail!("{spec}: no such directory");
    }
    let cache = hub_cache();
    if let Some(dir) = cached_snapshot(&cache, kind, spec, revision)
        && files.iter().all(|f| dir.join(f).exists())
    {
        return Ok(dir);
    }
    if offline() {
        bail!(
            "{spec} (revision {revision}) is not in the hub cache {} and HF_HUB_OFFLINE is set; \
             run scripts/fetch-assets.sh for the bundled assets or unset HF_HUB_OFFLINE",
            cache.display()
        );
    }
    download(&endpoint(), &cache, kind, spec, revision, files)
        .with_context(|| format!("{spec} is not in the hub cache {} and downloading it failed", cache.display()))
}

/// Download `files` of a repository at `revision` from `endpoint` into the hub cache `cache`.
/// Returns the snapshot directory. Files absent from the repository are skipped (the caller
/// checks for what it needs); an HTTP error is an error.
pub fn download(
    endpoint: &str,
    cache: &Path,
    kind: RepoKind,
    repo_id: &str,
    revision: &str,
    files: &[&str],
) -> Result<PathBuf> {
    let agent: ureq::Agent = ureq::Agent::config_builder().max_redirects(0).build().into();
    let following: ureq::Agent = ureq::Agent::config_builder().build().into();
    let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty());
    let with_auth = |req: ureq::RequestBuilder<ureq::typestate::WithoutBody>| match &token {
        Some(t) => req.header("Authorization", format!("Bearer {t}")),
        None => req,
    };

    // The revision's commit hash and file list.
    let api = format!("{endpoint}/api/{}/{repo_id}/revision/{revision}", kind.folder_prefix());
    let info: serde_json::Value = with_auth(following.get(&api))
        .call()
        .with_context(|| format!("GET {api}"))?
        .body_mut()
        .read_json()
        .with_context(|| format!("GET {api}: invalid JSON"))?;
    let commit =
        info["sha"].as_str().filter(|s| is_commit_hash(s)).with_context(|| format!("GET {api}: no commit sha"))?;
    let listed: Vec<&str> = info["siblings"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["rfilename"].as_str()).collect())
        .unwrap_or_default();

    let repo = cache.join(repo_folder(kind, repo_id));
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(repo.join("blobs"))?;
    std::fs::create_dir_all(&snapshot)?;
    for file in files.iter().filter(|f| listed.contains(f)) {
        let target = snapshot.join(file);
        if target.exists() {
            continue;
        }
        let url = format!("{endpoint}/{}{repo_id}/resolve/{commit}/{file}", kind.url_prefix());
        // Metadata without following the redirect: for LFS files the content hash is in
        // X-Linked-Etag on the redirect response itself.
        let head = with_auth(agent.head(&url)).call().with_context(|| format!("HEAD {url}"))?;
        let header = |name: &str| head.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let etag = header("x-linked-etag")
            .or_else(|| header("etag"))
            .map(|e| e.trim_start_matches("W/").trim_matches('"').to_string())
            .filter(|e| !e.is_empty() && !e.contains(['/', '\\']))
            .with_context(|| format!("HEAD {url}: no ETag"))?;
        let blob = repo.join("blobs").join(&etag);
        if !blob.exists() {
            let mut resp = with_auth(following.get(&url)).call().with_context(|| format!("GET {url}"))?;
            let partial = blob.with_extension("incomplete");
            let mut out = std::fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
            let written = std::io::copy(&mut resp.body_mut().as_reader(), &mut out)
                .with_context(|| format!("downloading {url}"))?;
            out.sync_all()?;
            verify_blob(&partial, &etag, written).with_context(|| format!("downloading {url}"))?;
            std::fs::rename(&partial, &blob)?;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let depth = file.matches('/').count() + 2;
        let relative = PathBuf::from("../".repeat(depth)).join("blobs").join(&etag);
        std::os::unix::fs::symlink(&relative, &target).with_context(|| format!("linking {}", target.display()))?;
    }
    std::fs::create_dir_all(repo.join("refs"))?;
    if !is_commit_hash(revision) {
        crate::io::atomic::write_atomic(&repo.join("refs").join(revision), commit.as_bytes())?;
    }
    Ok(snapshot)
}

/// LFS etags are the sha256 of the content: check it. (Git etags are sha1 of a git blob header
/// plus content; those files are small and not checked.)
fn verify_blob(path: &Path, etag: &str, written: u64) -> Result<()> {
    if etag.len() != 64 || !etag.chars().all(|c| c.is_ascii_hexdigit()) {
        return Ok(());
    }
    let digest = sha256_file(path)?;
    if digest != etag.to_ascii_lowercase() {
        bail!("content of {written} bytes has sha256 {digest}, expected {etag}");
    }
    Ok(())
}

pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_and_folders() {
        assert!(looks_like_repo_id("sentence-transformers/all-MiniLM-L6-v2"));
        assert!(looks_like_repo_id("bert-base-uncased"));
        assert!(!looks_like_repo_id("./models/x"));
        assert!(!looks_like_repo_id("/abs/path"));
        assert!(!looks_like_repo_id("a/b/c"));
        assert_eq!(
            repo_folder(RepoKind::Dataset, "finetune/movie-review-polarity"),
            "datasets--finetune--movie-review-polarity"
        );
    }

    #[test]
    fn cached_snapshot_follows_refs() {
        let d = tempfile::tempdir().unwrap();
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let repo = d.path().join("models--org--m");
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::create_dir_all(repo.join("snapshots").join(commit)).unwrap();
        std::fs::write(repo.join("refs/main"), commit).unwrap();
        assert_eq!(
            cached_snapshot(d.path(), RepoKind::Model, "org/m", "main"),
            Some(repo.join("snapshots").join(commit))
        );
        assert_eq!(
            cached_snapshot(d.path(), RepoKind::Model, "org/m", commit),
            Some(repo.join("snapshots").join(commit))
        );
        assert_eq!(cached_snapshot(d.path(), RepoKind::Model, "org/m", "v2"), None);
    }
}
