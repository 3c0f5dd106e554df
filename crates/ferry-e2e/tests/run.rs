//! Issue 11, the container runtime half: what a Docker/Podman user expects of `ferry run`,
//! `kill` and `start`, against real runc (and CRIU where a checkpoint is involved).

use std::process::Output;
use std::time::Duration;

use ferry_e2e::Host;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A foreground `ferry run` (no -d): its exit status and its stdout and stderr, apart.
fn run_fg(h: &Host, args: &[&str]) -> Output {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    h.ferry(&all)
}

fn id_of(h: &Host, name: &str) -> String {
    h.inspect(name)["config"]["id"]
        .as_str()
        .expect("id")
        .to_owned()
}

/// Prints the name-resolution files on SIGUSR1 (and an edit to /etc/hosts made at start), so
/// they can be read from outside before and after a checkpoint.
const DNS_PRINTER: &str = "echo '10.9.9.9 edited' >> /etc/hosts; \
     trap 'echo BEGIN; cat /etc/hostname /etc/hosts /etc/resolv.conf; echo END' USR1; \
     echo ready; while :; do sleep 0.1; done";

/// The text between the `n`-th BEGIN and its END in a log.
fn dump(logs: &str, n: usize) -> Option<String> {
    let start = logs.match_indices("BEGIN\n").nth(n)?.0 + "BEGIN\n".len();
    let end = logs[start..].find("END\n")? + start;
    Some(logs[start..end].to_owned())
}

