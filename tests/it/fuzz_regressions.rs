//! Inputs the fuzz targets (`fuzz/`, `scripts/fuzz.sh`) showed mishandled, inline, each
//! checked against the fixed behaviour: an error instead of a panic, or the property the
//! target asserts.

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
        let written = new_config_json(&NewConfig {
            r: c.r,
            alpha: c.lora_alpha,
            dropout: c.lora_dropout,
            use_rslora: c.use_rslora,
            use_dora: c.use_dora,
            layers_to_transform: c.layers_to_transform.as_deref(),
            target_modules: &c.target_modules,
            modules_to_save: &c.modules_to_save,
            task_type: "",
            base_model_name_or_path: None,
        });
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
