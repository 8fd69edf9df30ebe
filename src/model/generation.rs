//! One generated sequence as a state machine that any driver steps: the prompt fed in chunks,
//! then one token at a time; sampling (greedy, temperature, top-k, top-p, seeded); text decoded
//! incrementally so that streamed pieces concatenate to the final text; stop strings cut the
//! text before them; the finish reason. The CLI drives one `Sequence`, the server's scheduler
//! many at once. Owns no forward pass and no I/O.

use super::kv_cache::SeqCache;
use super::Tok;
use crate::error::{Error, Result};
use crate::util::Rng;

/// Most stop strings a request may give, and most bytes of each.
pub const MAX_STOPS: usize = 16;
pub const MAX_STOP_BYTES: usize = 256;

/// What a request asks of generation.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    pub max_tokens: usize,
    /// 0 is greedy.
    pub temperature: f64,
    /// 1.0 keeps every token.
    pub top_p: f64,
    /// 0 keeps every token.
    pub top_k: usize,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { max_tokens: 16, temperature: 0.0, top_p: 1.0, top_k: 0, seed: None, stop: vec![] }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=5.0).contains(&self.temperature) {
            return Err(Error::InvalidArgument("temperature must be in [0, 5]".into()));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::InvalidArgument("top_p must be in (0, 1]".into()));
        }
        if self.stop.len() > MAX_STOPS || self.stop.iter().any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES) {
            return Err(Error::InvalidArgument(format!("stop: at most {MAX_STOPS} non-empty strings of at most {MAX_STOP_BYTES} bytes")));
        }
        Ok(())
    }
}

/// Why a sequence ended, in OpenAI's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Finish {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens`, or the context is full.
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// Picks next tokens from logits.
pub struct Sampler {
    temperature: f64,
    top_p: f64,
    top_k: usize,
    rng: Rng,
}

impl Sampler {
    pub fn new(p: &SamplingParams) -> Sampler {
        let seed = p.seed.unwrap_or_else(crate::util::unique_suffix);
        Sampler { temperature: p.temperature, top_p: p.top_p, top_k: p.top_k, rng: Rng::new(seed) }
    }

    pub fn pick(&mut self, logits: &[f32]) -> u32 {
        if self.temperature <= 0.0 || self.top_k == 1 {
            return super::llama::argmax(logits);
        }
        let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        // candidates by descending logit (ties: lower id first), cut by top-k
        let mut idx: Vec<u32> = (0..logits.len() as u32).filter(|&i| logits[i as usize].is_finite()).collect();
        let by = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
        if self.top_k > 0 && self.top_k < idx.len() {
            idx.select_nth_unstable_by(self.top_k - 1, by);
            idx.truncate(self.top_k);
        }
        idx.sort_unstable_by(by);
        let w: Vec<f64> = idx.iter().map(|&i| (((logits[i as usize] - m) as f64) / self.temperature).exp()).collect();
        let total: f64 = w.iter().sum();
        let mut keep = w.len();
        if self.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, x) in w.iter().enumerate() {
                acc += x / total;
                if acc >= self.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        let total: f64 = w[..keep].iter().sum();
        let mut u = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
        for (i, x) in w[..keep].iter().enumerate() {
            u -= x;
            if u < 0.0 {
                return idx[i];
            }
        }
        idx[keep.saturating_sub(1)]
    }
}

/// Incremental detokenization with stop strings: `push` returns the text that may be shown now.
pub struct TextStream {
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
    text: String,
    emitted: usize,
    stop: Vec<String>,
}

impl TextStream {
    pub fn new(stop: Vec<String>) -> TextStream {
        TextStream { ids: vec![], prefix: 0, read: 0, text: String::new(), emitted: 0, stop }
    }

    /// Adds a token. Returns the new visible text, and whether a stop string was reached (the
    /// text then ends before it).
    pub fn push(&mut self, tok: &Tok, id: u32) -> Result<(String, bool)> {
        self.ids.push(id);
        let dec = |ids: &[u32]| tok.inner.decode(ids, true).map_err(|e| Error::Tokenizer(e.to_string()));
        let before = dec(&self.ids[self.prefix..self.read])?;
        let now = dec(&self.ids[self.prefix..])?;
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') && now.is_char_boundary(before.len()) {
            self.text.push_str(&now[before.len()..]);
            self.prefix = self.read;
            self.read = self.ids.len();
        }
        // earliest stop string, searched from where one could start
        let longest = self.stop.iter().map(String::len).max().unwrap_or(0);
        let mut from = self.emitted.saturating_sub(longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        if let Some(at) = self.stop.iter().filter_map(|s| self.text[from..].find(s.as_str()).map(|p| p + from)).min() {
            self.text.truncate(at);
            let out = self.text[self.emitted.min(at)..].to_string();
            self.emitted = self.text.len();
            return Ok((out, true));
        }
        // hold back a tail that may be the start of a stop string
        let mut safe = self.text.len();
        for s in &self.stop {
            for k in (1..s.len().min(self.text.len() + 1)).rev() {
                if s.is_char_boundary(k) && self.text.ends_with(&s[..k]) {
                    safe = safe.min(self.text.len() - k);
                    break;
                }
            }
        }
        while !self.text.is_char_boundary(safe) {
            safe -= 1;
        }
        let safe = safe.max(self.emitted);
        let out = self.text[self.emitted..safe].to_string();
        self.emitted = safe;
        Ok((out, false))
    }

