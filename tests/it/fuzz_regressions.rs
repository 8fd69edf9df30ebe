//! Inputs the fuzz targets (`fuzz/`, `scripts/fuzz.sh`) showed mishandled, inline, each
//! checked against the fixed behaviour: an error instead of a panic, or the property the
//! target asserts.

use candle_core::Device;
use loradex::base::Arch;
use loradex::model::lora::LoadedAdapter;
use loradex::peft::LoraConfig;

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
    LoadedAdapter::from_peft("fuzz", Arch::Bert, &config, weights, vec![], &Device::Cpu)
}

/// safetensors target: a lora_A/lora_B pair of 0-d tensors is a valid container, and
/// `from_peft` indexed the rank out of lora_A's (empty) shape: a panic, not an error.
#[test]
fn from_peft_refuses_scalar_lora_tensors() {
    let header = br#"{"base_model.model.x.lora_A.weight":{"dtype":"F32","shape":[],"data_offsets":[0,4]},"base_model.model.x.lora_B.weight":{"dtype":"F32","shape":[],"data_offsets":[4,8]}}"#;
    let err = load(&framed(header, 8)).err().expect("0-d LoRA tensors are refused");
    assert!(err.to_string().contains("[r, in]"), "{err}");
}

/// Same path: rank 0 (`[0, in]` and `[out, 0]`) was accepted with a scale of alpha / 0 = inf.
#[test]
fn from_peft_refuses_rank_zero() {
    let header = br#"{"base_model.model.x.lora_A.weight":{"dtype":"F32","shape":[0,2],"data_offsets":[0,0]},"base_model.model.x.lora_B.weight":{"dtype":"F32","shape":[2,0],"data_offsets":[0,0]}}"#;
    assert!(load(&framed(header, 0)).is_err(), "rank 0 is refused");
}
