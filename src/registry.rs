//! OCI registries as the store's remote: `push` uploads a stored adapter as a plain OCI 1.1
//! artifact, `pull` downloads one and stores it. As in ollama's downloader, every digest is
//! validated before it can name a file, each blob streams to a temp file in the store's `tmp/`
//! while hashed and held to its declared size, and only once all verified are they renamed
//! into the store (no blob is held in memory whole; a killed pull leaves temp files for `gc`).
//! The wire format is what general tools read: an image manifest with `artifactType`
//! `application/vnd.loradex.adapter.v1+json`, loradex's own metadata as the config blob, and
//! one layer per PEFT file annotated with `org.opencontainers.image.title` (so `oras pull`
//! writes a PEFT directory). HTTP, token and basic auth, and TLS are the ORAS project's
//! `oci-client`; this module owns the format, the credentials lookup and the size caps, and
//! goes through `Store` for everything local (it writes only through `Staging`'s temp files).

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::peft::{self, LoraConfig};
use crate::store::{BlobSource, BlobWriter, NewAdapter, Ref, StagedBlob, Staging, Store};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The manifest's `artifactType` and the config blob's media type.
pub const ARTIFACT_TYPE: &str = "application/vnd.loradex.adapter.v1+json";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_LAYER_TYPE: &str = "application/vnd.loradex.peft.config.v1+json";
const WEIGHTS_LAYER_TYPE: &str = "application/vnd.loradex.peft.safetensors.v1";
const TITLE: &str = "org.opencontainers.image.title";
/// The largest manifest or metadata blob read from a registry.
const MAX_SMALL_BLOB: usize = 1 << 20;

/// How to reach a registry.
#[derive(Clone, Debug, Default)]
pub struct Remote {
    /// Plain HTTP (loopback or test registries).
    pub plain_http: bool,
    /// `(username, password)`; without it, `~/.docker/config.json`'s `auths`, else anonymous.
    pub credentials: Option<(String, String)>,
    /// Extra root certificate (PEM) to trust, for a registry with its own CA.
    pub ca_cert: Option<PathBuf>,
}

/// loradex's metadata, the artifact's config blob: what the store needs beside the PEFT files.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ArtifactConfig {
    pub media_type: String,
    pub base_fingerprint: Digest,
    pub base_arch: String,
    pub task: Option<String>,
    pub labels: Vec<String>,
    pub metrics: Option<Value>,
    pub provenance: Value,
}

/// What `push` did.
#[derive(Clone, Debug, Serialize)]
pub struct Pushed {
    pub reference: String,
    pub manifest_digest: String,
    /// Blobs sent, blobs mounted from another repository of the registry (not sent), and
    /// blobs the registry already had in the target repository (not sent again).
    pub uploaded: usize,
    pub mounted: usize,
    pub skipped: usize,
}

/// What `pull` stored.
#[derive(Clone, Debug, Serialize)]
pub struct Pulled {
    pub reference: String,
    pub manifest_digest: String,
    pub digest: Digest,
    pub name: String,
}

fn reg_err(what: &str, e: impl std::fmt::Display) -> Error {
    let e = e.to_string();
    if e.starts_with("Not authorized") {
        return Error::Registry(format!(
            "{what}: 401 unauthorized: the registry refused the credentials (--username with --password-stdin, or ~/.docker/config.json auths) ({e})"
        ));
    }
    Error::Registry(format!("{what}: {e}"))
}

/// A registry reference `REGISTRY/REPO[:TAG|@sha256:...]`, parsed before any work.
pub fn parse_reference(s: &str) -> Result<Reference> {
    let r: Reference = s.parse().map_err(|e| Error::InvalidArgument(format!("{s}: not a registry reference REGISTRY/REPO[:TAG|@sha256:...] ({e})")))?;
    if !s.contains('/') {
        return Err(Error::InvalidArgument(format!("{s}: name the registry too (REGISTRY/REPO[:TAG])")));
    }
    Ok(r)
}

