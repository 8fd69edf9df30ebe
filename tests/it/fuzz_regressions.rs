//! Inputs the fuzz targets (`fuzz/`, `scripts/fuzz.sh`) showed mishandled, inline, each
//! checked against the fixed behaviour: an error instead of a panic, or the property the
//! target asserts.

use super::common;
use candle_core::Device;
use loradex::base::Arch;
use loradex::model::lora::LoadedAdapter;
use loradex::peft::{new_config_json, LoraConfig, NewConfig};

const CONFIG: &[u8] = br#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["x"]}"#;

/// A safetensors file: the 8-byte length prefix, `header`, and `data_len` zero bytes.
fn framed(header: &[u8], data_len: usize) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.resize(out.len() + data_len, 0);
    out
}

fn load(weights: &[u8]) -> loradex::Result<LoadedAdapter> {
    let config = LoraConfig::parse(CONFIG).unwrap();
    LoadedAdapter::from_peft("fuzz", Arch::by_name("bert").unwrap(), &config, weights, vec![], &Device::Cpu)
}

/// safetensors target: a lora_A/lora_B pair of 0-d tensors is a valid container, and
/// `from_peft` indexed the rank out of lora_A's (empty) shape: a panic, not an error.
#[test]
fn from_peft_refuses_scalar_lora_tensors() {
    let header = br#"{"base_model.model.x.lora_A.weight":{"dtype":"F32","shape":[],"data_offsets":[0,4]},"base_model.model.x.lora_B.weight":{"dtype":"F32","shape":[],"data_offsets":[4,8]}}"#;
    let err = load(&framed(header, 8)).expect_err("0-d LoRA tensors are refused");
    assert!(err.to_string().contains("[r, in]"), "{err}");
}

/// Same path: rank 0 (`[0, in]` and `[out, 0]`) was accepted with a scale of alpha / 0 = inf.
#[test]
fn from_peft_refuses_rank_zero() {
    let header = br#"{"base_model.model.x.lora_A.weight":{"dtype":"F32","shape":[0,2],"data_offsets":[0,0]},"base_model.model.x.lora_B.weight":{"dtype":"F32","shape":[2,0],"data_offsets":[0,0]}}"#;
    assert!(load(&framed(header, 0)).is_err(), "rank 0 is refused");
}

/// adapter_config target: serde_json's default float parsing can be one ulp off the correctly
/// rounded value Python's json (so PEFT) reads, so `lora_alpha` differed from PEFT's and
/// the config loradex writes for a parsed one read back as another value.
#[test]
fn config_floats_parse_correctly_rounded_and_round_trip() {
    for (text, want) in [("1e-30", 1e-30), ("2.2222222222222222e33", 2.2222222222222222e33), ("0.05", 0.05)] {
        let json = format!(r#"{{"peft_type": "LORA", "r": 2, "lora_alpha": {text}}}"#);
        let c = LoraConfig::parse(json.as_bytes()).unwrap();
        assert_eq!(c.lora_alpha, want, "lora_alpha {text}");
        let written = new_config_json(&NewConfig::of(&c, ""));
        assert_eq!(LoraConfig::parse(&written).unwrap().lora_alpha, want, "lora_alpha {text} written and read back");
    }
}

/// safetensors target (10.4M runs in): a zero-element tensor whose other dimensions multiply
/// past usize from the last one, `[4, 0, 40240, 42002, 42029800060]`, parsed (its product
/// from the front is 0) and then overflowed in candle's stride computation on load.
#[test]
fn a_zero_element_shape_that_overflows_from_the_back_is_refused() {
    let header = br#"{"ld:tt_id":{"dtype":"F32","shape":[4,0,40240,42002,42029800060],"data_offsets":[0,0]}}"#;
    let file = framed(header, 0);
    let err = loradex::peft::safetensors::SafeView::parse(&file, "fuzz").err().expect("refused at parse");
    assert!(err.to_string().contains("overflows"), "{err}");
    assert!(load(&file).is_err());
}

/// Every file under `dir` whose name satisfies `keep`, sorted.
fn files(dir: &std::path::Path, keep: &dyn Fn(&std::path::Path) -> bool, out: &mut Vec<std::path::PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = rd.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            files(&p, keep, out);
        } else if keep(&p) {
            out.push(p);
        }
    }
}

