//! The tokenizer a GGUF file's `tokenizer.ggml.*` metadata describes, built with the
//! tokenizers crate so that it tokenizes as llama.cpp does:
//! - `gpt2`: byte-level BPE with the file's merges and the pre-tokenizer `tokenizer.ggml.pre`
//!   names;
//! - `llama`: SentencePiece (SPM) with byte fallback, as in Llama 2, Mistral, TinyLlama,
//!   Gemma and Phi-3 files. llama.cpp merges the adjacent pair whose concatenation is the
//!   highest-scoring piece of the vocabulary; that is a BPE whose merges are every piece's
//!   splits into two pieces, ranked by the piece's score. A space is `▁`, one is put in
//!   front of the text and after each special token when `add_space_prefix` says so, and a
//!   character with no piece becomes its UTF-8 bytes' `<0xXX>` pieces.
//!
//! Reads only metadata values, which may be hostile (fuzzed through `Gguf::tokenizer`): every
//! id and length is checked, never indexed blindly. Owns no tensors.

use super::Gguf;
use crate::error::{Error, Result};
use tokenizers::decoders::{byte_fallback::ByteFallback, fuse::Fuse, sequence::Sequence as DecSeq, strip::Strip};
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormSeq};
use tokenizers::pre_tokenizers::{byte_level::ByteLevel, digits::Digits, sequence::Sequence, split::Split, split::SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

/// GGUF token types (`llama_token_type`).
const NORMAL: i64 = 1;
const UNKNOWN: i64 = 2;
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// SentencePiece's whitespace mark.
const SPACE: &str = "\u{2581}";

/// Pieces longer than this (in bytes) are not split into merges: no real vocabulary has one
/// that is not reachable from shorter pieces, and hostile metadata could make the quadratic
/// split search slow.
const MAX_MERGED_PIECE: usize = 512;

impl Gguf {
    fn tok_str(&self, key: &str) -> Option<String> {
        self.meta(&format!("tokenizer.ggml.{key}")).and_then(|v| v.to_string().ok().cloned())
    }
    fn tok_bool(&self, key: &str) -> Option<bool> {
        self.meta(&format!("tokenizer.ggml.{key}")).and_then(|v| v.to_bool().ok())
    }

    /// One number per token (`scores`, `token_type`): none when the key is absent; more
    /// entries than tokens is an error.
    fn per_token<T>(&self, key: &str, n: usize, of: impl Fn(&candle_core::quantized::gguf_file::Value) -> Option<T>) -> Result<Vec<T>> {
        let Some(v) = self.meta(&format!("tokenizer.ggml.{key}")) else { return Ok(vec![]) };
        let arr = v.to_vec().map_err(|e| Error::Tokenizer(format!("tokenizer.ggml.{key}: {e}")))?;
        if arr.len() > n {
            return Err(Error::Tokenizer(format!("{}: tokenizer.ggml.{key} has {} entries for {n} tokens", self.path.display(), arr.len())));
        }
        arr.iter().map(|x| of(x).ok_or_else(|| Error::Tokenizer(format!("tokenizer.ggml.{key}: a value of the wrong type")))).collect()
    }

    /// The tokens that end a generation, as llama.cpp finds them: the end-of-sequence,
    /// end-of-turn and end-of-message ids the metadata names, and every control token whose
    /// text is one of the chat formats' turn ends (Gemma's `<end_of_turn>`, ChatML's
    /// `<|im_end|>`, Llama 3's `<|eot_id|>`, ...), which many files leave unnamed. Sorted,
    /// without repeats; only the named ids where the token list is unreadable (the tokenizer
    /// then comes from a `tokenizer.json` beside the file).
    pub fn end_ids(&self) -> Vec<u32> {
        const TURN_ENDS: [&str; 10] =
            ["<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>", "_<EOT>", "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>"];
        let mut ids: Vec<u32> = ["eos_token_id", "eot_token_id", "eom_token_id"].iter().filter_map(|k| self.tok_u32(k)).collect();
        let tokens = self.tokens().unwrap_or_default();
        let types = self.per_token("token_type", tokens.len(), |v| v.to_i32().ok().map(i64::from).or_else(|| v.to_u32().ok().map(i64::from))).unwrap_or_default();
        for (i, (t, ty)) in tokens.iter().zip(&types).enumerate() {
            if *ty == CONTROL && TURN_ENDS.contains(&t.as_str()) {
                ids.push(i as u32);
            }
        }
        if !tokens.is_empty() {
            ids.retain(|&i| (i as usize) < tokens.len());
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The tokenizer `tokenizer.ggml.*` describes (module docs), and the padding id.
    pub fn tokenizer(&self) -> Result<(Tokenizer, Option<u32>)> {
        let model = self.tok_str("model").unwrap_or_default();
        let tokens = self.tokens()?;
        let types = self.per_token("token_type", tokens.len(), |v| v.to_i32().ok().map(i64::from).or_else(|| v.to_u32().ok().map(i64::from)))?;
        let mut tok = match model.as_str() {
            "gpt2" => self.byte_level_bpe(&tokens)?,
            "llama" => self.sentencepiece(&tokens, &types)?,
            _ => {
                return Err(Error::Tokenizer(format!(
                    "{}: tokenizer.ggml.model {model:?} is not supported (gpt2 byte-level BPE, llama SentencePiece); put a tokenizer.json beside the file",
                    self.path.display()
                )))
            }
        };
        // control and unknown tokens are special (matched in prompts, as llama.cpp's
        // `parse_special` does); user-defined ones are always matched whole
        let of_type = |want: &[i64], special: bool| -> Vec<AddedToken> {
            types.iter().enumerate().filter(|(_, t)| want.contains(t)).map(|(i, _)| AddedToken::from(tokens[i].clone(), special).normalized(false)).collect()
        };
        tok.add_special_tokens(of_type(&[CONTROL, UNKNOWN], true)).map_err(|e| Error::Tokenizer(e.to_string()))?;
        tok.add_tokens(of_type(&[USER_DEFINED], false)).map_err(|e| Error::Tokenizer(e.to_string()))?;
        let default_bos = model == "llama";
        let add_bos = self.tok_bool("add_bos_token").unwrap_or(default_bos);
        let add_eos = self.tok_bool("add_eos_token").unwrap_or(false);
        let special = |key: &str, add: bool| -> Result<Option<(String, u32)>> {
            match (add, self.tok_u32(key)) {
                (true, Some(id)) => {
                    let t = tokens.get(id as usize).cloned().ok_or_else(|| Error::Tokenizer(format!("tokenizer.ggml.{key} {id} is outside the vocabulary")))?;
                    Ok(Some((t, id)))
                }
                _ => Ok(None),
            }
        };
        let (bos, eos) = (special("bos_token_id", add_bos)?, special("eos_token_id", add_eos)?);
        if bos.is_some() || eos.is_some() {
            let mut single = vec![];
            single.extend(bos.iter().map(|(t, _)| format!("{t}:0")));
            single.push("$A:0".to_string());
            single.extend(eos.iter().map(|(t, _)| format!("{t}:0")));
            let tp = TemplateProcessing::builder()
                .try_single(single.join(" "))
                .map_err(|e| Error::Tokenizer(e.to_string()))?
                .special_tokens(bos.into_iter().chain(eos).collect::<Vec<_>>())
                .build()
                .map_err(|e| Error::Tokenizer(e.to_string()))?;
            tok.with_post_processor(Some(tp));
        }
        Ok((tok, self.pad_id()))
    }

    /// Byte-level BPE (`gpt2`) with the pre-tokenizer `tokenizer.ggml.pre` names.
    fn byte_level_bpe(&self, tokens: &[String]) -> Result<Tokenizer> {
        let merges: Vec<(String, String)> = self
            .strings("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())).ok_or_else(|| Error::Tokenizer(format!("bad merge {m:?}"))))
            .collect::<Result<_>>()?;
        let vocab: tokenizers::models::bpe::Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| Error::Tokenizer(e.to_string()))?;
        let mut tok = Tokenizer::new(bpe);
        let pre = self.tok_str("pre").unwrap_or_else(|| "default".into());
        let split = |re: &str, behavior| -> Result<PreTokenizerWrapper> {
            Ok(Split::new(SplitPattern::Regex(re.into()), behavior, false).map_err(|e| Error::Tokenizer(e.to_string()))?.into())
        };
        let pt: PreTokenizerWrapper = match pre.as_str() {
            "default" | "gpt2" | "gpt-2" => ByteLevel::new(false, true, true).into(),
            "smollm" | "starcoder" | "refact" | "codeshell" => Sequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()]).into(),
            "llama-bpe" | "llama3" => Sequence::new(vec![split(LLAMA3_SPLIT, SplitDelimiterBehavior::Isolated)?, ByteLevel::new(false, true, false).into()]).into(),
            "qwen2" => Sequence::new(vec![split(QWEN2_SPLIT, SplitDelimiterBehavior::Isolated)?, ByteLevel::new(false, false, false).into()]).into(),
            other => return Err(Error::Tokenizer(format!("{}: tokenizer.ggml.pre {other:?} is not supported", self.path.display()))),
        };
        tok.with_pre_tokenizer(Some(pt));
        tok.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
        Ok(tok)
    }

    /// SentencePiece as llama.cpp runs it (module docs).
    fn sentencepiece(&self, tokens: &[String], types: &[i64]) -> Result<Tokenizer> {
        let scores = self.per_token("scores", tokens.len(), |v| v.to_f32().ok().or_else(|| v.to_f64().ok().map(|x| x as f32)))?;
        if scores.len() != tokens.len() {
            return Err(Error::Tokenizer(format!("{}: a SentencePiece vocabulary needs one score per token ({} for {})", self.path.display(), scores.len(), tokens.len())));
        }
        let unk = self.tok_u32("unknown_token_id").or_else(|| types.iter().position(|t| *t == UNKNOWN).map(|i| i as u32));
        let unk = unk.and_then(|id| tokens.get(id as usize)).cloned();
        let ids = piece_ids(tokens);
        let merges = spm_merges(tokens, types, &scores, &ids);
        let mut bpe = BPE::builder().vocab_and_merges(ids, merges).byte_fallback(true).fuse_unk(true);
        if let Some(u) = unk {
            bpe = bpe.unk_token(u);
        }
        let mut tok = Tokenizer::new(bpe.build().map_err(|e| Error::Tokenizer(e.to_string()))?);
        // llama.cpp's default is a space in front; Gemma's converter writes false
        let prefix = self.tok_bool("add_space_prefix").unwrap_or(true);
        let replace = |from: &str, to: &str| Replace::new(from, to).map_err(|e| Error::Tokenizer(e.to_string()));
        let mut norm: Vec<NormalizerWrapper> = vec![];
        if prefix {
            norm.push(Prepend::new(SPACE.into()).into());
        }
        norm.push(replace(" ", SPACE)?.into());
        tok.with_normalizer(Some(NormSeq::new(norm))).map_err(|e| Error::Tokenizer(e.to_string()))?;
        let mut dec: Vec<DecoderWrapper> = vec![replace(SPACE, " ")?.into(), ByteFallback::new().into(), Fuse::new().into()];
        if prefix {
            dec.push(Strip::new(' ', 1, 0).into());
        }
        tok.with_decoder(Some(DecSeq::new(dec)));
        Ok(tok)
    }
}

/// Piece → id, the first id where a piece repeats (as llama.cpp's lookup keeps it).
fn piece_ids(tokens: &[String]) -> tokenizers::models::bpe::Vocab {
    let mut v = tokenizers::models::bpe::Vocab::default();
    v.reserve(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        v.entry(t.clone()).or_insert(i as u32);
    }
    v
}

/// Every split of a piece into two pieces, ranked as llama.cpp chooses among adjacent pairs:
/// the higher score of the joined piece first, a lower id on equal scores. Byte pieces and
/// pieces of unused slots never result from a merge in llama.cpp's vocabularies, but any piece
/// that is the concatenation of two pieces is one llama.cpp would form, so all are included.
fn spm_merges(tokens: &[String], types: &[i64], scores: &[f32], ids: &tokenizers::models::bpe::Vocab) -> Vec<(String, String)> {
    let mut ranked: Vec<(f32, u32, usize, &str)> = vec![];
    for (id, piece) in tokens.iter().enumerate() {
        // only the id a lookup finds joins (a repeated piece is reached through its first id)
        if piece.len() > MAX_MERGED_PIECE || ids.get(piece) != Some(&(id as u32)) {
            continue;
        }
        let ty = types.get(id).copied().unwrap_or(NORMAL);
        if ty == CONTROL || ty == UNKNOWN {
            // never formed from text: llama.cpp matches them only as special tokens
            continue;
        }
        for (at, _) in piece.char_indices().skip(1) {
            if ids.contains_key(&piece[..at]) && ids.contains_key(&piece[at..]) {
                ranked.push((scores[id], id as u32, at, piece));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    ranked.into_iter().map(|(_, _, at, p)| (p[..at].to_string(), p[at..].to_string())).collect()
}

const LLAMA3_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
