//! Recognizes gzip and zstd streams by their magic bytes (media types lie often enough).

use std::io::{self, BufRead, BufReader, Read};

/// How an OCI layer blob is compressed, as its first bytes say (it picks the layer's media
/// type). Not the archive's ([`crate::checkpoint::archive::ArchiveCompression`]) nor a bulk
/// stream's on the wire (`ferry_proto::StreamCompression`): layers also come gzipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCompression {
    None,
    Gzip,
    Zstd,
}

impl LayerCompression {
    pub fn sniff(head: &[u8]) -> LayerCompression {
        if head.starts_with(&[0x1f, 0x8b]) {
            LayerCompression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            LayerCompression::Zstd
        } else {
            LayerCompression::None
        }
    }

    /// The OCI layer media type for a tar in this compression.
    pub fn layer_media_type(self) -> &'static str {
        match self {
            LayerCompression::None => "application/vnd.oci.image.layer.v1.tar",
            LayerCompression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            LayerCompression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

/// Wraps `r` in the right decompressor for what it starts with.
pub fn decompress<'a, R: Read + 'a>(r: R) -> io::Result<(LayerCompression, Box<dyn Read + 'a>)> {
    let mut br = BufReader::with_capacity(256 * 1024, r);
    let c = LayerCompression::sniff(br.fill_buf()?);
    let out: Box<dyn Read + 'a> = match c {
        LayerCompression::None => Box::new(br),
        // MultiGzDecoder: some tools write a layer as several concatenated gzip members.
        LayerCompression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(br)),
        LayerCompression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(br)?),
    };
    Ok((c, out))
}
