//! Issue 11, the CLI surface a Docker or Podman user expects, against a real ferryd and runc:
//! JSON errors, several names, ID prefixes, `ps` options, `logs` filters, volumes, the
//! checkpoint subcommands that never shadow a container, a closed pipe, completions and man.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_e2e::{bin, Host};

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// `ferry ARGS` expecting failure: (exit code, stdout, stderr).
fn fails(h: &Host, args: &[&str]) -> (i32, String, String) {
    let out = h.ferry(args);
    assert!(
        !out.status.success(),
        "ferry {args:?} unexpectedly succeeded"
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn sleeper(h: &Host, name: &str) -> String {
    let out = h.ferry_ok(&[
        "--json", "run", "-d", "--name", name, "busybox", "sleep", "1000",
    ]);
    // `run --json` prints the record; only its id matters here.
    let first = out.find('{').expect("run --json prints a record");
    json(&out[first..])["config"]["id"]
        .as_str()
        .expect("id")
        .to_owned()
}

#[test]
fn errors_names_prefixes_and_ps() {
    let h = Host::start();
    h.import("busybox");

    // A missing container: the JSON error object on stdout, nothing on stderr, exit 1.
    let (code, stdout, stderr) = fails(&h, &["--json", "inspect", "ghost"]);
    assert_eq!(code, 1);
    let e = json(&stdout);
    assert_eq!(e["error"]["kind"], "not_found", "{e}");
    assert_eq!(e["error"]["message"], "no such container: ghost", "{e}");
    assert!(stderr.is_empty(), "{stderr}");
    // A bad command line: kind usage, exit 2, still JSON.
    let (code, stdout, _) = fails(&h, &["--json", "ps", "--bogus"]);
    assert_eq!(code, 2);
    assert_eq!(json(&stdout)["error"]["kind"], "usage");
    // Without --json: text on stderr.
    let (code, stdout, stderr) = fails(&h, &["inspect", "ghost"]);
    assert_eq!((code, stdout.as_str()), (1, ""));
    assert!(stderr.contains("no such container: ghost"), "{stderr}");

    let a = sleeper(&h, "alpha");
    let b = sleeper(&h, "beta");
    h.run_detached("gone", &[], "busybox", &["sh", "-c", "exit 3"]);
    h.wait_for("gone exits", Duration::from_secs(10), || {
        h.inspect("gone")["status"] == "stopped"
    });

    // ps -q: exactly the short ids of the running containers.
    let mut ids: Vec<String> = h
        .ferry_ok(&["ps", "-q"])
        .lines()
        .map(str::to_owned)
        .collect();
    ids.sort();
    let mut want = vec![a[..12].to_owned(), b[..12].to_owned()];
    want.sort();
    assert_eq!(ids, want);
    // -a adds the stopped one; the status reads like Docker's.
    let all = h.ferry_ok(&["ps", "-a", "--format", "{{.Names}}|{{.Status}}"]);
    assert!(
        all.lines().any(|l| l.starts_with("gone|Exited (3) ")),
        "{all}"
    );
    assert!(all.lines().any(|l| l.starts_with("alpha|Up ")), "{all}");
    let table = h.ferry_ok(&["ps"]);
    assert!(
        table.starts_with("CONTAINER ID") && table.contains("CREATED"),
        "{table}"
    );
    // Filters: status implies -a; name is a substring; id a prefix.
    assert_eq!(
        h.ferry_ok(&["ps", "--filter", "status=exited", "--format", "{{.Names}}"]),
        "gone\n"
    );
    assert_eq!(
        h.ferry_ok(&["ps", "-a", "-f", "name=lph", "--format", "{{.Names}}"]),
        "alpha\n"
    );
    let by_id = h.ferry_ok(&["ps", "-a", "-f", &format!("id={}", &b[..8]), "-q"]);
    assert_eq!(by_id.trim(), &b[..12]);
    let (code, stdout, _) = fails(&h, &["--json", "ps", "--filter", "color=red"]);
    assert_eq!(
        (code, json(&stdout)["error"]["kind"].as_str()),
        (2, Some("usage"))
    );
    // --format json: one object a line, Docker's field names.
    let lines = h.ferry_ok(&["ps", "--format", "json"]);
    let names: Vec<String> = lines
        .lines()
        .map(|l| json(l)["Names"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(names, ["alpha", "beta"]);

    // Any unique ID prefix names a container.
    assert_eq!(h.inspect(&a[..5])["config"]["name"], "alpha");

    // Several names, one missing: the others still act, the exit code says one failed.
    let out = h.ferry(&["stop", "-t", "1", "alpha", "ghost", "beta"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "alpha\nbeta\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such container: ghost"));
    assert_eq!(h.inspect("alpha")["status"], "stopped");
    assert_eq!(h.inspect("beta")["status"], "stopped");
    // With --json: one array, the failure in place as an error object with its name.
    let (code, stdout, _) = fails(&h, &["--json", "start", "alpha", "ghost", "beta"]);
    assert_eq!(code, 1);
    let docs = json(&stdout);
    assert_eq!(docs[0]["config"]["name"], "alpha");
    assert_eq!(docs[1]["name"], "ghost");
    assert_eq!(docs[1]["error"]["kind"], "not_found");
    assert_eq!(docs[2]["status"], "running");
    let both = json(&h.ferry_ok(&["inspect", "alpha", "beta"]));
    assert_eq!(both.as_array().map(Vec::len), Some(2));

    // An ambiguous prefix is refused, naming the candidates. 17 ids share a first digit for sure.
    let mut seen: Vec<(String, String)> = vec![("alpha".into(), a), ("beta".into(), b)];
    let clash = loop {
        if let Some(c) = clash(&seen) {
            break c;
        }
        assert!(seen.len() <= 17, "17 hex ids always share a first digit");
        let n = format!("amb{}", seen.len());
        seen.push((n.clone(), sleeper(&h, &n)));
    };
    let (prefix, x, y) = clash;
    let (code, stdout, _) = fails(&h, &["--json", "inspect", &prefix]);
    assert_eq!(code, 1);
    let e = json(&stdout);
    assert_eq!(e["error"]["kind"], "ambiguous", "{e}");
    let msg = e["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains(&x) && msg.contains(&y), "{msg}");

    // A closed pipe ends ferry quietly: no panic, exit 0 (`ferry --json ps -a | head`).
    for args in [&["--json", "ps", "-a"][..], &["logs", "alpha"][..]] {
        let mut child = Command::new(bin("ferry"))
            .arg("--socket")
            .arg(&h.socket)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ferry");
        drop(child.stdout.take());
        let status = child.wait().expect("wait");
        let mut err = String::new();
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut err)
            .expect("read stderr");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(status.success(), "{args:?}: {status} {err}");
    }

    // rm of several, one missing; the others go.
    let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
    let mut rm = vec!["rm", "-f", "ghost"];
    rm.extend(names.iter().copied());
    rm.push("gone");
    let out = h.ferry(&rm);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(h.ferry_ok(&["ps", "-a", "-q"]), "");
}

/// The shortest first-digit clash among the ids: (prefix, name, name).
fn clash(seen: &[(String, String)]) -> Option<(String, String, String)> {
    for (i, (n1, id1)) in seen.iter().enumerate() {
        for (n2, id2) in &seen[i + 1..] {
            if id1[..1] == id2[..1] {
                return Some((id1[..1].to_owned(), n1.clone(), n2.clone()));
            }
        }
    }
    None
}

#[test]
fn logs_tail_since_until_and_json() {
    let h = Host::start();
    h.import("busybox");
    h.run_detached("talker", &[], "busybox", &["sh", "-c", "for i in 1 2 3 4 5; do echo line $i; done; sleep 0.5; echo oops >&2; sleep 1.2; echo late; sleep 1000"]);
    h.wait_for("the late line", Duration::from_secs(15), || {
        h.logs("talker").contains("late")
    });

    // The container's stderr comes out on stderr, as Docker's logs does.
    let out = h.ferry(&["logs", "--tail", "2", "talker"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "late\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    assert_eq!(h.ferry_ok(&["logs", "-n", "0", "talker"]), "");
    let all = h.ferry(&["logs", "--tail", "all", "talker"]);
    assert_eq!(String::from_utf8_lossy(&all.stdout).lines().count(), 6);
    assert_eq!(String::from_utf8_lossy(&all.stderr), "oops\n");

    // --json: one object a line with the time, the stream and the line.
    let entries: Vec<serde_json::Value> = h
        .ferry_ok(&["--json", "logs", "talker"])
        .lines()
        .map(json)
        .collect();
    assert_eq!(entries.len(), 7);
    assert_eq!(entries[0]["line"], "line 1");
    assert_eq!(entries[0]["stream"], "stdout");
    assert_eq!(entries[5]["line"], "oops");
    assert_eq!(entries[5]["stream"], "stderr");
    let late_at = entries[6]["time"].as_str().expect("time");
    let oops_at = entries[5]["time"].as_str().expect("time");

    // --since/--until with RFC3339 times (inclusive), and durations.
    assert_eq!(
        h.ferry_ok(&["logs", "--since", late_at, "talker"]),
        "late\n"
    );
    let until = h.ferry(&["logs", "--until", oops_at, "talker"]);
    assert_eq!(String::from_utf8_lossy(&until.stdout).lines().count(), 5);
    assert_eq!(String::from_utf8_lossy(&until.stderr), "oops\n");
    assert_eq!(
        h.ferry_ok(&["logs", "--since", "10m", "talker"])
            .lines()
            .count(),
        6
    );
    assert_eq!(h.ferry_ok(&["logs", "--until", "10m", "talker"]), "");
    assert_eq!(
        h.ferry_ok(&["logs", "--since", oops_at, "--tail", "1", "talker"]),
        "late\n"
    );
    // -t: each line starts with its time and stream.
    let stamped = h.ferry_ok(&["logs", "-t", "--tail", "1", "talker"]);
    assert!(
        stamped.starts_with(late_at) && stamped.ends_with(" stdout late\n"),
        "{stamped}"
    );
    // A follow bounded by --until ends although the container keeps running.
    let t = Instant::now();
    let followed = h.ferry_ok(&["logs", "-f", "--until", late_at, "--tail", "1", "talker"]);
    assert_eq!(followed, "late\n");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // Bad input is the caller's: usage errors, named.
    let (code, stdout, _) = fails(&h, &["--json", "logs", "--since", "soon", "talker"]);
    assert_eq!(code, 2);
    let msg = json(&stdout)["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(msg.contains("--since") && msg.contains("soon"), "{msg}");
}

#[test]
fn volumes_checkpoint_names_and_info() {
    let h = Host::start();
    h.import("busybox");

    // `checkpoint ls` is the list while no container is named ls.
    let list = h.ferry_ok(&["checkpoint", "ls"]);
    assert!(list.starts_with("CONTAINER"), "{list}");

    h.run_detached(
        "keeper",
        &["-v", "data:/data"],
        "busybox",
        &["sh", "-c", "echo hello > /data/f; sleep 1000"],
    );
    h.wait_for("the volume file", Duration::from_secs(10), || {
        h.ferry_ok(&["--json", "volume", "inspect", "data"])
            .contains("\"size\": 6")
    });
    let v = json(&h.ferry_ok(&["--json", "volume", "inspect", "data"]));
    assert_eq!(v["used_by"], serde_json::json!(["keeper"]));
    let ls = h.ferry_ok(&["volume", "ls"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with("data") && l.ends_with("keeper")),
        "{ls}"
    );
    // In use: refused, naming the container; nothing removed.
    let (code, stdout, _) = fails(&h, &["--json", "volume", "rm", "data"]);
    assert_eq!(code, 1);
    let e = json(&stdout);
    assert_eq!(e["error"]["kind"], "conflict");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("keeper"),
        "{e}"
    );
    assert!(h
        .ferry_ok(&["volume", "prune"])
        .contains("removed 0 volumes"));
    // The volume outlives its container, then prune takes it.
    h.ferry_ok(&["rm", "-f", "keeper"]);
    assert_eq!(h.ferry_ok(&["volume", "ls", "-q"]), "data\n");
    let pruned = json(&h.ferry_ok(&["--json", "volume", "prune"]));
    assert_eq!(pruned[0]["name"], "data");
    assert_eq!(h.ferry_ok(&["volume", "ls", "-q"]), "");
    assert!(fails(&h, &["volume", "rm", "data"])
        .2
        .contains("no such volume: data"));

    // A container named ls: `checkpoint ls` checkpoints it (Podman's no-op flags accepted);
    // `checkpoint list` still lists.
    sleeper(&h, "ls");
    let made = h.ferry_ok(&[
        "checkpoint",
        "ls",
        "-R",
        "--name",
        "s1",
        "--tcp-established",
        "--file-locks",
        "--keep",
    ]);
    assert_eq!(made, "ls/s1\n");
    let list = h.ferry_ok(&["checkpoint", "list", "ls"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("ls") && l.contains("s1")),
        "{list}"
    );
    // checkpoint rm prints what it did; a missing one is named as a checkpoint, not a container.
    assert_eq!(
        h.ferry_ok(&["checkpoint", "rm", "ls", "s1"]),
        "removed checkpoint s1 of ls\n"
    );
    let e = fails(&h, &["checkpoint", "remove", "ls", "s1"]).2;
    assert!(e.contains("container ls has no checkpoint s1"), "{e}");
    let e = fails(&h, &["restore", "--import", "/nonexistent.tar"]).2;
    assert!(
        e.contains("/nonexistent.tar does not exist") && !e.contains("no such container"),
        "{e}"
    );
    let e = fails(
        &h,
        &["checkpoint", "create", "ls", "-R", "--compress", "gzip"],
    )
    .2;
    assert!(
        e.contains("unknown compression \"gzip\"") && !e.contains("Some("),
        "{e}"
    );

    // info: human by default, JSON with --json.
    let info = h.ferry_ok(&["info"]);
    assert!(
        info.starts_with("Host:") && info.contains("CRIU:"),
        "{info}"
    );
    assert_eq!(json(&h.ferry_ok(&["--json", "info"]))["host"], "e2e");
}

#[test]
fn completions_and_man_pages() {
    let dir = tempfile::tempdir().expect("tempdir");
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(bin("ferry"))
            .args(["completion", shell])
            .output()
            .expect("ferry completion");
        assert!(out.status.success());
        assert!(
            out.stdout.len() > 1000,
            "{shell}: {} bytes",
            out.stdout.len()
        );
        if shell == "bash" {
            let script = dir.path().join("ferry.bash");
            std::fs::write(&script, &out.stdout).expect("write");
            let check = Command::new("bash")
                .arg("-n")
                .arg(&script)
                .output()
                .expect("bash -n");
            assert!(
                check.status.success(),
                "{}",
                String::from_utf8_lossy(&check.stderr)
            );
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("checkpoint") && text.contains("volume"));
        }
    }
    let man = dir.path().join("man1");
    let out = Command::new(bin("ferry"))
        .args(["man", "--out"])
        .arg(&man)
        .output()
        .expect("ferry man");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for page in [
        "ferry.1",
        "ferry-ps.1",
        "ferry-checkpoint-create.1",
        "ferry-volume-rm.1",
    ] {
        let text =
            std::fs::read_to_string(man.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page}");
    }

    // The install script stages binaries, unit, completions and man pages, and a second run
    // changes nothing.
    let stage = dir.path().join("stage");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/install.sh");
    let install = || {
        let out = Command::new("bash")
            .arg(&script)
            .env("FERRY_SKIP_SETUP", "1")
            .env("FERRY_BIN_DIR", ferry_e2e::bin_dir())
            .env("DESTDIR", &stage)
            .output()
            .expect("run install.sh");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = install();
    assert!(first.contains("installed"), "{first}");
    for f in [
        "usr/local/bin/ferry",
        "usr/local/bin/ferryd",
        "etc/systemd/system/ferryd.service",
        "etc/default/ferryd",
        "usr/local/share/bash-completion/completions/ferry",
        "usr/local/share/man/man1/ferry-ps.1",
    ] {
        assert!(stage.join(f).is_file(), "{f} not installed:\n{first}");
    }
    let second = install();
    assert!(
        second.contains("everything was already installed"),
        "{second}"
    );
}

#[test]
fn events_and_stats() {
    use std::io::BufRead;
    let h = Host::start();
    h.import("busybox");
    let mut events = Command::new(bin("ferry"))
        .arg("--socket")
        .arg(&h.socket)
        .args(["--json", "events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ferry events");
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    let stdout = events.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(json(&line)).is_err() {
                return;
            }
        }
    });
    // The subscription takes its first snapshot before anything happens (generously, on a
    // loaded machine).
    std::thread::sleep(Duration::from_millis(1500));

    h.run_detached(
        "busy",
        &["--memory", "64m"],
        "busybox",
        &["sh", "-c", "while true; do :; done"],
    );
    let sample = h.ferry_ok(&["--json", "stats", "--no-stream", "busy"]);
    let s = json(sample.lines().next().expect("one line per container"));
    assert_eq!(s["name"], "busy");
    assert_eq!(s["memory_limit"], 64 * 1024 * 1024);
    assert!(s["memory_bytes"].as_u64().unwrap_or(0) > 0, "{s}");
    assert!(s["pids"].as_u64().unwrap_or(0) >= 1, "{s}");
    // A busy loop uses a good share of a CPU, even on a loaded machine.
    assert!(s["cpu_percent"].as_f64().unwrap_or(0.0) > 5.0, "{s}");
    assert!(s["net_rx_bytes"].is_u64(), "{s}");
    let table = h.ferry_ok(&["stats", "--no-stream"]);
    assert!(
        table.starts_with("NAME") && table.contains("busy"),
        "{table}"
    );

    h.ferry_ok(&["stop", "-t", "1", "busy"]);
    h.ferry_ok(&["rm", "busy"]);
    let mut actions = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !actions.contains(&"destroy".to_owned()) && Instant::now() < deadline {
        if let Ok(e) = rx.recv_timeout(Duration::from_millis(200)) {
            if e["kind"] == "container" && e["name"] == "busy" {
                actions.push(e["action"].as_str().unwrap_or_default().to_owned());
            }
        }
    }
    let _ = events.kill();
    let _ = events.wait();
    assert_eq!(actions, ["create", "start", "die", "destroy"]);
}
