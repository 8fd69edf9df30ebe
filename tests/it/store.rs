//! The store: PEFT round trips, hostile inputs, crash safety and concurrent writers.

use super::common::*;
use loradex::peft::safetensors::{write_f32, SafeView};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn blob_files(home: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(home.join("blobs/sha256"))
        .map(|r| r.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().to_string()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn ls_json(home: &Path) -> serde_json::Value {
    json(&ok(home, &["--json", "ls"]))
}

/// Copies a PEFT dir, replacing the weights with a variant whose data bytes differ.
fn variant(src: &Path, dst: &Path, seed: u8) {
    std::fs::create_dir_all(dst).unwrap();
    std::fs::copy(src.join("adapter_config.json"), dst.join("adapter_config.json")).unwrap();
    let mut w = std::fs::read(src.join("adapter_model.safetensors")).unwrap();
    let n = w.len();
    w[n - 1] ^= seed.max(1);
    std::fs::write(dst.join("adapter_model.safetensors"), w).unwrap();
}

#[test]
fn import_export_round_trips_every_fixture_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let cases: Vec<(PathBuf, PathBuf)> = vec![
        (bert().join("adapter"), bert().join("base")),
        (bert().join("adapters_multi"), bert().join("base")),
        (bert().join("adapters_multi/other"), bert().join("base")),
        (llama().join("adapter"), llama().join("base")),
    ];
    for (i, (dir, base)) in cases.iter().enumerate() {
        let name = format!("case{i}:v1");
        let digest = import(&home, dir, &name, base);
        assert!(digest.trim().starts_with("sha256:") && digest.trim().len() == 71, "{digest}");
        let out = tmp.path().join(format!("out{i}"));
        ok(&home, &["export", &name, out.to_str().unwrap()]);
        let a = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
        let b = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
        let (va, vb) = (SafeView::parse(&a, "a").unwrap(), SafeView::parse(&b, "b").unwrap());
        assert_eq!(va.tensors.keys().collect::<Vec<_>>(), vb.tensors.keys().collect::<Vec<_>>());
        for (k, info) in &va.tensors {
            assert_eq!(va.bytes(k), vb.bytes(k), "{k} bytes differ");
            assert_eq!(info.shape, vb.tensors[k].shape);
        }
        let ca: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("adapter_config.json")).unwrap()).unwrap();
        let cb: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("adapter_config.json")).unwrap()).unwrap();
        assert_eq!(ca, cb, "config of {}", dir.display());
    }
    // identical content is stored once: re-importing under another name adds no blob
    let before = blob_files(&home);
    import(&home, &bert().join("adapter"), "again", &bert().join("base"));
    assert_eq!(before, blob_files(&home));
    let v = json(&ok(&home, &["--json", "verify"]));
    assert_eq!(v["ok"], true, "{v}");
}

fn assert_refused(home: &Path, dir: &Path, name: &str, base: &Path, want: &str) {
    let before_blobs = blob_files(home);
    let before_ls = ls_json(home);
    let err = fails(home, &["import", dir.to_str().unwrap(), "--name", name, "--base", base.to_str().unwrap()]);
    assert!(err.contains(want), "expected {want:?} in error, got: {err}");
    assert_eq!(before_blobs, blob_files(home), "blobs changed after a refused import");
    assert_eq!(before_ls, ls_json(home), "index changed after a refused import");
}

