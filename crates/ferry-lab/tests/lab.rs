//! The lab against the real kernel: namespaces, bridges, veths, mount namespaces. ferryd and
//! the ferry CLI are replaced by small test doubles so the lab's own behaviour is what is
//! tested. Each test uses its own netns prefix and directory, so they can run in parallel.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_core::network::{in_netns, link_mac, run_in_netns};
use ferry_lab::{teardown, Lab, LabConfig, LabState};

fn config(dir: &Path, prefix: &str, hosts: usize) -> LabConfig {
    let mut cfg = LabConfig::new(dir.join("lab"), hosts);
    cfg.prefix = prefix.into();
    cfg.daemons = false;
    cfg
}

fn tcp_works(from: &Path, to: Ipv4Addr, listen_ns: &Path, port: u16) -> bool {
    let listener = in_netns(listen_ns, move || {
        TcpListener::bind(SocketAddrV4::new(to, port))
    })
    .unwrap()
    .unwrap();
    let server = std::thread::spawn(move || {
        listener.set_nonblocking(false).unwrap();
        let (mut s, _) = listener.accept().unwrap();
        std::io::Write::write_all(&mut s, b"ok").unwrap();
    });
    let addr = SocketAddrV4::new(to, port).into();
    let conn = in_netns(from, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(5))
    })
    .unwrap();
    let Ok(mut s) = conn else { return false };
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    server.join().unwrap();
    buf == "ok"
}

fn netns_gone(state: &LabState) -> bool {
    state.all_netns().iter().all(|p| !p.exists())
}

#[test]
fn hosts_and_client_share_the_fabric() {
    let tmp = tempfile::tempdir().unwrap();
    let lab = Lab::up_with(config(tmp.path(), "flt1", 3)).unwrap();
    let (a, b, c) = (
        lab.host("host-a").unwrap().clone(),
        lab.host("host-b").unwrap().clone(),
        lab.host("host-c").unwrap().clone(),
    );
    assert_eq!(b.address, Ipv4Addr::new(10, 77, 0, 2));
    assert!(tcp_works(
        &lab.client_netns(),
        b.address,
        &b.netns_path,
        7100
    ));
    assert!(tcp_works(&a.netns_path, c.address, &c.netns_path, 7101));
    assert!(tcp_works(
        &c.netns_path,
        ferry_lab::CLIENT_ADDRESS,
        &lab.client_netns(),
        7102
    ));
    // Host bridges keep their pinned MAC although a port (the uplink) is attached.
    let mac = run_in_netns(&a.netns_path, || async {
        link_mac(ferry_lab::HOST_BRIDGE).await
    })
    .unwrap();
    assert_eq!(mac, a.bridge_mac());

    // Commands run in the right namespace.
    let out = lab.exec("host-b", &["cat", "/proc/net/fib_trie"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("10.77.0.2"));
    let out = lab
        .client_command("cat")
        .arg("/proc/net/fib_trie")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("10.77.0.200"));

    // A second lab with the same prefix elsewhere is refused, and leaves the first intact.
    let err = Lab::up_with(config(&tmp.path().join("other"), "flt1", 1)).unwrap_err();
    assert!(
        err.to_string().contains("another lab with prefix flt1"),
        "{err}"
    );
    assert!(tcp_works(
        &lab.client_netns(),
        b.address,
        &b.netns_path,
        7103
    ));

    let state = lab.state().clone();
    drop(lab);
    assert!(netns_gone(&state), "drop must remove the lab's namespaces");
}

#[test]
fn teardown_cleans_a_crashed_lab_and_is_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let lab = Lab::up_with(config(tmp.path(), "flt2", 2)).unwrap();
    let state = lab.state().clone();
    let a = lab.host("host-a").unwrap().clone();

    // Leftovers of a crash: a process in a host netns, a mount under the lab dir, cgroups.
    let mut straggler = lab.host_command("host-a", "sleep").unwrap();
    let mut straggler = straggler.arg("1000").spawn().unwrap();
    let mnt = a.dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &mnt,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    let cgroups: Vec<PathBuf> = [
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup",
    ]
    .iter()
    .map(Path::new)
    .filter(|p| p.join("cgroup.procs").exists())
    .map(|p| p.join("flt2-host-a").join("ctr1"))
    .collect();
    for cg in &cgroups {
        std::fs::create_dir_all(cg).unwrap();
    }
    lab.keep(); // as if the process had died without cleaning up

    let warnings = teardown(&state, false);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(netns_gone(&state));
    let status = straggler.wait().unwrap();
    assert!(!status.success(), "the straggler must have been killed");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(mnt.to_str().unwrap()),
        "mount under the lab dir left behind"
    );
    for cg in &cgroups {
        assert!(
            !cg.parent().unwrap().exists(),
            "{} left behind",
            cg.display()
        );
    }
    assert!(LabState::load(&state.dir).unwrap().is_none());

    assert!(
        teardown(&state, true).is_empty(),
        "second teardown must be quiet"
    );
    assert!(!state.dir.exists(), "purge removes the lab dir");
}

