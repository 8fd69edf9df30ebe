//! Adapter references `NAME[:TAG]`: validation that keeps names out of path and SQL trouble.

use crate::error::{Error, Result};
use std::fmt;

pub const DEFAULT_TAG: &str = "latest";

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ref {
    pub name: String,
    pub tag: String,
}

fn valid_component(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !s.contains("..")
}

impl Ref {
    /// Parses `NAME[:TAG]`. Names are `/`-separated components of `[A-Za-z0-9][A-Za-z0-9._-]*`
    /// (no `..`, no leading `/`), so `../x` or `a\b` never reach the index.
    pub fn parse(s: &str) -> Result<Ref> {
        let (name, tag) = match s.rsplit_once(':') {
            Some((n, t)) => (n, t),
            None => (s, DEFAULT_TAG),
        };
        if name.is_empty() {
            return Err(Error::InvalidRef(s.into(), "empty name"));
        }
        if name.len() > 200 || !name.split('/').all(|c| valid_component(c, 128)) {
            return Err(Error::InvalidRef(
                s.into(),
                "names are /-separated parts of letters, digits, '.', '_', '-' starting with a letter or digit, without '..'",
            ));
        }
        if name == "sha256" {
            return Err(Error::InvalidRef(s.into(), "'sha256' is reserved for digests"));
        }
        if !valid_component(tag, 128) {
            return Err(Error::InvalidRef(s.into(), "tags are letters, digits, '.', '_', '-' starting with a letter or digit"));
        }
        Ok(Ref { name: name.into(), tag: tag.into() })
    }
}

impl fmt::Display for Ref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.tag)
    }
}
