//! `push` / `pull` against a real OCI registry (Debian's `docker-registry`, CNCF
//! distribution; `.ci/run` installs it): round trip to byte-identical PEFT files and the same
//! local digest, no blob uploaded twice (counted in the registry's access log), a tampered
//! blob refused with nothing stored, blobs streamed through the store's `tmp/` (seen half-way
//! through a holding proxy) and held to their declared size, and clear errors for what does
//! not exist.

use super::common::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A registry on a free loopback port with its own storage, stopped on drop.
struct Registry {
    child: Child,
    addr: String,
    storage: PathBuf,
    log: PathBuf,
}

impl Registry {
    fn start(dir: &Path) -> Registry {
        Registry::start_with(dir, false)
    }

    /// `secure`: TLS with the self-signed certificate and basic auth from `htpasswd` in
    /// `tests/data/registry/` (user `loradex`, password `s3cret-pass`).
    fn start_with(dir: &Path, secure: bool) -> Registry {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let (storage, log) = (dir.join("storage"), dir.join("registry.log"));
        let cfg = dir.join("config.yml");
        let mut yml = format!("version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n", storage.display());
        if secure {
            let d = secure_dir();
            yml.push_str(&format!("  tls:\n    certificate: {}\n    key: {}\n", d.join("cert.pem").display(), d.join("key.pem").display()));
            yml.push_str(&format!("auth:\n  htpasswd:\n    realm: loradex-test\n    path: {}\n", d.join("htpasswd").display()));
        }
        std::fs::write(&cfg, yml).unwrap();
        let bin = ["docker-registry", "registry"].into_iter().find(|b| Command::new("sh").args(["-c", &format!("command -v {b}")]).output().is_ok_and(|o| o.status.success()));
        let bin = bin.expect("docker-registry is not installed (apt-get install -y docker-registry; .ci/run does this)");
        let mut child = Command::new(bin).args(["serve", cfg.to_str().unwrap()]).stdout(std::fs::File::create(dir.join("access.log")).unwrap()).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();
        let addr = format!("127.0.0.1:{port}");
        for _ in 0..100 {
            if std::net::TcpStream::connect(&addr).is_ok() && (secure || http(&addr, "GET", "/v2/", None, None).0 == 200) {
                return Registry { child, addr, storage, log };
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the registry did not start: {}", std::fs::read_to_string(&log).unwrap_or_default());
    }

    /// Blob uploads the registry has completed (its access log's `PUT .../blobs/uploads/`).
    fn uploads(&self) -> usize {
        std::fs::read_to_string(self.log.with_file_name("access.log")).unwrap().lines().filter(|l| l.contains("\"PUT /v2/") && l.contains("/blobs/uploads/")).count()
    }

    /// The file holding a blob in the registry's storage.
    fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.storage.join("docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).map(|p| (p.file_name().unwrap().to_string_lossy().to_string(), std::fs::read(&p).unwrap())).collect();
    v.sort();
    v
}

#[test]
fn push_pull_round_trip_dedup_and_tamper() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(tmp.path());
    let (a, b, c) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"));
    let digest = import(&a, &bert().join("adapter"), "cs", &bert().join("base"));
    let target = format!("{}/team/cs:v1", reg.addr);
    let p = json(&ok(&a, &["--json", "push", "cs", &target, "--plain-http"]));
    assert_eq!(p["uploaded"], 3, "{p}");
    assert!(p["manifest_digest"].as_str().unwrap().starts_with("sha256:"));
    let uploads = reg.uploads();
    assert_eq!(uploads, 3, "config blob and two PEFT layers");
    // pushing the same adapter again sends no blob (HEAD first), and the same manifest
    let again = json(&ok(&a, &["--json", "push", "cs", &target, "--plain-http"]));
    assert_eq!((again["uploaded"].as_u64(), again["skipped"].as_u64()), (Some(0), Some(3)), "{again}");
    assert_eq!(again["manifest_digest"], p["manifest_digest"]);
    assert_eq!(reg.uploads(), uploads, "a second push uploaded a blob");
    // another tag of the same content uploads nothing either
    ok(&a, &["push", "cs", &format!("{}/team/cs:v2", reg.addr), "--plain-http"]);
    assert_eq!(reg.uploads(), uploads);

    // pull into a fresh home: the default name is REPO:TAG, the local digest is the same, and
    // the exported PEFT files are byte-identical
    let got = json(&ok(&b, &["--json", "pull", &target, "--plain-http"]));
    assert_eq!(got["name"], "team/cs:v1");
    assert_eq!(got["digest"].as_str().unwrap(), digest.trim());
    let by_digest = format!("{}/team/cs@{}", reg.addr, p["manifest_digest"].as_str().unwrap());
    let named = json(&ok(&b, &["--json", "pull", &by_digest, "--plain-http", "--name", "cs:pinned"]));
    assert_eq!(named["digest"], got["digest"]);
    let (ea, eb) = (tmp.path().join("ea"), tmp.path().join("eb"));
    ok(&a, &["export", "cs", ea.to_str().unwrap()]);
    ok(&b, &["export", "team/cs:v1", eb.to_str().unwrap()]);
    assert_eq!(files_of(&ea), files_of(&eb));
    ok(&b, &["verify"]);

    // a blob overwritten in the registry's storage is refused at pull, and nothing is stored
    let weights = std::fs::read(ea.join("adapter_model.safetensors")).unwrap();
    let wd = loradex::digest::Digest::of(&weights).to_string();
    let f = reg.blob_file(&wd);
    let mut bad = std::fs::read(&f).unwrap();
    assert_eq!(bad, weights);
    let n = bad.len();
    bad[n - 1] ^= 0xff;
    std::fs::write(&f, &bad).unwrap();
    let err = fails(&c, &["pull", &target, "--plain-http"]);
    assert!(err.contains("digest") || err.contains("Digest"), "{err}");
    let ls = json(&ok(&c, &["--json", "ls"]));
    assert!(ls.as_array().is_none_or(|a| a.is_empty()), "a refused pull stored {ls}");

    // what does not exist is an error naming it; a registry that is down is a clear error
    let err = fails(&c, &["pull", &format!("{}/team/nothing:v1", reg.addr), "--plain-http"]);
    assert!(err.contains("nothing"), "{err}");
    let err = fails(&a, &["push", "cs", "127.0.0.1:1/team/cs:v1", "--plain-http"]);
    assert!(err.contains("registry"), "{err}");
    let err = fails(&a, &["push", "cs", "no-registry", "--plain-http"]);
    assert!(err.contains("REGISTRY/REPO"), "{err}");
}

/// Credentials come from docker's config file when no --username is given.
#[test]
fn docker_config_auths_are_read() {
    use loradex::registry::docker_auth;
    use oci_client::secrets::RegistryAuth;
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("config.json");
    std::fs::write(&p, r#"{"auths": {"https://reg.example:5000": {"auth": "dXNlcjpzM2NyM3Q="}}}"#).unwrap();
    assert!(matches!(docker_auth(&p, "reg.example:5000").unwrap(), RegistryAuth::Basic(u, pw) if u == "user" && pw == "s3cr3t"));
    assert!(matches!(docker_auth(&p, "other:5000").unwrap(), RegistryAuth::Anonymous));
    assert!(matches!(docker_auth(&tmp.path().join("absent.json"), "x").unwrap(), RegistryAuth::Anonymous));
    std::fs::write(&p, r#"{"auths": {"reg.example": {"auth": "not base64!"}}}"#).unwrap();
    assert!(docker_auth(&p, "reg.example").is_err());
}

/// `serve --registry`: an empty home answers for an adapter that exists only in the
/// registry (concurrent first requests pull it once), 404 for one that exists nowhere, and
/// 503 with a message once the registry is down, while resident adapters keep answering.
#[test]
fn serve_pulls_missing_adapters_from_the_registry() {
    let tmp = tempfile::tempdir().unwrap();
    let mut reg = Registry::start(tmp.path());
    let trainer = tmp.path().join("trainer");
    import(&trainer, &bert().join("adapter"), "cs", &bert().join("base"));
    import(&trainer, &bert().join("adapters_multi/other"), "other", &bert().join("base"));
    ok(&trainer, &["push", "cs", &format!("{}/team/cs:v1", reg.addr), "--plain-http"]);
    ok(&trainer, &["push", "other", &format!("{}/team/other:v1", reg.addr), "--plain-http"]);
    let replica = tmp.path().join("replica");
    let srv = Server::start(&replica, &bert().join("base"), &["--registry", &format!("{}/team", reg.addr), "--plain-http"]);
    let body = |a: &str| format!("{{\"adapter\": \"{a}\", \"texts\": [\"환불해 주세요\", \"thank you\"]}}");
    // four concurrent first requests: one pull, four answers
    let answers: Vec<(u16, String)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4).map(|_| s.spawn(|| http(&srv.addr, "POST", "/v1/classify", Some(&body("cs:v1")), None))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (st, b) in &answers {
        assert_eq!(*st, 200, "{b}");
    }
    let access = std::fs::read_to_string(reg.log.with_file_name("access.log")).unwrap();
    let manifest_gets = access.lines().filter(|l| l.contains("\"GET /v2/team/cs/manifests/v1")).count();
    assert_eq!(manifest_gets, 1, "concurrent first requests pulled more than once");
    // the same answers as the adapter served from a local store (one request each, so both
    // run the same batch shape: the concurrent ones above may have been batched together)
    let local = Server::start(&trainer, &bert().join("base"), &[]);
    let (_, want) = http(&local.addr, "POST", "/v1/classify", Some(&body("cs")), None);
    let (_, got) = http(&srv.addr, "POST", "/v1/classify", Some(&body("cs:v1")), None);
    assert_eq!(json(&got)["results"], json(&want)["results"]);
    let (st, e) = http(&srv.addr, "POST", "/v1/classify", Some(&body("nowhere:v1")), None);
    assert_eq!(st, 404, "{e}");
    // the registry goes down: a new adapter is 503 with a message, the resident one still works
    let _ = reg.child.kill();
    let _ = reg.child.wait();
    let (st, e) = http(&srv.addr, "POST", "/v1/classify", Some(&body("other:v1")), None);
    assert_eq!(st, 503, "{e}");
    assert!(json(&e)["error"]["message"].as_str().unwrap().contains("registry"), "{e}");
    let (st, b) = http(&srv.addr, "POST", "/v1/classify", Some(&body("cs:v1")), None);
    assert_eq!(st, 200, "{b}");
}

fn secure_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/registry")
}

/// Runs the binary with `stdin` on its standard input: (success, stdout, stderr).
fn run_stdin(home: &Path, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut c = Command::new(bin())
        .args(["--home", home.to_str().unwrap()])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stdout).into(), String::from_utf8_lossy(&o.stderr).into())
}

/// Basic auth over TLS: the registry with `htpasswd` and a self-signed certificate, trusted
/// with `--ca-cert`. The right password pushes and pulls; a wrong one is a clear 401 error, and
/// an untrusted certificate a TLS error.
#[test]
fn basic_auth_over_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start_with(tmp.path(), true);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    import(&a, &bert().join("adapter"), "cs", &bert().join("base"));
    let ca = secure_dir().join("ca.pem");
    let ca = ca.to_str().unwrap();
    let target = format!("{}/team/cs:v1", reg.addr);
    let (okp, out, err) = run_stdin(&a, &["push", "cs", &target, "--username", "loradex", "--password-stdin", "--ca-cert", ca], "s3cret-pass\n");
    assert!(okp, "{out}{err}");
    let (okp, out, err) = run_stdin(&b, &["pull", &target, "--username", "loradex", "--password-stdin", "--ca-cert", ca], "s3cret-pass\n");
    assert!(okp && out.contains("team/cs:v1"), "{out}{err}");
    let (okp, _, err) = run_stdin(&b, &["pull", &target, "--name", "x", "--username", "loradex", "--password-stdin", "--ca-cert", ca], "wrong\n");
    assert!(!okp && (err.contains("401") || err.to_lowercase().contains("unauthorized")), "{err}");
    let (okp, _, err) = run_stdin(&b, &["pull", &target, "--name", "y", "--username", "loradex", "--password-stdin"], "s3cret-pass\n");
    assert!(!okp && err.contains("registry"), "{err}");
    assert!(fails(&b, &["show", "x"]).contains("not found"));
}

