mod common;
mod fixtures;
mod store;
mod train;
mod schema;
mod serve;