#[test]
fn hostile_and_mismatched_inputs_are_refused_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let base = bert().join("base");
    import(&home, &bert().join("adapter"), "good", &base);
    let good = bert().join("adapter");
    let w = std::fs::read(good.join("adapter_model.safetensors")).unwrap();
    let mk = |name: &str, weights: &[u8], cfg: Option<&str>| -> PathBuf {
        let d = tmp.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("adapter_model.safetensors"), weights).unwrap();
        match cfg {
            Some(c) => std::fs::write(d.join("adapter_config.json"), c).unwrap(),
            None => std::fs::copy(good.join("adapter_config.json"), d.join("adapter_config.json")).map(|_| ()).unwrap(),
        }
        d
    };
    // truncated data section
    assert_refused(&home, &mk("trunc", &w[..w.len() - 10], None), "t1", &base, "truncated");
    // truncated inside the header
    assert_refused(&home, &mk("trunc-header", &w[..100], None), "t2", &base, "truncated");
    // hostile header size
    let mut hostile = (u64::MAX - 3).to_le_bytes().to_vec();
    hostile.extend_from_slice(b"{}");
    assert_refused(&home, &mk("hostile", &hostile, None), "t3", &base, "exceeds the limit");
    // corrupt header JSON
    let mut corrupt = w.clone();
    corrupt[8] = b'#';
    assert_refused(&home, &mk("corrupt", &corrupt, None), "t4", &base, "malformed safetensors header");
    // offsets pointing outside the file
    let header = r#"{"base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight":{"dtype":"F32","shape":[4,32],"data_offsets":[0,512]}}"#;
    let mut oob = (header.len() as u64).to_le_bytes().to_vec();
    oob.extend_from_slice(header.as_bytes());
    oob.extend_from_slice(&[0u8; 16]);
    assert_refused(&home, &mk("oob", &oob, None), "t5", &base, "truncated");
    // unknown peft_type
    let cfg = std::fs::read_to_string(good.join("adapter_config.json")).unwrap().replace("\"LORA\"", "\"PREFIX_TUNING\"");
    assert_refused(&home, &mk("ptype", &w, Some(&cfg)), "t6", &base, "unknown peft_type");
    // DoRA is refused rather than silently mis-applied
    let cfg = std::fs::read_to_string(good.join("adapter_config.json")).unwrap().replace("\"use_dora\": false", "\"use_dora\": true");
    // DoRA is supported, but a use_dora config whose file lacks the magnitudes is refused
    assert_refused(&home, &mk("dora", &w, Some(&cfg)), "t7", &base, "no lora_magnitude_vector");
    // path-like and malformed names
    for bad in ["../x", "a/../b", "/abs", "a\\b", "", "x:", "sha256:abc"] {
        let e = fails(&home, &["import", good.to_str().unwrap(), "--name", bad, "--base", base.to_str().unwrap()]);
        assert!(e.contains("invalid"), "{bad:?}: {e}");
    }
    // an adapter for another base
    assert_refused(&home, &llama().join("adapter"), "t8", &base, "the base model has no");
    // wrong shapes: a rank-4 adapter whose B does not fit the base
    let mut t: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    t.insert("base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight".into(), (vec![4, 32], vec![0.0; 128]));
    t.insert("base_model.model.bert.encoder.layer.0.attention.self.query.lora_B.weight".into(), (vec![16, 4], vec![0.0; 64]));
    assert_refused(&home, &mk("shape", &write_f32(&t), None), "t9", &base, "expected [32, 4]");
    // missing files
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert_refused(&home, &empty, "t10", &base, "adapter_config.json");
    // the good adapter is untouched by all of this
    let v = json(&ok(&home, &["--json", "verify"]));
    assert_eq!(v["ok"], true);
    assert_eq!(ls_json(&home).as_array().unwrap().len(), 1);
}

/// A large adapter (rank 40k on the tiny fixture base) so a kill can land mid-write.
fn big_adapter(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let r = 40_000;
    let mut t: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    for l in 0..2 {
        for m in ["query", "value"] {
            let p = format!("base_model.model.bert.encoder.layer.{l}.attention.self.{m}");
            t.insert(format!("{p}.lora_A.weight"), (vec![r, 32], (0..r * 32).map(|i| (i % 97) as f32 * 1e-4).collect()));
            t.insert(format!("{p}.lora_B.weight"), (vec![32, r], vec![1e-5; 32 * r]));
        }
    }
    std::fs::write(dir.join("adapter_model.safetensors"), write_f32(&t)).unwrap();
    let cfg = std::fs::read_to_string(bert().join("adapter/adapter_config.json")).unwrap().replace("\"r\": 4", &format!("\"r\": {r}"));
    let cfg = cfg.replace("\"modules_to_save\": [\n    \"classifier\",\n    \"score\"\n  ]", "\"modules_to_save\": null");
    std::fs::write(dir.join("adapter_config.json"), cfg).unwrap();
}