impl Remote {
    fn client(&self) -> Result<Client> {
        let mut cfg = ClientConfig { protocol: if self.plain_http { ClientProtocol::Http } else { ClientProtocol::Https }, ..Default::default() };
        if let Some(p) = &self.ca_cert {
            let data = std::fs::read(p).map_err(|e| Error::InvalidArgument(format!("--ca-cert {}: {e}", p.display())))?;
            cfg.extra_root_certificates.push(Certificate { encoding: CertificateEncoding::Pem, data });
        }
        Ok(Client::new(cfg))
    }

    /// Credentials for `registry`: the given ones, else docker's config file, else none.
    fn auth(&self, registry: &str) -> Result<RegistryAuth> {
        if let Some((u, p)) = &self.credentials {
            return Ok(RegistryAuth::Basic(u.clone(), p.clone()));
        }
        let Some(home) = std::env::var_os("HOME") else { return Ok(RegistryAuth::Anonymous) };
        let path = std::env::var_os("DOCKER_CONFIG").map(PathBuf::from).unwrap_or_else(|| Path::new(&home).join(".docker")).join("config.json");
        docker_auth(&path, registry)
    }
}

/// `auths[registry].auth` (base64 `user:password`) of a docker config file, if any.
pub fn docker_auth(path: &Path, registry: &str) -> Result<RegistryAuth> {
    let Ok(bytes) = std::fs::read(path) else { return Ok(RegistryAuth::Anonymous) };
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| Error::json(path.display().to_string(), e))?;
    let entry = v.get("auths").and_then(Value::as_object).and_then(|a| {
        a.iter().find(|(k, _)| {
            let k = k.trim_start_matches("https://").trim_start_matches("http://");
            k.split('/').next() == Some(registry)
        })
    });
    let Some(auth) = entry.and_then(|(_, e)| e.get("auth")).and_then(Value::as_str) else { return Ok(RegistryAuth::Anonymous) };
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD.decode(auth).map_err(|e| Error::InvalidArgument(format!("{}: auths.{registry}.auth is not base64: {e}", path.display())))?;
    let s = String::from_utf8(raw).map_err(|_| Error::InvalidArgument(format!("{}: auths.{registry}.auth is not UTF-8", path.display())))?;
    let (u, p) = s.split_once(':').ok_or_else(|| Error::InvalidArgument(format!("{}: auths.{registry}.auth is not user:password", path.display())))?;
    Ok(RegistryAuth::Basic(u.into(), p.into()))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| reg_err("runtime", e))
}

fn sha(bytes: &[u8]) -> String {
    Digest::of(bytes).to_string()
}

/// The image manifest of an adapter artifact: config blob, the two PEFT layers, annotations.
/// `blobs` are `[config, adapter_config.json, weights]` with their digests.
fn manifest_json(blobs: &[(&Vec<u8>, String); 3], meta: &ArtifactConfig, rank: usize) -> Vec<u8> {
    let layer = |media: &str, (bytes, digest): &(&Vec<u8>, String), title: &str| json!({"mediaType": media, "digest": digest, "size": bytes.len(), "annotations": {TITLE: title}});
    let [config, cfg_file, weights] = blobs;
    let m = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": ARTIFACT_TYPE, "digest": config.1, "size": config.0.len()},
        "layers": [layer(CONFIG_LAYER_TYPE, cfg_file, peft::CONFIG_FILE), layer(WEIGHTS_LAYER_TYPE, weights, peft::WEIGHTS_FILE)],
        "annotations": {
            "org.loradex.base.fingerprint": meta.base_fingerprint.to_string(),
            "org.loradex.base.arch": meta.base_arch,
            "org.loradex.task": meta.task.clone().unwrap_or_default(),
            "org.loradex.rank": rank.to_string(),
            "org.loradex.labels": serde_json::to_string(&meta.labels).expect("labels serialize"),
            "org.loradex.metrics": meta.metrics.as_ref().map(|m| m.to_string()).unwrap_or_default(),
        }
    });
    serde_json::to_vec(&m).expect("manifest serializes")
}