    /// Whatever was held back, at the end of the sequence.
    pub fn flush(&mut self) -> String {
        let out = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        out
    }
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// What a step produced for a sequence.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// Still prefilling: nothing to show yet.
    Pending,
    /// A new token and the text it made visible.
    Token { id: u32, text: String },
    /// The last token (if one was generated) and the rest of the text; the sequence is done.
    Done { id: Option<u32>, text: String, finish: Finish },
}

/// A sequence being generated: prompt, cache, sampler, text.
pub struct Sequence {
    pub prompt: Vec<u32>,
    pub generated: Vec<u32>,
    pub cache: SeqCache,
    pub params: SamplingParams,
    fed: usize,
    sampler: Sampler,
    stream: TextStream,
    eos: Vec<u32>,
    max_positions: usize,
    pub finish: Option<Finish>,
}

impl Sequence {
    /// `max_positions`: the context length; the cache must have room for prompt + max_tokens
    /// (capped at the context).
    pub fn new(prompt: Vec<u32>, params: SamplingParams, cache: SeqCache, eos: Vec<u32>, max_positions: usize) -> Result<Sequence> {
        if prompt.is_empty() {
            return Err(Error::InvalidArgument("empty prompt".into()));
        }
        if prompt.len() >= max_positions {
            return Err(Error::InvalidArgument(format!("the prompt has {} tokens; the context holds {max_positions}", prompt.len())));
        }
        let sampler = Sampler::new(&params);
        let stream = TextStream::new(params.stop.clone());
        Ok(Sequence { prompt, generated: vec![], cache, params, fed: 0, sampler, stream, eos, max_positions, finish: None })
    }

    /// Positions this sequence may need: prompt + max_tokens, capped at the context.
    pub fn positions_needed(prompt: usize, max_tokens: usize, max_positions: usize) -> usize {
        (prompt + max_tokens).min(max_positions)
    }

    pub fn prefilling(&self) -> bool {
        self.fed < self.prompt.len()
    }

    /// The tokens the next step must feed: up to `chunk` prompt tokens, or the last new token.
    pub fn next_input(&self, chunk: usize) -> &[u32] {
        if self.prefilling() {
            let end = (self.fed + chunk.max(1)).min(self.prompt.len());
            &self.prompt[self.fed..end]
        } else {
            &self.generated[self.generated.len() - 1..]
        }
    }

    /// Takes the logits of a step that fed `fed` tokens of `next_input`.
    pub fn accept(&mut self, tok: &Tok, fed: usize, logits: &[f32]) -> Result<Event> {
        if self.finish.is_some() {
            return Err(Error::Model("a finished sequence was stepped".into()));
        }
        if self.prefilling() {
            self.fed += fed;
            if self.prefilling() {
                return Ok(Event::Pending);
            }
        }
        if self.params.max_tokens == 0 {
            self.finish = Some(Finish::Length);
            return Ok(Event::Done { id: None, text: String::new(), finish: Finish::Length });
        }
        let id = self.sampler.pick(logits);
        self.generated.push(id);
        if self.eos.contains(&id) {
            self.finish = Some(Finish::Stop);
            return Ok(Event::Done { id: Some(id), text: self.stream.flush(), finish: Finish::Stop });
        }
        let (text, stopped) = self.stream.push(tok, id)?;
        // the new token is fed at position prompt + generated - 1: stop when the cache has no room
        let full = self.prompt.len() + self.generated.len() > self.cache.capacity().min(self.max_positions);
        let finish = if stopped {
            Some(Finish::Stop)
        } else if self.generated.len() >= self.params.max_tokens || full {
            Some(Finish::Length)
        } else {
            None
        };
        match finish {
            Some(f) => {
                self.finish = Some(f);
                let rest = if stopped { String::new() } else { self.stream.flush() };
                Ok(Event::Done { id: Some(id), text: text + &rest, finish: f })
            }
            None => Ok(Event::Token { id, text }),
        }
    }

    /// The visible text so far.
    pub fn text(&self) -> &str {
        self.stream.text()
    }
}