/// A ferryd double: records what it sees of the lab dir, listens on its peer address (only
/// possible inside its host netns) and answers GET /v1/info.
const FAKE_FERRYD: &str = r#"#!/usr/bin/python3
import os, socket, sys, threading
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
lab = os.path.dirname(os.path.dirname(args["--root"]))
print("VIEW", ",".join(sorted(os.listdir(lab))), flush=True)
print("ARGS", " ".join(sys.argv[1:]), flush=True)
host, port = args["--peer-listen"].rsplit(":", 1)
peer = socket.socket()
peer.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
peer.bind((host, int(port)))
peer.listen()
def serve_peer():
    while True:
        peer.accept()[0].close()
threading.Thread(target=serve_peer, daemon=True).start()
api = socket.socket(socket.AF_UNIX)
api.bind(args["--socket"])
api.listen()
while True:
    c, _ = api.accept()
    c.recv(4096)
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
    c.close()
"#;

fn fake_ferry(log: &Path) -> String {
    format!(
        r#"#!/bin/sh
echo "$@" >> {log}
if [ "$1" = ca ] && [ "$2" = issue ]; then mkdir -p "${{10}}" && touch "${{10}}/host.pem"; fi
"#,
        log = log.display()
    )
}

fn write_exe(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn daemons_run_isolated_in_their_hosts() {
    if !Path::new("/usr/bin/python3").exists() {
        eprintln!("SKIPPED daemons_run_isolated_in_their_hosts: /usr/bin/python3 (the ferryd double) is missing");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let calls = tmp.path().join("ferry-calls.log");
    write_exe(&bin.join("ferryd"), FAKE_FERRYD);
    write_exe(&bin.join("ferry"), &fake_ferry(&calls));

    let mut cfg = config(tmp.path(), "flt3", 2);
    cfg.daemons = true;
    cfg.ferryd = Some(bin.join("ferryd"));
    cfg.ferry = Some(bin.join("ferry"));
    cfg.ready_timeout = Duration::from_secs(20);
    let lab = Lab::up_with(cfg).unwrap();
    let a = lab.host("host-a").unwrap().clone();
    let b = lab.host("host-b").unwrap().clone();

    assert!(ferry_lab::info_ok(&a.socket) && ferry_lab::info_ok(&b.socket));
    // Each ferryd sees only its own host dir and the sockets.
    let log = std::fs::read_to_string(&a.log).unwrap();
    assert!(log.contains("VIEW host-a,sock\n"), "{log}");
    assert!(
        log.contains(&format!(
            "ARGS --root {} --socket {} --runc-root {} --cgroup-parent flt3-host-a \
             --bridge ferry0 --bridge-address 10.77.0.1/16 --ip-range 10.77.1.1-10.77.1.254 \
             --peer-listen 10.77.0.1:7470 --host-name host-a\n",
            a.root.display(),
            a.socket.display(),
            a.runc_root.display()
        )),
        "{log}"
    );
    // Its peer listener is reachable from the client across the fabric.
    let addr = SocketAddrV4::new(b.address, ferry_lab::PEER_PORT).into();
    let conn = in_netns(&lab.client_netns(), move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(5))
    })
    .unwrap();
    assert!(conn.is_ok(), "client -> host-b peer port: {conn:?}");
    // exec runs in ferryd's mount namespace, with FERRY_SOCKET.
    let out = lab
        .exec(
            "host-b",
            &[
                "sh",
                "-c",
                "ls \"$0\"; echo \"$FERRY_SOCKET\"",
                lab.dir().to_str().unwrap(),
            ],
        )
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("host-b\nsock\n{}\n", b.socket.display())
    );
    // Certificates and peers went through the CLI.
    let calls_text = std::fs::read_to_string(&calls).unwrap();
    assert!(calls_text.contains("ca init --dir"), "{calls_text}");
    assert!(
        calls_text.contains("--name host-b --ip 10.77.0.2 --out"),
        "{calls_text}"
    );
    assert!(b.root.join("tls/host.pem").exists());
    assert!(calls_text.contains(&format!(
        "--socket {} host add host-b 10.77.0.2:7470",
        a.socket.display()
    )));
    assert!(calls_text.contains(&format!(
        "--socket {} host add host-a 10.77.0.1:7470",
        b.socket.display()
    )));

    let pid = a.pid().unwrap();
    drop(lab);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "ferryd must be gone after drop"
    );
}

#[test]
fn binary_up_status_down() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry-lab"))
            .arg("--dir")
            .arg(&dir)
            .args(["--prefix", "flt4"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    run(&["up", "--hosts", "2", "--no-daemons"]);
    let status: serde_json::Value = serde_json::from_str(&run(&["status", "--json"])).unwrap();
    assert_eq!(status["hosts"][1]["name"], "host-b");
    assert_eq!(status["hosts"][1]["netns_present"], true);
    assert!(run(&["client", "--", "cat", "/proc/net/fib_trie"]).contains("10.77.0.200"));
    assert!(run(&["exec", "host-a", "--", "cat", "/proc/net/fib_trie"]).contains("10.77.0.1"));
    run(&["down"]);
    run(&["down"]);
    assert!(!Path::new("/run/netns/flt4-host-a").exists());
    assert!(run(&["status"]).contains("no lab"));
}