/// What a hostile or broken registry may send as a manifest is refused before any blob is
/// fetched, each with a message naming the problem.
#[test]
fn hostile_manifests_are_refused_before_any_fetch() {
    use loradex::registry::check_manifest;
    let d = |c: &str| format!("sha256:{}", c.repeat(64));
    let good = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.loradex.adapter.v1+json",
        "config": {"mediaType": "application/vnd.loradex.adapter.v1+json", "digest": d("a"), "size": 100},
        "layers": [
            {"mediaType": "application/vnd.loradex.peft.config.v1+json", "digest": d("b"), "size": 200, "annotations": {"org.opencontainers.image.title": "adapter_config.json"}},
            {"mediaType": "application/vnd.loradex.peft.safetensors.v1", "digest": d("c"), "size": 4096, "annotations": {"org.opencontainers.image.title": "adapter_model.safetensors"}}
        ]
    });
    let raw = serde_json::to_vec(&good).unwrap();
    let m = check_manifest(&raw, None, "r/x:1").unwrap();
    assert_eq!((m.config_layer, m.weights_layer), (0, 1));
    let own = format!("sha256:{}", loradex::digest::Digest::of(&raw).hex());
    assert!(check_manifest(&raw, Some(&own), "r/x:1").is_ok());
    let err = |v: &serde_json::Value, digest: Option<&str>| match check_manifest(&serde_json::to_vec(v).unwrap(), digest, "r/x:1") {
        Ok(_) => panic!("accepted {v}"),
        Err(e) => e.to_string(),
    };
    assert!(err(&good, Some(&d("0"))).contains("does not match its digest"));
    let mut v = good.clone();
    v["artifactType"] = "application/vnd.oci.image.config.v1+json".into();
    v["config"]["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
    assert!(err(&v, None).contains("not a loradex adapter"));
    let mut v = good.clone();
    v["layers"][1]["annotations"]["org.opencontainers.image.title"] = "../../etc/passwd".into();
    assert!(err(&v, None).contains("no layer titled adapter_model.safetensors"));
    for (path, size, want) in [("/layers/1/size", serde_json::json!(-1), "declared size -1"), ("/layers/1/size", serde_json::json!(1u64 << 62), "over the"), ("/config/size", serde_json::json!(1 << 21), "over the")] {
        let mut v = good.clone();
        *v.pointer_mut(path).unwrap() = size;
        assert!(err(&v, None).contains(want), "{path}");
    }
    for bad in ["sha256:../../x", "md5:abc", &d("A"), ""] {
        let mut v = good.clone();
        v["layers"][0]["digest"] = bad.into();
        let e = err(&v, None);
        assert!(e.contains("not a sha256 digest") || e.contains("not an OCI image manifest"), "{bad:?}: {e}");
    }
    assert!(check_manifest(&vec![b' '; (1 << 20) + 1], None, "r/x:1").unwrap_err().to_string().contains("a manifest over"));
    assert!(check_manifest(b"{\"layers\": 3", None, "r/x:1").unwrap_err().to_string().contains("not an OCI image manifest"));
}

