//! The peer channel over real TCP on 127.0.0.1, with real certificates.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use ferry_proto::{
    Hello, Message, MigrationMode, ReceiverMachine, SenderMachine, State, StreamCompression,
    StreamEnd, MIN_SUPPORTED, PROTOCOL_VERSION, TUNNEL_STREAM,
};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::channel::{HANDSHAKE_TIMEOUT, MAX_HANDSHAKES_PER_ADDR};
use super::*;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn any_port() -> SocketAddr {
    SocketAddr::new(LOOPBACK, 0)
}

struct Cluster {
    _dir: tempfile::TempDir,
    a: HostIdentity,
    b: HostIdentity,
    /// Signed by a different CA, but named like a cluster member.
    stranger: HostIdentity,
}

fn cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::create(&dir.path().join("ca")).unwrap();
    ca.issue_host("host-a", &[LOOPBACK], &dir.path().join("a"))
        .unwrap();
    ca.issue_host("host-b", &[LOOPBACK], &dir.path().join("b"))
        .unwrap();
    let other = ClusterCa::create(&dir.path().join("other-ca")).unwrap();
    other
        .issue_host("host-a", &[LOOPBACK], &dir.path().join("stranger"))
        .unwrap();
    let load = |n: &str| HostIdentity::load(&dir.path().join(n)).unwrap();
    Cluster {
        a: load("a"),
        b: load("b"),
        stranger: load("stranger"),
        _dir: dir,
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn ca_files_keys_private_and_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let ca = ClusterCa::create(&ca_dir).unwrap();
    assert_eq!(mode(&ca_dir.join("ca.key")), 0o600);
    assert!(matches!(
        ClusterCa::create(&ca_dir),
        Err(PeerError::Exists { .. })
    ));

    ca.issue_host(
        "host-a",
        &[LOOPBACK, "10.77.0.2".parse().unwrap()],
        &dir.path().join("a"),
    )
    .unwrap();
    assert_eq!(mode(&dir.path().join("a/host.key")), 0o600);
    assert!(matches!(
        ca.issue_host("host-a", &[], &dir.path().join("a")),
        Err(PeerError::Exists { .. })
    ));
    assert!(matches!(
        ca.issue_host("Host_A", &[], &dir.path().join("x")),
        Err(PeerError::BadName { .. })
    ));
    // The CA's own dir can hold a host identity too (ca.pem is shared, not rewritten).
    ca.issue_host("host-z", &[], &ca_dir).unwrap();
    assert_eq!(HostIdentity::load(&ca_dir).unwrap().name, "host-z");
    assert_eq!(
        HostIdentity::load(&dir.path().join("a")).unwrap().name,
        "host-a"
    );

    // A key that does not belong to ca.pem is caught on load.
    let other = dir.path().join("other");
    ClusterCa::create(&other).unwrap();
    std::fs::copy(other.join("ca.key"), dir.path().join("mixed.key")).unwrap();
    std::fs::create_dir(dir.path().join("mixed")).unwrap();
    std::fs::copy(ca_dir.join("ca.pem"), dir.path().join("mixed/ca.pem")).unwrap();
    std::fs::copy(other.join("ca.key"), dir.path().join("mixed/ca.key")).unwrap();
    let err = ClusterCa::load(&dir.path().join("mixed"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not belong"), "{err}");
}

/// Accepts one connection in the background; returns the listener's address and the result.
async fn serve_once(
    identity: &HostIdentity,
) -> (
    SocketAddr,
    tokio::task::JoinHandle<Result<(PeerConn, String), PeerError>>,
) {
    let mut listener = PeerListener::bind(identity, any_port()).await.unwrap();
    let addr = listener.local_addr();
    (addr, tokio::spawn(async move { listener.accept().await }))
}

#[tokio::test]
async fn mutual_auth_names_both_ends() {
    let c = cluster();
    let (addr, server) = serve_once(&c.b).await;
    let conn = PeerConn::connect(&c.a, "host-b", addr).await.unwrap();
    assert_eq!(conn.peer_name(), "host-b");
    let (server_conn, client_name) = server.await.unwrap().unwrap();
    assert_eq!(client_name, "host-a");
    assert_eq!(server_conn.peer_name(), "host-a");

    let (sink, _src) = conn.split();
    let (_ssink, mut ssrc) = server_conn.split();
    sink.send_message(&Message::Commit {}).await.unwrap();
    let f = ssrc.recv().await.unwrap().unwrap();
    assert_eq!(f.to_message().unwrap(), Message::Commit {});
}

#[tokio::test]
async fn server_with_another_name_is_refused() {
    let c = cluster();
    let (addr, _server) = serve_once(&c.b).await;
    // host-b's certificate does not say host-a.
    let err = PeerConn::connect(&c.b, "host-a", addr).await.unwrap_err();
    assert!(matches!(err, PeerError::Handshake { .. }), "{err}");
}

#[tokio::test]
async fn server_from_another_ca_is_refused() {
    let c = cluster();
    let (addr, _server) = serve_once(&c.stranger).await;
    let err = PeerConn::connect(&c.b, "host-a", addr).await.unwrap_err();
    assert!(
        err.to_string().contains("UnknownIssuer") || err.to_string().contains("certificate"),
        "{err}"
    );
}

/// The server rejects the client; in TLS 1.3 the client may only learn it on its first read.
async fn assert_client_rejected(
    config: std::sync::Arc<rustls::ClientConfig>,
    server_identity: &HostIdentity,
) {
    let (addr, server) = serve_once(server_identity).await;
    let client = PeerConn::connect_with(config, "host-b", addr).await;
    let accepted = server.await.unwrap();
    assert!(
        accepted.is_err(),
        "server accepted an unauthenticated client"
    );
    if let Ok(conn) = client {
        let (_sink, mut src) = conn.split();
        assert!(!matches!(src.recv().await, Ok(Some(_))));
    }
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let c = cluster();
    assert_client_rejected(c.a.anonymous_client_config(), &c.b).await;
}

#[tokio::test]
async fn client_from_another_ca_is_refused() {
    let c = cluster();
    assert_client_rejected(c.stranger.client_config(), &c.b).await;
}

struct End {
    sink: FrameSink,
    demux: Demux,
    control: ControlReceiver,
    peer: String,
}

async fn connected(c: &Cluster) -> (End, End) {
    let (addr, server) = serve_once(&c.b).await;
    let client = PeerConn::connect(&c.a, "host-b", addr).await.unwrap();
    let (server, _) = server.await.unwrap().unwrap();
    let end = |conn: PeerConn| {
        let peer = conn.peer_name().to_string();
        let (sink, source) = conn.split();
        let (demux, control) = Demux::spawn(source);
        End {
            sink,
            demux,
            control,
            peer,
        }
    };
    (end(client), end(server))
}

fn hello(host: &str, versions: (u16, u16)) -> Hello {
    Hello {
        versions,
        host: host.into(),
        criu_version: "4.2.1".into(),
        runc_version: "1.1.5".into(),
        kernel: "6.18".into(),
        mode: MigrationMode::StopAndCopy,
        features: vec![],
    }
}

fn local_b() -> LocalVersions {
    LocalVersions {
        host: "host-b".into(),
        criu_version: "4.2.1".into(),
        runc_version: "1.1.5".into(),
    }
}

async fn run_handshake(
    c: &Cluster,
    hello: Hello,
    check: impl FnOnce(&Hello) -> Result<(), String> + Send + 'static,
) -> (
    Result<ferry_proto::Welcome, PeerError>,
    Result<Hello, PeerError>,
    SenderMachine,
    ReceiverMachine,
) {
    let (mut src, mut dst) = connected(c).await;
    let dest = tokio::spawn(async move {
        let mut m = ReceiverMachine::new();
        let r = handshake_destination(
            &dst.sink,
            &mut dst.control,
            &mut m,
            &dst.peer,
            &local_b(),
            (MIN_SUPPORTED, PROTOCOL_VERSION),
            check,
        )
        .await;
        (r, m)
    });
    let mut sm = SenderMachine::new();
    let w = handshake_source(&src.sink, &mut src.control, &mut sm, &src.peer, hello).await;
    let (h, rm) = dest.await.unwrap();
    (w, h, sm, rm)
}

#[tokio::test]
async fn handshake_negotiates_version() {
    let c = cluster();
    let (w, h, sm, rm) = run_handshake(&c, hello("host-a", (1, 7)), |_| Ok(())).await;
    let w = w.unwrap();
    assert_eq!(w.version, PROTOCOL_VERSION);
    assert_eq!(w.host, "host-b");
    assert_eq!(h.unwrap().host, "host-a");
    assert_eq!((sm.state(), rm.state()), (State::Welcomed, State::Welcomed));
    assert_eq!(sm.version(), Some(PROTOCOL_VERSION));
}

#[tokio::test]
async fn handshake_refusals() {
    let c = cluster();
    let (w, h, sm, rm) = run_handshake(
        &c,
        hello("host-a", (PROTOCOL_VERSION + 1, PROTOCOL_VERSION + 3)),
        |_| Ok(()),
    )
    .await;
    let reason = match w {
        Err(PeerError::Refused(r)) => r,
        other => panic!("{other:?}"),
    };
    assert!(reason.contains("no common protocol version"), "{reason}");
    assert!(matches!(h, Err(PeerError::WeRefused(_))));
    assert_eq!((sm.state(), rm.state()), (State::Refused, State::Refused));

    // A v1 peer (no fenced commit) could leave two copies running: refused.
    let (w, _, _, _) = run_handshake(&c, hello("host-a", (1, 1)), |_| Ok(())).await;
    assert!(matches!(w, Err(PeerError::Refused(r)) if r.contains("no common protocol version")));

    // A Hello claiming another host than the certificate.
    let v = (PROTOCOL_VERSION, PROTOCOL_VERSION);
    let (w, _, _, _) = run_handshake(&c, hello("host-z", v), |_| Ok(())).await;
    assert!(matches!(w, Err(PeerError::Refused(r)) if r.contains("certificate says")));

    // The caller's own checks (tool versions, mode).
    let (w, _, _, _) = run_handshake(&c, hello("host-a", v), |h| {
        Err(format!("CRIU {} too old", h.criu_version))
    })
    .await;
    assert!(matches!(w, Err(PeerError::Refused(r)) if r == "CRIU 4.2.1 too old"));
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

#[tokio::test]
async fn bulk_streams_interleave_with_control_and_verify() {
    let c = cluster();
    let (src, mut dst) = connected(&c).await;
    let random = random_bytes(3 << 20);
    let zeros = vec![0u8; 64 << 20];
    let expect_random = hex::encode(Sha256::digest(&random));

    // Two streams and control messages at once, from different tasks sharing the sink.
    let s1 = {
        let (sink, data) = (src.sink.clone(), random.clone());
        tokio::spawn(
            async move { send_stream(&sink, 16, &data[..], StreamCompression::None).await },
        )
    };
    let s2 = {
        let (sink, data) = (src.sink.clone(), zeros.clone());
        tokio::spawn(
            async move { send_stream(&sink, 17, &data[..], StreamCompression::Zstd).await },
        )
    };
    for i in 0..20 {
        src.sink
            .send_message(&Message::Progress {
                phase: "t".into(),
                done: i,
                total: None,
            })
            .await
            .unwrap();
    }

    let mut rx16 = dst.demux.stream(16).unwrap();
    assert!(matches!(
        dst.demux.stream(16),
        Err(PeerError::StreamTaken(16))
    ));
    let mut rx17 = dst.demux.stream(17).unwrap();
    let r1 = tokio::spawn(async move {
        let mut out = Vec::new();
        let end = recv_stream(&mut rx16, &mut out, StreamCompression::None)
            .await
            .unwrap();
        (end, out)
    });
    let r2 = tokio::spawn(async move {
        let mut out = Vec::new();
        let end = recv_stream(&mut rx17, &mut out, StreamCompression::Zstd)
            .await
            .unwrap();
        (end, out.len(), out.iter().all(|&b| b == 0))
    });
    for i in 0..20 {
        assert!(
            matches!(dst.control.recv().await.unwrap(), Message::Progress { done, .. } if done == i)
        );
    }
    let sent1 = s1.await.unwrap().unwrap();
    let sent2 = s2.await.unwrap().unwrap();
    let (got1, out1) = r1.await.unwrap();
    assert_eq!(out1, random);
    assert_eq!(got1, sent1);
    assert_eq!(sent1.sha256.as_deref(), Some(expect_random.as_str()));
    let (got2, len2, all_zero) = r2.await.unwrap();
    assert_eq!((got2.bytes, len2, all_zero), (64 << 20, 64 << 20, true));
    assert_eq!(got2, sent2);
}

#[tokio::test]
async fn stream_that_arrives_before_its_consumer_is_kept() {
    let c = cluster();
    let (src, dst) = connected(&c).await;
    send_stream(&src.sink, 20, &b"early bytes"[..], StreamCompression::Zstd)
        .await
        .unwrap();
    src.sink.send_message(&Message::Commit {}).await.unwrap();
    let mut control = dst.control;
    assert_eq!(control.recv().await.unwrap(), Message::Commit {});
    // Every frame of stream 20 is in by now; take it only now.
    let mut rx = dst.demux.stream(20).unwrap();
    let mut out = Vec::new();
    recv_stream(&mut rx, &mut out, StreamCompression::Zstd)
        .await
        .unwrap();
    assert_eq!(out, b"early bytes");
}

#[tokio::test]
async fn corrupt_or_cut_streams_are_detected() {
    let c = cluster();
    let (src, dst) = connected(&c).await;
    src.sink.send_data(30, b"hello").await.unwrap();
    src.sink
        .send_end(
            30,
            &StreamEnd {
                bytes: 5,
                sha256: Some(hex::encode(Sha256::digest(b"HELLO"))),
            },
        )
        .await
        .unwrap();
    src.sink.send_data(31, b"hello").await.unwrap();
    src.sink
        .send_end(
            31,
            &StreamEnd {
                bytes: 6,
                sha256: None,
            },
        )
        .await
        .unwrap();
    src.sink.send_data(32, b"partial").await.unwrap();

    let mut out = Vec::new();
    let err = recv_stream(
        &mut dst.demux.stream(30).unwrap(),
        &mut out,
        StreamCompression::None,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("sha256 mismatch"), "{err}");
    let err = recv_stream(
        &mut dst.demux.stream(31).unwrap(),
        &mut out,
        StreamCompression::None,
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("sent 6 bytes, received 5"),
        "{err}"
    );

    // The connection drops mid-stream: the receiver says so, control reports Closed.
    let mut rx32 = dst.demux.stream(32).unwrap();
    src.sink.close().await.unwrap();
    drop(src);
    let err = recv_stream(&mut rx32, &mut out, StreamCompression::None)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("connection ended after 7 bytes"),
        "{err}"
    );
    let mut control = dst.control;
    assert!(matches!(control.recv().await, Err(PeerError::Closed)));
    // Streams asked for after the end report Closed rather than hanging.
    assert!(matches!(
        dst.demux.stream(99).unwrap().recv().await,
        Err(PeerError::Closed)
    ));
}

/// A plain TCP echo server on 127.0.0.1, standing in for CRIU's page server.
async fn echo_server() -> SocketAddr {
    let l = tokio::net::TcpListener::bind(any_port()).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let (mut r, mut w) = s.split();
        tokio::io::copy(&mut r, &mut w).await.unwrap();
        w.shutdown().await.unwrap();
    });
    addr
}

