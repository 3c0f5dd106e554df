//! Tests against real netlink, iptables and sockets, all inside namespaces the test creates.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::*;

/// A namespace file in a temp dir, deleted on drop (even when the test fails).
struct TestNs {
    path: PathBuf,
}

impl TestNs {
    fn new(dir: &Path, name: &str) -> TestNs {
        let path = dir.join(name);
        create_netns(&path).unwrap();
        TestNs { path }
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = delete_netns(&self.path);
    }
}

const BRIDGE: &str = "ferry0";
const BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const BRIDGE_MAC: [u8; 6] = [0x02, 0x99, 0, 0, 0, 0x01];
const IP1: Ipv4Addr = Ipv4Addr::new(10, 99, 1, 10);
const IP2: Ipv4Addr = Ipv4Addr::new(10, 99, 1, 11);

/// A "host" netns with a bridge and two containers, c1 and c2; drop order: containers first.
struct Topo {
    c1: TestNs,
    c2: TestNs,
    host: TestNs,
    _dir: tempfile::TempDir,
}

fn bridge_cfg() -> BridgeConfig {
    BridgeConfig {
        name: BRIDGE.into(),
        address: BRIDGE_IP,
        prefix: 16,
        mac: BRIDGE_MAC,
    }
}

fn container(ns: &TestNs, ip: Ipv4Addr, veth: &str) -> ContainerNet {
    ContainerNet {
        netns_path: ns.path.clone(),
        ip,
        prefix: 16,
        mac: mac_for_ip(ip),
        gateway: Some(BRIDGE_IP),
        bridge: BRIDGE.into(),
        host_veth: veth.into(),
    }
}

fn topo(attach: bool) -> Topo {
    let dir = tempfile::tempdir().unwrap();
    let host = TestNs::new(dir.path(), "host");
    let c1 = TestNs::new(dir.path(), "c1");
    let c2 = TestNs::new(dir.path(), "c2");
    let (cn1, cn2) = (
        container(&c1, IP1, "veth-c1"),
        container(&c2, IP2, "veth-c2"),
    );
    run_in_netns(&host.path, move || async move {
        ensure_bridge(&bridge_cfg()).await?;
        setup_container_net(&cn1, attach).await?;
        setup_container_net(&cn2, attach).await
    })
    .unwrap();
    Topo {
        c1,
        c2,
        host,
        _dir: dir,
    }
}

fn listen(ns: &Path, ip: Ipv4Addr, port: u16) -> TcpListener {
    in_netns(ns, move || TcpListener::bind(SocketAddrV4::new(ip, port)))
        .unwrap()
        .unwrap()
}

/// Accepts one connection on another thread and greets it.
fn serve_once(listener: TcpListener) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.write_all(b"hello");
        }
    })
}

fn connect(ns: &Path, ip: Ipv4Addr, port: u16, timeout: Duration) -> std::io::Result<TcpStream> {
    let addr = SocketAddrV4::new(ip, port).into();
    in_netns(ns, move || TcpStream::connect_timeout(&addr, timeout)).unwrap()
}

fn greeting(mut s: TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    buf
}

#[test]
fn containers_talk_over_the_bridge_with_fixed_macs() {
    let t = topo(true);

    let server = serve_once(listen(&t.c2.path, IP2, 7000));
    let s = connect(&t.c1.path, IP2, 7000, Duration::from_secs(5)).expect("c1 -> c2");
    assert_eq!(greeting(s), "hello");
    server.join().unwrap();

    // The host bridge address (the gateway) answers too.
    let server = serve_once(listen(&t.host.path, BRIDGE_IP, 7001));
    let s = connect(&t.c1.path, BRIDGE_IP, 7001, Duration::from_secs(5)).expect("c1 -> host");
    assert_eq!(greeting(s), "hello");
    server.join().unwrap();

    let mac1 = run_in_netns(&t.c1.path, || async { link_mac(CONTAINER_IFNAME).await }).unwrap();
    assert_eq!(mac1, mac_for_ip(IP1));
    // The bridge keeps its pinned MAC with ports attached, and ensure_bridge is idempotent.
    let br_mac = run_in_netns(&t.host.path, || async {
        ensure_bridge(&bridge_cfg()).await?;
        link_mac(BRIDGE).await
    })
    .unwrap();
    assert_eq!(br_mac, BRIDGE_MAC);
}

