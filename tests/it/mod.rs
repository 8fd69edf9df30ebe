mod common;
mod fixtures;
mod store;
