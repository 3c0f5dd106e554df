//! The peer protocol's frame decoder and message parsing, fed arbitrary bytes as a hostile
//! peer could send them after the TLS handshake.
#![no_main]

use ferry_proto::Decoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut d = Decoder::new();
    // Split the input in two pushes, as reads arrive in pieces.
    let cut = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    d.push(&data[..cut]);
    d.push(&data[cut..]);
    while let Ok(Some(frame)) = d.next_frame() {
        let _ = frame.to_message();
        let _ = frame.to_stream_end();
    }
    let _ = d.finish();
});
