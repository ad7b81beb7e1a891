//! Blob bytes are untrusted until checked: a reader that hashes a blob as it streams and fails
//! at its end when the bytes do not match the digest they were asked for by (so a swapped or
//! corrupted blob in an OCI layout or containerd's store is an error, never an image), and a
//! reader that stops a layer's unpacked stream at `image.max_layer_bytes` (a decompression
//! bomb ends in a clear error, not in an exhausted disk or memory). It must never hand out
//! bytes past the limit, and never report a blob as verified before its last byte was hashed.

use anyhow::{bail, Result};
use sha2::Digest;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

/// A blob's bytes, hashed as they are read; at the end they must match `digest`.
pub(super) struct Verified {
    inner: Box<dyn Read + Send>,
    hasher: Option<Hasher>,
    want: String,
    digest: String,
    ok: Arc<AtomicBool>,
}

impl Verified {
    /// Wraps `inner`, the bytes of the blob named `digest` (`algorithm:hex`, already checked
    /// for its shape). `ok` is set once the whole blob was read and matched.
    pub(super) fn new(
        inner: Box<dyn Read + Send>,
        digest: &str,
    ) -> Result<(Verified, Arc<AtomicBool>)> {
        let Some((alg, hex)) = digest.split_once(':') else {
            bail!("{digest:?} is not a digest (algorithm:hex)");
        };
        let hasher = match alg {
            "sha256" if hex.len() == 64 => Hasher::Sha256(sha2::Sha256::new()),
            "sha512" if hex.len() == 128 => Hasher::Sha512(sha2::Sha512::new()),
            _ => bail!(
                "the blob {digest:?} has an unsupported digest (sha256 with 64 hex digits or sha512 with 128)"
            ),
        };
        let ok = Arc::new(AtomicBool::new(false));
        Ok((
            Verified {
                inner,
                hasher: Some(hasher),
                want: hex.to_ascii_lowercase(),
                digest: digest.to_string(),
                ok: ok.clone(),
            },
            ok,
        ))
    }
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Read for Verified {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            match &mut self.hasher {
                Some(Hasher::Sha256(h)) => h.update(&buf[..n]),
                Some(Hasher::Sha512(h)) => h.update(&buf[..n]),
                None => {}
            }
            return Ok(n);
        }
        if !buf.is_empty() {
            if let Some(h) = self.hasher.take() {
                let got = match h {
                    Hasher::Sha256(h) => to_hex(&h.finalize()),
                    Hasher::Sha512(h) => to_hex(&h.finalize()),
                };
                if got != self.want {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "the blob {} does not match its digest (its content hashes to {got}): the store is corrupt or was tampered with; remove and pull the image again",
                            self.digest
                        ),
                    ));
                }
                self.ok.store(true, Ordering::SeqCst);
            }
        }
        Ok(0)
    }
}

/// A layer's unpacked stream, cut off with an error past `limit` bytes.
pub(super) struct Limited<R> {
    inner: R,
    left: u64,
    limit: u64,
    digest: String,
}

impl<R: Read> Limited<R> {
    pub(super) fn new(inner: R, limit: u64, digest: &str) -> Limited<R> {
        Limited {
            inner,
            left: limit,
            limit,
            digest: digest.to_string(),
        }
    }
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // Ask for one byte more than is left, to tell "exactly at the limit" from "past it".
        let want = buf
            .len()
            .min(self.left.saturating_add(1).min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.left {
            return Err(std::io::Error::other(format!(
                "the layer {} unpacks to more than {} bytes (image.max_layer_bytes): refusing it as a decompression bomb; raise image.max_layer_bytes if the image is genuine",
                self.digest, self.limit
            )));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Reads a whole JSON blob (at most `max` bytes) and checks its digest before anyone parses it.
pub(super) fn read_small(r: Box<dyn Read + Send>, digest: &str, max: u64) -> Result<Vec<u8>> {
    let (mut v, ok) = Verified::new(r, digest)?;
    let mut buf = Vec::new();
    (&mut v).take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        bail!("the blob {digest} is larger than {max} bytes, too large for an index, manifest or config");
    }
    // Reach the end so the digest is checked (take() stopped at the limit, not at EOF).
    let mut rest = [0u8; 1];
    if v.read(&mut rest)? != 0 || !ok.load(Ordering::SeqCst) {
        bail!("the blob {digest} could not be verified against its digest");
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABC: &str = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn a_blob_that_matches_its_digest_reads_whole() {
        assert_eq!(read_small(Box::new(&b"abc"[..]), ABC, 10).unwrap(), b"abc");
    }

    #[test]
    fn a_blob_that_does_not_match_is_an_error_naming_it() {
        let e = read_small(Box::new(&b"abd"[..]), ABC, 10).unwrap_err();
        assert!(
            format!("{e:#}").contains("does not match its digest"),
            "{e:#}"
        );
        let e = read_small(
            Box::new(&b"abc"[..]),
            "md5:0123456789abcdef0123456789abcdef",
            10,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("unsupported digest"), "{e:#}");
        let e = read_small(Box::new(&b"abc"[..]), ABC, 2).unwrap_err();
        assert!(format!("{e:#}").contains("larger than 2 bytes"), "{e:#}");
    }

    #[test]
    fn the_limit_passes_exactly_limit_bytes_and_stops_one_more() {
        let mut out = Vec::new();
        Limited::new(&[7u8; 100][..], 100, "sha256:x")
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out.len(), 100);
        let e = Limited::new(&[7u8; 101][..], 100, "sha256:x")
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert!(e.to_string().contains("image.max_layer_bytes"), "{e}");
    }
}