#[test]
fn dns_files_are_written_as_podman_writes_them() {
    let h = Host::start();
    h.import("busybox");

    // Given everything.
    let out = run_fg(
        &h,
        &[
            "--name",
            "given",
            "--ip",
            "10.78.1.40",
            "--hostname",
            "web1",
            "--dns",
            "192.0.2.53",
            "--dns",
            "2001:db8::53",
            "--add-host",
            "db:10.0.0.5",
            "busybox",
            "sh",
            "-c",
            "hostname; echo ---; cat /etc/hostname; echo ---; cat /etc/hosts; echo ---; \
             cat /etc/resolv.conf; echo ---; cat /run/.containerenv; echo ---; \
             grep -E ' /etc/(hosts|resolv.conf|hostname) | /run/.containerenv ' /proc/self/mountinfo | wc -l",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let parts: Vec<&str> = stdout.split("---\n").collect();
    assert_eq!(parts.len(), 6, "{stdout}");
    assert_eq!(parts[0], "web1\n");
    assert_eq!(parts[1], "web1\n");
    let hosts: Vec<&str> = parts[2].lines().collect();
    assert_eq!(hosts[0], "127.0.0.1\tlocalhost", "{hosts:?}");
    assert!(hosts[1].starts_with("::1\tlocalhost"), "{hosts:?}");
    assert!(hosts.contains(&"10.0.0.5\tdb"), "{hosts:?}");
    assert!(hosts.contains(&"10.78.1.40\tweb1 given"), "{hosts:?}");
    let servers: Vec<&str> = parts[3]
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver "))
        .collect();
    assert_eq!(servers, ["192.0.2.53", "2001:db8::53"], "{}", parts[3]);
    assert!(parts[4].contains("name=\"given\""), "{}", parts[4]);
    assert_eq!(parts[5].trim(), "4", "four bind mounts, as Podman's");

    // Defaults: the short id as hostname, the host's nameservers without loopback ones.
    let out = run_fg(
        &h,
        &[
            "--name",
            "plain",
            "busybox",
            "sh",
            "-c",
            "hostname; cat /etc/resolv.conf",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let id = id_of(&h, "plain");
    assert_eq!(stdout.lines().next(), Some(&id[..12]), "{stdout}");
    let servers: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver "))
        .collect();
    assert!(!servers.is_empty(), "{stdout}");
    for s in &servers {
        let ip: std::net::IpAddr = s.parse().expect("nameserver address");
        assert!(!ip.is_loopback(), "loopback nameserver kept: {stdout}");
    }

    // Bad input changes nothing.
    for (flag, value) in [
        ("--hostname", "bad_name"),
        ("--dns", "dns.example"),
        ("--add-host", "nocolon"),
    ] {
        let e = h.ferry_err(&["run", "-d", "--name", "bad", flag, value, "busybox", "true"]);
        assert!(e.contains(value), "{e}");
        assert!(h.ferry(&["inspect", "bad"]).status.code() != Some(0));
    }
}

#[test]
fn dns_files_and_their_edits_survive_checkpoint_and_restore() {
    let h = Host::start();
    h.import("busybox");
    h.run_detached(
        "resolver",
        &["--hostname", "keeper", "--add-host", "db:10.0.0.5"],
        "busybox",
        &["sh", "-c", DNS_PRINTER],
    );
    h.wait_for("ready", Duration::from_secs(20), || {
        h.logs("resolver").contains("ready")
    });
    h.ferry_ok(&["kill", "-s", "USR1", "resolver"]);
    h.wait_for("first dump", Duration::from_secs(10), || {
        dump(&h.logs("resolver"), 0).is_some()
    });
    let before = dump(&h.logs("resolver"), 0).unwrap();
    assert!(before.starts_with("keeper\n"), "{before}");
    assert!(before.contains("10.0.0.5\tdb\n"), "{before}");
    assert!(before.contains("10.9.9.9 edited\n"), "{before}");
    assert!(before.contains("nameserver "), "{before}");

    h.ferry_ok(&["checkpoint", "resolver"]);
    h.ferry_ok(&["restore", "resolver"]);
    h.ferry_ok(&["kill", "-s", "SIGUSR1", "resolver"]);
    h.wait_for("dump after restore", Duration::from_secs(10), || {
        dump(&h.logs("resolver"), 1).is_some()
    });
    assert_eq!(dump(&h.logs("resolver"), 1).unwrap(), before);

    // A fresh start writes them anew (the edit is gone, the config's entries stay).
    h.ferry_ok(&["stop", "-t", "1", "resolver"]);
    h.ferry_ok(&["start", "resolver"]);
    h.wait_for("ready again", Duration::from_secs(20), || {
        h.logs("resolver").matches("ready").count() >= 2
    });
    // The start's own edit is there once, not twice.
    h.ferry_ok(&["kill", "-s", "10", "resolver"]);
    h.wait_for("dump after start", Duration::from_secs(10), || {
        dump(&h.logs("resolver"), 2).is_some()
    });
    let fresh = dump(&h.logs("resolver"), 2).unwrap();
    assert_eq!(fresh.matches("edited").count(), 1, "{fresh}");
    assert!(fresh.contains("10.0.0.5\tdb\n"), "{fresh}");
}

#[test]
fn kill_signals_the_main_process_unless_all() {
    let h = Host::start();
    h.import("busybox");
    // PID 1 traps USR1; a background child (default action for USR1: die) ticks.
    h.run_detached(
        "family",
        &[],
        "busybox",
        &[
            "sh",
            "-c",
            "trap 'echo usr1' USR1; (while :; do echo child; sleep 0.2; done) & \
         while :; do sleep 0.1; done",
        ],
    );
    let children = |h: &Host| h.logs("family").matches("child").count();
    h.wait_for("child ticks", Duration::from_secs(20), || children(&h) >= 2);
    h.ferry_ok(&["kill", "-s", "USR1", "family"]);
    h.wait_for("PID 1 got it", Duration::from_secs(10), || {
        h.logs("family").contains("usr1")
    });
    let n = children(&h);
    h.wait_for("the child lives on", Duration::from_secs(10), || {
        children(&h) >= n + 3
    });

    h.ferry_ok(&["kill", "--all", "-s", "SIGUSR1", "family"]);
    h.wait_for("PID 1 got it again", Duration::from_secs(10), || {
        h.logs("family").matches("usr1").count() >= 2
    });
    std::thread::sleep(Duration::from_millis(600));
    let n = children(&h);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(children(&h), n, "the child died of --all's USR1");
    assert_eq!(h.inspect("family")["status"], "running", "PID 1 trapped it");

    let e = h.ferry_err(&["kill", "-s", "NOPE", "family"]);
    assert!(e.contains("NOPE"), "{e}");
    h.ferry_ok(&["kill", "-s", "9", "family"]);
    h.wait_for("killed", Duration::from_secs(10), || {
        h.inspect("family")["status"] == "stopped"
    });
}

/// `ferry run` in the foreground, as a child this test can signal.
fn spawn_fg(h: &Host, args: &[&str]) -> std::process::Child {
    std::process::Command::new(ferry_e2e::bin("ferry"))
        .arg("--socket")
        .arg(&h.socket)
        .arg("run")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn ferry run")
}

#[test]
fn foreground_run_exit_code_streams_and_signals() {
    let h = Host::start();
    h.import("busybox");
    let out = run_fg(
        &h,
        &[
            "--name",
            "three",
            "busybox",
            "sh",
            "-c",
            "echo out; echo err >&2; echo out2; exit 3",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "out\nout2\n",
        "no id ahead of the output"
    );
    assert_eq!(text(&out.stderr), "err\n");
    // A signal's death is 128 + N (a PID 1 cannot kill itself: `ferry kill` does it).
    let child = spawn_fg(
        &h,
        &[
            "--name",
            "killed",
            "busybox",
            "sh",
            "-c",
            "echo up; sleep 1000",
        ],
    );
    // Not `h.logs`: the foreground run may not have created the container yet.
    h.wait_for("up", Duration::from_secs(20), || {
        h.ferry(&["logs", "killed"]).stdout.starts_with(b"up")
    });
    h.ferry_ok(&["kill", "killed"]);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));

    // Ctrl-C (and SIGTERM) reach the container's main process.
    for (sig, name, code) in [
        (nix::sys::signal::Signal::SIGINT, "int", 42),
        (nix::sys::signal::Signal::SIGTERM, "term", 43),
    ] {
        let trap = if name == "int" { "INT" } else { "TERM" };
        let script = format!(
            "trap 'echo got-{name}; exit {code}' {trap}; echo ready; while :; do sleep 0.1; done"
        );
        let child = spawn_fg(&h, &["--name", name, "busybox", "sh", "-c", &script]);
        h.wait_for("ready", Duration::from_secs(20), || {
            h.ferry(&["logs", name]).stdout.starts_with(b"ready")
        });
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(code), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("ready\ngot-{name}\n"));
    }
}

#[test]
fn start_cold_starts_a_checkpointed_container() {
    let h = Host::start();
    h.import("busybox");
    h.run_counter("cold", &[], 3);
    h.ferry_ok(&["checkpoint", "cold", "--name", "only"]);
    h.ferry_ok(&["checkpoint", "rm", "cold", "only"]);
    let e = h.ferry_err(&["restore", "cold"]);
    assert!(e.contains("no checkpoint"), "{e}");
    h.ferry_ok(&["start", "cold"]);
    assert_eq!(h.inspect("cold")["status"], "running");
    // A cold start: the count begins again.
    h.wait_for("a second tick 1", Duration::from_secs(20), || {
        ferry_e2e::ticks(&h.logs("cold"))
            .iter()
            .filter(|t| **t == 1)
            .count()
            == 2
    });
    h.ferry_ok(&["stop", "-t", "1", "cold"]);
}

#[test]
fn run_options_as_docker_has_them() {
    let h = Host::start();
    h.import("busybox");
    let ok = |args: &[&str]| -> String {
        let out = run_fg(&h, args);
        assert!(out.status.success(), "run {args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };

    // -e NAME takes the caller's value, or is skipped; --env-file.
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("env");
    std::fs::write(&env_file, "# comment\nFROM_FILE=f1\n\nOTHER=two words\n").unwrap();
    let out = std::process::Command::new(ferry_e2e::bin("ferry"))
        .arg("--socket")
        .arg(&h.socket)
        .args(["run", "--rm", "-e", "FROM_CALLER", "-e", "NOT_SET_ANYWHERE"])
        .arg("--env-file")
        .arg(&env_file)
        .args([
            "busybox",
            "sh",
            "-c",
            "echo \"$FROM_CALLER|${NOT_SET_ANYWHERE-unset}|$FROM_FILE|$OTHER\"",
        ])
        .env("FROM_CALLER", "hello")
        .env_remove("NOT_SET_ANYWHERE")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello|unset|f1|two words\n");

    // --rm (foreground: removed once it exited; detached: by ferryd).
    ok(&["--rm", "--name", "gone", "busybox", "true"]);
    assert!(!h.ferry(&["inspect", "gone"]).status.success());
    h.ferry_ok(&["run", "-d", "--rm", "--name", "gone-d", "busybox", "true"]);
    h.wait_for("--rm -d removes it", Duration::from_secs(15), || {
        !h.ferry(&["inspect", "gone-d"]).status.success()
    });

    // Generated names: adjective_noun, distinct.
    let a = h.ferry_ok(&["run", "-d", "busybox", "true"]);
    let b = h.ferry_ok(&["run", "-d", "busybox", "true"]);
    let name = |id: &str| {
        h.inspect(id.trim())["config"]["name"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (na, nb) = (name(&a), name(&b));
    assert_ne!(na, nb);
    for n in [&na, &nb] {
        let (adj, noun) = n.split_once('_').expect("adjective_noun");
        assert!(
            !adj.is_empty() && noun.chars().all(|c| c.is_ascii_alphanumeric()),
            "{n}"
        );
    }

    // --read-only, --user, --workdir, --entrypoint.
    assert_eq!(
        ok(&[
            "--read-only",
            "busybox",
            "sh",
            "-c",
            "touch /x 2>/dev/null && echo wrote || echo refused"
        ]),
        "refused\n"
    );
    assert_eq!(
        ok(&[
            "--user",
            "65534",
            "busybox",
            "sh",
            "-c",
            "id -u; cat /etc/hosts /etc/resolv.conf /etc/hostname >/dev/null && echo readable"
        ]),
        "65534\nreadable\n"
    );
    assert_eq!(
        ok(&["-u", "nobody:nogroup", "busybox", "id", "-g"]),
        "65534\n"
    );
    assert_eq!(ok(&["-w", "/tmp", "busybox", "pwd"]), "/tmp\n");
    assert_eq!(ok(&["--entrypoint", "/bin/echo", "busybox", "hi"]), "hi\n");

    // --cpus, --cap-add, --cap-drop.
    assert_eq!(
        ok(&[
            "--cpus",
            "0.5",
            "busybox",
            "cat",
            "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"
        ]),
        "50000\n"
    );
    let cap_eff = |extra: &[&str]| -> u64 {
        let mut args = extra.to_vec();
        args.extend(["busybox", "grep", "CapEff", "/proc/self/status"]);
        let line = ok(&args);
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    const NET_ADMIN: u64 = 1 << 12;
    const CHOWN: u64 = 1 << 0;
    let default = cap_eff(&[]);
    assert_eq!(default & (NET_ADMIN | CHOWN), CHOWN);
    let changed = cap_eff(&["--cap-add", "NET_ADMIN", "--cap-drop", "chown"]);
    assert_eq!(changed & (NET_ADMIN | CHOWN), NET_ADMIN);

    // --label, shown by inspect.
    h.run_detached(
        "labelled",
        &["--label", "tier=web", "--label", "team=infra"],
        "busybox",
        &["true"],
    );
    let labels = &h.inspect("labelled")["config"]["labels"];
    assert_eq!(labels["tier"], "web");
    assert_eq!(labels["team"], "infra");

    // Refused before anything is created.
    for (args, needle) in [
        (vec!["--cpus", "999"], "999"),
        (vec!["--cap-add", "NOPE"], "NOPE"),
        (vec!["-w", "relative"], "relative"),
        (vec!["--restart", "sometimes"], "sometimes"),
    ] {
        let mut all = vec!["run", "-d", "--name", "refused"];
        all.extend(args);
        all.extend(["busybox", "true"]);
        let e = h.ferry_err(&all);
        assert!(e.contains(needle), "{e}");
        assert!(!h.ferry(&["inspect", "refused"]).status.success());
    }
}

#[test]
fn restart_policies_restart_what_exits_on_its_own() {
    let h = Host::start();
    h.import("busybox");
    h.run_detached(
        "flaky",
        &["--restart", "on-failure:2"],
        "busybox",
        &["sh", "-c", "echo run; exit 1"],
    );
    h.run_detached(
        "steady",
        &["--restart", "always"],
        "busybox",
        &["sleep", "1000"],
    );
    h.wait_for(
        "two restarts, then it stays down",
        Duration::from_secs(30),
        || {
            let r = h.inspect("flaky");
            r["restart_count"] == 2 && r["status"] == "stopped"
        },
    );
    assert_eq!(h.logs("flaky").matches("run").count(), 3);
    assert_eq!(
        h.inspect("flaky")["config"]["restart"]["name"],
        "on-failure"
    );

    // `always` restarts after a crash, but not after `ferry stop`.
    h.ferry_ok(&["kill", "steady"]);
    h.wait_for("restarted after the kill", Duration::from_secs(15), || {
        let r = h.inspect("steady");
        r["restart_count"] == 1 && r["status"] == "running"
    });
    h.ferry_ok(&["stop", "-t", "1", "steady"]);
    std::thread::sleep(Duration::from_secs(5));
    let r = h.inspect("steady");
    assert_eq!(r["status"], "stopped", "{r}");
    assert_eq!(r["restart_count"], 1, "{r}");
}

/// A busybox web server on port 80 that answers `hello`.
const WEB: &str = "mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 80 -h /www";

/// A client network namespace joined to a host's by a veth: traffic from "outside".
struct Outside {
    netns: String,
}

impl Outside {
    const HOST_SIDE: &'static str = "192.168.177.1";

    fn new(h: &Host) -> Outside {
        let netns = format!("fe2eout-{}", std::process::id());
        let ip = |args: &[&str]| {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "ip {args:?}: {}", text(&out.stderr));
        };
        let o = Outside { netns };
        ip(&["netns", "add", &o.netns]);
        ip(&[
            "-n", &h.netns, "link", "add", "fe2eout0", "type", "veth", "peer", "name", "eth0",
            "netns", &o.netns,
        ]);
        ip(&[
            "-n",
            &h.netns,
            "addr",
            "add",
            "192.168.177.1/24",
            "dev",
            "fe2eout0",
        ]);
        ip(&["-n", &h.netns, "link", "set", "fe2eout0", "up"]);
        ip(&[
            "-n",
            &o.netns,
            "addr",
            "add",
            "192.168.177.2/24",
            "dev",
            "eth0",
        ]);
        ip(&["-n", &o.netns, "link", "set", "eth0", "up"]);
        ip(&["-n", &o.netns, "link", "set", "lo", "up"]);
        o
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
    }
}

fn netns(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/run/netns/{name}"))
}

/// The body of `GET /` from `addr`, from inside the network namespace at `ns`.
fn http_get(ns: &std::path::Path, addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = addr.parse().expect("socket address");
    ferry_core::network::in_netns(ns, move || {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
        let mut reply = String::new();
        s.read_to_string(&mut reply).ok()?;
        reply
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
    })
    .expect("enter the netns")
}

#[test]
fn published_ports_reach_the_container_from_here_and_outside() {
    let h = Host::start();
    h.import("busybox");
    h.run_detached("web", &["-p", "8080:80"], "busybox", &["sh", "-c", WEB]);
    let outside = Outside::new(&h);
    let ip = h.inspect("web")["config"]["ip"]
        .as_str()
        .unwrap()
        .to_owned();
    h.wait_for("web on its own IP", Duration::from_secs(20), || {
        http_get(&netns(&h.netns), &format!("{ip}:80")).as_deref() == Some("hello\n")
    });
    let from_outside = format!("{}:8080", Outside::HOST_SIDE);
    assert_eq!(
        http_get(&netns(&outside.netns), &from_outside).as_deref(),
        Some("hello\n"),
        "from outside"
    );
    let bridge = format!("{}:8080", ferry_e2e::BRIDGE_IP);
    assert_eq!(
        http_get(&netns(&h.netns), &bridge).as_deref(),
        Some("hello\n"),
        "from this host, to its bridge address"
    );
    assert_eq!(
        http_get(&netns(&h.netns), "127.0.0.1:8080").as_deref(),
        Some("hello\n"),
        "from this host, to 127.0.0.1"
    );

    let e = h.ferry_err(&[
        "run", "-d", "--name", "web2", "-p", "8080:81", "busybox", "true",
    ]);
    assert!(e.contains("8080") && e.contains("web"), "{e}");

    // The rules go with the container: not after stop, back after start, gone after rm.
    h.ferry_ok(&["stop", "-t", "1", "web"]);
    assert_eq!(http_get(&netns(&h.netns), "127.0.0.1:8080"), None);
    h.ferry_ok(&["start", "web"]);
    h.wait_for("web again", Duration::from_secs(20), || {
        http_get(&netns(&outside.netns), &from_outside).as_deref() == Some("hello\n")
    });
    let id = id_of(&h, "web");
    h.ferry_ok(&["rm", "-f", "web"]);
    let rules = h.netns_cmd("iptables-save").output().unwrap();
    assert!(
        !text(&rules.stdout).contains(&id),
        "{}",
        text(&rules.stdout)
    );
}

#[test]
fn published_ports_move_with_the_container() {
    use ferry_e2e::lab::{lab, wait_for};
    let t = lab();
    t.import("host-a", "busybox");
    t.ok(
        "host-a",
        &[
            "run", "-d", "--name", "web", "-p", "8080:80", "busybox", "sh", "-c", WEB,
        ],
    );
    let addr = |host: &str| format!("{}:8080", t.lab.host(host).unwrap().address);
    let client = t.lab.client_netns();
    wait_for("web through host-a", Duration::from_secs(20), || {
        http_get(&client, &addr("host-a")).as_deref() == Some("hello\n")
    });
    let (ok, report, err) = t.migrate("host-a", "web", "host-b");
    assert!(ok, "{err}\n{report}\n{}", t.logs_tail());
    assert_eq!(
        http_get(&client, &addr("host-b")).as_deref(),
        Some("hello\n"),
        "the port is published on the new host"
    );
    assert_eq!(
        http_get(&client, &addr("host-a")),
        None,
        "and no longer on the old one"
    );
    let nat = t
        .lab
        .exec("host-a", &["iptables-save", "-t", "nat"])
        .unwrap();
    assert!(
        !text(&nat.stdout).contains("ferry:"),
        "{}",
        text(&nat.stdout)
    );
}

#[test]
fn run_options_survive_checkpoint_and_restore() {
    let h = Host::start();
    h.import("busybox");
    h.run_counter(
        "opts",
        &[
            "--read-only",
            "--cpus",
            "0.5",
            "--cap-drop",
            "CHOWN",
            "--label",
            "k=v",
            "-p",
            "8081:80",
        ],
        3,
    );
    h.ferry_ok(&["checkpoint", "opts"]);
    let before = ferry_e2e::ticks(&h.logs("opts")).len();
    h.ferry_ok(&["restore", "opts"]);
    h.wait_for("ticks after restore", Duration::from_secs(20), || {
        ferry_e2e::ticks(&h.logs("opts")).len() >= before + 3
    });
    let ticks = ferry_e2e::ticks(&h.logs("opts"));
    assert!(ticks.windows(2).all(|w| w[1] == w[0] + 1), "{ticks:?}");
    let rec = h.inspect("opts");
    assert_eq!(rec["config"]["labels"]["k"], "v");
    let nat = h.netns_cmd("iptables-save").output().unwrap();
    let id = rec["config"]["id"].as_str().unwrap();
    assert!(
        text(&nat.stdout).contains(id),
        "the port is published again"
    );
}
