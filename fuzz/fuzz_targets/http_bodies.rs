//! Fuzz target: the HTTP request body parsers of every endpoint (`serve::request`), which
//! see untrusted bytes before anything else. The input is one byte choosing the endpoint and
//! whether an adapter header/query is present, then the body. Whatever parses must be a
//! request the server can act on: non-empty texts within the limit, one agreed adapter,
//! valid sampling parameters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loradex::serve::request::{parse_chat, parse_classify, parse_completion, query_adapter, PromptIn, MAX_TEXTS};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else { return };
    let header = (sel & 0x10 != 0).then_some("en/sentiment:v1");
    let query = (sel & 0x20 != 0).then_some("adapter=en%2Fsentiment%3Av1&x=1");
    match sel % 3 {
        0 => {
            if let Ok(r) = parse_classify(body) {
                assert!(!r.texts.is_empty() && r.texts.len() <= MAX_TEXTS);
                assert!(r.adapter.as_deref() != Some(""));
            }
        }
        k => {
            let parsed = if k == 1 { parse_completion(body, header, query) } else { parse_chat(body, header, query) };
            if let Ok(r) = parsed {
                assert!(!r.model.is_empty());
                assert!(r.params.validate().is_ok());
                assert!(r.adapter.as_deref() != Some(""));
                if header.is_some() || query.is_some() {
                    assert_eq!(r.adapter.as_deref(), Some("en/sentiment:v1"), "outside names must agree with the body");
                }
                match &r.prompt {
                    PromptIn::Ids(ids) => assert!(!ids.is_empty()),
                    PromptIn::Chat(m) => assert!(!m.is_empty()),
                    PromptIn::Text(_) => {}
                }
            }
        }
    }
    let _ = query_adapter(std::str::from_utf8(body).ok());
});
