//! The frame: fixed header + payload, and a decoder that never panics on any input.

use serde::{Deserialize, Serialize};

use crate::{Message, ProtoError};

/// "FRY1", big-endian.
pub const MAGIC: u32 = u32::from_be_bytes(*b"FRY1");
/// Version of the frame layout itself. The message protocol is negotiated separately (Hello).
pub const FRAME_FORMAT: u16 = 1;
/// magic u32, format u16, kind u16, stream u32, length u32, crc32 u32 — all big-endian.
pub const HEADER_LEN: usize = 20;
/// Largest payload accepted. Bulk senders cut their streams well below this.
pub const MAX_FRAME: usize = 1 << 20;

/// Stream id of control and abort frames.
pub const CONTROL_STREAM: u32 = 0;
/// Stream id reserved for the CRIU page-server tunnel (both directions).
pub const TUNNEL_STREAM: u32 = 1;
/// Bulk streams (blobs, filesystem, images, cpuinfo) use ids from here up, chosen by their sender.
pub const FIRST_BULK_STREAM: u32 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum FrameKind {
    Control = 1,
    Data = 2,
    DataEnd = 3,
    Abort = 4,
}

impl FrameKind {
    /// Kind 0 and anything unknown are rejected, so a zeroed header never parses.
    pub fn from_u16(v: u16) -> Result<Self, ProtoError> {
        match v {
            1 => Ok(FrameKind::Control),
            2 => Ok(FrameKind::Data),
            3 => Ok(FrameKind::DataEnd),
            4 => Ok(FrameKind::Abort),
            kind => Err(ProtoError::UnknownKind { kind }),
        }
    }

    fn on_control_stream(self) -> bool {
        matches!(self, FrameKind::Control | FrameKind::Abort)
    }
}

/// The parsed, validated header of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: FrameKind,
    pub stream: u32,
    pub length: u32,
    pub crc32: u32,
}

impl Header {
    /// Parses and validates a header (magic, format, kind, size limit, stream rule).
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Result<Header, ProtoError> {
        let u32_at =
            |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let u16_at = |i: usize| u16::from_be_bytes([bytes[i], bytes[i + 1]]);
        let magic = u32_at(0);
        if magic != MAGIC {
            return Err(ProtoError::BadMagic { found: magic });
        }
        let format = u16_at(4);
        if format != FRAME_FORMAT {
            return Err(ProtoError::BadFormatVersion {
                found: format,
                supported: FRAME_FORMAT,
            });
        }
        let kind = FrameKind::from_u16(u16_at(6))?;
        let stream = u32_at(8);
        let length = u32_at(12);
        if length as usize > MAX_FRAME {
            return Err(ProtoError::TooLarge {
                length,
                max: MAX_FRAME,
            });
        }
        if kind.on_control_stream() != (stream == CONTROL_STREAM) {
            return Err(ProtoError::BadStream { kind, stream });
        }
        Ok(Header {
            kind,
            stream,
            length,
            crc32: u32_at(16),
        })
    }

    /// The header for `payload`, for writers that send a payload without building a [`Frame`].
    /// The caller keeps `payload` within [`MAX_FRAME`] and data kinds off the control stream.
    pub fn encode(kind: FrameKind, stream: u32, payload: &[u8]) -> [u8; HEADER_LEN] {
        debug_assert!(payload.len() <= MAX_FRAME);
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        h[4..6].copy_from_slice(&FRAME_FORMAT.to_be_bytes());
        h[6..8].copy_from_slice(&(kind as u16).to_be_bytes());
        h[8..12].copy_from_slice(&stream.to_be_bytes());
        h[12..16].copy_from_slice(&(payload.len() as u32).to_be_bytes());
        h[16..20].copy_from_slice(&crc32fast::hash(payload).to_be_bytes());
        h
    }

    /// Checks a payload read after this header.
    pub fn check_payload(&self, payload: &[u8]) -> Result<(), ProtoError> {
        if payload.len() != self.length as usize {
            return Err(ProtoError::Truncated {
                needed: (self.length as usize).saturating_sub(payload.len()),
            });
        }
        let actual = crc32fast::hash(payload);
        if actual != self.crc32 {
            return Err(ProtoError::BadCrc {
                stream: self.stream,
                expected: self.crc32,
                actual,
            });
        }
        Ok(())
    }
}

/// One frame off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub stream: u32,
    pub payload: Vec<u8>,
}

