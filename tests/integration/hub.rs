//! Hub downloads against a loopback HTTP server that speaks the parts of the Hugging Face hub
//! protocol we use: the revision API, `resolve` URLs, ETag / X-Linked-Etag, and a redirect to a
//! CDN for LFS files.

use super::common::*;
use finetune::io::hub::{RepoKind, cached_snapshot, download, sha256_file};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

const COMMIT: &str = "4f1c0a3e5b7d9f11223344556677889900aabbcc";

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Serve `routes` (keyed by "METHOD /path") on a loopback port; returns the base URL and a log of
/// the requests seen.
fn serve(routes: HashMap<String, Reply>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" || line.is_empty() {
                    break;
                }
            }
            let mut parts = request_line.split_whitespace();
            let key = format!("{} {}", parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            log.lock().unwrap().push(key.clone());
            let head = key.starts_with("HEAD ");
            let reply = routes.get(&key).or_else(|| routes.get(&key.replacen("HEAD ", "GET ", 1)));
            let (status, headers, body) = match reply {
                Some(r) => (r.status, r.headers.clone(), r.body.clone()),
                None => (404, vec![], b"not found".to_vec()),
            };
            let mut out = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
            for (k, v) in headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            stream.write_all(out.as_bytes()).unwrap();
            if !head {
                stream.write_all(&body).unwrap();
            }
        }
    });
    (base, seen)
}

/// Routes for `org/tiny-bert` holding the tiny fixture; `model_bytes` is what the CDN serves for
/// model.safetensors (normally the real file).
fn hub_routes(model_bytes: Vec<u8>) -> HashMap<String, Reply> {
    let file = |name: &str| std::fs::read(tiny_bert().join(name)).unwrap();
    let lfs_sha = sha256_file(&tiny_bert().join("model.safetensors")).unwrap();
    let mut r = HashMap::new();
    let siblings: Vec<_> = ["config.json", "model.safetensors", "tokenizer.json", "README.md"]
        .iter()
        .map(|f| serde_json::json!({ "rfilename": f }))
        .collect();
    r.insert(
        "GET /api/models/org/tiny-bert/revision/main".into(),
        Reply {
            status: 200,
            headers: vec![],
            body: serde_json::json!({"sha": COMMIT, "siblings": siblings}).to_string().into_bytes(),
        },
    );
    for (name, etag) in [
        ("config.json", "1111111111111111111111111111111111111111"),
        ("tokenizer.json", "2222222222222222222222222222222222222222"),
    ] {
        r.insert(
            format!("GET /org/tiny-bert/resolve/{COMMIT}/{name}"),
            Reply {
                status: 200,
                headers: vec![("ETag".into(), format!("\"{etag}\"")), ("X-Repo-Commit".into(), COMMIT.into())],
                body: file(name),
            },
        );
    }
    r.insert(
        format!("GET /org/tiny-bert/resolve/{COMMIT}/model.safetensors"),
        Reply {
            status: 302,
            headers: vec![
                ("Location".into(), "/cdn/blob-model".into()),
                ("X-Linked-Etag".into(), format!("\"{lfs_sha}\"")),
                ("X-Repo-Commit".into(), COMMIT.into()),
            ],
            body: vec![],
        },
    );
    r.insert("GET /cdn/blob-model".into(), Reply { status: 200, headers: vec![], body: model_bytes });
    r
}

#[test]
fn download_lays_out_the_hub_cache_and_reuses_it() {
    let (base, seen) = serve(hub_routes(std::fs::read(tiny_bert().join("model.safetensors")).unwrap()));
    let cache = tempfile::tempdir().unwrap();
    let files = ["config.json", "model.safetensors", "tokenizer.json"];
    let snap = download(&base, cache.path(), RepoKind::Model, "org/tiny-bert", "main", &files).unwrap();
    assert_eq!(snap, cache.path().join("models--org--tiny-bert/snapshots").join(COMMIT));
    for f in files {
        assert_eq!(std::fs::read(snap.join(f)).unwrap(), std::fs::read(tiny_bert().join(f)).unwrap(), "{f}");
        let link = std::fs::read_link(snap.join(f)).unwrap();
        assert!(link.starts_with("../../blobs"), "{f} should link into blobs/, got {}", link.display());
    }
    let lfs_sha = sha256_file(&tiny_bert().join("model.safetensors")).unwrap();
    assert!(cache.path().join("models--org--tiny-bert/blobs").join(&lfs_sha).is_file());
    assert_eq!(std::fs::read_to_string(cache.path().join("models--org--tiny-bert/refs/main")).unwrap(), COMMIT);
    assert_eq!(cached_snapshot(cache.path(), RepoKind::Model, "org/tiny-bert", "main"), Some(snap.clone()));
    let cdn_gets = seen.lock().unwrap().iter().filter(|r| r.as_str() == "GET /cdn/blob-model").count();
    assert_eq!(cdn_gets, 1);
    // A second download finds every file in the cache and fetches no content.
    download(&base, cache.path(), RepoKind::Model, "org/tiny-bert", "main", &files).unwrap();
    let cdn_gets = seen.lock().unwrap().iter().filter(|r| r.as_str() == "GET /cdn/blob-model").count();
    assert_eq!(cdn_gets, 1);
}

#[test]
fn corrupted_download_is_rejected() {
    let mut bytes = std::fs::read(tiny_bert().join("model.safetensors")).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    let (base, _) = serve(hub_routes(bytes));
    let cache = tempfile::tempdir().unwrap();
    let err =
        download(&base, cache.path(), RepoKind::Model, "org/tiny-bert", "main", &["model.safetensors"]).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("sha256"), "{msg}");
    assert!(!cache.path().join("models--org--tiny-bert/snapshots").join(COMMIT).join("model.safetensors").exists());
}

/// The CLI resolves a hub id through `HF_ENDPOINT` into `HF_HUB_CACHE`, then works offline.
#[test]
fn cli_resolves_a_hub_id_over_http_then_offline() {
    let (base, _) = serve(hub_routes(std::fs::read(tiny_bert().join("model.safetensors")).unwrap()));
    let cache = tempfile::tempdir().unwrap();
    let inspect = |offline: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_finetune"));
        cmd.args(["inspect", "org/tiny-bert"]).env("HF_HUB_CACHE", cache.path()).env("HF_ENDPOINT", &base);
        if offline {
            cmd.env("HF_HUB_OFFLINE", "1");
        } else {
            cmd.env_remove("HF_HUB_OFFLINE");
        }
        cmd.output().unwrap()
    };
    let out = inspect(false);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 layers, hidden 32"));
    let out = inspect(true);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