#[test]
fn killed_writer_leaves_index_consistent_and_no_partial_blob() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let base = bert().join("base");
    import(&home, &bert().join("adapter"), "keep", &base);
    let big = tmp.path().join("big");
    big_adapter(&big);
    let mut killed_mid = 0;
    for (i, delay_ms) in [5u64, 20, 40, 80, 120, 200, 350].iter().enumerate() {
        let mut child = std::process::Command::new(bin())
            .args(["--home", home.to_str().unwrap(), "import", big.to_str().unwrap(), "--name", &format!("big{i}"), "--base", base.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(*delay_ms));
        child.kill().unwrap(); // SIGKILL
        let st = child.wait().unwrap();
        if !st.success() {
            killed_mid += 1;
        }
        // every visible blob is whole (its content hashes to its name), the index is sane
        let v = json(&ok(&home, &["--json", "verify"]));
        assert_eq!(v["ok"], true, "after kill at {delay_ms} ms: {v}");
        assert_eq!(v["index_integrity"], "ok");
        // every listed adapter can be exported completely
        for row in ls_json(&home).as_array().unwrap() {
            let r = row["ref"].as_str().unwrap();
            ok(&home, &["export", r, tmp.path().join(format!("x{i}")).to_str().unwrap()]);
        }
    }
    assert!(killed_mid > 0, "no import was killed mid-way; the test proved nothing");
    // temp files of killed writers are invisible as blobs and swept by gc
    ok(&home, &["gc", "--grace", "0s"]);
    assert!(std::fs::read_dir(home.join("tmp")).unwrap().next().is_none(), "temp files left after gc");
    import(&home, &big, "big-final", &base);
    assert_eq!(json(&ok(&home, &["--json", "verify"]))["ok"], true);
}

#[test]
fn concurrent_import_and_prune_lose_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let base = bert().join("base");
    let n = 12;
    let dirs: Vec<PathBuf> = (0..n)
        .map(|i| {
            let d = tmp.path().join(format!("v{i}"));
            variant(&bert().join("adapter"), &d, i as u8 + 1);
            d
        })
        .collect();
    ok(&home, &["ls"]); // create the store
    let (h1, b1) = (home.clone(), base.clone());
    let importer = std::thread::spawn(move || {
        for (i, d) in dirs.iter().enumerate() {
            import(&h1, d, &format!("team/a{i}"), &b1);
        }
    });
    let h2 = home.clone();
    let pruner = std::thread::spawn(move || {
        for _ in 0..n {
            ok(&h2, &["prune", "--grace", "0s"]);
            ok(&h2, &["gc", "--grace", "0s"]);
        }
    });
    importer.join().unwrap();
    pruner.join().unwrap();
    ok(&home, &["gc", "--grace", "0s"]);
    for i in 0..n {
        let out = tmp.path().join(format!("out{i}"));
        ok(&home, &["export", &format!("team/a{i}"), out.to_str().unwrap()]);
        let want = std::fs::read(tmp.path().join(format!("v{i}/adapter_model.safetensors"))).unwrap();
        assert_eq!(std::fs::read(out.join("adapter_model.safetensors")).unwrap(), want, "adapter {i} lost or changed");
    }
    assert_eq!(json(&ok(&home, &["--json", "verify"]))["ok"], true);
}

