//! One integration test binary for the whole suite (one link on a 2-core CI machine).
mod it;