#[test]
fn attach_later_and_replace_stale_setup() {
    let t = topo(false);
    let err = connect(&t.c1.path, IP2, 7002, Duration::from_millis(500));
    assert!(
        err.is_err(),
        "unattached containers must not reach each other"
    );

    // Setting up again (a retried migration) replaces the old pair.
    let cn2 = container(&t.c2, IP2, "veth-c2");
    run_in_netns(&t.host.path, move || async move {
        setup_container_net(&cn2, false).await?;
        attach_veth("veth-c1", BRIDGE).await?;
        attach_veth("veth-c2", BRIDGE).await
    })
    .unwrap();
    let server = serve_once(listen(&t.c2.path, IP2, 7002));
    let s = connect(&t.c1.path, IP2, 7002, Duration::from_secs(5)).expect("after attach");
    assert_eq!(greeting(s), "hello");
    server.join().unwrap();

    run_in_netns(&t.host.path, || async {
        detach_veth("veth-c2").await?;
        delete_link("veth-c1").await?;
        delete_link("veth-c1").await?;
        delete_link("no-such-link").await
    })
    .unwrap();
    assert!(connect(&t.c2.path, IP1, 7003, Duration::from_millis(500)).is_err());
}

fn iptables_save(ns: &Path) -> String {
    let mut net = std::ffi::OsString::from("--net=");
    net.push(ns);
    crate::tool::Tool::new("nsenter")
        .arg(net)
        .args(["--", "iptables-save", "-t", "filter"])
        .run_text()
        .unwrap()
}

#[test]
fn full_gate_blocks_until_opened_or_removed() {
    let t = topo(true);
    let listener = listen(&t.c2.path, IP2, 7010);
    listener.set_nonblocking(false).unwrap();

    install_gate(&t.c2.path, GateKind::Full).unwrap();
    install_gate(&t.c2.path, GateKind::Full).unwrap(); // replaces, does not stack
    let saved = iptables_save(&t.c2.path);
    assert_eq!(saved.matches("-j FERRY-GATE").count(), 2, "{saved}");
    let blocked = connect(&t.c1.path, IP2, 7010, Duration::from_secs(1));
    assert!(blocked.is_err(), "gate must block a TCP connect");

    // Loopback inside the gated netns still works.
    let lo = listen(&t.c2.path, Ipv4Addr::LOCALHOST, 7011);
    let server = serve_once(lo);
    let s = connect(
        &t.c2.path,
        Ipv4Addr::LOCALHOST,
        7011,
        Duration::from_secs(2),
    )
    .unwrap();
    assert_eq!(greeting(s), "hello");
    server.join().unwrap();

    // Opened (as a commit does), the chain stays but lets everything through.
    open_gates(&t.c2.path, &[GateKind::Full, GateKind::Hold]).unwrap();
    open_gates(&t.c2.path, &[GateKind::Full]).unwrap(); // once is enough
    let saved = iptables_save(&t.c2.path);
    assert_eq!(
        saved.matches("-A FERRY-GATE -j RETURN").count(),
        1,
        "{saved}"
    );
    assert_eq!(saved.matches("-j FERRY-GATE").count(), 2, "{saved}");
    assert!(!saved.contains("FERRY-HOLD"), "{saved}");
    let server = serve_once(listener);
    let s = connect(&t.c1.path, IP2, 7010, Duration::from_secs(5)).expect("gate opened");
    assert_eq!(greeting(s), "hello");
    server.join().unwrap();

    remove_gates(&t.c2.path, &[GateKind::Full, GateKind::Hold]).unwrap();
    remove_gates(&t.c2.path, &[GateKind::Full]).unwrap();
    assert!(!iptables_save(&t.c2.path).contains("FERRY-GATE"));
    let server = serve_once(listen(&t.c2.path, IP2, 7012));
    let s = connect(&t.c1.path, IP2, 7012, Duration::from_secs(5)).expect("gate removed");
    assert_eq!(greeting(s), "hello");
    server.join().unwrap();
}

#[test]
fn rst_guard_swallows_connection_refused() {
    let t = topo(true);
    // Nothing listens on 7020: normally an immediate RST (connection refused).
    let refused = connect(&t.c1.path, IP2, 7020, Duration::from_secs(3)).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

    install_gate(&t.c2.path, GateKind::RstOnly).unwrap();
    let start = Instant::now();
    let err = connect(&t.c1.path, IP2, 7020, Duration::from_secs(1)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    assert!(start.elapsed() >= Duration::from_millis(900));

    remove_gates(&t.c2.path, &[GateKind::RstOnly]).unwrap();
    let refused = connect(&t.c1.path, IP2, 7020, Duration::from_secs(3)).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
}

/// A raw ARP listener on `ifname`, opened inside `ns`.
fn arp_listener(ns: &Path, ifname: &str) -> OwnedFd {
    let ifname = ifname.to_owned();
    in_netns(ns, move || {
        let ifindex = nix::net::if_::if_nametoindex(ifname.as_str()).unwrap();
        let proto = 0x0806u16.to_be();
        // SAFETY: socket(2)'s result is checked before OwnedFd takes it (a fresh fd nobody
        // else owns); sockaddr_ll and timeval are plain C structs (all-zero is valid), live on
        // this stack for the bind/setsockopt calls, and are passed with their own sizes.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto));
            assert!(fd >= 0, "{}", std::io::Error::last_os_error());
            let fd = OwnedFd::from_raw_fd(fd);
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = proto;
            addr.sll_ifindex = ifindex as i32;
            let rc = libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 200_000,
            };
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
            fd
        }
    })
    .unwrap()
}

