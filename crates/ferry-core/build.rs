//! Generates Rust types for ferry's own `.proto` descriptions of CRIU images.

fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=proto");
    prost_build::compile_protos(
        &["proto/criu_stats.proto", "proto/criu_pagemap.proto"],
        &["proto"],
    )
}