/// The seeds `scripts/fuzz.sh` gives each target, from the same sources (fixtures, the repo's
/// recipes and data, fixed bodies), trimmed to a size the debug build mutates quickly.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let named = |dir: &std::path::Path, name: &str| {
        let mut v = vec![];
        files(dir, &|p| p.file_name().is_some_and(|n| n == name), &mut v);
        v
    };
    let ext = |dir: &std::path::Path, e: &str| {
        let mut v = vec![];
        files(dir, &|p| p.extension().is_some_and(|x| x == e), &mut v);
        v
    };
    let read = |p: &std::path::Path| std::fs::read(p).unwrap();
    let body = |sel: u8, b: &str| [&[sel][..], b.as_bytes()].concat();
    match target {
        "safetensors" => {
            let mut out = vec![];
            for f in ext(&common::fixtures().join(".."), "safetensors") {
                let b = read(&f);
                let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
                if n <= 16384 {
                    out.push(b[8..8 + n].to_vec());
                }
                if b.len() <= 16384 {
                    out.push(b);
                }
            }
            out
        }
        "adapter_config" => named(&common::fixtures().join(".."), "adapter_config.json").iter().map(|p| read(p)).collect(),
        // every fixture base's config.json, the shared sets' and loradex's own
        "base_config" => {
            let mut v = named(&common::fixtures().join(".."), "config.json");
            v.extend(named(&root.join("tests/fixtures"), "config.json"));
            v.iter().filter(|p| p.parent().is_some_and(|d| d.ends_with("base"))).map(|p| read(p)).collect()
        }
        "ref_digest" => {
            let mut out: Vec<Vec<u8>> = ["en/sentiment", "ko/customer-service:v2", "a.b_c-d/e:1.0", "sha256", "a/../b:x", "a:b:c", "x:"].iter().map(|s| s.as_bytes().to_vec()).collect();
            out.push(loradex::digest::Digest::of(b"x").to_string().into_bytes());
            for r in named(&root.join("adapters"), "recipe.toml") {
                let t = String::from_utf8(read(&r)).unwrap();
                out.extend(t.lines().filter_map(|l| l.strip_prefix("name = \"")?.strip_suffix('"')).map(|n| n.as_bytes().to_vec()));
            }
            out
        }
        "recipe" => named(&root.join("adapters"), "recipe.toml")
            .iter()
            .flat_map(|r| {
                let t = read(r);
                let sets = [&t[..], b"\0train.epochs=2\nlora.target_modules=[\"query\",\"key\"]\ndata.labels.x=1\n"].concat();
                [t, sets]
            })
            .collect(),
        "dataset" => {
            let mut out = vec![];
            for f in ext(&root.join("adapters"), "csv").into_iter().chain(ext(&root.join("adapters"), "jsonl")) {
                let t = read(&f);
                // the head of the file, cut at a line end
                let cut = t.iter().take(1500).rposition(|&b| b == b'\n').map_or(t.len(), |i| i + 1);
                let mode = if f.extension().is_some_and(|e| e == "jsonl") { 1 } else { 2 };
                out.push([&[mode][..], &t[..cut]].concat());
            }
            out
        }
        "http_bodies" => {
            let bodies = [
                r#"{"adapter": "en/sentiment:v1", "texts": ["배송이 늦어요", "great"]}"#,
                r#"{"adapter": null, "texts": ["x"]}"#,
                r#"{"model": "base:en/sentiment:v1", "prompt": "hi", "max_tokens": 8, "temperature": 0.7, "top_p": 0.9, "top_k": 40, "seed": 1, "stop": ["\n"], "stream": true}"#,
                r#"{"model": "base", "prompt": [1, 2, 3], "adapter": "a", "adapters": [{"ref": "a", "weight": 0.5}]}"#,
                r#"{"model": "base", "messages": [{"role": "user", "content": "안녕"}, {"role": "assistant", "content": [{"type": "text", "text": "hi"}]}], "max_completion_tokens": 4, "n": 1}"#,
            ];
            bodies.iter().flat_map(|b| [0u8, 1, 2, 0x11, 0x22].map(|s| body(s, b))).collect()
        }
        "oci_manifest" => {
            let (d1, d2) = (loradex::digest::Digest::of(b"a"), loradex::digest::Digest::of(b"b"));
            vec![
                format!(r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.loradex.adapter.v1+json","config":{{"mediaType":"application/vnd.loradex.adapter.v1+json","digest":"{d1}","size":120}},"layers":[{{"mediaType":"application/vnd.loradex.peft.config.v1+json","digest":"{d2}","size":300,"annotations":{{"org.opencontainers.image.title":"adapter_config.json"}}}},{{"mediaType":"application/vnd.loradex.peft.safetensors.v1","digest":"{d1}","size":4096,"annotations":{{"org.opencontainers.image.title":"adapter_model.safetensors"}}}}],"annotations":{{"org.loradex.rank":"8"}}}}"#).into_bytes(),
                format!(r#"{{"media_type":"application/vnd.loradex.adapter.v1+json","base_fingerprint":"{d1}","base_arch":"bert","task":"SEQ_CLS","labels":["a","b"],"metrics":{{"accuracy":0.9}},"provenance":{{"by":"train"}}}}"#).into_bytes(),
            ]
        }
        "gguf" => vec![
            loradex::fuzzing::tiny_gguf(candle_core::quantized::GgmlDType::Q4_1),
            loradex::fuzzing::tiny_gguf(candle_core::quantized::GgmlDType::Q8_0),
            // types converted at load (`ggml_convert`): exactly, and by rounding
            loradex::fuzzing::tiny_gguf(candle_core::quantized::GgmlDType::Q5_0),
            loradex::fuzzing::tiny_gguf(candle_core::quantized::GgmlDType::Q5_1),
            loradex::fuzzing::tiny_gguf_spm(candle_core::quantized::GgmlDType::Q4_1),
        ],
        other => panic!("no seeds for target {other}"),
    }
}

/// Every fuzz target's body (`loradex::fuzzing`, what `scripts/fuzz.sh` runs under libFuzzer)
/// holds over its seeds and a fixed, seeded set of mutations of them: CI builds and runs every
/// target on every change, so they cannot rot, and a crash found once stays found. Not a
/// substitute for `scripts/fuzz.sh` (no coverage feedback, a few thousand inputs).
#[test]
fn every_fuzz_target_holds_over_seeded_mutations_of_its_seeds() {
    // the tiny GGUF seed is a base loradex loads and tokenizes with
    let g = loradex::model::gguf::Gguf::from_bytes("seed.gguf", loradex::fuzzing::tiny_gguf(candle_core::quantized::GgmlDType::Q4_1)).unwrap();
    let (tok, _) = g.tokenizer().unwrap();
    assert_eq!(tok.encode("hello", true).unwrap().get_ids(), &[0, 10]);
    // and its SentencePiece twin: llama.cpp merges `he` (the best score), then `ll`, then `▁he`;
    // "!" has no piece, so its byte's
    let g = loradex::model::gguf::Gguf::from_bytes("spm.gguf", loradex::fuzzing::tiny_gguf_spm(candle_core::quantized::GgmlDType::Q4_1)).unwrap();
    let (tok, _) = g.tokenizer().unwrap();
    assert_eq!(tok.encode("hello!", true).unwrap().get_ids(), &[1, 11, 10, 8, 3]);
    assert_eq!(tok.decode(&[1, 11, 10, 8, 3], true).unwrap(), "hello!");
    let mut report = vec![];
    for (name, target) in loradex::fuzzing::TARGETS {
        let seeds = seeds(name);
        assert!(!seeds.is_empty(), "{name}: no seeds");
        // about 4,000 inputs per target whatever its seed count
        let per_seed = (4000 / seeds.len()).max(20);
        match loradex::fuzzing::mutate::run(target, &seeds, per_seed, 0x0010_ade5) {
            Ok(n) => report.push(format!("{name}: {n}")),
            Err(f) => {
                let path = std::env::temp_dir().join(format!("loradex-fuzz-{name}-finding"));
                std::fs::write(&path, &f.input).unwrap();
                panic!("fuzz target {name} panicked: {}\n  input ({} bytes) written to {} (replay: fuzz/target/.../release/{name} {})", f.message, f.input.len(), path.display(), path.display());
            }
        }
    }
    assert_eq!(report.len(), loradex::fuzzing::TARGETS.len(), "{report:?}");
    eprintln!("fuzz bodies, inputs run: {}", report.join(", "));
}

mod gguf {
    use candle_core::quantized::gguf_file::Value as V;
    use candle_core::quantized::GgmlDType;
    use loradex::fuzzing::{gguf as fuzz_gguf, tiny_gguf, tiny_gguf_with};
    use loradex::model::gguf::Gguf;

    fn set(key: &'static str, v: V) -> impl FnMut(&mut Vec<(&'static str, V)>) {
        let mut v = Some(v);
        move |md| {
            md.retain(|(k, _)| *k != key);
            md.push((key, v.take().unwrap()));
        }
    }

    /// candle's reader divides the data offset by `general.alignment`: 0 was a panic.
    #[test]
    fn an_alignment_of_zero_or_not_a_power_of_two_is_refused() {
        for a in [0u32, 24] {
            let bytes = tiny_gguf_with(GgmlDType::Q4_1, &mut set("general.alignment", V::U32(a)));
            let err = Gguf::from_bytes("t.gguf", bytes.clone()).err().expect("refused");
            assert!(err.to_string().contains("power of two"), "{err}");
            fuzz_gguf(&bytes);
        }
    }

    /// More token types than tokens indexed past the vocabulary: a panic.
    #[test]
    fn more_token_types_than_tokens_is_refused() {
        let bytes = tiny_gguf_with(GgmlDType::Q4_1, &mut set("tokenizer.ggml.token_type", V::Array((0..13).map(|_| V::I32(3)).collect())));
        let g = Gguf::from_bytes("t.gguf", bytes.clone()).unwrap();
        let Err(err) = g.tokenizer() else { panic!("not refused") };
        assert!(err.to_string().contains("13 entries for 12 tokens"), "{err}");
        fuzz_gguf(&bytes);
    }

    /// A huge `block_count` sized the layer vector before any tensor was looked for: capacity
    /// overflow. Now the first missing layer is the error.
    #[test]
    fn a_huge_layer_count_fails_at_its_first_missing_layer() {
        let bytes = tiny_gguf_with(GgmlDType::Q4_1, &mut set("llama.block_count", V::U32(u32::MAX)));
        fuzz_gguf(&bytes);
        let g = Gguf::from_bytes("t.gguf", bytes).unwrap();
        let cfg: loradex::model::llama::Config = serde_json::from_value(g.hf_config().unwrap()).unwrap();
        let spec = loradex::model::llama::DecoderSpec::llama(cfg).unwrap();
        let Err(err) = loradex::model::decoder::Decoder::new(spec, &mut g.source(Default::default()).unwrap()) else { panic!("not refused") };
        assert!(err.to_string().contains("model.layers.2"), "{err}");
    }

    /// A tensor whose dimensions multiply past u64 (or whose data lies past the end) is refused
    /// when the file is opened, naming it, instead of overflowing when it is read.
    #[test]
    fn a_tensor_extent_past_the_file_or_overflowing_is_refused() {
        let bytes = tiny_gguf(GgmlDType::Q4_1);
        let name = b"blk.1.ffn_down.weight";
        let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
        // n_dims (u32), then the dims (u64 each)
        assert_eq!(u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()), 2);
        for dims in [[1u64 << 40, 1 << 40], [64, 1 << 20]] {
            let mut b = bytes.clone();
            for (i, d) in dims.iter().enumerate() {
                b[at + 4 + 8 * i..][..8].copy_from_slice(&d.to_le_bytes());
            }
            let err = Gguf::from_bytes("t.gguf", b.clone()).err().expect("refused");
            assert!(err.to_string().contains("blk.1.ffn_down.weight"), "{err}");
            fuzz_gguf(&b);
        }
    }

    /// A context length that would size rotary tables of terabytes is refused by the config.
    #[test]
    fn an_absurd_context_length_is_refused() {
        let bytes = tiny_gguf_with(GgmlDType::Q4_1, &mut set("llama.context_length", V::U32(u32::MAX)));
        let g = Gguf::from_bytes("t.gguf", bytes).unwrap();
        let cfg: loradex::model::llama::Config = serde_json::from_value(g.hf_config().unwrap()).unwrap();
        let Err(err) = loradex::model::llama::DecoderSpec::llama(cfg) else { panic!("not refused") };
        assert!(err.to_string().contains("max_position_embeddings"), "{err}");
    }
}