#[test]
fn tag_rm_prune_policies() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let base = bert().join("base");
    for i in 0..4 {
        let d = tmp.path().join(format!("v{i}"));
        variant(&bert().join("adapter"), &d, i as u8 + 1);
        import(&home, &d, &format!("cs:v{i}"), &base);
        std::thread::sleep(std::time::Duration::from_millis(1100)); // distinct created_at seconds
    }
    let d3 = json(&ok(&home, &["--json", "show", "cs:v3"]))["digest"].as_str().unwrap().to_string();
    ok(&home, &["tag", "cs:v3", "cs:prod"]);
    assert_eq!(json(&ok(&home, &["--json", "show", "cs:prod"]))["digest"], d3.as_str());
    assert_eq!(json(&ok(&home, &["--json", "show", &d3]))["refs"], serde_json::json!(["cs:prod", "cs:v3"]));
    // keep-last 2 (per name): v0 and v1 go, v2 and v3 (also cs:prod) stay
    let dry = json(&ok(&home, &["--json", "prune", "--keep-last", "2", "--dry-run"]));
    assert_eq!(dry["refs"].as_array().unwrap().len(), 2, "{dry}");
    assert_eq!(ls_json(&home).as_array().unwrap().len(), 5, "dry run changed the index");
    ok(&home, &["prune", "--keep-last", "2", "--grace", "0s"]);
    let refs: Vec<String> = ls_json(&home).as_array().unwrap().iter().map(|r| r["ref"].as_str().unwrap().to_string()).collect();
    assert_eq!(refs.len(), 3, "{refs:?}");
    assert!(refs.contains(&"cs:v2".to_string()) && refs.contains(&"cs:prod".to_string()));
    fails(&home, &["show", "cs:v0"]);
    // rm one of two refs keeps the adapter; rm the last removes it
    ok(&home, &["rm", "cs:v3"]);
    assert_eq!(json(&ok(&home, &["--json", "show", "cs:prod"]))["digest"], d3.as_str());
    ok(&home, &["rm", "cs:prod"]);
    assert!(fails(&home, &["show", &d3]).contains("not found"));
    // unused-for / older-than select nothing recent
    let dry = json(&ok(&home, &["--json", "prune", "--older-than", "1d", "--dry-run"]));
    assert!(dry["adapters"].as_array().unwrap().is_empty());
    ok(&home, &["gc", "--grace", "0s"]);
    assert_eq!(json(&ok(&home, &["--json", "verify"]))["ok"], true);
    assert!(fails(&home, &["prune", "--older-than", "3x"]).contains("duration"));
}

#[test]
fn verify_reports_corrupt_and_missing_blobs() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    import(&home, &bert().join("adapter"), "a", &bert().join("base"));
    import(&home, &bert().join("adapters_multi/other"), "b", &bert().join("base"));
    let show = json(&ok(&home, &["--json", "show", "a"]));
    let weights = show["weights_digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    let other = json(&ok(&home, &["--json", "show", "b"]))["config_digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    // flip one byte of a's weights; delete b's config
    let p = home.join("blobs/sha256").join(&weights);
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&p, bytes).unwrap();
    std::fs::remove_file(home.join("blobs/sha256").join(&other)).unwrap();
    let o = run(&home, &["--json", "verify"]);
    assert_eq!(o.status.code(), Some(1), "verify must fail on a damaged store");
    let v = json(&String::from_utf8(o.stdout).unwrap());
    assert_eq!(v["ok"], false);
    assert_eq!(v["report"]["corrupt"], serde_json::json!([format!("sha256:{weights}")]));
    assert_eq!(v["report"]["missing"], serde_json::json!([format!("sha256:{other}")]));
    // the damage is reported where the adapter is used, not silently served
    let e = fails(&home, &["export", "b", tmp.path().join("x").to_str().unwrap()]);
    assert!(e.contains("not found") && e.contains("verify"), "{e}");
    let e = fails(&home, &["export", "a", tmp.path().join("y").to_str().unwrap()]);
    assert!(e.contains("corrupt"), "{e}");
    assert!(!tmp.path().join("y/adapter_model.safetensors").exists(), "corrupt weights were exported");
    let e = fails(&home, &["predict", "--base", bert().join("base").to_str().unwrap(), "--adapter", "a", "--text", "hi"]);
    assert!(e.contains("corrupt"), "{e}");
}