/// The repositories of `target`'s registry a push may mount blobs from: those given, and the
/// one the adapter was pulled from when it is on the same registry.
fn mount_sources(target: &Reference, given: &[String], provenance: &serde_json::Value) -> Vec<Reference> {
    let pulled = provenance.pointer("/pulled_from/reference").and_then(|v| v.as_str()).and_then(|r| parse_reference(r).ok());
    let mut repos: Vec<String> = given.to_vec();
    if let Some(p) = pulled.filter(|p| p.registry() == target.registry()) {
        repos.push(p.repository().to_string());
    }
    let mut out: Vec<Reference> = vec![];
    for r in repos {
        if r != target.repository() && !out.iter().any(|o| o.repository() == r) {
            out.push(Reference::with_tag(target.registry().to_string(), r, "latest".into()));
        }
    }
    out
}

/// Uploads stored adapter `src` to `target`; blobs the registry has are not sent again, and a
/// blob missing from the target repository is first mounted from `mount_from` (repositories
/// of the same registry, e.g. the one pushed to before) or from the repository the adapter was
/// pulled from (the OCI cross-repository mount; a registry that does not offer it gets the
/// upload).
pub fn push(store: &Store, src: &str, target: &str, remote: &Remote, mount_from: &[String]) -> Result<Pushed> {
    let image = parse_reference(target)?;
    if image.digest().is_some() {
        return Err(Error::InvalidArgument(format!("{target}: push to a tag, not a digest")));
    }
    let d = store.resolve(src)?;
    let (m, cfg_file, weights) = store.adapter_files(&d)?;
    let meta = ArtifactConfig {
        media_type: ARTIFACT_TYPE.into(),
        base_fingerprint: m.base_fingerprint,
        base_arch: m.base_arch.clone(),
        task: m.task.clone(),
        labels: m.labels.clone(),
        metrics: m.metrics.clone(),
        provenance: m.provenance.clone(),
    };
    let sources = mount_sources(&image, mount_from, &meta.provenance);
    let config = serde_json::to_vec(&meta).expect("config serializes");
    // each blob hashed once: for the manifest and for the registry's HEAD check
    let blobs = [&config, &cfg_file, &weights].map(|b| (b, sha(b)));
    let manifest = manifest_json(&blobs, &meta, m.rank);
    let client = remote.client()?;
    let auth = remote.auth(image.resolve_registry())?;
    runtime()?.block_on(async {
        client.auth(&image, &auth, oci_client::RegistryOperation::Push).await.map_err(|e| reg_err(&format!("{target}: authentication"), e))?;
        let (mut uploaded, mut mounted, mut skipped) = (0, 0, 0);
        'blobs: for (blob, digest) in &blobs {
            if client.blob_exists(&image, digest).await.map_err(|e| reg_err(target, e))? {
                skipped += 1;
                continue;
            }
            for from in &sources {
                // mount_blob is Ok only on 201 Created, which means the blob is now in the
                // target; a refused mount (the source lacks it, or the registry does not mount)
                // falls through to the next source, then to the upload
                if client.mount_blob(&image, from, digest).await.is_ok() {
                    mounted += 1;
                    continue 'blobs;
                }
            }
            client.push_blob(&image, (*blob).clone(), digest).await.map_err(|e| reg_err(&format!("{target}: upload {digest}"), e))?;
            uploaded += 1;
        }
        let ct = MANIFEST_TYPE.parse().expect("a valid header value");
        client.push_manifest_raw(&image, manifest.clone(), ct).await.map_err(|e| reg_err(&format!("{target}: manifest"), e))?;
        Ok(Pushed { reference: target.to_string(), manifest_digest: sha(&manifest), uploaded, mounted, skipped })
    })
}

/// A blob's temp file that refuses to grow past `cap` bytes, its declared size (a hostile
/// registry cannot fill the disk).
struct Capped {
    file: BlobWriter,
    written: u64,
    cap: u64,
    progress: Option<std::sync::Arc<Progress>>,
}

/// Called with the bytes of a pull's blobs received so far and their declared total.
pub type OnBytes = Box<dyn Fn(u64, u64) + Send + Sync>;