/// An in-process far end that answers every byte with itself.
struct EchoSink;

impl tunnel::LocalSink for EchoSink {
    fn take(&mut self, bytes: &[u8], answer: &mut Vec<u8>) -> Result<(), PeerError> {
        answer.extend_from_slice(bytes);
        Ok(())
    }

    fn end(self) -> Result<(), PeerError> {
        Ok(())
    }
}

/// Where the far end of a test tunnel is, and so what the near end is, as in a migration.
#[derive(Clone, Copy)]
enum Far {
    /// A TCP server on loopback, reached with `tunnel_connect`; the near client connects to a
    /// `tunnel_listen` port (post-copy's shape).
    Tcp,
    /// A [`tunnel::LocalSink`] in this process, reached with `tunnel_into`; the near client holds
    /// one end of a unix socket pair given to `tunnel_unix` (stop-and-copy's shape).
    InProcess,
}

/// Echoes `payload` through a tunnel with `codec`; returns the near and far stats.
async fn tunnel_round_trip(
    codec: Codec,
    far_kind: Far,
    payload: Vec<u8>,
) -> (TunnelStats, TunnelStats) {
    let c = cluster();
    let (src, dst) = connected(&c).await;
    // Destination: the "page server" and the bridge to it.
    let rx = dst.demux.stream(TUNNEL_STREAM).unwrap();
    let far = match far_kind {
        Far::Tcp => tunnel_connect(echo_server().await, dst.sink.clone(), rx, codec)
            .await
            .unwrap(),
        Far::InProcess => tunnel::tunnel_into(dst.sink.clone(), rx, codec, EchoSink),
    };
    // Source: what the "CRIU client" talks to.
    let near_rx = src.demux.stream(TUNNEL_STREAM).unwrap();
    type Halves = (
        Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
    );
    let (near, (mut r, mut w)): (Tunnel, Halves) = match far_kind {
        Far::Tcp => {
            let listener = tunnel_listen(any_port()).await.unwrap();
            let port = listener.local_addr();
            let near = listener.bridge(src.sink.clone(), near_rx, codec);
            let (r, w) = tokio::net::TcpStream::connect(port)
                .await
                .unwrap()
                .into_split();
            (near, (Box::new(r), Box::new(w)))
        }
        Far::InProcess => {
            let (ours, client) = tokio::net::UnixStream::pair().unwrap();
            // The client shuts its end down itself here, so the input ends without `EndInput`.
            let (near, _end) = tunnel::tunnel_unix(ours, src.sink.clone(), near_rx, codec);
            let (r, w) = client.into_split();
            (near, (Box::new(r), Box::new(w)))
        }
    };
    let data = payload.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    });
    // Control traffic keeps flowing alongside the tunnel.
    src.sink
        .send_message(&Message::DumpDone {
            stats: Default::default(),
        })
        .await
        .unwrap();
    let mut echoed = Vec::new();
    r.read_to_end(&mut echoed).await.unwrap();
    writer.await.unwrap();
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload, "echoed bytes differ");

    let near_stats = near.wait().await.unwrap();
    let far_stats = far.wait().await.unwrap();
    let mut control = dst.control;
    assert!(matches!(
        control.recv().await.unwrap(),
        Message::DumpDone { .. }
    ));
    (near_stats, far_stats)
}

