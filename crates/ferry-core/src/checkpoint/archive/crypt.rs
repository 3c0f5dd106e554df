//! Encryption at rest for exported archives: ChaCha20-Poly1305 in the STREAM construction
//! (each chunk sealed with its own nonce, the last one marked), so an archive is encrypted and
//! decrypted as it streams, and any change, reordering or truncation fails authentication.
//!
//! File format (version 1): the magic `FERRYAE1`, a 7-byte random nonce prefix, then chunks,
//! each `[last: u8][len: u32 BE][ciphertext of len bytes]`, the last one with `last = 1`. Each
//! plaintext chunk is at most [`CHUNK`] bytes. The key is 32 bytes, kept as 64 hex digits in a
//! key file that only its owner may read (`openssl rand -hex 32 > key; chmod 600 key`).

use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use chacha20poly1305::aead::stream::{DecryptorBE32, EncryptorBE32};
use chacha20poly1305::aead::KeyInit;
use chacha20poly1305::ChaCha20Poly1305;

use super::ArchiveError;

pub const MAGIC: &[u8; 8] = b"FERRYAE1";
const NONCE_PREFIX: usize = 7;
/// Plaintext bytes per chunk.
pub const CHUNK: usize = 1 << 20;
const TAG: usize = 16;

/// A 32-byte archive key.
#[derive(Clone)]
pub struct ArchiveKey([u8; 32]);

impl std::fmt::Debug for ArchiveKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ArchiveKey(…)")
    }
}

impl ArchiveKey {
    /// Reads a key file: 64 hex digits (surrounding whitespace allowed), readable by its
    /// owner only.
    pub fn read(path: &Path) -> Result<ArchiveKey, ArchiveError> {
        let bad = |problem: String| ArchiveError::Key {
            path: path.to_owned(),
            problem,
        };
        let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
        if !meta.is_file() {
            return Err(bad("not a regular file".into()));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(bad(format!(
                "mode {:o} lets others read it; chmod 600 it",
                meta.mode() & 0o777
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let bytes = hex::decode(text.trim())
            .map_err(|_| bad("expected 64 hex digits (a 32-byte key)".into()))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| bad("expected 64 hex digits (a 32-byte key)".into()))?;
        Ok(ArchiveKey(key))
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(&self.0.into())
    }
}

#[cfg(test)]
impl ArchiveKey {
    pub fn from_bytes(b: [u8; 32]) -> Self {
        ArchiveKey(b)
    }
}

/// Encrypts everything written through it; [`EncryptWriter::finish`] seals the last chunk.
pub struct EncryptWriter<W: Write> {
    inner: W,
    stream: Option<EncryptorBE32<ChaCha20Poly1305>>,
    buf: Vec<u8>,
}

impl<W: Write> EncryptWriter<W> {
    pub fn new(mut inner: W, key: &ArchiveKey) -> io::Result<Self> {
        let mut prefix = [0u8; NONCE_PREFIX];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut prefix);
        inner.write_all(MAGIC)?;
        inner.write_all(&prefix)?;
        Ok(EncryptWriter {
            inner,
            stream: Some(EncryptorBE32::from_aead(key.cipher(), (&prefix).into())),
            buf: Vec::with_capacity(CHUNK),
        })
    }

    fn emit(&mut self, last: bool, ct: &[u8]) -> io::Result<()> {
        self.inner.write_all(&[u8::from(last)])?;
        self.inner.write_all(&(ct.len() as u32).to_be_bytes())?;
        self.inner.write_all(ct)
    }

    /// Seals the last chunk and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        let stream = self.stream.take().expect("finish once");
        let ct = stream
            .encrypt_last(self.buf.as_slice())
            .map_err(|_| io::Error::other("sealing the last chunk"))?;
        self.emit(true, &ct)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for EncryptWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        // A full chunk is sealed only once more data follows: the last chunk must carry the
        // last flag.
        if self.buf.len() == CHUNK {
            self.flush_chunk()?;
        }
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write> EncryptWriter<W> {
    fn flush_chunk(&mut self) -> io::Result<()> {
        let stream = self.stream.as_mut().expect("not finished");
        let ct = stream
            .encrypt_next(self.buf.as_slice())
            .map_err(|_| io::Error::other("sealing a chunk"))?;
        self.buf.clear();
        self.emit(false, &ct)
    }
}

/// Decrypts an archive written by [`EncryptWriter`]; a failed check is an
/// `InvalidData` error, a missing last chunk `UnexpectedEof`.
pub struct DecryptReader<R: Read> {
    inner: R,
    stream: Option<DecryptorBE32<ChaCha20Poly1305>>,
    plain: Vec<u8>,
    pos: usize,
    done: bool,
}

impl<R: Read> DecryptReader<R> {
    /// `inner` starts at the magic.
    pub fn new(mut inner: R, key: &ArchiveKey) -> io::Result<Self> {
        let mut head = [0u8; MAGIC.len() + NONCE_PREFIX];
        inner.read_exact(&mut head)?;
        if &head[..MAGIC.len()] != MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a ferry encrypted archive",
            ));
        }
        let prefix: [u8; NONCE_PREFIX] = head[MAGIC.len()..].try_into().expect("sized");
        Ok(DecryptReader {
            inner,
            stream: Some(DecryptorBE32::from_aead(key.cipher(), (&prefix).into())),
            plain: Vec::new(),
            pos: 0,
            done: false,
        })
    }

