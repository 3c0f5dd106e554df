//! Bulk streams: a reader's bytes onto a channel stream and back into a writer, in bounded
//! chunks (never the whole stream in memory), optionally zstd-compressed on the wire, and
//! checked end to end by length and sha256 of the uncompressed bytes.

use ferry_proto::{StreamCompression, StreamEnd};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zstd::stream::raw::{Decoder, Encoder, Operation, OutBuffer};

use super::channel::{FrameSink, StreamItem, StreamReceiver};
use super::PeerError;

/// Bytes read from the source per step, and the size of compressed output chunks.
const CHUNK: usize = 256 * 1024;
const ZSTD_LEVEL: i32 = 3;

fn stalled() -> std::io::Error {
    std::io::Error::other("codec made no progress")
}

/// Sends everything `reader` yields as `stream`, then its `DataEnd`. Returns what was sent
/// (uncompressed length and sha256), which the receiver checks.
pub async fn send_stream<R: AsyncRead + Unpin>(
    sink: &FrameSink,
    stream: u32,
    mut reader: R,
    compression: StreamCompression,
) -> Result<StreamEnd, PeerError> {
    let zerr = |source| PeerError::Zstd { stream, source };
    let mut encoder = match compression {
        StreamCompression::Zstd => Some(Encoder::new(ZSTD_LEVEL).map_err(zerr)?),
        StreamCompression::None => None,
    };
    let mut input = vec![0u8; CHUNK];
    let mut out = vec![0u8; CHUNK];
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    loop {
        let n = reader
            .read(&mut input)
            .await
            .map_err(|source| PeerError::StreamIo { stream, source })?;
        if n == 0 {
            break;
        }
        hasher.update(&input[..n]);
        total += n as u64;
        let Some(enc) = encoder.as_mut() else {
            sink.send_data(stream, &input[..n]).await?;
            continue;
        };
        let mut pos = 0;
        while pos < n {
            let status = enc.run_on_buffers(&input[pos..n], &mut out).map_err(zerr)?;
            pos += status.bytes_read;
            if status.bytes_read == 0 && status.bytes_written == 0 {
                return Err(zerr(stalled()));
            }
            if status.bytes_written > 0 {
                sink.send_data(stream, &out[..status.bytes_written]).await?;
            }
        }
    }
    if let Some(enc) = encoder.as_mut() {
        loop {
            let mut buf = OutBuffer::around(&mut out[..]);
            let remaining = enc.finish(&mut buf, true).map_err(zerr)?;
            let written = buf.pos();
            if written > 0 {
                sink.send_data(stream, &out[..written]).await?;
            }
            if remaining == 0 {
                break;
            }
        }
    }
    let end = StreamEnd {
        bytes: total,
        sha256: Some(hex::encode(hasher.finalize())),
    };
    sink.send_end(stream, &end).await?;
    Ok(end)
}

/// Writes `stream`'s bytes to `writer` until its `DataEnd`, and checks length and sha256.
/// `compression` must be what the announcing message said.
pub async fn recv_stream<W: AsyncWrite + Unpin>(
    source: &mut StreamReceiver,
    mut writer: W,
    compression: StreamCompression,
) -> Result<StreamEnd, PeerError> {
    let stream = source.id();
    let zerr = |source| PeerError::Zstd { stream, source };
    let werr = |source| PeerError::StreamIo { stream, source };
    let mut decoder = match compression {
        StreamCompression::Zstd => Some(Decoder::new().map_err(zerr)?),
        StreamCompression::None => None,
    };
    let mut out = vec![0u8; CHUNK];
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let sent = loop {
        let item = source.recv().await.map_err(|_| PeerError::StreamCheck {
            stream,
            reason: format!("connection ended after {total} bytes, before the end of the stream"),
        })?;
        let chunk = match item {
            StreamItem::End(end) => break end,
            StreamItem::Data(chunk) => chunk,
        };
        let Some(dec) = decoder.as_mut() else {
            hasher.update(&chunk);
            total += chunk.len() as u64;
            writer.write_all(&chunk).await.map_err(werr)?;
            continue;
        };
        // Decompress into a fixed buffer: a small frame can expand a lot, memory stays bounded.
        let mut pos = 0;
        loop {
            let status = dec.run_on_buffers(&chunk[pos..], &mut out).map_err(zerr)?;
            pos += status.bytes_read;
            let produced = &out[..status.bytes_written];
            hasher.update(produced);
            total += produced.len() as u64;
            writer.write_all(produced).await.map_err(werr)?;
            if pos == chunk.len() && status.bytes_written < out.len() {
                break;
            }
            if status.bytes_read == 0 && status.bytes_written == 0 {
                return Err(zerr(stalled()));
            }
        }
    };
    writer.flush().await.map_err(werr)?;
    let got = StreamEnd {
        bytes: total,
        sha256: Some(hex::encode(hasher.finalize())),
    };
    if sent.bytes != got.bytes {
        return Err(PeerError::StreamCheck {
            stream,
            reason: format!("sender sent {} bytes, received {}", sent.bytes, got.bytes),
        });
    }
    if sent.sha256.is_some() && sent.sha256 != got.sha256 {
        return Err(PeerError::StreamCheck {
            stream,
            reason: format!(
                "sha256 mismatch: sender {}, received {}",
                sent.sha256.unwrap_or_default(),
                got.sha256.unwrap_or_default()
            ),
        });
    }
    Ok(got)
}
