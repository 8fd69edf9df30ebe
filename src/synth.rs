//! Synthetic models for tests and benchmarks: writes a randomly initialized BERT or Llama
//! directory (config.json, model.safetensors, tokenizer.json) of any size, so that tests run
//! without downloads and benchmarks can use BERT-base shapes. Writes only under `dir`.

use crate::error::{Error, IoContext, Result};
use crate::peft::safetensors::write_f32;
use crate::util::Rng;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

#[derive(Clone, Debug)]
pub struct Shape {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub max_positions: usize,
    /// Std of the random weight matrices. 0.02 is BERT's init; a random model that should have
    /// input-dependent features (for training tests) needs larger weights.
    pub init_std: f32,
}

impl Shape {
    pub fn tiny() -> Shape {
        Shape { hidden: 32, layers: 2, heads: 4, intermediate: 64, max_positions: 64, init_std: 0.3 }
    }
    pub fn bert_base() -> Shape {
        Shape { hidden: 768, layers: 12, heads: 12, intermediate: 3072, max_positions: 512, init_std: 0.02 }
    }
}

/// Words the synthetic WordPiece vocabulary knows (plus single letters and specials).
pub const WORDS: &[&str] = &[
    "good", "great", "love", "wonderful", "best", "happy", "fine", "bad", "awful", "hate", "terrible", "worst", "sad",
    "boring", "the", "movie", "film", "service", "was", "is", "a", "very", "not", "and", "it", "product", "delivery",
    "late", "kind", "help", "refund", "thank", "you", "i", "this", "really", "so", "plot", "acting", "story",
];

fn vocab() -> Vec<String> {
    let mut v: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"].iter().map(|s| s.to_string()).collect();
    v.extend(WORDS.iter().map(|s| s.to_string()));
    for c in 'a'..='z' {
        v.push(c.to_string());
        v.push(format!("##{c}"));
    }
    for p in [".", ",", "!", "?", "'"] {
        v.push(p.to_string());
    }
    v.sort();
    v.dedup();
    v
}

fn write_tokenizer(path: &Path) -> Result<usize> {
    use tokenizers::models::wordpiece::WordPiece;
    use tokenizers::normalizers::BertNormalizer;
    use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
    use tokenizers::processors::bert::BertProcessing;
    let v = vocab();
    let map: HashMap<String, u32> = v.iter().enumerate().map(|(i, w)| (w.clone(), i as u32)).collect();
    let id = |t: &str| map[t];
    let vocab_txt = path.with_file_name("vocab.txt");
    std::fs::write(&vocab_txt, v.join("\n") + "\n").at(&vocab_txt)?;
    let vocab_s = vocab_txt.display().to_string();
    let wp = WordPiece::from_file(&vocab_s).unk_token("[UNK]".into()).build().map_err(|e| Error::Tokenizer(e.to_string()))?;
    let mut tok = tokenizers::Tokenizer::new(wp);
    tok.with_normalizer(Some(BertNormalizer::new(true, true, None, true))).map_err(|e| Error::Tokenizer(e.to_string()))?;
    tok.with_pre_tokenizer(Some(BertPreTokenizer));
    tok.with_post_processor(Some(BertProcessing::new(("[SEP]".into(), id("[SEP]")), ("[CLS]".into(), id("[CLS]")))));
    tok.save(path, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
    Ok(v.len())
}

fn randn(rng: &mut Rng, n: usize, std: f32) -> Vec<f32> {
    (0..n).map(|_| rng.normal(std)).collect()
}

/// Writes a random `BertForSequenceClassification` (`labels` empty: a bare encoder, no head).
pub fn bert(dir: &Path, s: &Shape, labels: &[&str], seed: u64) -> Result<()> {
    std::fs::create_dir_all(dir).at(dir)?;
    let vocab = write_tokenizer(&dir.join("tokenizer.json"))?;
    let mut rng = Rng::new(seed);
    let mut t: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    let h = s.hidden;
    let mut put = |name: String, shape: Vec<usize>, data: Vec<f32>| {
        t.insert(name, (shape, data));
    };
    let ones = |n| vec![1.0f32; n];
    let zeros = |n| vec![0.0f32; n];
    put("bert.embeddings.word_embeddings.weight".into(), vec![vocab, h], randn(&mut rng, vocab * h, s.init_std));
    put("bert.embeddings.position_embeddings.weight".into(), vec![s.max_positions, h], randn(&mut rng, s.max_positions * h, 0.02));
    put("bert.embeddings.token_type_embeddings.weight".into(), vec![2, h], randn(&mut rng, 2 * h, 0.02));
    put("bert.embeddings.LayerNorm.weight".into(), vec![h], ones(h));
    put("bert.embeddings.LayerNorm.bias".into(), vec![h], zeros(h));
    for l in 0..s.layers {
        let p = format!("bert.encoder.layer.{l}");
        for (m, o, i) in [
            ("attention.self.query", h, h),
            ("attention.self.key", h, h),
            ("attention.self.value", h, h),
            ("attention.output.dense", h, h),
            ("intermediate.dense", s.intermediate, h),
            ("output.dense", h, s.intermediate),
        ] {
            put(format!("{p}.{m}.weight"), vec![o, i], randn(&mut rng, o * i, s.init_std));
            put(format!("{p}.{m}.bias"), vec![o], zeros(o));
        }
        for n in ["attention.output.LayerNorm", "output.LayerNorm"] {
            put(format!("{p}.{n}.weight"), vec![h], ones(h));
            put(format!("{p}.{n}.bias"), vec![h], zeros(h));
        }
    }
    put("bert.pooler.dense.weight".into(), vec![h, h], randn(&mut rng, h * h, s.init_std));
    put("bert.pooler.dense.bias".into(), vec![h], zeros(h));
    if !labels.is_empty() {
        put("classifier.weight".into(), vec![labels.len(), h], randn(&mut rng, labels.len() * h, 0.02));
        put("classifier.bias".into(), vec![labels.len()], zeros(labels.len()));
    }
    crate::util::atomic_write(&dir.join("model.safetensors"), &write_f32(&t))?;
    let id2label: serde_json::Map<String, serde_json::Value> = labels.iter().enumerate().map(|(i, l)| (i.to_string(), (*l).into())).collect();
    let mut cfg = serde_json::json!({
        "architectures": [if labels.is_empty() { "BertModel" } else { "BertForSequenceClassification" }],
        "model_type": "bert", "vocab_size": vocab, "hidden_size": h, "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads, "intermediate_size": s.intermediate, "hidden_act": "gelu",
        "max_position_embeddings": s.max_positions, "type_vocab_size": 2, "layer_norm_eps": 1e-12, "pad_token_id": 0,
    });
    if !labels.is_empty() {
        cfg["id2label"] = id2label.into();
    }
    crate::util::atomic_write(&dir.join("config.json"), &serde_json::to_vec_pretty(&cfg).expect("json"))
}

/// Labelled sentences for a sentiment-like task the synthetic vocabulary covers:
/// label 0 ("neg") texts use negative words, label 1 ("pos") positive ones.
pub fn sentiment_data(n: usize, seed: u64) -> Vec<(String, &'static str)> {
    let pos = ["good", "great", "love", "wonderful", "best", "happy"];
    let neg = ["bad", "awful", "hate", "terrible", "worst", "boring"];
    let filler = ["the", "movie", "film", "was", "is", "very", "really", "so", "plot", "acting", "story", "it"];
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| {
            let (words, label) = if i % 2 == 0 { (&pos, "pos") } else { (&neg, "neg") };
            let mut s = vec![];
            for _ in 0..(3 + rng.below(4)) {
                s.push(filler[rng.below(filler.len())]);
            }
            s.insert(rng.below(s.len() + 1), words[rng.below(words.len())]);
            (s.join(" "), label)
        })
        .collect()
}

