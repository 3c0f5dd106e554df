//! `ferry ps`: the container list with Docker's options (`-a`, `-q`, `--format`, `--filter`)
//! and Docker's CREATED and STATUS columns ("Up 3 minutes", "Exited (3) 2 minutes ago").

use anyhow::Result;
use chrono::{DateTime, Utc};
use ferry_core::container::{ContainerRecord, Status};
use hyper::Method;

use crate::client::Client;
use crate::error::CliError;
use crate::output::{self, Table};

#[derive(clap::Args, Debug)]
pub struct PsArgs {
    /// Show every container (default: running ones, and those a migration left in error).
    #[arg(short, long)]
    pub all: bool,
    /// Only the container IDs, one a line.
    #[arg(short, long)]
    pub quiet: bool,
    /// Output with a template: `{{.ID}} {{.Names}}`, `table {{.Names}}\t{{.Status}}`, or
    /// `json` (one object a line). Fields: ID, Names, Image, Command, CreatedAt, RunningFor,
    /// Status, State, Restarts, IP, Pid, Labels.
    #[arg(long)]
    pub format: Option<String>,
    /// Filter: name=SUBSTRING, id=PREFIX, status=STATE (created, running, stopped or exited,
    /// checkpointed, migrating, error), label=KEY or label=KEY=VALUE. Repeated filters of one
    /// key match any of them; different keys must all match. A status filter implies -a.
    #[arg(short, long, value_name = "KEY=VALUE")]
    pub filter: Vec<String>,
    /// Show full IDs and commands.
    #[arg(long)]
    pub no_trunc: bool,
}

pub async fn run(c: &Client, a: PsArgs, json: bool) -> Result<()> {
    let filters = Filters::parse(&a.filter)?;
    let template = a.format.as_deref().map(Template::parse).transpose()?;
    let list: Vec<ContainerRecord> = c.call(Method::GET, "/v1/containers", None::<()>).await?;
    let all = a.all || !filters.status.is_empty();
    let list: Vec<ContainerRecord> = list
        .into_iter()
        // Live ones, and those a failed migration left in error: never hide those.
        .filter(|r| {
            all || matches!(
                r.status,
                Status::Running | Status::Migrating | Status::Error
            )
        })
        .filter(|r| filters.matches(r))
        .collect();
    let now = Utc::now();
    if a.quiet {
        let ids: Vec<String> = list.iter().map(|r| id(r, a.no_trunc)).collect();
        if json {
            return output::print_json(&ids);
        }
        for i in ids {
            outln!("{i}");
        }
        return Ok(());
    }
    match template {
        Some(Template::Json) => {
            for r in &list {
                outln!(
                    "{}",
                    serde_json::to_string(&Row::new(r, now, true).to_json())?
                );
            }
        }
        Some(Template::Fields { table, parts }) => {
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|r| {
                    let row = Row::new(r, now, a.no_trunc);
                    render(&parts, &row)
                })
                .collect();
            if table {
                let mut t = Table::new(header(&parts));
                for r in rows {
                    t.row(r);
                }
                t.print();
            } else {
                for r in rows {
                    outln!("{}", r.concat());
                }
            }
        }
        None if json => output::print_json(&list)?,
        None => table(&list, now, a.no_trunc),
    }
    Ok(())
}

fn id(r: &ContainerRecord, full: bool) -> String {
    if full {
        r.config.id.clone()
    } else {
        r.config.id.chars().take(12).collect()
    }
}

fn table(list: &[ContainerRecord], now: DateTime<Utc>, full: bool) {
    let mut t = Table::new(
        [
            "CONTAINER ID",
            "IMAGE",
            "COMMAND",
            "CREATED",
            "STATUS",
            "RESTARTS",
            "IP",
            "NAMES",
        ]
        .map(str::to_owned)
        .to_vec(),
    );
    for r in list {
        let row = Row::new(r, now, full);
        t.row(vec![
            row.id.clone(),
            row.image.clone(),
            format!("\"{}\"", row.command),
            row.running_for.clone(),
            row.status.clone(),
            row.restarts.clone(),
            row.ip.clone(),
            row.names.clone(),
        ]);
        if let Some(e) = &r.error {
            t.note(format!("  {} error: {e}", row.names));
        }
    }
    t.print();
}

