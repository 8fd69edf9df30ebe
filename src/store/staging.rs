//! Blobs on their way into the store: written to a temp file in `tmp/` while hashed, checked
//! against the digest they must have, fsynced, and only then renamed into `blobs/sha256/`.
//! `Staging` needs the home path alone, not the `Store` or its lock, so a download can stream
//! into it while others write the index. Temp files are named `blob-<pid>-<unique>`: `gc`
//! leaves them alone while their writer lives (`writer_alive`), and one dropped before its
//! rename is removed, so a failed write leaves nothing behind.

use crate::digest::{Digest, HashingWriter};
use crate::error::{Error, IoContext, Result};
use crate::util::unique_suffix;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Where blobs are staged: the store's `tmp/` (cheap to clone, safe to use without the store).
#[derive(Clone, Debug)]
pub struct Staging {
    home: PathBuf,
}

/// A temp file in `tmp/`, removed on drop unless `keep` took its path.
struct TempFile(Option<PathBuf>);

impl TempFile {
    fn path(&self) -> &Path {
        self.0.as_deref().expect("a temp file's path until kept")
    }
    fn keep(mut self) -> PathBuf {
        self.0.take().expect("a temp file's path until kept")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A blob being written to its temp file and hashed as it goes.
pub struct BlobWriter {
    file: HashingWriter<File>,
    tmp: TempFile,
    home: PathBuf,
}

/// A blob whose temp file is complete, fsynced and hashed to the digest it had to have; `add`
/// renames it into place (dropped instead, its temp file is removed).
pub struct StagedBlob {
    tmp: TempFile,
    home: PathBuf,
    digest: Digest,
    len: u64,
}

impl Staging {
    pub(super) fn new(home: &Path) -> Staging {
        Staging { home: home.to_path_buf() }
    }

    /// A new temp file `tmp/blob-<pid>-<unique>`, hashed as it is written.
    pub fn create(&self) -> Result<BlobWriter> {
        let path = self.home.join("tmp").join(format!("blob-{}-{:x}", std::process::id(), unique_suffix()));
        let f = File::create(&path).at(&path)?;
        Ok(BlobWriter { file: HashingWriter::new(f), tmp: TempFile(Some(path)), home: self.home.clone() })
    }
}

impl BlobWriter {
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// Fsyncs the temp file and checks its content hashes to `expected`: `Corrupt` (and the
    /// file removed) if not.
    pub fn finish(self, expected: &Digest) -> Result<StagedBlob> {
        let BlobWriter { file, tmp, home } = self;
        let (f, digest, len) = file.finish();
        f.sync_all().at(tmp.path())?;
        if &digest != expected {
            return Err(Error::Corrupt { digest: expected.to_string(), actual: digest.to_string() });
        }
        Ok(StagedBlob { tmp, home, digest, len })
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl StagedBlob {
    pub fn digest(&self) -> &Digest {
        &self.digest
    }
    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The verified temp file (to read or map; it is not written again).
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// Renames the temp file to `blobs/sha256/<hex>` (replacing identical content if there).
    pub(super) fn commit(self) -> Result<()> {
        let dst = self.home.join("blobs/sha256").join(self.digest.hex());
        std::fs::rename(self.tmp.path(), &dst).at(&dst)?;
        self.tmp.keep();
        Ok(())
    }
}
