#!/usr/bin/env bash
# Build the patched dependencies that Cargo.toml's [patch.crates-io] points at.
#
# finetune carries its changes to two crates as diffs (patches/<crate>.patch) against the
# pristine crates.io source of the version Cargo.lock pins. This script downloads that source
# (checked by sha256), applies the diff with no fuzz, and writes the result to patches/<crate>/
# (ignored by git). Run it once before the first `cargo` command; re-running is cheap.
#
# Every run also checks that patches/<crate>/ is exactly pristine + patch, so an edit made in
# the generated tree cannot silently drift from what the repository carries (CI runs this too).
#
# Usage:
#   scripts/patch-deps.sh               build missing trees, check all of them
#   scripts/patch-deps.sh --update NAME record edits made in patches/NAME/ into patches/NAME.patch
#   scripts/patch-deps.sh --reset NAME  throw away patches/NAME/ and build it again
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
PATCHES="$root/patches"
CACHE="${FINETUNE_DOWNLOADS:-${XDG_CACHE_HOME:-$HOME/.cache}/finetune/downloads}/crates"
mkdir -p "$CACHE"

# name version sha256-of-the-.crate-file (the checksum crates.io publishes)
CRATES=(
  "burn-flex 0.22.1 7e05d08ef48d738fadf13f8689b634f8b396d5a8cbb27d0a87f61e163d241846"
  "cubecl-cuda 0.11.3 dacd0c047f781b468d094705ef042f28d68944bf862c049f5cf0b7396f730bb5"
)

say() { echo "patch-deps: $*" >&2; }
die() { say "$*"; exit 1; }

# Download NAME-VERSION.crate into the cache (crates.io's download host; cargo's own fetch as
# the fallback) and check its sha256.
fetch_crate() {
  local name=$1 version=$2 sha=$3 file="$CACHE/$1-$2.crate"
  if [[ ! -f $file ]] || ! echo "$sha  $file" | sha256sum -c --status; then
    say "downloading $name $version from crates.io"
    if ! curl -sSfL -o "$file.tmp" "https://static.crates.io/crates/$name/$name-$version.crate"; then
      local tmp
      tmp=$(mktemp -d)
      mkdir -p "$tmp/src" && : >"$tmp/src/lib.rs"
      printf '[package]\nname = "fetch-one"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\n%s = "=%s"\n' \
        "$name" "$version" >"$tmp/Cargo.toml"
      (cd "$tmp" && cargo fetch -q) || die "could not download $name $version (crates.io unreachable?)"
      cp "$(find "${CARGO_HOME:-$HOME/.cargo}/registry/cache" -name "$name-$version.crate" | head -1)" "$file.tmp"
      rm -rf "$tmp"
    fi
    mv "$file.tmp" "$file"
  fi
  echo "$sha  $file" | sha256sum -c --status || die "$file: sha256 is not $sha"
  echo "$file"
}

# pristine + patch, built in a new directory $2 from the crate of $1's line.
build_tree() {
  local name=$1 version=$2 sha=$3 out=$4 crate
  crate=$(fetch_crate "$name" "$version" "$sha")
  local tmp
  tmp=$(mktemp -d)
  tar xzf "$crate" -C "$tmp"
  if command -v patch >/dev/null; then
    patch -s -p1 --fuzz=0 --no-backup-if-mismatch -d "$tmp/$name-$version" <"$PATCHES/$name.patch"
  else
    (cd "$tmp/$name-$version" && git apply -p1 "$PATCHES/$name.patch")
  fi || die "patches/$name.patch does not apply to $name $version"
  rm -rf "$out"
  mv "$tmp/$name-$version" "$out"
  rm -rf "$tmp"
}

# The tree that is built for line "$@" must equal patches/NAME.
check_tree() {
  local name=$1 version=$2 sha=$3 tmp
  tmp=$(mktemp -d)
  build_tree "$name" "$version" "$sha" "$tmp/expected"
  if ! diff -r -q "$tmp/expected" "$PATCHES/$name" >/dev/null; then
    diff -r -q "$tmp/expected" "$PATCHES/$name" | sed 's/^/  /' >&2 || true
    rm -rf "$tmp"
    die "patches/$name/ differs from $name $version + patches/$name.patch: run
  scripts/patch-deps.sh --update $name   to record the edits in the patch, or
  scripts/patch-deps.sh --reset $name    to discard them"
  fi
  rm -rf "$tmp"
}

line_of() {
  local l
  for l in "${CRATES[@]}"; do
    [[ ${l%% *} == "$1" ]] && { echo "$l"; return; }
  done
  die "unknown crate '$1' (patched: $(printf '%s ' "${CRATES[@]%% *}"))"
}

case "${1:-}" in
  --update)
    [[ -n ${2:-} ]] || die "--update needs a crate name"
    read -r name version sha <<<"$(line_of "$2")"
    crate=$(fetch_crate "$name" "$version" "$sha")
    tmp=$(mktemp -d)
    tar xzf "$crate" -C "$tmp"
    mv "$tmp/$name-$version" "$tmp/a"
    cp -r "$PATCHES/$name" "$tmp/b"
    rm -f "$tmp/b/.cargo-ok"
    # No timestamps in the file headers, so the patch changes only when the code does.
    (cd "$tmp" && diff -ruN a b | sed -E 's/^((\+\+\+|---) [^\t]+)\t.*/\1/' >"$PATCHES/$name.patch.tmp") || true
    mv "$PATCHES/$name.patch.tmp" "$PATCHES/$name.patch"
    rm -rf "$tmp"
    say "wrote patches/$name.patch ($(grep -c '^[-+][^-+]' "$PATCHES/$name.patch") changed lines)"
    ;;
  --reset)
    [[ -n ${2:-} ]] || die "--reset needs a crate name"
    read -r name version sha <<<"$(line_of "$2")"
    build_tree "$name" "$version" "$sha" "$PATCHES/$name"
    say "rebuilt patches/$name/"
    ;;
  "")
    for l in "${CRATES[@]}"; do
      read -r name version sha <<<"$l"
      if [[ ! -f $PATCHES/$name/Cargo.toml ]]; then
        build_tree "$name" "$version" "$sha" "$PATCHES/$name"
        say "built patches/$name/ ($name $version + patches/$name.patch)"
      else
        check_tree "$name" "$version" "$sha"
      fi
    done
    ;;
  *) die "unknown argument '$1' (see the header of $0)" ;;
esac
