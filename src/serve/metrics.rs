//! Server counters rendered in the Prometheus text format.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

const BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A latency histogram over `BUCKETS` (cumulative, as Prometheus wants).
#[derive(Default)]
pub struct Histogram(Mutex<(Vec<u64>, f64, u64)>);

impl Histogram {
    pub fn observe(&self, secs: f64) {
        let mut h = self.0.lock().expect("metrics lock");
        if h.0.is_empty() {
            h.0 = vec![0; BUCKETS.len()];
        }
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.0[i] += 1;
            }
        }
        h.1 += secs;
        h.2 += 1;
    }
    fn render(&self, name: &str, help: &str, s: &mut String) {
        let h = self.0.lock().expect("metrics lock");
        s.push_str(&format!("# HELP {name} {help}\n# TYPE {name} histogram\n"));
        for (i, b) in BUCKETS.iter().enumerate() {
            s.push_str(&format!("{name}_bucket{{le=\"{b}\"}} {}\n", h.0.get(i).copied().unwrap_or(0)));
        }
        s.push_str(&format!("{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}\n", h.2, h.1, h.2));
    }
}

/// Generation gauges read at render time.
pub struct LlmGauges {
    pub running: usize,
    pub waiting: usize,
    pub kv_bytes_used: usize,
    pub kv_bytes_total: usize,
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, (Vec<u64>, f64, u64)>>,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    /// Adapters pulled from the registry (`serve --registry`).
    pub registry_pulls: AtomicU64,
    pub cache_evictions: AtomicU64,
    pub forward_batches: AtomicU64,
    pub forward_rows: AtomicU64,
    pub llm_waiting: AtomicUsize,
    pub llm_steps: AtomicU64,
    pub llm_step_rows: AtomicU64,
    pub llm_step_tokens: AtomicU64,
    pub llm_tokens: AtomicU64,
    pub llm_cancelled: AtomicU64,
    pub ttft: Histogram,
    pub itl: Histogram,
}

impl Metrics {
    pub fn observe(&self, endpoint: &str, status: u16, secs: f64) {
        *self.requests.lock().expect("metrics lock").entry((endpoint.to_string(), status)).or_default() += 1;
        let mut l = self.latency.lock().expect("metrics lock");
        let e = l.entry(endpoint.to_string()).or_insert_with(|| (vec![0; BUCKETS.len()], 0.0, 0));
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                e.0[i] += 1;
            }
        }
        e.1 += secs;
        e.2 += 1;
    }

    pub fn render(&self, resident_bytes: usize, resident_adapters: usize, queue_depth: usize, llm: Option<LlmGauges>) -> String {
        let mut s = String::new();
        s.push_str("# HELP loradex_requests_total HTTP requests by endpoint and status.\n# TYPE loradex_requests_total counter\n");
        for ((ep, st), n) in self.requests.lock().expect("metrics lock").iter() {
            s.push_str(&format!("loradex_requests_total{{endpoint=\"{ep}\",status=\"{st}\"}} {n}\n"));
        }
        s.push_str("# HELP loradex_request_duration_seconds Request latency.\n# TYPE loradex_request_duration_seconds histogram\n");
        for (ep, (buckets, sum, count)) in self.latency.lock().expect("metrics lock").iter() {
            for (b, n) in BUCKETS.iter().zip(buckets) {
                s.push_str(&format!("loradex_request_duration_seconds_bucket{{endpoint=\"{ep}\",le=\"{b}\"}} {n}\n"));
            }
            s.push_str(&format!("loradex_request_duration_seconds_bucket{{endpoint=\"{ep}\",le=\"+Inf\"}} {count}\n"));
            s.push_str(&format!("loradex_request_duration_seconds_sum{{endpoint=\"{ep}\"}} {sum}\n"));
            s.push_str(&format!("loradex_request_duration_seconds_count{{endpoint=\"{ep}\"}} {count}\n"));
        }
        let c = |name: &str, help: &str, v: u64, s: &mut String| {
            s.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"));
        };
        c("loradex_cache_hits_total", "Adapter lookups served from memory.", self.cache_hits.load(Ordering::Relaxed), &mut s);
        c("loradex_cache_misses_total", "Adapter lookups that loaded from the store.", self.cache_misses.load(Ordering::Relaxed), &mut s);
        c("loradex_registry_pulls_total", "Adapters pulled from the registry on a store miss.", self.registry_pulls.load(Ordering::Relaxed), &mut s);
        c("loradex_cache_evictions_total", "Adapters evicted from memory.", self.cache_evictions.load(Ordering::Relaxed), &mut s);
        c("loradex_forward_batches_total", "Model forwards run.", self.forward_batches.load(Ordering::Relaxed), &mut s);
        c("loradex_forward_rows_total", "Rows across all forwards.", self.forward_rows.load(Ordering::Relaxed), &mut s);
        let g = |name: &str, help: &str, v: usize, s: &mut String| {
            s.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n"));
        };
        g("loradex_resident_bytes", "Bytes of adapters resident in memory.", resident_bytes, &mut s);
        g("loradex_resident_adapters", "Adapters resident in memory.", resident_adapters, &mut s);
        g("loradex_queue_depth", "Classification jobs waiting for a forward.", queue_depth, &mut s);
        if let Some(l) = llm {
            g("loradex_llm_running_sequences", "Sequences in the continuous batch.", l.running, &mut s);
            g("loradex_llm_waiting_sequences", "Generation requests waiting for a slot or KV cache.", l.waiting, &mut s);
            g("loradex_llm_kv_cache_bytes_used", "KV cache bytes reserved by running sequences.", l.kv_bytes_used, &mut s);
            g("loradex_llm_kv_cache_bytes_total", "The KV cache budget (--kv-cache-bytes).", l.kv_bytes_total, &mut s);
            c("loradex_llm_generated_tokens_total", "Tokens generated.", self.llm_tokens.load(Ordering::Relaxed), &mut s);
            c("loradex_llm_cancelled_total", "Sequences dropped because their client went away.", self.llm_cancelled.load(Ordering::Relaxed), &mut s);
            c("loradex_llm_steps_total", "Decoder steps (one forward over the running batch).", self.llm_steps.load(Ordering::Relaxed), &mut s);
            c("loradex_llm_step_rows_total", "Sequences across all decoder steps.", self.llm_step_rows.load(Ordering::Relaxed), &mut s);
            c("loradex_llm_step_tokens_total", "Tokens fed across all decoder steps (prefill and decode).", self.llm_step_tokens.load(Ordering::Relaxed), &mut s);
            self.ttft.render("loradex_llm_time_to_first_token_seconds", "From queueing to the first generated token.", &mut s);
            self.itl.render("loradex_llm_inter_token_latency_seconds", "Between consecutive tokens of a sequence.", &mut s);
        }
        s
    }
}