/// Payload of a `DataEnd` frame: what the sender put into the stream (before any compression),
/// so the receiver can prove it got all of it. `sha256` is absent for tunnel streams, whose
/// bytes are CRIU's to check and too hot to hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamEnd {
    pub bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl Frame {
    /// A control frame for `msg` (an `Abort` frame for `Message::Abort`).
    pub fn message(msg: &Message) -> Frame {
        let kind = if matches!(msg, Message::Abort { .. }) {
            FrameKind::Abort
        } else {
            FrameKind::Control
        };
        Frame {
            kind,
            stream: CONTROL_STREAM,
            payload: serde_json::to_vec(msg).expect("messages always serialize"),
        }
    }

    /// A data frame. Panics if `stream` is the control stream or `bytes` exceeds [`MAX_FRAME`]:
    /// both are programming errors on the sending side.
    pub fn data(stream: u32, bytes: Vec<u8>) -> Frame {
        assert_ne!(
            stream, CONTROL_STREAM,
            "data frames never use the control stream"
        );
        assert!(bytes.len() <= MAX_FRAME, "data frame larger than MAX_FRAME");
        Frame {
            kind: FrameKind::Data,
            stream,
            payload: bytes,
        }
    }

    pub fn end(stream: u32, end: &StreamEnd) -> Frame {
        assert_ne!(
            stream, CONTROL_STREAM,
            "data frames never use the control stream"
        );
        Frame {
            kind: FrameKind::DataEnd,
            stream,
            payload: serde_json::to_vec(end).expect("StreamEnd always serializes"),
        }
    }

    /// The message in a `Control` or `Abort` frame.
    pub fn to_message(&self) -> Result<Message, ProtoError> {
        match self.kind {
            FrameKind::Control | FrameKind::Abort => {}
            _ => {
                return Err(ProtoError::BadPayload {
                    what: "message",
                    reason: format!("{:?} frame carries no message", self.kind),
                })
            }
        }
        let msg: Message =
            serde_json::from_slice(&self.payload).map_err(|e| ProtoError::BadPayload {
                what: "message",
                reason: e.to_string(),
            })?;
        if (self.kind == FrameKind::Abort) != matches!(msg, Message::Abort { .. }) {
            return Err(ProtoError::BadPayload {
                what: "message",
                reason: format!("{} sent in a {:?} frame", msg.name(), self.kind),
            });
        }
        Ok(msg)
    }

    /// The summary in a `DataEnd` frame.
    pub fn to_stream_end(&self) -> Result<StreamEnd, ProtoError> {
        if self.kind != FrameKind::DataEnd {
            return Err(ProtoError::BadPayload {
                what: "DataEnd",
                reason: format!("{:?} frame is not a stream end", self.kind),
            });
        }
        serde_json::from_slice(&self.payload).map_err(|e| ProtoError::BadPayload {
            what: "DataEnd",
            reason: e.to_string(),
        })
    }

    /// The header this frame will be sent with.
    pub fn header(&self) -> [u8; HEADER_LEN] {
        Header::encode(self.kind, self.stream, &self.payload)
    }
}

/// Appends the encoded frame to `out`.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) {
    out.reserve(HEADER_LEN + frame.payload.len());
    out.extend_from_slice(&frame.header());
    out.extend_from_slice(&frame.payload);
}