#[tokio::test]
async fn tunnel_carries_both_directions_and_counts() {
    let n = 5u64 << 20;
    let plain = TunnelStats {
        to_peer: n,
        from_peer: n,
        to_peer_wire: n,
    };
    for end in [Far::Tcp, Far::InProcess] {
        let (near, far) = tunnel_round_trip(Codec::Plain, end, random_bytes(n as usize)).await;
        assert_eq!(near, plain);
        assert_eq!(far, plain);
    }
}

#[tokio::test]
async fn lz4_tunnel_carries_every_byte_and_compresses_only_what_pays() {
    // Memory as a page dump sees it: runs of zeroes, text, and random bytes that LZ4 leaves.
    let mut payload = Vec::new();
    for i in 0..6 {
        match i % 3 {
            0 => payload.extend(std::iter::repeat_n(0u8, 1 << 20)),
            1 => payload.extend((0..(1 << 20)).map(|j| b"value:"[j % 6])),
            _ => payload.extend(random_bytes(1 << 20)),
        }
    }
    let n = payload.len() as u64;
    let (near, far) = tunnel_round_trip(Codec::Lz4, Far::Tcp, payload.clone()).await;
    let (near_in, far_in) = tunnel_round_trip(Codec::Lz4, Far::InProcess, payload).await;
    for s in [near, far, near_in, far_in] {
        assert_eq!((s.to_peer, s.from_peer), (n, n));
        // A third is random (sent raw, plus a tag per frame); the rest shrinks to almost nothing.
        assert!(s.to_peer_wire < n / 2, "{s:?}");
        assert!(s.to_peer_wire > n / 3, "{s:?}");
    }
}

