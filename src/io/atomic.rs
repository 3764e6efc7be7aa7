//! Crash-safe file writes: a reader sees either the old file or the complete new one, never a
//! half-written file, because the bytes go to a sibling temp file that is renamed over the target.

use anyhow::{Context, Result};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The sibling temp path used while `path` is being written.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}

/// Write `bytes` to `path` atomically (temp file, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes).map_err(Into::into))
}

/// Write through `fill` into a temp file, then rename it onto `path`.
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&mut fs::File) -> Result<()>) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).with_context(|| format!("creating directory {}", parent.display()))?;
    }
    let tmp = temp_path(path);
    let result = (|| {
        let mut file = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        // A full disk shows here: the error names the file being written.
        fill(&mut file).with_context(|| format!("writing {}", path.display()))?;
        file.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
        super::failpoint::hit("atomic.before_rename");
        fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Replace directory `dest` by a directory filled by `fill`, atomically from a reader's view:
/// the new content is built in a temp sibling and swapped in with renames.
pub fn replace_dir_atomic(dest: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temp_path(dest);
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    if let Err(e) = fill(&tmp) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let old = dest.with_file_name(format!(
        "{}.old{}",
        dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    ));
    super::failpoint::hit("replace_dir.filled");
    if dest.exists() {
        fs::rename(dest, &old).with_context(|| format!("moving aside {}", dest.display()))?;
    }
    super::failpoint::hit("replace_dir.moved_aside");
    fs::rename(&tmp, dest).with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))?;
    if old.exists() {
        fs::remove_dir_all(&old)?;
    }
    Ok(())
}

/// Clean up after writes that a kill interrupted, in `dir` (not below it): temp files and
/// folders of `write_atomic` / `replace_dir_atomic` (`<name>.tmp<pid>`) are removed, and a folder
/// that `replace_dir_atomic` had moved aside (`<name>.old<pid>`) is put back if its replacement
/// never arrived, else removed. Returns what was done, for the log.
pub fn recover(dir: &Path) -> Result<Vec<String>> {
    let mut done = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else { return Ok(done) };
    let suffix = |name: &str, tag: &str| -> Option<String> {
        let (base, pid) = name.rsplit_once(tag)?;
        (!base.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())).then(|| base.to_string())
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let remove = |p: &Path| if p.is_dir() { fs::remove_dir_all(p) } else { fs::remove_file(p) };
        if suffix(&name, ".tmp").is_some() {
            remove(&path).with_context(|| format!("removing the leftover {}", path.display()))?;
            done.push(format!("removed {}, left by an interrupted write", path.display()));
        } else if let Some(base) = suffix(&name, ".old") {
            let original = dir.join(&base);
            if original.exists() {
                remove(&path).with_context(|| format!("removing the leftover {}", path.display()))?;
                done.push(format!("removed {}, left by an interrupted replacement", path.display()));
            } else {
                fs::rename(&path, &original).with_context(|| format!("restoring {}", original.display()))?;
                done.push(format!("restored {} from {}", original.display(), path.display()));
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_content_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn failed_fill_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.bin");
        write_atomic(&p, b"old").unwrap();
        let r = write_atomic_with(&p, |_| anyhow::bail!("disk full"));
        assert!(r.is_err());
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
