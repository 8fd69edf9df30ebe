mod common;
mod fixtures;