/// Refuses the peer's bytes once it has taken `left` of them.
struct FailingSink {
    left: usize,
}

impl tunnel::LocalSink for FailingSink {
    fn take(&mut self, bytes: &[u8], _answer: &mut Vec<u8>) -> Result<(), PeerError> {
        if bytes.len() > self.left {
            return Err(PeerError::StreamCheck {
                stream: TUNNEL_STREAM,
                reason: "the sink refused these bytes".into(),
            });
        }
        self.left -= bytes.len();
        Ok(())
    }

    fn end(self) -> Result<(), PeerError> {
        Ok(())
    }
}

/// A failing in-process end fails its tunnel with its own reason and never ends its direction
/// cleanly: the near client sees its conversation broken, not finished.
#[tokio::test]
async fn a_failing_in_process_end_breaks_the_conversation() {
    let c = cluster();
    let (src, dst) = connected(&c).await;
    let rx = dst.demux.stream(TUNNEL_STREAM).unwrap();
    let far = tunnel::tunnel_into(
        dst.sink.clone(),
        rx,
        Codec::Lz4,
        FailingSink { left: 1 << 20 },
    );
    let listener = tunnel_listen(any_port()).await.unwrap();
    let port = listener.local_addr();
    let near = listener.bridge(
        src.sink.clone(),
        src.demux.stream(TUNNEL_STREAM).unwrap(),
        Codec::Lz4,
    );
    let client = tokio::net::TcpStream::connect(port).await.unwrap();
    let (mut r, mut w) = client.into_split();
    let writer = tokio::spawn(async move {
        // The far end stops taking; later writes may fail once the near end gives up.
        let _ = w.write_all(&random_bytes(4 << 20)).await;
        let _ = w.shutdown().await;
    });
    let err = far.wait().await.unwrap_err().to_string();
    assert!(err.contains("the sink refused these bytes"), "{err}");
    // The destination driver ends the connection on such a failure.
    dst.sink.close().await.unwrap();
    drop(dst);
    let mut got = Vec::new();
    let read = r.read_to_end(&mut got).await;
    assert!(got.is_empty(), "no answer bytes: {}", got.len());
    let near_err = near.wait().await.unwrap_err().to_string();
    assert!(
        near_err.contains("connection ended"),
        "{near_err}; client read {read:?}"
    );
    writer.await.unwrap();
}

