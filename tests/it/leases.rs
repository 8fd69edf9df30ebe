//! Leases follow the life of the server that holds them, whatever the clocks say, and a
//! crashed server's leases never block prune.

use super::common::*;
use loradex::store::{PrunePolicy, Store};

#[test]
fn a_live_server_keeps_its_adapter_past_any_clock_and_a_crashed_one_does_not() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let digest = import(&home, &bert().join("adapter"), "en/sentiment:v1", &bert().join("base")).trim().to_string();
    let policy = PrunePolicy { unused_for: Some(5 * 60), ..Default::default() };
    let later = loradex::util::now_secs() + 11 * 60;
    let mut srv = Server::start(&home, &bert().join("base"), &[]);
    let body = r#"{"adapter": "en/sentiment:v1", "texts": ["great"]}"#;
    let (st, b) = http(&srv.addr, "POST", "/v1/classify", Some(body), None);
    assert_eq!(st, 200, "{b}");
    {
        let mut s = Store::open(&home).unwrap();
        // 11 minutes on (past the old 600 s TTL) and an hour on: the server still lives
        for now in [later, later + 3600] {
            let r = s.prune_at(&policy, true, now).unwrap();
            assert!(!r.adapters.contains(&digest), "a served adapter was selected for prune at +{}s: {:?}", now - later, r.adapters);
        }
    }
    // the server crashes (SIGKILL: no release at shutdown); its lease must not block prune
    srv.child.kill().unwrap();
    srv.child.wait().unwrap();
    let mut s = Store::open(&home).unwrap();
    let r = s.prune_at(&policy, true, later).unwrap();
    assert!(r.adapters.contains(&digest), "a dead server's lease still blocks prune: {:?}", r.adapters);
    // and without any lease, an adapter used just now is not 'unused for 5 minutes'
    let r = s.prune_at(&policy, true, loradex::util::now_secs()).unwrap();
    assert!(!r.adapters.contains(&digest), "{:?}", r.adapters);
}
