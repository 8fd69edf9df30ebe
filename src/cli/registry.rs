//! `loradex push` / `loradex pull`: their registry flags become a validated `registry::Remote`
//! (credentials read from stdin once), then one library call; only printing lives here.

use super::print_json;
use loradex::error::{Error, Result};
use loradex::registry::{self, Remote};
use loradex::store::{Ref, Store};
use std::io::Read;
use std::path::PathBuf;

/// How to reach the registry (shared by push and pull).
#[derive(clap::Args, Debug, Clone)]
pub struct RemoteArgs {
    /// Talk plain HTTP (loopback or test registries)
    #[arg(long)]
    pub plain_http: bool,
    /// User for basic auth (the password comes from --password-stdin); without it,
    /// ~/.docker/config.json's auths, else anonymous
    #[arg(long, requires = "password_stdin")]
    pub username: Option<String>,
    /// Read the password from standard input
    #[arg(long, requires = "username")]
    pub password_stdin: bool,
    /// Trust this PEM certificate (a registry with its own CA)
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
}

impl RemoteArgs {
    pub fn remote(&self) -> Result<Remote> {
        let credentials = match &self.username {
            Some(u) => {
                let mut p = String::new();
                std::io::stdin().read_to_string(&mut p).map_err(|e| Error::InvalidArgument(format!("--password-stdin: {e}")))?;
                let p = p.trim_end_matches(['\r', '\n']).to_string();
                if p.is_empty() {
                    return Err(Error::InvalidArgument("--password-stdin: no password on standard input".into()));
                }
                Some((u.clone(), p))
            }
            None => None,
        };
        if let Some(c) = &self.ca_cert {
            if !c.is_file() {
                return Err(Error::InvalidArgument(format!("--ca-cert {}: no such file", c.display())));
            }
        }
        Ok(Remote { plain_http: self.plain_http, credentials, ca_cert: self.ca_cert.clone() })
    }
}

pub fn push(store: &Store, src: &str, target: &str, remote: &Remote, mount_from: &[String], js: bool) -> Result<()> {
    let p = registry::push(store, src, target, remote, mount_from)?;
    if js {
        print_json(&serde_json::to_value(&p).expect("serializes"));
    } else {
        println!("{}", p.manifest_digest);
        eprintln!("pushed {src} to {target}: {} blob(s) uploaded, {} mounted from another repository, {} already there", p.uploaded, p.mounted, p.skipped);
    }
    Ok(())
}

pub fn pull(store: &mut Store, src: &str, name: Option<&str>, remote: &Remote, js: bool) -> Result<()> {
    let name = name.map(Ref::parse).transpose()?;
    let bar = (!js).then(|| super::progress::bytes(src));
    let on: Option<registry::OnBytes> = bar.clone().map(|b| -> registry::OnBytes {
        Box::new(move |done, total| {
            b.set_length(total);
            b.set_position(done);
        })
    });
    let p = registry::pull_with(store, src, name.as_ref(), remote, on);
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let p = p?;
    if js {
        print_json(&serde_json::to_value(&p).expect("serializes"));
    } else {
        println!("{} {}", p.name, p.digest);
    }
    Ok(())
}
