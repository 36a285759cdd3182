//! What a downloaded file must be, and the hashing that checks it: the LFS sha256 for LFS
//! files, the git blob sha1 otherwise.

use sha1::Sha1;
use sha2::{Digest, Sha256};

/// The Hub's word on what a file must be.
#[derive(Debug, Clone)]
pub(super) struct Expected {
    pub(super) path: String,
    pub(super) size: u64,
    pub(super) check: Check,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Check {
    /// LFS files: the sha256 of the contents (the LFS oid).
    Sha256(String),
    /// Plain git files: the git blob id, sha1("blob <len>\0" + contents).
    GitSha1(String),
}

impl Check {
    /// The blob file name, the same one huggingface_hub gives it (its ETag).
    pub(super) fn blob_name(&self) -> &str {
        match self {
            Check::Sha256(h) | Check::GitSha1(h) => h,
        }
    }
}

pub(super) enum Hasher {
    Sha256(Sha256),
    GitSha1(Sha1),
}

impl Hasher {
    pub(super) fn new(check: &Check, size: u64) -> Self {
        match check {
            Check::Sha256(_) => Hasher::Sha256(Sha256::new()),
            Check::GitSha1(_) => {
                let mut h = Sha1::new();
                h.update(format!("blob {size}\0").as_bytes());
                Hasher::GitSha1(h)
            }
        }
    }
    pub(super) fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::GitSha1(h) => h.update(data),
        }
    }
    pub(super) fn finish(self) -> String {
        match self {
            Hasher::Sha256(h) => hex(&h.finalize()),
            Hasher::GitSha1(h) => hex(&h.finalize()),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_blob_hash_is_gits() {
        // `printf 'hello\n' | git hash-object --stdin`
        let mut h = Hasher::new(&Check::GitSha1(String::new()), 6);
        h.update(b"hello\n");
        assert_eq!(h.finish(), "ce013625030ba8dba906f756967f9e9ca394464a");
    }
}