    fn next_chunk(&mut self) -> io::Result<()> {
        let mut hdr = [0u8; 5];
        self.inner.read_exact(&mut hdr).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the encrypted archive ends before its last chunk",
                )
            } else {
                e
            }
        })?;
        let last = match hdr[0] {
            0 => false,
            1 => true,
            _ => return Err(tampered()),
        };
        let len = u32::from_be_bytes(hdr[1..].try_into().expect("sized")) as usize;
        if !(TAG..=CHUNK + TAG).contains(&len) {
            return Err(tampered());
        }
        let mut ct = vec![0u8; len];
        self.inner.read_exact(&mut ct)?;
        self.plain = if last {
            let stream = self.stream.take().ok_or_else(tampered)?;
            self.done = true;
            stream.decrypt_last(ct.as_slice()).map_err(|_| tampered())?
        } else {
            let stream = self.stream.as_mut().ok_or_else(tampered)?;
            stream.decrypt_next(ct.as_slice()).map_err(|_| tampered())?
        };
        self.pos = 0;
        Ok(())
    }
}

fn tampered() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "decryption failed: wrong key, or the archive was changed",
    )
}

impl<R: Read> Read for DecryptReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.plain.len() {
            if self.done {
                return Ok(0);
            }
            self.next_chunk()?;
        }
        let n = out.len().min(self.plain.len() - self.pos);
        out[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal(key: &ArchiveKey, data: &[u8]) -> Vec<u8> {
        let mut w = EncryptWriter::new(Vec::new(), key).unwrap();
        // Odd write sizes cross chunk boundaries.
        for part in data.chunks(333_333) {
            w.write_all(part).unwrap();
        }
        w.finish().unwrap()
    }

    fn open(key: &ArchiveKey, sealed: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        DecryptReader::new(sealed, key)?.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn round_trips_empty_exact_and_multi_chunk() {
        let key = ArchiveKey::from_bytes([9; 32]);
        for len in [0, 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            assert_eq!(open(&key, &seal(&key, &data)).unwrap(), data, "len {len}");
        }
    }

    #[test]
    fn wrong_key_flip_truncation_and_reordering_fail() {
        let key = ArchiveKey::from_bytes([1; 32]);
        let data = vec![5u8; 2 * CHUNK + 10];
        let sealed = seal(&key, &data);
        let wrong = ArchiveKey::from_bytes([2; 32]);
        assert_eq!(
            open(&wrong, &sealed).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        let mut flipped = sealed.clone();
        flipped[100] ^= 1;
        assert_eq!(
            open(&key, &flipped).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        // Cut after the first chunk: no last chunk, however the cut falls.
        let first = MAGIC.len() + NONCE_PREFIX + 5 + CHUNK + TAG;
        assert_eq!(
            open(&key, &sealed[..first]).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        // Marking the first chunk last is caught by its nonce.
        let mut early = sealed[..first].to_vec();
        early[MAGIC.len() + NONCE_PREFIX] = 1;
        assert_eq!(
            open(&key, &early).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn key_files_must_be_private_and_well_formed() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("key");
        std::fs::write(&p, "ab".repeat(32)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = ArchiveKey::read(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        ArchiveKey::read(&p).unwrap();
        std::fs::write(&p, "abc").unwrap();
        let e = ArchiveKey::read(&p).unwrap_err().to_string();
        assert!(e.contains("64 hex digits"), "{e}");
    }
}