/// `pull` killed with SIGKILL at any moment (before, during or after the download, or while
/// storing) leaves a store that verifies, holds the adapter whole or not at all, and takes
/// the next pull; `gc` then removes what the dead writer left in `tmp/`. The kill times are
/// spread over a pull's duration, so some land mid-way; every outcome is checked, so the test
/// holds whichever moment each kill hits.
#[test]
fn a_pull_killed_at_any_moment_leaves_a_consistent_store() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(tmp.path());
    let a = tmp.path().join("a");
    let digest = import(&a, &bert().join("adapter"), "cs", &bert().join("base"));
    let target = format!("{}/team/cs:v1", reg.addr);
    ok(&a, &["push", "cs", &target, "--plain-http"]);
    // how long one whole pull takes here
    let t = std::time::Instant::now();
    ok(&tmp.path().join("timing"), &["pull", &target, "--plain-http"]);
    let whole = t.elapsed();
    let b = tmp.path().join("b");
    let mut outcomes = (0, 0);
    for i in 0..12u32 {
        let mut child = Command::new(bin()).arg("--home").arg(&b).args(["pull", &target, "--plain-http"]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
        std::thread::sleep(whole * i / 10);
        let _ = child.kill();
        let _ = child.wait();
        ok(&b, &["verify"]);
        let ls = json(&ok(&b, &["--json", "ls"]));
        let rows = ls.as_array().cloned().unwrap_or_default();
        match rows.as_slice() {
            [] => outcomes.0 += 1,
            [r] => {
                assert_eq!(r["digest"].as_str().unwrap(), digest.trim(), "a killed pull stored other content: {r}");
                outcomes.1 += 1;
                ok(&b, &["rm", "team/cs:v1"]);
            }
            more => panic!("a killed pull stored {more:?}"),
        }
    }
    assert!(outcomes.0 > 0, "no kill landed before the pull finished: {outcomes:?}");
    // whatever a dead writer left in tmp/ goes at the next gc; the next pull succeeds
    ok(&b, &["gc", "--grace", "0s"]);
    let left: Vec<_> = std::fs::read_dir(b.join("tmp")).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "temp files survived gc: {left:?}");
    let got = json(&ok(&b, &["--json", "pull", &target, "--plain-http"]));
    assert_eq!(got["digest"].as_str().unwrap(), digest.trim());
    ok(&b, &["verify"]);
}

