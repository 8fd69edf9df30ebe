//! XLM-RoBERTa (`XLMRobertaForSequenceClassification`): RoBERTa's layout and names exactly,
//! with a SentencePiece vocabulary (read from `tokenizer.json` like any other).

use super::{Build, Family};

pub static FAMILY: Family = Family {
    name: "xlm-roberta",
    model_types: &["xlm-roberta"],
    backbone_prefix: "roberta.",
    backbone_roots: super::roberta::ROOTS,
    head_modules: super::roberta::HEAD_MODULES,
    task_architecture: "XLMRobertaForSequenceClassification",
    build: Build::Encoder(super::roberta::spec),
};