#[tokio::test]
async fn tunnel_refuses_non_loopback_endpoints() {
    let err = tunnel_listen("0.0.0.0:0".parse().unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("loopback"), "{err}");
}

#[test]
fn reloaded_ca_issues_certificates_that_verify() {
    let dir = tempfile::tempdir().unwrap();
    ClusterCa::create(&dir.path().join("ca")).unwrap();
    let first = ClusterCa::load(&dir.path().join("ca")).unwrap();
    first
        .issue_host("host-a", &[LOOPBACK], &dir.path().join("a"))
        .unwrap();
    let again = ClusterCa::load(&dir.path().join("ca")).unwrap();
    again
        .issue_host("host-b", &[LOOPBACK], &dir.path().join("b"))
        .unwrap();
    let a = HostIdentity::load(&dir.path().join("a")).unwrap();
    let b = HostIdentity::load(&dir.path().join("b")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (addr, server) = serve_once(&b).await;
        PeerConn::connect(&a, "host-b", addr).await.unwrap();
        assert_eq!(server.await.unwrap().unwrap().1, "host-a");
    });
}

/// Hundreds of half-open connections (TCP, never a TLS hello) from one address cannot hold up
/// a real peer from another: handshakes run concurrently, capped per address and in total.
#[tokio::test]
async fn silent_clients_do_not_stall_a_real_peer() {
    let c = cluster();
    let mut listener = PeerListener::bind(&c.b, any_port()).await.unwrap();
    let addr = listener.local_addr();
    let server = tokio::spawn(async move {
        loop {
            if let Ok(ok) = listener.accept().await {
                return ok;
            }
        }
    });
    let mut silent = Vec::new();
    for _ in 0..300 {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        if let Ok(s) = sock.connect(addr).await {
            silent.push(s);
        }
    }
    assert!(
        silent.len() >= 200,
        "{} silent clients connected",
        silent.len()
    );
    let t = std::time::Instant::now();
    let conn = PeerConn::connect(&c.a, "host-b", addr).await.unwrap();
    let (_, name) = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the real peer was accepted while the silent ones hung")
        .unwrap();
    assert_eq!(name, "host-a");
    assert_eq!(conn.peer_name(), "host-b");
    assert!(
        t.elapsed() < HANDSHAKE_TIMEOUT,
        "the real peer waited {:?}",
        t.elapsed()
    );
    // Beyond the per-address cap the listener closed the rest at once.
    let mut closed = 0;
    for s in &mut silent {
        let mut b = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(20), s.read(&mut b)).await {
            closed += 1;
        }
    }
    assert!(
        closed >= silent.len() - MAX_HANDSHAKES_PER_ADDR,
        "{closed} of {} closed",
        silent.len()
    );
}