/// A push to another repository of the same registry mounts the blobs it has elsewhere (OCI
/// cross-repository mount: no upload) from `--mount-from` or from where the adapter was
/// pulled; a source that lacks them falls back to uploading.
#[test]
fn a_push_to_another_repository_mounts_blobs_instead_of_uploading() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(tmp.path());
    let (a, b, c) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"));
    let digest = import(&a, &bert().join("adapter"), "cs", &bert().join("base"));
    ok(&a, &["push", "cs", &format!("{}/team/cs:v1", reg.addr), "--plain-http"]);
    let base_uploads = reg.uploads();
    assert_eq!(base_uploads, 3);
    // named source: every blob mounted, nothing uploaded
    let p = json(&ok(&a, &["--json", "push", "cs", &format!("{}/other/cs:v1", reg.addr), "--plain-http", "--mount-from", "team/cs"]));
    assert_eq!((p["mounted"].as_u64(), p["uploaded"].as_u64(), p["skipped"].as_u64()), (Some(3), Some(0), Some(0)), "{p}");
    assert_eq!(reg.uploads(), base_uploads, "a mounted push uploaded");
    let got = json(&ok(&b, &["--json", "pull", &format!("{}/other/cs:v1", reg.addr), "--plain-http"]));
    assert_eq!(got["digest"].as_str().unwrap(), digest.trim());
    // a pulled adapter mounts its PEFT layers from the repository it came from, unasked; its
    // metadata blob is new (the provenance now records the pull), so that one is uploaded
    let p = json(&ok(&b, &["--json", "push", "other/cs:v1", &format!("{}/third/cs:v1", reg.addr), "--plain-http"]));
    assert_eq!((p["mounted"].as_u64(), p["uploaded"].as_u64()), (Some(2), Some(1)), "{p}");
    assert_eq!(reg.uploads(), base_uploads + 1);
    // a source without the blobs: uploaded after all, and the result pulls back the same
    let p = json(&ok(&a, &["--json", "push", "cs", &format!("{}/fourth/cs:v1", reg.addr), "--plain-http", "--mount-from", "nobody/here"]));
    assert_eq!((p["mounted"].as_u64(), p["uploaded"].as_u64()), (Some(0), Some(3)), "{p}");
    let got = json(&ok(&c, &["--json", "pull", &format!("{}/fourth/cs:v1", reg.addr), "--plain-http"]));
    assert_eq!(got["digest"].as_str().unwrap(), digest.trim());
}

