//! `ferry-bench`: the benchmark suite. Moves a near-empty counter and Redis under one
//! persistent writer between two lab hosts with ferry (stop-and-copy, and post-copy where the
//! build has it) and with Podman's checkpoint/export → copy → restore/import, measures the
//! machine's limit in the same run, and writes `bench/results/suite-<stamp>.{jsonl,md,png}`.
//! Run it through `bench/suite.sh` (release build, the lab lock). Not part of the tests.

mod cpu;
mod ctx;
mod fabric;
mod limits;
mod machine;
mod method;
mod plot;
mod record;
mod report;
mod suite;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "ferry's benchmark suite: ferry, Podman and the machine's limit side by side")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the suite (root; brings its own lab up and down).
    Suite {
        /// Redis data sizes in MiB, comma-separated.
        #[arg(
            long,
            env = "SIZES",
            value_delimiter = ',',
            default_value = "256,1024,4096"
        )]
        sizes: Vec<u64>,
        #[arg(long, env = "REPEATS", default_value_t = 3)]
        repeats: u32,
        /// Methods, comma-separated: ferry, ferry-postcopy, podman.
        #[arg(
            long,
            env = "METHODS",
            value_delimiter = ',',
            default_value = "ferry,ferry-postcopy,podman"
        )]
        methods: Vec<String>,
        /// Leave out the counter baseline.
        #[arg(long, env = "NO_COUNTER")]
        no_counter: bool,
        /// Bytes sent to measure the fabric, in MiB.
        #[arg(long, env = "FABRIC_MIB", default_value_t = 1024)]
        fabric_mib: u64,
        /// Milliseconds the writer runs before and after each move.
        #[arg(long, default_value_t = 1000)]
        settle_ms: u64,
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
        #[arg(long, default_value = "/run/ferry-bench-suite")]
        lab_dir: PathBuf,
        #[arg(long, default_value = "ferrysuite")]
        prefix: String,
        #[arg(long, env = "FERRY_CRIU", default_value = "/usr/local/sbin/criu")]
        criu: String,
        /// Keep the scratch directory (images, Podman storage) for a look afterwards.
        #[arg(long)]
        keep_work: bool,
    },
    /// Write the markdown report and the plot again from a suite's .jsonl.
    Report { jsonl: PathBuf },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,netlink_packet_route=error")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("ferry-bench: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let jsonl = match cli.cmd {
        Cmd::Suite {
            sizes,
            repeats,
            methods,
            no_counter,
            fabric_mib,
            settle_ms,
            out,
            lab_dir,
            prefix,
            criu,
            keep_work,
        } => suite::run(&suite::Options {
            sizes,
            repeats,
            methods,
            counter: !no_counter,
            out,
            fabric_mib,
            lab_dir,
            prefix,
            criu,
            settle_ms,
            keep_work,
        })?,
        Cmd::Report { jsonl } => jsonl,
    };
    let records = record::load(&jsonl)?;
    let (md, png) = suite::siblings(&jsonl);
    let plotted = plot::draw(&records, &png);
    let text = report::markdown(&records, &jsonl, plotted.as_ref().err());
    std::fs::write(&md, &text).map_err(|e| anyhow::anyhow!("writing {}: {e}", md.display()))?;
    println!("{text}");
    eprintln!(
        "ferry-bench: wrote {}, {} and {}",
        jsonl.display(),
        md.display(),
        png.display()
    );
    plotted
}
