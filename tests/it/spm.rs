//! SentencePiece (`tokenizer.ggml.model = llama`) tokenizers built from GGUF metadata, against
//! real llama.cpp: `tests/data/spm/` holds a 600-piece vocabulary trained with Llama 2's
//! SentencePiece settings (byte fallback, digits split) and llama.cpp's own token ids for 68
//! strings (English, Korean, spaces, tabs, newlines, digits, emoji and other characters with no
//! piece, literal control tokens), made by `scripts/spm-ground-truth.py` with llama-cpp-python.

use candle_core::quantized::gguf_file::Value as V;
use loradex::model::gguf::Gguf;
use serde_json::Value;

fn data(name: &str) -> Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/spm").join(name);
    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
}

/// The fixture vocabulary written as a GGUF's `tokenizer.ggml.*` metadata, as llama.cpp's
/// converter writes an SPM vocabulary (on loradex's tiny test base: the weights do not matter
/// to the tokenizer), with `overrides` replacing keys of the same name.
fn spm_gguf(overrides: Vec<(&'static str, V)>) -> Gguf {
    let v = data("vocab.json");
    let arr = |k: &str| v[k].as_array().unwrap().clone();
    let tokens: Vec<V> = arr("tokens").iter().map(|t| V::String(t.as_str().unwrap().into())).collect();
    let scores: Vec<V> = arr("scores").iter().map(|s| V::F32(s.as_f64().unwrap() as f32)).collect();
    let types: Vec<V> = arr("token_types").iter().map(|t| V::I32(t.as_i64().unwrap() as i32)).collect();
    let u = |k: &str| V::U32(v[k].as_u64().unwrap() as u32);
    let b = |k: &str| V::Bool(v[k].as_bool().unwrap());
    let mut md = vec![
        ("tokenizer.ggml.model", V::String("llama".into())),
        ("tokenizer.ggml.tokens", V::Array(tokens)),
        ("tokenizer.ggml.scores", V::Array(scores)),
        ("tokenizer.ggml.token_type", V::Array(types)),
        ("tokenizer.ggml.bos_token_id", u("bos")),
        ("tokenizer.ggml.eos_token_id", u("eos")),
        ("tokenizer.ggml.unknown_token_id", u("unk")),
        ("tokenizer.ggml.add_bos_token", b("add_bos")),
        ("tokenizer.ggml.add_eos_token", b("add_eos")),
        ("tokenizer.ggml.add_space_prefix", b("add_space_prefix")),
    ];
    for (k, val) in overrides {
        md.retain(|(m, _)| *m != k);
        md.push((k, val));
    }
    let mut md = Some(md);
    let bytes = loradex::fuzzing::tiny_gguf_with(candle_core::quantized::GgmlDType::Q8_0, &mut |m| {
        m.retain(|(k, _)| !k.starts_with("tokenizer.ggml."));
        m.extend(md.take().unwrap());
    });
    Gguf::from_bytes("spm.gguf", bytes).unwrap()
}

/// Every case llama.cpp tokenized as loradex tokenizes prompts (special tokens parsed, as
/// llama.cpp's server does; the cases that tokenize "<s>" as plain text are llama.cpp's
/// `special = false`, which loradex does not offer) gives llama.cpp's ids, and decodes to
/// llama.cpp's text: one leading space dropped, as Hugging Face's Llama decoder and
/// llama-cpp-python do after a BOS and llama.cpp's own detokenizer does without one.
#[test]
fn sentencepiece_gguf_tokenizers_give_llama_cpp_ids() {
    let (tok, _) = spm_gguf(vec![]).tokenizer().unwrap();
    let exp = data("expected.json");
    let (mut compared, mut decoded) = (0, 0);
    for c in exp["cases"].as_array().unwrap() {
        let text = c["text"].as_str().unwrap();
        let (add_bos, special) = (c["add_bos"].as_bool().unwrap(), c["special"].as_bool().unwrap());
        if !special && ["<s>", "</s>", "<unk>"].iter().any(|s| text.contains(s)) {
            continue;
        }
        let want: Vec<u32> = c["ids"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect();
        let got = tok.encode(text, add_bos).unwrap().get_ids().to_vec();
        assert_eq!(got, want, "{text:?} (add_bos {add_bos}, special {special})");
        compared += 1;
        // llama-cpp-python drops the space after a leading BOS, llama.cpp's own detokenizer the
        // space of a leading piece: loradex (and Hugging Face's Llama decoder) does both
        let want_text = if got.first() == Some(&1) { &c["detokenized"] } else { &c["detokenized_native"] };
        if let Some(w) = want_text.as_str() {
            assert_eq!(tok.decode(&got, true).unwrap(), w, "decoding {text:?} (add_bos {add_bos})");
            decoded += 1;
        }
    }
    assert!(compared >= 60 && decoded >= 60, "{compared} cases compared, {decoded} decoded");
}

/// Gemma's converter writes `add_space_prefix = false`: no `▁` in front of the text, so the
/// first word is another piece, and nothing is stripped when decoding. `add_bos_token = false`
/// and `add_eos_token = true` are honoured.
#[test]
fn a_sentencepiece_vocabulary_without_space_prefix_or_bos_is_read_as_written() {
    let (with, _) = spm_gguf(vec![]).tokenizer().unwrap();
    let ids_with = with.encode("Hello world", false).unwrap().get_ids().to_vec();
    let g = spm_gguf(vec![
        ("tokenizer.ggml.add_space_prefix", V::Bool(false)),
        ("tokenizer.ggml.add_bos_token", V::Bool(false)),
        ("tokenizer.ggml.add_eos_token", V::Bool(true)),
    ]);
    let (without, _) = g.tokenizer().unwrap();
    let ids = without.encode("Hello world", true).unwrap().get_ids().to_vec();
    let pieces: Vec<String> = ids.iter().map(|i| without.id_to_token(*i).unwrap()).collect();
    assert!(!pieces[0].starts_with('\u{2581}') && pieces[0] != "<s>", "no prefix, no BOS: {pieces:?}");
    assert_eq!(pieces.last().map(String::as_str), Some("</s>"), "add_eos_token: {pieces:?}");
    assert_ne!(ids[..ids.len() - 1], ids_with[..], "the prefix space changes the pieces");
    assert_eq!(without.decode(&ids, true).unwrap(), "Hello world");
    assert_eq!(without.encode(" Hello", false).unwrap().get_ids()[0], with.encode("Hello", false).unwrap().get_ids()[0], "a written space is the prefix");
}