/// A loopback TCP proxy to a registry. On a connection that asks for `/blobs/<hold>` it
/// forwards the response headers and the first `after` body bytes, then holds the rest until
/// `release`, so a test can look at the puller while that blob is half-way.
struct HoldingProxy {
    addr: String,
    held: Arc<AtomicBool>,
    release: Arc<AtomicBool>,
}

/// When a proxied response stops: once the connection asked for the blob (`armed`), after
/// `after` bytes of its body.
struct Gate {
    armed: Arc<AtomicBool>,
    after: usize,
    held: Arc<AtomicBool>,
    release: Arc<AtomicBool>,
}

impl HoldingProxy {
    fn start(upstream: &str, hold: &str, after: usize) -> HoldingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (held, release) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let (upstream, needle, h, r) = (upstream.to_string(), format!("/blobs/{hold}"), held.clone(), release.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let server = TcpStream::connect(&upstream).unwrap();
                let armed = Arc::new(AtomicBool::new(false));
                let gate = Gate { armed: armed.clone(), after, held: h.clone(), release: r.clone() };
                let (c2, s2, needle) = (client.try_clone().unwrap(), server.try_clone().unwrap(), needle.clone());
                std::thread::spawn(move || proxy_requests(c2, s2, &needle, &armed));
                std::thread::spawn(move || proxy_responses(server, client, gate));
            }
        });
        HoldingProxy { addr, held, release }
    }
}