/// Incremental decoder: feed it bytes as they arrive, take frames out.
///
/// After any error the stream has lost framing, so the decoder stays failed.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    failed: Option<ProtoError>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ProtoError> {
        if let Some(e) = &self.failed {
            return Err(ProtoError::Poisoned(Box::new(e.clone())));
        }
        match self.try_frame() {
            Ok(f) => Ok(f),
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Call at end of input: leftover bytes mean the peer stopped mid-frame.
    pub fn finish(&self) -> Result<(), ProtoError> {
        if let Some(e) = &self.failed {
            return Err(ProtoError::Poisoned(Box::new(e.clone())));
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        // Saturating: a complete frame may still sit in the buffer if the caller stopped early.
        let needed = match self.header()? {
            Some(h) => (HEADER_LEN + h.length as usize).saturating_sub(self.buf.len()),
            None => HEADER_LEN - self.buf.len(),
        };
        Err(ProtoError::Truncated { needed })
    }

    fn header(&self) -> Result<Option<Header>, ProtoError> {
        match self.buf.get(..HEADER_LEN) {
            Some(h) => Header::parse(h.try_into().expect("slice of HEADER_LEN")).map(Some),
            None => Ok(None),
        }
    }

    fn try_frame(&mut self) -> Result<Option<Frame>, ProtoError> {
        let Some(header) = self.header()? else {
            return Ok(None);
        };
        let total = HEADER_LEN + header.length as usize;
        if self.buf.len() < total {
            return Ok(None);
        }
        let payload = self.buf[HEADER_LEN..total].to_vec();
        header.check_payload(&payload)?;
        self.buf.drain(..total);
        Ok(Some(Frame {
            kind: header.kind,
            stream: header.stream,
            payload,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn sample_frames() -> Vec<Frame> {
        vec![
            Frame::message(&Message::Commit {}),
            Frame::message(&Message::Abort {
                reason: "operator cancelled".into(),
            }),
            Frame::data(TUNNEL_STREAM, vec![7; 1000]),
            Frame::data(FIRST_BULK_STREAM, Vec::new()),
            Frame::end(
                FIRST_BULK_STREAM,
                &StreamEnd {
                    bytes: 1000,
                    sha256: Some("ab".repeat(32)),
                },
            ),
        ]
    }

    #[test]
    fn round_trip_byte_by_byte() {
        let frames = sample_frames();
        let mut wire = Vec::new();
        for f in &frames {
            encode(f, &mut wire);
        }
        let mut d = Decoder::new();
        let mut out = Vec::new();
        for b in &wire {
            d.push(std::slice::from_ref(b));
            while let Some(f) = d.next_frame().unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out, frames);
        d.finish().unwrap();
        assert_eq!(out[1].kind, FrameKind::Abort);
        assert!(matches!(
            out[1].to_message().unwrap(),
            Message::Abort { .. }
        ));
        assert_eq!(out[4].to_stream_end().unwrap().bytes, 1000);
    }

    fn decode_one(wire: &[u8]) -> Result<Option<Frame>, ProtoError> {
        let mut d = Decoder::new();
        d.push(wire);
        d.next_frame()
    }

    #[test]
    fn rejects_bad_headers() {
        let mut wire = Vec::new();
        encode(&Frame::data(5, b"hello".to_vec()), &mut wire);

        let mut bad = wire.clone();
        bad[0] = b'X';
        assert!(matches!(decode_one(&bad), Err(ProtoError::BadMagic { .. })));

        let mut bad = wire.clone();
        bad[5] = 9;
        assert!(matches!(
            decode_one(&bad),
            Err(ProtoError::BadFormatVersion { found: 9, .. })
        ));

        for kind in [0u8, 5, 255] {
            let mut bad = wire.clone();
            bad[7] = kind;
            assert_eq!(
                decode_one(&bad),
                Err(ProtoError::UnknownKind { kind: kind as u16 })
            );
        }

        let mut bad = wire.clone();
        bad[12..16].copy_from_slice(&((MAX_FRAME as u32) + 1).to_be_bytes());
        assert!(matches!(decode_one(&bad), Err(ProtoError::TooLarge { .. })));

        let mut bad = wire.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(matches!(
            decode_one(&bad),
            Err(ProtoError::BadCrc { stream: 5, .. })
        ));

        // Data on the control stream, control on a data stream.
        let mut bad = wire.clone();
        bad[8..12].copy_from_slice(&0u32.to_be_bytes());
        assert!(matches!(
            decode_one(&bad),
            Err(ProtoError::BadStream { .. })
        ));
        let mut ctl = Vec::new();
        encode(&Frame::message(&Message::Commit {}), &mut ctl);
        ctl[11] = 3;
        assert!(matches!(
            decode_one(&ctl),
            Err(ProtoError::BadStream { .. })
        ));
    }

    #[test]
    fn truncation_is_reported_and_errors_stick() {
        let mut wire = Vec::new();
        encode(&Frame::data(5, b"hello".to_vec()), &mut wire);
        let mut d = Decoder::new();
        d.push(&wire[..wire.len() - 2]);
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.finish(), Err(ProtoError::Truncated { needed: 2 }));

        let mut d = Decoder::new();
        d.push(b"JUNKJUNKJUNKJUNKJUNK");
        assert!(d.next_frame().is_err());
        d.push(&wire);
        assert!(matches!(d.next_frame(), Err(ProtoError::Poisoned(_))));
    }

    #[test]
    fn payload_kind_mismatch_is_rejected() {
        let mut f = Frame::message(&Message::Commit {});
        f.kind = FrameKind::Abort;
        assert!(f.to_message().is_err());
        let f = Frame {
            kind: FrameKind::Control,
            stream: 0,
            payload: b"{not json".to_vec(),
        };
        assert!(matches!(f.to_message(), Err(ProtoError::BadPayload { .. })));
    }

    /// Random bytes and randomly mutated valid frames: the decoder must return frames or errors,
    /// never panic, and never hand out a frame whose CRC does not match.
    #[test]
    fn fuzz_never_panics() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0xF00D);
        let mut valid = Vec::new();
        for f in sample_frames() {
            encode(&f, &mut valid);
        }
        for round in 0..20_000 {
            let mut input = if round % 2 == 0 {
                let len = rng.gen_range(0..200);
                (0..len).map(|_| rng.gen()).collect::<Vec<u8>>()
            } else {
                let mut v = valid.clone();
                for _ in 0..rng.gen_range(1..6) {
                    let i = rng.gen_range(0..v.len());
                    v[i] = rng.gen();
                }
                v.truncate(rng.gen_range(0..=v.len()));
                v
            };
            if round % 7 == 0 {
                // Valid magic and format so the deeper checks get exercised.
                input.splice(
                    0..0,
                    MAGIC
                        .to_be_bytes()
                        .into_iter()
                        .chain(FRAME_FORMAT.to_be_bytes()),
                );
            }
            let mut d = Decoder::new();
            for chunk in input.chunks(rng.gen_range(1..64)) {
                d.push(chunk);
                while let Ok(Some(f)) = d.next_frame() {
                    let _ = f.to_message();
                    let _ = f.to_stream_end();
                }
            }
            let _ = d.finish();
        }
    }
}
