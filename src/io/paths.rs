//! Paths a user writes in a recipe or an environment variable: `~` and `${VAR}` expansion, and
//! the home directory (caches live under it).

use std::path::PathBuf;

/// Expand a leading `~` and `${VAR}` / `${VAR:-default}` references in a path from a recipe.
pub fn expand_path(raw: &str) -> PathBuf {
    let mut out = String::new();
    let mut rest = raw;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let inner = &rest[start + 2..start + end];
        let (name, default) = inner.split_once(":-").unwrap_or((inner, ""));
        out.push_str(&std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_string()));
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    match out.strip_prefix("~/") {
        Some(tail) => home_dir().join(tail),
        None if out == "~" => home_dir(),
        None => PathBuf::from(out),
    }
}

pub fn home_dir() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_expansion() {
        // SAFETY: tests in this module do not read this variable concurrently.
        unsafe { std::env::set_var("FT_TEST_DIR", "/data") };
        assert_eq!(expand_path("${FT_TEST_DIR}/a"), PathBuf::from("/data/a"));
        assert_eq!(expand_path("${FT_UNSET_VAR:-/x}/b"), PathBuf::from("/x/b"));
        assert_eq!(expand_path("~/c"), home_dir().join("c"));
    }
}
