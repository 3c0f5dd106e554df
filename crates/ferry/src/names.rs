//! Commands over several containers (`inspect`, `start`, `stop`, `rm`): each name is acted on
//! in turn, a failure does not stop the others, and the exit code is 1 if any failed, as in
//! Docker.
//!
//! Output: without `--json`, each name that succeeded on stdout and each failure on stderr.
//! With `--json`, one document: for one name the record (or the error object); for several an
//! array with the record, or `{"name": N, "error": {"kind", "message"}}`, for each.

use std::future::Future;

use anyhow::Result;
use ferry_core::container::ContainerRecord;

use crate::error::{json_error, Reported};

/// How each success is shown without `--json`.
#[derive(Clone, Copy)]
pub enum Human {
    /// The name as the user typed it (Docker's `stop`, `start`, `rm`).
    Name,
    /// The record as JSON (`inspect`; several records form an array).
    Record,
}

pub async fn each<F, Fut>(names: &[String], json: bool, human: Human, mut act: F) -> Result<()>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<ContainerRecord>>,
{
    let mut results: Vec<(String, Result<ContainerRecord>)> = Vec::with_capacity(names.len());
    for name in names {
        let r = act(name.clone()).await;
        // Human output goes as it happens: a long `stop` of several shows progress.
        if !json && matches!(human, Human::Name) {
            match &r {
                Ok(_) => outln!("{name}"),
                Err(e) => eprintln!("ferry: error: {e:#}"),
            }
        }
        results.push((name.clone(), r));
    }
    let failed = results.iter().filter(|(_, r)| r.is_err()).count();
    if results.len() == 1 && (json || matches!(human, Human::Record)) {
        // One name: the record, or exactly the error any failing command prints.
        if let Some((_, r)) = results.pop() {
            return crate::output::print_json(&r?);
        }
    }
    if json || matches!(human, Human::Record) {
        let mut docs = Vec::new();
        for (name, r) in &results {
            match r {
                Ok(rec) => docs.push(serde_json::to_value(rec)?),
                Err(e) if json => {
                    let mut v = json_error(e);
                    v["name"] = serde_json::Value::String(name.clone());
                    docs.push(v);
                }
                // Human `inspect`: the records on stdout, the failures on stderr.
                Err(e) => eprintln!("ferry: error: {e:#}"),
            }
        }
        crate::output::print_json(&docs)?;
    }
    if failed > 0 {
        return Err(Reported(1).into());
    }
    Ok(())
}