#[test]
fn gratuitous_arp_reaches_the_peer() {
    let t = topo(true);
    let listener = arp_listener(&t.c2.path, CONTAINER_IFNAME);
    let mac1 = mac_for_ip(IP1);
    send_gratuitous_arp(&t.c1.path, CONTAINER_IFNAME, IP1, mac1).unwrap();

    let deadline = Instant::now() + Duration::from_secs(3);
    let mut seen = Vec::new();
    while Instant::now() < deadline && seen.len() < 2 {
        let mut buf = [0u8; 128];
        // SAFETY: recv writes at most buf.len() bytes into `buf`, a live stack buffer; the
        // listener fd is open for the whole call.
        let n = unsafe { libc::recv(listener.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 42 {
            continue;
        }
        let is_garp = buf[6..12] == mac1
            && buf[22..28] == mac1
            && buf[28..32] == IP1.octets()
            && buf[38..42] == IP1.octets();
        if is_garp {
            seen.push(u16::from_be_bytes([buf[20], buf[21]]));
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![1, 2],
        "expected a GARP request and reply from {IP1}"
    );
}

#[test]
fn netns_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/ns1");
    create_netns(&path).unwrap();
    assert!(matches!(
        create_netns(&path),
        Err(NetError::NetnsExists { .. })
    ));

    let v6 = in_netns(&path, || {
        std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6").unwrap()
    })
    .unwrap();
    assert_eq!(v6.trim(), "1");
    // Loopback is up inside.
    let server = serve_once(listen(&path, Ipv4Addr::LOCALHOST, 7030));
    let s = connect(&path, Ipv4Addr::LOCALHOST, 7030, Duration::from_secs(2)).unwrap();
    assert_eq!(greeting(s), "hello");
    server.join().unwrap();
    // It is a different namespace from ours.
    let ours = std::fs::metadata("/proc/self/ns/net").unwrap();
    let theirs = in_netns(&path, || {
        std::fs::metadata("/proc/thread-self/ns/net").unwrap()
    })
    .unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_ne!(ours.ino(), theirs.ino());

    delete_netns(&path).unwrap();
    assert!(!path.exists());
    delete_netns(&path).unwrap();
    assert!(matches!(
        in_netns(&path, || ()),
        Err(NetError::Netns { .. })
    ));
}

#[test]
fn bad_interface_names_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let ns = TestNs::new(dir.path(), "n");
    let err = run_in_netns(&ns.path, || async {
        delete_link("a-name-far-too-long").await
    })
    .unwrap_err();
    assert!(matches!(err, NetError::InvalidIfName { .. }), "{err}");
    let err = run_in_netns(&ns.path, || async { attach_veth("nope0", "nobr0").await }).unwrap_err();
    assert_eq!(err.to_string(), "network interface nope0 does not exist");
}

#[test]
fn hold_gate_keeps_packets_and_delivers_them_on_release() {
    let t = topo(true);
    let listener = listen(&t.c2.path, IP2, 7030);
    let hold = PacketHold::start(&t.c2.path).unwrap();
    install_gate(&t.c2.path, GateKind::Hold).unwrap();
    // The client's SYN is held: no answer, no reset.
    let c1 = t.c1.path.clone();
    let client = std::thread::spawn(move || {
        let start = Instant::now();
        let r = connect(&c1, IP2, 7030, Duration::from_secs(5));
        (r.map(greeting), start.elapsed())
    });
    std::thread::sleep(Duration::from_millis(400));
    assert!(
        !client.is_finished(),
        "the connect waits while its SYN is held"
    );
    let server = serve_once(listener);
    // As the commit does: open the gate, release, and remove the chains afterwards.
    open_gates(&t.c2.path, &[GateKind::Hold]).unwrap();
    let released = Instant::now();
    let held = hold.release().unwrap();
    assert!(held >= 1, "the SYN was held");
    let (greeting, waited) = client.join().unwrap();
    assert_eq!(greeting.unwrap(), "hello");
    // Delivered on release, not by the client's own retransmission (1 s after the first SYN).
    assert!(
        released.elapsed() < Duration::from_millis(500),
        "took {:?}",
        released.elapsed()
    );
    assert!(
        waited < Duration::from_millis(1000),
        "connected after {waited:?}"
    );
    server.join().unwrap();
    remove_gates(&t.c2.path, &[GateKind::Hold]).unwrap();
    assert!(!iptables_save(&t.c2.path).contains("FERRY-HOLD"));
}