#[test]
fn ls_json_is_the_same_rows_as_the_library_listing() {
    // `ls --json` is written by hand for speed; it must equal ListRow's serde form
    // (which /v1/adapters serves), including dangling adapters
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let base = bert().join("base");
    import(&home, &bert().join("adapter"), "a:v1", &base);
    import(&home, &bert().join("adapters_multi/other"), "b", &base);
    ok(&home, &["tag", "b", "a:v1"]); // a's old adapter is now dangling
    let cli = ls_json(&home);
    let lib = serde_json::to_value(loradex::store::Store::open(&home).unwrap().list(None).unwrap()).unwrap();
    assert_eq!(cli, lib);
    assert_eq!(cli.as_array().unwrap().len(), 3);
    assert!(cli.as_array().unwrap().iter().any(|r| r["ref"] == "<none>"));
}

#[test]
fn ls_pages_with_limit_after_and_name_globs() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let base = bert().join("base");
    for i in 0..5 {
        let dir = tmp.path().join(format!("v{i}"));
        variant(&bert().join("adapter"), &dir, i as u8 + 1);
        let name = if i % 2 == 0 { format!("ko/cs-{i}:v1") } else { format!("en/sent-{i}:v1") };
        import(&home, &dir, &name, &base);
    }
    let refs = |args: &[&str]| -> Vec<String> {
        let mut a = vec!["--json", "ls"];
        a.extend_from_slice(args);
        json(&ok(&home, &a)).as_array().unwrap().iter().map(|r| r["ref"].as_str().unwrap().to_string()).collect()
    };
    let all = refs(&[]);
    assert_eq!(all.len(), 5);
    // pages of 2, each starting after the last row of the previous one, give the whole listing
    let mut paged = vec![];
    let mut after: Option<String> = None;
    loop {
        let mut args = vec!["--limit", "2"];
        if let Some(a) = &after {
            args.extend(["--after", a.as_str()]);
        }
        let page = refs(&args);
        assert!(page.len() <= 2);
        if page.is_empty() {
            break;
        }
        after = page.last().cloned();
        paged.extend(page);
    }
    assert_eq!(paged, all);
    let ko = refs(&["--name", "ko/*"]);
    assert_eq!(ko.len(), 3, "{ko:?}");
    assert!(ko.iter().all(|r| r.starts_with("ko/")));
    assert_eq!(refs(&["--name", "en/sent-?:v1"]).len(), 2);
    assert!(refs(&["--name", "nothing*"]).is_empty());
}

