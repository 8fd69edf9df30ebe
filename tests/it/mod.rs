mod common;
mod fixtures;
mod generate;
mod store;
mod train;
mod schema;
mod serve;
mod serve_llm;