/// A random LoRA adapter (rank `r`, `lora_alpha = 2r`) on every projection of a decoder,
/// resident in memory: for benchmarks of serving many adapters.
pub fn decoder_adapter(dec: &crate::model::decoder::Decoder, r: usize, seed: u64) -> Result<crate::model::lora::LoadedAdapter> {
    decoder_adapter_scaled(dec, r, seed, 1.0)
}

/// `decoder_adapter` with every up-projection value times `b_scale`: the same adapter nudged,
/// for measuring how far a small change in the factors moves a decoder's outputs.
pub fn decoder_adapter_scaled(dec: &crate::model::decoder::Decoder, r: usize, seed: u64, b_scale: f32) -> Result<crate::model::lora::LoadedAdapter> {
    use crate::model::decoder::SLOTS;
    use crate::model::lora::{LoadedAdapter, LoraPair};
    use candle_core::{Device, Tensor};
    let (h, q, kv, i) = (dec.hidden, dec.n_heads * dec.head_dim, dec.kv_dim(), dec.inter);
    let shapes = [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]; // (in, out)
    let mut rng = Rng::new(seed);
    let mut modules = HashMap::new();
    let mut bytes = 0;
    for l in 0..dec.layers() {
        for (slot, (d_in, d_out)) in SLOTS.iter().zip(shapes) {
            let a: Vec<f32> = (0..r * d_in).map(|_| rng.normal(0.02)).collect();
            let b: Vec<f32> = (0..d_out * r).map(|_| rng.normal(0.02) * b_scale).collect();
            bytes += (a.len() + b.len()) * 4;
            let pair = LoraPair {
                a: Tensor::from_vec(a, (r, d_in), &Device::Cpu)?,
                b: Tensor::from_vec(b, (d_out, r), &Device::Cpu)?,
                scale: 2.0,
                magnitude: None,
                host: Some(Default::default()),
            };
            modules.insert(format!("model.layers.{l}.{slot}"), pair);
        }
    }
    Ok(LoadedAdapter { id: format!("synthetic-{seed}"), modules, saved: HashMap::new(), labels: vec![], bytes, flat: Default::default(), slots: Default::default() })
}