/// The fields of one container as `--format` sees them.
struct Row {
    id: String,
    names: String,
    image: String,
    command: String,
    created_at: String,
    running_for: String,
    status: String,
    state: String,
    /// How often `--restart` restarted it.
    restarts: String,
    ip: String,
    pid: String,
    labels: String,
}

impl Row {
    fn new(r: &ContainerRecord, now: DateTime<Utc>, full: bool) -> Row {
        let mut command = r.config.args.join(" ");
        if !full && command.chars().count() > 20 {
            command = command.chars().take(19).collect::<String>() + "…";
        }
        let created = parse_time(&r.config.created);
        Row {
            id: id(r, full),
            names: r.config.name.clone(),
            image: r.config.image_ref.clone(),
            command,
            created_at: r.config.created.clone(),
            running_for: created
                .map(|t| format!("{} ago", human_duration(now - t)))
                .unwrap_or_default(),
            status: status_text(r, now),
            state: r.status.to_string(),
            restarts: r.restart_count.to_string(),
            ip: r.config.ip.to_string(),
            pid: r.pid.map(|p| p.to_string()).unwrap_or_default(),
            labels: labels(r)
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    fn field(&self, name: &str) -> Option<&str> {
        Some(match name {
            "ID" => &self.id,
            "Names" | "Name" => &self.names,
            "Image" => &self.image,
            "Command" => &self.command,
            "CreatedAt" => &self.created_at,
            "RunningFor" => &self.running_for,
            "Status" => &self.status,
            "State" => &self.state,
            "Restarts" => &self.restarts,
            "IP" => &self.ip,
            "Pid" => &self.pid,
            "Labels" => &self.labels,
            _ => return None,
        })
    }

    fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for f in FIELDS {
            m.insert((*f).to_owned(), self.field(f).unwrap_or_default().into());
        }
        serde_json::Value::Object(m)
    }
}

const FIELDS: &[&str] = &[
    "ID",
    "Names",
    "Image",
    "Command",
    "CreatedAt",
    "RunningFor",
    "Status",
    "State",
    "Restarts",
    "IP",
    "Pid",
    "Labels",
];

/// A container's labels, read from its record without depending on the field existing
/// (`config.labels`, a map, when the record has one).
fn labels(r: &ContainerRecord) -> Vec<(String, String)> {
    let v = serde_json::to_value(&r.config).unwrap_or_default();
    match v.get("labels") {
        Some(serde_json::Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                )
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Docker's STATUS: "Up 3 minutes", "Exited (3) 2 minutes ago", "Created", ...
pub fn status_text(r: &ContainerRecord, now: DateTime<Utc>) -> String {
    let since = |t: &Option<String>| {
        t.as_deref()
            .and_then(parse_time)
            .map(|t| human_duration(now - t))
    };
    match r.status {
        Status::Running => match since(&r.started_at) {
            Some(d) => format!("Up {d}"),
            None => "Up".to_owned(),
        },
        Status::Stopped => {
            let Some(exit) = &r.exit else {
                return "Stopped".to_owned();
            };
            // A signal's death reads as the shell shows it: 128 + the signal.
            let code = exit.code.or(exit.signal.map(|s| 128 + s));
            let mut s = match code {
                Some(c) => format!("Exited ({c})"),
                None => "Exited".to_owned(),
            };
            if let Some(d) = since(&exit.finished_at) {
                s.push_str(&format!(" {d} ago"));
            }
            s
        }
        Status::Created => "Created".to_owned(),
        Status::Checkpointed => "Checkpointed".to_owned(),
        Status::Migrating => "Migrating".to_owned(),
        Status::Error => "Error".to_owned(),
    }
}

/// Docker's human durations ("Less than a second", "About a minute", "3 hours", ...).
pub fn human_duration(d: chrono::Duration) -> String {
    let secs = d.num_seconds().max(0);
    let minutes = secs / 60;
    let hours = (secs as f64 / 3600.0 + 0.5) as i64;
    match secs {
        0 => "Less than a second".to_owned(),
        1 => "1 second".to_owned(),
        s if s < 60 => format!("{s} seconds"),
        _ if minutes == 1 => "About a minute".to_owned(),
        _ if minutes < 60 => format!("{minutes} minutes"),
        _ if hours == 1 => "About an hour".to_owned(),
        _ if hours < 48 => format!("{hours} hours"),
        _ if hours < 24 * 7 * 2 => format!("{} days", hours / 24),
        _ if hours < 24 * 30 * 2 => format!("{} weeks", hours / 24 / 7),
        _ if hours < 24 * 365 * 2 => format!("{} months", hours / 24 / 30),
        _ => format!("{} years", secs / 3600 / 24 / 365),
    }
}

/// `--filter` values, by key.
#[derive(Default, Debug)]
struct Filters {
    name: Vec<String>,
    id: Vec<String>,
    status: Vec<Status>,
    label: Vec<(String, Option<String>)>,
}

impl Filters {
    fn parse(specs: &[String]) -> Result<Filters, CliError> {
        let mut f = Filters::default();
        for spec in specs {
            let Some((key, value)) = spec.split_once('=') else {
                return Err(CliError::new(
                    "usage",
                    format!("bad filter {spec:?}: expected KEY=VALUE (name, id, status, label)"),
                ));
            };
            match key {
                "name" => f.name.push(value.to_owned()),
                "id" => f.id.push(value.to_owned()),
                "status" => f.status.push(parse_status(value)?),
                "label" => f.label.push(match value.split_once('=') {
                    Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                    None => (value.to_owned(), None),
                }),
                other => {
                    return Err(CliError::new(
                        "usage",
                        format!("unknown filter {other:?}: use name, id, status or label"),
                    ))
                }
            }
        }
        Ok(f)
    }

    fn matches(&self, r: &ContainerRecord) -> bool {
        let any = |v: &[String], f: &dyn Fn(&String) -> bool| v.is_empty() || v.iter().any(f);
        let labels = if self.label.is_empty() {
            Vec::new()
        } else {
            labels(r)
        };
        any(&self.name, &|n| r.config.name.contains(n.as_str()))
            && any(&self.id, &|p| r.config.id.starts_with(p.as_str()))
            && (self.status.is_empty() || self.status.contains(&r.status))
            // Docker: every label filter must hold.
            && self.label.iter().all(|(k, v)| {
                labels
                    .iter()
                    .any(|(lk, lv)| lk == k && v.as_ref().is_none_or(|v| v == lv))
            })
    }
}

fn parse_status(s: &str) -> Result<Status, CliError> {
    Ok(match s {
        "created" => Status::Created,
        "running" => Status::Running,
        "stopped" | "exited" => Status::Stopped,
        "checkpointed" => Status::Checkpointed,
        "migrating" => Status::Migrating,
        "error" => Status::Error,
        other => {
            return Err(CliError::new(
                "usage",
                format!("unknown status {other:?}: use created, running, stopped (or exited), checkpointed, migrating or error"),
            ))
        }
    })
}

/// A parsed `--format`.
#[derive(Debug, PartialEq)]
enum Template {
    Json,
    /// Literal text and `{{.Field}}`s; `table` adds a header line and aligns the columns
    /// (at tabs, `\t` written literally or not).
    Fields {
        table: bool,
        parts: Vec<Part>,
    },
}

#[derive(Debug, PartialEq)]
enum Part {
    Text(String),
    Field(String),
}

impl Template {
    fn parse(s: &str) -> Result<Template, CliError> {
        if s.trim() == "json" {
            return Ok(Template::Json);
        }
        let (table, body) = match s.strip_prefix("table") {
            Some(rest) => (true, rest.trim_start()),
            None => (false, s),
        };
        let body = body.replace("\\t", "\t").replace("\\n", "\n");
        let mut parts = Vec::new();
        let mut rest = body.as_str();
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let Some(close) = rest[open..].find("}}") else {
                return Err(CliError::new(
                    "usage",
                    format!("bad format {s:?}: `{{{{` without `}}}}`"),
                ));
            };
            let inner = rest[open + 2..open + close].trim();
            let Some(field) = inner
                .strip_prefix('.')
                .filter(|f| FIELDS.contains(f) || *f == "Name")
            else {
                return Err(CliError::new(
                    "usage",
                    format!(
                        "bad format {s:?}: unknown field {inner:?}; known: {}",
                        FIELDS
                            .iter()
                            .map(|f| format!(".{f}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                ));
            };
            parts.push(Part::Field(field.to_owned()));
            rest = &rest[open + close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template::Fields { table, parts })
    }
}

/// One line of a template: its cells (split at tabs, for `table`).
fn render(parts: &[Part], row: &Row) -> Vec<String> {
    let mut line = String::new();
    for p in parts {
        match p {
            Part::Text(t) => line.push_str(t),
            Part::Field(f) => line.push_str(row.field(f).unwrap_or_default()),
        }
    }
    line.split('\t').map(str::to_owned).collect()
}

fn header(parts: &[Part]) -> Vec<String> {
    let mut line = String::new();
    for p in parts {
        match p {
            Part::Text(t) => line.push_str(t),
            Part::Field(f) => line.push_str(&match f.as_str() {
                "ID" => "CONTAINER ID".to_owned(),
                "RunningFor" => "CREATED".to_owned(),
                "CreatedAt" => "CREATED AT".to_owned(),
                other => other.to_uppercase(),
            }),
        }
    }
    line.split('\t').map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_docker() {
        let d = chrono::Duration::seconds;
        assert_eq!(human_duration(d(0)), "Less than a second");
        assert_eq!(human_duration(d(1)), "1 second");
        assert_eq!(human_duration(d(45)), "45 seconds");
        assert_eq!(human_duration(d(90)), "About a minute");
        assert_eq!(human_duration(d(180)), "3 minutes");
        assert_eq!(human_duration(d(3600)), "About an hour");
        assert_eq!(human_duration(d(5 * 3600)), "5 hours");
        assert_eq!(human_duration(d(3 * 86400)), "3 days");
    }

    #[test]
    fn templates_parse_and_refuse() {
        assert_eq!(Template::parse("json").unwrap(), Template::Json);
        let Template::Fields { table, parts } =
            Template::parse("{{.Names}} {{ .Status }}").unwrap()
        else {
            panic!("fields expected");
        };
        assert!(!table);
        assert_eq!(
            parts,
            vec![
                Part::Field("Names".into()),
                Part::Text(" ".into()),
                Part::Field("Status".into())
            ]
        );
        let Template::Fields { table, parts } =
            Template::parse("table {{.ID}}\\t{{.Names}}").unwrap()
        else {
            panic!("fields expected");
        };
        assert!(table);
        assert_eq!(header(&parts), vec!["CONTAINER ID", "NAMES"]);
        let e = Template::parse("{{.Nope}}").unwrap_err();
        assert!(
            e.message.contains("Nope") && e.message.contains(".Names"),
            "{e}"
        );
        assert!(Template::parse("{{.Names").is_err());
    }

    #[test]
    fn filters_parse() {
        let f = Filters::parse(&[
            "status=exited".into(),
            "label=tier=web".into(),
            "name=re".into(),
        ])
        .unwrap();
        assert_eq!(f.status, vec![Status::Stopped]);
        assert_eq!(f.label, vec![("tier".to_owned(), Some("web".to_owned()))]);
        assert!(Filters::parse(&["color=red".into()])
            .unwrap_err()
            .message
            .contains("color"));
        assert!(Filters::parse(&["status=sleepy".into()]).is_err());
        assert!(Filters::parse(&["name".into()]).is_err());
    }
}