/// The address question end to end over TLS: an address in use is named, a free one is free,
/// and a connection that is not a question comes back with its first message still to read.
#[tokio::test]
async fn address_question_is_answered_and_other_connections_pass_through() {
    let c = cluster();
    let mut listener = PeerListener::bind(&c.b, any_port()).await.unwrap();
    let entry = PeerEntry {
        name: "host-b".into(),
        addr: listener.local_addr(),
    };
    let server = tokio::spawn(async move {
        let mut passed = Vec::new();
        for _ in 0..3 {
            let (conn, _) = listener.accept().await.unwrap();
            let user = |ip: Ipv4Addr| (ip.octets()[3] == 64).then(|| "container squatter".into());
            if let Some(conn) = query::answer_if_asked(conn, Duration::from_secs(5), user).await {
                let (_sink, source) = conn.split();
                let (_demux, mut control) = Demux::spawn(source);
                passed.push(control.recv().await.unwrap());
            }
        }
        passed
    });
    let used: Ipv4Addr = "10.77.1.64".parse().unwrap();
    let free: Ipv4Addr = "10.77.1.65".parse().unwrap();
    let answers = query::ask_all(
        &c.a,
        std::slice::from_ref(&entry),
        used,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        answers[0].answer,
        query::IpAnswer::InUse {
            by: Some("container squatter".into())
        }
    );
    let w = answers[0].warning().unwrap();
    assert!(
        w.contains("host-b") && w.contains("10.77.1.64") && w.contains("squatter"),
        "{w}"
    );
    let answers = query::ask_all(
        &c.a,
        std::slice::from_ref(&entry),
        free,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(answers[0].answer, query::IpAnswer::Free);
    assert!(answers[0].warning().is_none());

    // A migration's first message goes through to whoever serves migrations.
    let conn = PeerConn::connect(&c.a, "host-b", entry.addr).await.unwrap();
    let (sink, _source) = conn.split();
    sink.send_message(&Message::Commit {}).await.unwrap();
    assert_eq!(server.await.unwrap(), vec![Message::Commit {}]);
}

/// A peer that takes the connection but never answers costs the asker its timeout, no more.
#[tokio::test]
async fn a_silent_peer_is_reported_unknown_within_the_timeout() {
    let c = cluster();
    let mut listener = PeerListener::bind(&c.b, any_port()).await.unwrap();
    let entry = PeerEntry {
        name: "host-b".into(),
        addr: listener.local_addr(),
    };
    let _server = tokio::spawn(async move {
        let held = listener.accept().await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(held);
    });
    let t0 = std::time::Instant::now();
    let ip = "10.77.1.64".parse().unwrap();
    let answers = query::ask_all(&c.a, &[entry], ip, Duration::from_millis(700)).await;
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    match &answers[0].answer {
        query::IpAnswer::Unknown { why } => assert!(why.contains("no answer within"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(answers[0].warning().unwrap().contains("not checked"));
}