/// Model-based: seeded random sequences of import / tag / rm / prune / gc / verify, checked
/// after every step against an in-memory model of which refs and adapters must exist, while a
/// second thread keeps listing and resolving through its own connection.
#[test]
fn random_store_operations_match_a_simple_model_with_a_concurrent_reader() {
    use loradex::store::{PrunePolicy, Ref, Store};
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::atomic::{AtomicBool, Ordering};
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let base = loradex::base::BaseDir::open_dir(&bert().join("base")).unwrap();
    let variants: Vec<PathBuf> = (0..4)
        .map(|i| {
            let d = tmp.path().join(format!("v{i}"));
            variant(&bert().join("adapter"), &d, i + 1);
            d
        })
        .collect();
    let names = ["a", "b", "team/c", "team/c:v2", "d:old"];
    let mut s = Store::open(&home).unwrap();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let reader = {
        let (home, stop) = (home.clone(), stop.clone());
        std::thread::spawn(move || {
            let r = Store::open(&home).unwrap();
            let mut reads = 0usize;
            while !stop.load(Ordering::Relaxed) {
                for row in r.list(None).expect("a concurrent list never fails") {
                    assert!(row.digest.starts_with("sha256:") && row.digest.len() == 71, "{row:?}");
                    if row.r#ref != "<none>" {
                        // removed meanwhile is fine; anything else is not
                        match r.resolve(&row.r#ref) {
                            Ok(_) | Err(loradex::Error::NotFound(_)) => {}
                            Err(e) => panic!("resolve {} during writes: {e}", row.r#ref),
                        }
                    }
                }
                reads += 1;
            }
            reads
        })
    };
    let mut rng = loradex::util::Rng::new(0x5eed);
    let mut counts = [0usize; 6];
    let mut refs: BTreeMap<String, String> = BTreeMap::new();
    let mut adapters: BTreeSet<String> = BTreeSet::new();
    let mut digest_of: BTreeMap<usize, String> = BTreeMap::new();
    let full = |n: &str| Ref::parse(n).unwrap().to_string();
    for step in 0..240 {
        let op = rng.below(6);
        counts[op] += 1;
        let what = match op {
            0 | 1 => {
                let (v, n) = (rng.below(variants.len()), names[rng.below(names.len())]);
                let d = loradex::adapters::import_dir(&mut s, &variants[v], &Ref::parse(n).unwrap(), &base, None).unwrap().to_string();
                assert_eq!(digest_of.entry(v).or_insert_with(|| d.clone()), &d, "same content, same digest");
                refs.insert(full(n), d.clone());
                adapters.insert(d);
                format!("import v{v} {n}")
            }
            2 => {
                let (src, dst) = (names[rng.below(names.len())], names[rng.below(names.len())]);
                match (s.tag(src, &Ref::parse(dst).unwrap()), refs.get(&full(src)).cloned()) {
                    (Ok(d), Some(want)) => {
                        assert_eq!(d.to_string(), want);
                        refs.insert(full(dst), want);
                    }
                    (Err(loradex::Error::NotFound(_)), None) => {}
                    (got, want) => panic!("tag {src} {dst}: {got:?}, model {want:?}"),
                }
                format!("tag {src} {dst}")
            }
            3 => {
                let n = names[rng.below(names.len())];
                match (s.rm(n), refs.remove(&full(n))) {
                    (Ok(d), Some(want)) => {
                        assert_eq!(d.to_string(), want);
                        if !refs.values().any(|x| *x == want) {
                            adapters.remove(&want);
                        }
                    }
                    (Err(loradex::Error::NotFound(_)), None) => {}
                    (got, want) => panic!("rm {n}: {got:?}, model {want:?}"),
                }
                format!("rm {n}")
            }
            4 => {
                // no age filter: exactly the adapters no ref names go
                let r = s.prune(&PrunePolicy::default(), false).unwrap();
                let live: BTreeSet<String> = refs.values().cloned().collect();
                let gone: BTreeSet<String> = adapters.difference(&live).cloned().collect();
                assert_eq!(r.adapters.iter().cloned().collect::<BTreeSet<_>>(), gone, "step {step}: prune selected");
                adapters = live;
                "prune".into()
            }
            _ => {
                s.gc(0, false).unwrap();
                "gc".into()
            }
        };
        // the store against the model, after every step
        let rows = s.list(None).unwrap();
        let listed: BTreeMap<String, String> = rows.iter().filter(|r| r.r#ref != "<none>").map(|r| (r.r#ref.clone(), r.digest.clone())).collect();
        assert_eq!(listed, refs, "step {step} ({what}): refs");
        let dangling: BTreeSet<String> = rows.iter().filter(|r| r.r#ref == "<none>").map(|r| r.digest.clone()).collect();
        let live: BTreeSet<String> = refs.values().cloned().collect();
        assert_eq!(dangling, adapters.difference(&live).cloned().collect::<BTreeSet<_>>(), "step {step} ({what}): dangling");
        for (n, d) in &refs {
            assert_eq!(s.resolve(n).unwrap().to_string(), *d);
            s.adapter_files(&s.resolve(n).unwrap()).unwrap_or_else(|e| panic!("step {step} ({what}): {n} unreadable: {e}"));
        }
        let v = s.verify().unwrap();
        assert!(v.ok(), "step {step} ({what}): {v:?}");
    }
    stop.store(true, Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0, "the reader ran");
    assert!(counts.iter().all(|&c| c >= 20), "every operation was exercised: {counts:?}");
}