/// base_config target: RoPE scalings whose numbers are valid f64 but not f32 made infinite
/// frequencies (a linear factor of 1e-300 is 0 in f32, and every frequency divided by it
/// infinite). Each is refused naming the key; a huge base (frequencies that round to 0, no
/// rotation) still loads, with finite frequencies.
#[test]
fn rope_scaling_numbers_outside_f32_are_refused() {
    use loradex::model::family::Build;
    let base: serde_json::Value = serde_json::from_slice(&std::fs::read(common::fixtures().join("llama-causal-qkvo/base/config.json")).unwrap()).unwrap();
    let with = |rope: serde_json::Value| {
        let mut cfg = base.clone();
        cfg["rope_parameters"] = rope;
        cfg
    };
    let freqs = |cfg: &serde_json::Value| {
        let Build::Decoder(spec) = Arch::detect(cfg).unwrap().family().build else { panic!("a decoder") };
        let s = spec(cfg)?;
        s.inv_freqs(s.cfg.dims()?.1)
    };
    for (rope, key) in [
        (serde_json::json!({"rope_type": "linear", "factor": 1e-300}), "factor"),
        (serde_json::json!({"rope_type": "linear", "factor": 1e300}), "factor"),
        (serde_json::json!({"rope_type": "yarn", "factor": 1e300, "original_max_position_embeddings": 16}), "factor"),
        (serde_json::json!({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "attention_factor": 1e300}), "attention_factor"),
        (serde_json::json!({"rope_type": "llama3", "factor": 1e-300, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 16}), "factor"),
    ] {
        let mut rope = rope;
        rope["rope_theta"] = 10000.0.into();
        let cfg = with(rope.clone());
        loradex::fuzzing::base_config(cfg.to_string().as_bytes());
        let e = freqs(&cfg).expect_err(&format!("{rope} refused")).to_string();
        assert!(e.contains(key), "{rope}: {e}");
    }
    let huge = with(serde_json::json!({"rope_type": "default", "rope_theta": 1e300}));
    loradex::fuzzing::base_config(huge.to_string().as_bytes());
    let (global, _, _) = freqs(&huge).unwrap();
    assert!(global.iter().all(|f| f.is_finite()) && global[1..].iter().all(|f| *f == 0.0), "{global:?}");
}

/// base_config target (2.4M runs in): an OLMo 3 config whose per-layer-type RoPE parameters
/// held an array for `full_attention` panicked when its base was filled in (serde_json's
/// index on a non-object). Refused by name, for either kind.
#[test]
fn olmo3_rope_parameters_that_are_not_objects_are_refused() {
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(common::case("olmo3-causal").join("base/config.json")).unwrap()).unwrap();
    for kind in ["full_attention", "sliding_attention"] {
        let mut c = cfg.clone();
        c["rope_parameters"][kind] = serde_json::json!(["Olmo3ForCausalLM"]);
        loradex::fuzzing::base_config(c.to_string().as_bytes());
        let loradex::model::family::Build::Decoder(spec) = Arch::detect(&c).unwrap().family().build else { panic!("a decoder") };
        let e = spec(&c).expect_err("refused").to_string();
        assert!(e.contains(kind) && e.contains("not an object"), "{e}");
    }
    // and the fixture itself still reads
    cfg["rope_parameters"]["sliding_attention"]["rope_theta"] = 500000.0.into();
    loradex::fuzzing::base_config(cfg.to_string().as_bytes());
}