impl Drop for HoldingProxy {
    fn drop(&mut self) {
        self.release.store(true, Ordering::SeqCst);
    }
}

/// Client to registry, arming the gate when a request names the held blob.
fn proxy_requests(mut from: TcpStream, mut to: TcpStream, needle: &str, armed: &AtomicBool) {
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = from.read(&mut buf) {
        if String::from_utf8_lossy(&buf[..n]).contains(needle) {
            armed.store(true, Ordering::SeqCst);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// Registry to client; once armed, counts the body after the headers' blank line and holds
/// at `after` bytes until released.
fn proxy_responses(mut from: TcpStream, mut to: TcpStream, g: Gate) {
    let (mut buf, mut last4, mut in_body, mut body, mut done) = ([0u8; 1024], [0u8; 4], false, 0usize, false);
    while let Ok(n @ 1..) = from.read(&mut buf) {
        let mut start = 0;
        if g.armed.load(Ordering::SeqCst) && !done {
            for i in 0..n {
                if !in_body {
                    last4.rotate_left(1);
                    last4[3] = buf[i];
                    in_body = &last4 == b"\r\n\r\n";
                    continue;
                }
                body += 1;
                if body == g.after {
                    if to.write_all(&buf[..=i]).is_err() {
                        return;
                    }
                    start = i + 1;
                    g.held.store(true, Ordering::SeqCst);
                    while !g.release.load(Ordering::SeqCst) {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    done = true;
                    break;
                }
            }
        }
        if to.write_all(&buf[start..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// Polls `f` every 10 ms for up to 20 s.
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t = std::time::Instant::now();
    while !f() {
        assert!(t.elapsed() < std::time::Duration::from_secs(20), "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn dir_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    v.sort();
    v
}

/// `pull` streams each blob to a temp file in the store's `tmp/` as it arrives: with the
/// weights held half-way by a proxy, their first half is already on disk there (and nothing
/// is in `blobs/` or the index); once released, that same file (same inode) is renamed into
/// `blobs/sha256/`, `tmp/` is empty, the progress callback saw every byte, and the local
/// digest is the pushed adapter's.
#[test]
fn a_pulled_blob_streams_into_a_temp_file_and_is_renamed_into_the_store() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(tmp.path());
    let a = tmp.path().join("a");
    let digest = import(&a, &bert().join("adapter"), "cs", &bert().join("base"));
    ok(&a, &["push", "cs", &format!("{}/team/cs:v1", reg.addr), "--plain-http"]);
    let weights = std::fs::read(bert().join("adapter/adapter_model.safetensors")).unwrap();
    let wd = loradex::digest::Digest::of(&weights);
    let half = weights.len() / 2;
    let proxy = HoldingProxy::start(&reg.addr, &wd.to_string(), half);
    let home = tmp.path().join("b");
    let src = format!("{}/team/cs:v1", proxy.addr);
    let seen = Arc::new(std::sync::Mutex::new((0u64, 0u64)));
    let on: loradex::registry::OnBytes = {
        let seen = seen.clone();
        Box::new(move |done, total| *seen.lock().unwrap() = (done, total))
    };
    let pull = {
        let home = home.clone();
        std::thread::spawn(move || {
            let mut store = loradex::store::Store::open(&home).unwrap();
            loradex::registry::pull_with(&mut store, &src, None, &loradex::registry::Remote { plain_http: true, ..Default::default() }, Some(on))
        })
    };
    wait_until("the proxy to hold the weights half-way", || proxy.held.load(Ordering::SeqCst) || pull.is_finished());
    assert!(!pull.is_finished(), "the pull ended before the weights were held: {:?}", pull.join().unwrap().map(|p| p.digest));
    // mid-blob: the half received is in a temp file in tmp/, growing as it arrives
    let mut staged = None;
    let t = std::time::Instant::now();
    while staged.is_none() && t.elapsed() < std::time::Duration::from_secs(10) {
        staged = dir_files(&home.join("tmp")).into_iter().find(|p| std::fs::read(p).is_ok_and(|b| b == weights[..half]));
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let staged = staged.unwrap_or_else(|| panic!("no temp file in tmp/ holds the {half} weights bytes received so far: {:?}", dir_files(&home.join("tmp"))));
    assert!(staged.file_name().unwrap().to_str().unwrap().starts_with(&format!("blob-{}-", std::process::id())), "{staged:?}");
    let ino = std::fs::metadata(&staged).unwrap().ino();
    let blob = home.join("blobs/sha256").join(wd.hex());
    assert!(!blob.exists(), "the weights reached blobs/ before they were whole");
    assert!(json(&ok(&home, &["--json", "ls"])).as_array().is_none_or(|a| a.is_empty()), "indexed mid-pull");
    proxy.release.store(true, Ordering::SeqCst);
    let pulled = pull.join().unwrap().unwrap();
    assert_eq!(pulled.digest.to_string(), digest.trim());
    assert_eq!(std::fs::read(&blob).unwrap(), weights);
    assert_eq!(std::fs::metadata(&blob).unwrap().ino(), ino, "the stored weights are not the temp file renamed");
    assert!(dir_files(&home.join("tmp")).is_empty(), "temp files left: {:?}", dir_files(&home.join("tmp")));
    let (done, total) = *seen.lock().unwrap();
    assert!(done == total && done > weights.len() as u64, "progress {done}/{total}");
    ok(&home, &["verify"]);
}

/// Stores `manifest` (an OCI image manifest) in the registry as `repo:tag`.
fn put_manifest(addr: &str, repo: &str, tag: &str, manifest: &[u8]) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "PUT /v2/{repo}/manifests/{tag} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", manifest.len()).unwrap();
    s.write_all(manifest).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 201"), "{out}");
}

/// A registry serving a weights blob longer than its manifest declares: the pull stops at the
/// declared size with an error saying so, and leaves no temp file, no blob and no index row.
#[test]
fn a_blob_longer_than_declared_is_refused_and_leaves_no_temp_file() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(tmp.path());
    let a = tmp.path().join("a");
    import(&a, &bert().join("adapter"), "cs", &bert().join("base"));
    let p = json(&ok(&a, &["--json", "push", "cs", &format!("{}/team/cs:v1", reg.addr), "--plain-http"]));
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(reg.blob_file(p["manifest_digest"].as_str().unwrap())).unwrap()).unwrap();
    let w = m["layers"].as_array_mut().unwrap().iter_mut().find(|l| l["annotations"]["org.opencontainers.image.title"] == "adapter_model.safetensors").unwrap();
    let declared = w["size"].as_u64().unwrap() - 100;
    w["size"] = declared.into();
    put_manifest(&reg.addr, "team/cs", "short", &serde_json::to_vec(&m).unwrap());
    let c = tmp.path().join("c");
    let err = fails(&c, &["pull", &format!("{}/team/cs:short", reg.addr), "--plain-http"]);
    assert!(err.contains(&format!("more bytes than the {declared} declared")), "{err}");
    assert!(dir_files(&c.join("tmp")).is_empty(), "a refused pull left temp files: {:?}", dir_files(&c.join("tmp")));
    assert!(dir_files(&c.join("blobs/sha256")).is_empty(), "a refused pull stored blobs: {:?}", dir_files(&c.join("blobs/sha256")));
    assert!(json(&ok(&c, &["--json", "ls"])).as_array().is_none_or(|a| a.is_empty()));
    ok(&c, &["verify"]);
}
