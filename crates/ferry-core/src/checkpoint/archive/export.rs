//! Writing a checkpoint directory as one archive file.

use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::crypt::{ArchiveKey, EncryptWriter};
use super::manifest::{read_manifest, HashingReader, Manifest};
use super::{ArchiveCompression, ArchiveError};
use crate::checkpoint::layout::MANIFEST;

/// zstd level 3: fast enough that the disk, not the compressor, sets the pace.
const ZSTD_LEVEL: i32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportSummary {
    /// Size of the archive file.
    pub bytes: u64,
    /// Members written (the manifest not counted).
    pub members: usize,
}

/// Streams `dir` (which must hold a manifest, see [`super::write_manifest`]) into `out`:
/// `manifest.json` first, then every member in manifest order, each checked against its digest
/// as it is read. The archive is written next to `out` and renamed into place only when complete.
pub fn export(
    dir: &Path,
    out: &Path,
    compression: ArchiveCompression,
) -> Result<ExportSummary, ArchiveError> {
    export_sealed(dir, out, compression, None)
}

/// [`export`], encrypted with `key` when given (see [`super::crypt`]).
pub fn export_sealed(
    dir: &Path,
    out: &Path,
    compression: ArchiveCompression,
    key: Option<&ArchiveKey>,
) -> Result<ExportSummary, ArchiveError> {
    let manifest = read_manifest(dir)?;
    let manifest_bytes =
        std::fs::read(dir.join(MANIFEST)).map_err(|e| ArchiveError::io(dir.join(MANIFEST), e))?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".ferry-export-")
        .tempfile_in(parent)
        .map_err(|e| ArchiveError::io(parent, e))?;
    let file = BufWriter::new(tmp.as_file());
    let io_err = |e| ArchiveError::io(tmp.path(), e);
    let sink = match key {
        Some(k) => Sink::Sealed(EncryptWriter::new(file, k).map_err(io_err)?),
        None => Sink::Plain(file),
    };
    let sink = match compression {
        ArchiveCompression::None => write_tar(sink, dir, &manifest, &manifest_bytes, tmp.path())?,
        ArchiveCompression::Zstd => {
            let mut enc = zstd::Encoder::new(sink, ZSTD_LEVEL).map_err(io_err)?;
            // The frame checksum lets a decompressor notice damage on its own.
            enc.include_checksum(true).map_err(io_err)?;
            let enc = write_tar(enc, dir, &manifest, &manifest_bytes, tmp.path())?;
            enc.finish().map_err(io_err)?
        }
    };
    sink.finish().map_err(io_err)?;
    tmp.as_file().sync_all().map_err(io_err)?;
    let bytes = tmp.as_file().metadata().map_err(io_err)?.len();
    tmp.persist(out)
        .map_err(|e| ArchiveError::io(out, e.error))?;
    Ok(ExportSummary {
        bytes,
        members: manifest.members.len(),
    })
}

/// The archive file, encrypted or not.
enum Sink<'a> {
    Plain(BufWriter<&'a std::fs::File>),
    Sealed(EncryptWriter<BufWriter<&'a std::fs::File>>),
}

impl Sink<'_> {
    fn finish(self) -> std::io::Result<()> {
        match self {
            Sink::Plain(mut w) => w.flush(),
            Sink::Sealed(w) => w.finish()?.flush(),
        }
    }
}

impl Write for Sink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Plain(w) => w.write(buf),
            Sink::Sealed(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Plain(w) => w.flush(),
            Sink::Sealed(w) => w.flush(),
        }
    }
}

fn write_tar<W: Write>(
    w: W,
    dir: &Path,
    manifest: &Manifest,
    manifest_bytes: &[u8],
    tmp: &Path,
) -> Result<W, ArchiveError> {
    let mut builder = tar::Builder::new(w);
    let io_err = |e| ArchiveError::io(tmp, e);

    let mut header = regular_header(manifest_bytes.len() as u64, 0o644, 0);
    builder
        .append_data(&mut header, MANIFEST, manifest_bytes)
        .map_err(io_err)?;

    for (name, member) in &manifest.members {
        let path = dir.join(name);
        let file = std::fs::File::open(&path).map_err(|e| ArchiveError::io(&path, e))?;
        let meta = file.metadata().map_err(|e| ArchiveError::io(&path, e))?;
        if meta.len() != member.size {
            return Err(ArchiveError::member(
                name,
                format!(
                    "size {} differs from the manifest's {}",
                    meta.len(),
                    member.size
                ),
            ));
        }
        let mut header =
            regular_header(member.size, meta.mode() & 0o777, meta.mtime().max(0) as u64);
        // take(): a file growing meanwhile must not put more bytes in the tar than its header says.
        let mut reader = HashingReader::new(file.take(member.size));
        builder
            .append_data(&mut header, name, &mut reader)
            .map_err(io_err)?;
        if reader.count != member.size {
            return Err(ArchiveError::member(name, "changed while being exported"));
        }
        if reader.hex_digest() != member.sha256 {
            return Err(ArchiveError::member(name, "sha256 mismatch"));
        }
    }
    builder.into_inner().map_err(io_err)
}

fn regular_header(size: u64, mode: u32, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(mtime);
    h
}
