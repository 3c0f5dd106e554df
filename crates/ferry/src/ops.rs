//! Operations helpers: shell completions (`ferry completion bash|zsh|fish`) and man pages
//! (`ferry man --out DIR`), both generated from the CLI's own definition so they never drift.

use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;

/// The completion script for `shell` on stdout.
pub fn completion(shell: clap_complete::Shell) {
    let mut cmd = crate::Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "ferry", &mut buf);
    crate::out::write_bytes(&buf);
}

/// Writes `ferry.1` and one page per subcommand (`ferry-ps.1`, `ferry-checkpoint-create.1`,
/// ...) into `dir`; returns the files written.
pub fn man_pages(dir: &Path) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = crate::Cli::command();
    cmd.build();
    let mut written = Vec::new();
    write_page(&cmd, "ferry", dir, &mut written)?;
    Ok(written)
}

fn write_page(
    cmd: &clap::Command,
    name: &str,
    dir: &Path,
    written: &mut Vec<String>,
) -> Result<()> {
    let page = cmd.clone().name(name.to_owned());
    let mut buf = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut buf)
        .with_context(|| format!("rendering the man page of {name}"))?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
    written.push(path.display().to_string());
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        write_page(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}