/// A pull's byte count across its blobs, reported to `on` as they stream in.
struct Progress {
    done: std::sync::atomic::AtomicU64,
    total: u64,
    on: OnBytes,
}

impl tokio::io::AsyncWrite for Capped {
    // A plain file write: the pull's own single-threaded runtime has nothing else to run
    // meanwhile, and the page cache absorbs it.
    fn poll_write(mut self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>, b: &[u8]) -> std::task::Poll<std::io::Result<usize>> {
        if self.written + b.len() as u64 > self.cap {
            return std::task::Poll::Ready(Err(std::io::Error::other(format!("more bytes than the {} declared", self.cap))));
        }
        std::io::Write::write_all(&mut self.file, b)?;
        self.written += b.len() as u64;
        if let Some(p) = &self.progress {
            let done = p.done.fetch_add(b.len() as u64, std::sync::atomic::Ordering::Relaxed) + b.len() as u64;
            (p.on)(done, p.total);
        }
        std::task::Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// A blob as the manifest describes it, streamed into a temp file of `staging` within its
/// declared size (itself within `cap`) and hashed as it goes: verified, or an error and no file.
async fn fetch(client: &Client, image: &Reference, desc: &OciDescriptor, cap: usize, what: &str, staging: &Staging, progress: Option<std::sync::Arc<Progress>>) -> Result<StagedBlob> {
    let want = check_descriptor(desc, cap, what)?;
    let mut out = Capped { file: staging.create()?, written: 0, cap: desc.size as u64, progress };
    client.pull_blob(image, desc, &mut out).await.map_err(|e| reg_err(&format!("{what} ({})", desc.digest), e))?;
    let mismatch = || Error::Registry(format!("{what}: content does not match digest {}", desc.digest));
    if out.written != desc.size as u64 {
        return Err(mismatch());
    }
    out.file.finish(&want).map_err(|e| if matches!(e, Error::Corrupt { .. }) { mismatch() } else { e })
}

/// The store name a pull gives by default: the repository and tag (`latest` when pulled by
/// digest alone).
pub fn default_name(image: &Reference) -> Result<Ref> {
    Ref::parse(&format!("{}:{}", image.repository(), image.tag().unwrap_or("latest")))
}

/// A manifest that passed `check_manifest`: the PEFT files' layers are found, and every blob
/// it names has a sha256 digest and a declared size within the cap for what it holds.
#[derive(Debug)]
pub struct CheckedManifest {
    pub manifest: oci_client::manifest::OciImageManifest,
    pub config_layer: usize,
    pub weights_layer: usize,
}

impl std::ops::Deref for CheckedManifest {
    type Target = oci_client::manifest::OciImageManifest;
    fn deref(&self) -> &Self::Target {
        &self.manifest
    }
}

/// Validates a manifest from a registry before anything it names is fetched: its size, its
/// digest (when pulled by digest), its JSON, that it is a loradex artifact, and each blob's
/// digest and declared size (`fetch` checks them again as the bytes stream). `src` names it in
/// errors. Never panics, whatever the bytes (fuzzed: `fuzz/fuzz_targets/oci_manifest.rs`).
pub fn check_manifest(raw: &[u8], want_digest: Option<&str>, src: &str) -> Result<CheckedManifest> {
    if raw.len() > MAX_SMALL_BLOB {
        return Err(Error::Registry(format!("{src}: a manifest over {MAX_SMALL_BLOB} bytes")));
    }
    if let Some(want) = want_digest {
        if sha(raw) != want {
            return Err(Error::Registry(format!("{src}: the manifest does not match its digest")));
        }
    }
    let m: oci_client::manifest::OciImageManifest = serde_json::from_slice(raw).map_err(|e| Error::Registry(format!("{src}: not an OCI image manifest: {e}")))?;
    if m.artifact_type.as_deref() != Some(ARTIFACT_TYPE) && m.config.media_type != ARTIFACT_TYPE {
        return Err(Error::Registry(format!("{src}: not a loradex adapter (artifactType {:?})", m.artifact_type)));
    }
    let layer = |title: &str| {
        m.layers
            .iter()
            .position(|l| l.annotations.as_ref().and_then(|a| a.get(TITLE)).map(String::as_str) == Some(title))
            .ok_or_else(|| Error::Registry(format!("{src}: no layer titled {title}")))
    };
    let (config_layer, weights_layer) = (layer(peft::CONFIG_FILE)?, layer(peft::WEIGHTS_FILE)?);
    for (desc, cap, what) in [
        (&m.config, MAX_SMALL_BLOB, "config"),
        (&m.layers[config_layer], crate::util::MAX_CONFIG_BYTES as usize, peft::CONFIG_FILE),
        (&m.layers[weights_layer], crate::util::MAX_WEIGHTS_BYTES as usize, peft::WEIGHTS_FILE),
    ] {
        check_descriptor(desc, cap, what)?;
    }
    Ok(CheckedManifest { manifest: m, config_layer, weights_layer })
}

/// The descriptor's digest, once its size is within `cap` and the digest is a valid sha256.
fn check_descriptor(desc: &OciDescriptor, cap: usize, what: &str) -> Result<Digest> {
    if desc.size < 0 || desc.size as u64 > cap as u64 {
        return Err(Error::Registry(format!("{what}: declared size {} is over the {cap}-byte limit", desc.size)));
    }
    Digest::parse(&desc.digest).map_err(|_| Error::Registry(format!("{what}: {:?} is not a sha256 digest", desc.digest)))
}

impl ArtifactConfig {
    /// The config blob, from untrusted bytes.
    pub fn parse(bytes: &[u8], src: &str) -> Result<ArtifactConfig> {
        let meta: ArtifactConfig = serde_json::from_slice(bytes).map_err(|e| Error::Registry(format!("{src}: loradex metadata: {e}")))?;
        if meta.media_type != ARTIFACT_TYPE {
            return Err(Error::Registry(format!("{src}: loradex metadata of media type {:?}", meta.media_type)));
        }
        Ok(meta)
    }
}

/// An artifact downloaded and verified, not yet stored: its PEFT files wait as temp files in
/// the store's `tmp/` (removed if it is dropped unsaved).
pub struct Artifact {
    pub reference: String,
    pub manifest_digest: String,
    pub default_name: Ref,
    meta: ArtifactConfig,
    lora_config: LoraConfig,
    config_file: StagedBlob,
    weights: StagedBlob,
}

/// Downloads `src`, checks every blob's digest, and stores it as `name` (default REPO:TAG).
/// Nothing reaches the store unless every blob verified.
pub fn pull(store: &mut Store, src: &str, name: Option<&Ref>, remote: &Remote) -> Result<Pulled> {
    pull_with(store, src, name, remote, None)
}

/// `pull`, reporting the bytes received to `on` (a progress bar).
pub fn pull_with(store: &mut Store, src: &str, name: Option<&Ref>, remote: &Remote, on: Option<OnBytes>) -> Result<Pulled> {
    let a = download_with(src, remote, &store.staging(), on)?;
    save(store, a, name)
}

/// The network half of `pull`: blobs stream into `staging` (`Store::staging`, no store lock
/// needed while it runs). A manifest the registry does not have is `NotFound`; other registry
/// failures are `Registry` errors.
pub fn download(src: &str, remote: &Remote, staging: &Staging) -> Result<Artifact> {
    download_with(src, remote, staging, None)
}

/// The three verified blobs of an artifact: metadata, `adapter_config.json`, weights.
type Blobs = (String, StagedBlob, StagedBlob, StagedBlob);

/// `download`, reporting the bytes received to `on`.
pub fn download_with(src: &str, remote: &Remote, staging: &Staging, on: Option<OnBytes>) -> Result<Artifact> {
    let image = parse_reference(src)?;
    let (manifest_digest, config, cfg_file, weights) = runtime()?.block_on(fetch_all(&image, src, remote, staging, on))?;
    let meta = ArtifactConfig::parse(&crate::util::read_bounded(config.path(), MAX_SMALL_BLOB as u64)?, src)?;
    let lora_config = LoraConfig::parse(&crate::util::read_bounded(cfg_file.path(), crate::util::MAX_CONFIG_BYTES)?)?;
    check_weights(&weights)?;
    Ok(Artifact { reference: src.to_string(), manifest_digest, default_name: default_name(&image)?, meta, lora_config, config_file: cfg_file, weights })
}

/// The manifest, then each blob it names, streamed into `staging`.
async fn fetch_all(image: &Reference, src: &str, remote: &Remote, staging: &Staging, on: Option<OnBytes>) -> Result<Blobs> {
    use oci_client::errors::{OciDistributionError as E, OciErrorCode as C};
    let client = remote.client()?;
    let auth = remote.auth(image.resolve_registry())?;
    client.auth(image, &auth, oci_client::RegistryOperation::Pull).await.map_err(|e| reg_err(&format!("{src}: authentication"), e))?;
    let (raw, digest) = client.pull_manifest_raw(image, &auth, &[MANIFEST_TYPE]).await.map_err(|e| match e {
        E::ImageManifestNotFoundError(_) => Error::NotFound(format!("{src} in the registry")),
        E::RegistryError { envelope, .. } if envelope.errors.iter().any(|x| matches!(x.code, C::ManifestUnknown | C::NameUnknown)) => {
            Error::NotFound(format!("{src} in the registry"))
        }
        e => reg_err(src, e),
    })?;
    let m = check_manifest(&raw, image.digest(), src)?;
    let (lc, lw) = (&m.layers[m.config_layer], &m.layers[m.weights_layer]);
    // sizes were checked against the caps by check_manifest, so the total cannot overflow
    let total = [m.config.size, lc.size, lw.size].iter().map(|&s| s.max(0) as u64).sum();
    let progress = on.map(|on| std::sync::Arc::new(Progress { done: Default::default(), total, on }));
    let config = fetch(&client, image, &m.config, MAX_SMALL_BLOB, "config", staging, progress.clone()).await?;
    let cfg_file = fetch(&client, image, lc, crate::util::MAX_CONFIG_BYTES as usize, peft::CONFIG_FILE, staging, progress.clone()).await?;
    let weights = fetch(&client, image, lw, crate::util::MAX_WEIGHTS_BYTES as usize, peft::WEIGHTS_FILE, staging, progress).await?;
    Ok((if digest.is_empty() { sha(&raw) } else { digest }, config, cfg_file, weights))
}

/// Validates the staged weights as safetensors through a read-only map of the temp file (the
/// header and the file's length are what the check reads; the tensors are not copied).
fn check_weights(weights: &StagedBlob) -> Result<()> {
    let f = std::fs::File::open(weights.path()).at(weights.path())?;
    // SAFETY: the file is this pull's own temp file (a unique name in the store's tmp/),
    // complete and fsynced; nothing writes it again, and gc only unlinks, which a map survives.
    let map = unsafe { memmap2::Mmap::map(&f) }.at(weights.path())?;
    peft::safetensors::SafeView::parse(&map, peft::WEIGHTS_FILE).map(|_| ())
}

/// The store half of `pull`: adds a downloaded artifact under `name` (default REPO:TAG); its
/// staged blobs are renamed into the store, not copied.
pub fn save(store: &mut Store, a: Artifact, name: Option<&Ref>) -> Result<Pulled> {
    let name = name.cloned().unwrap_or_else(|| a.default_name.clone());
    let (src, manifest_digest, meta) = (a.reference, a.manifest_digest, a.meta);
    let mut provenance = meta.provenance.clone();
    if let Some(o) = provenance.as_object_mut() {
        o.insert("pulled_from".into(), json!({"reference": src, "manifest": manifest_digest}));
    }
    let digest = store.add(
        NewAdapter {
            config_blob: BlobSource::Staged(a.config_file),
            weights_blob: BlobSource::Staged(a.weights),
            config: &a.lora_config,
            base_fingerprint: meta.base_fingerprint,
            base_arch: &meta.base_arch,
            labels: meta.labels.clone(),
            metrics: meta.metrics.clone(),
            provenance,
        },
        &name,
    )?;
    Ok(Pulled { reference: src, manifest_digest, digest, name: name.to_string() })
}
