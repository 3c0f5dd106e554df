use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;

use prost::Message as _;

use super::super::image::{read_image_entries, ImageMagic};
use super::super::testutil::{absent, restore_detached, serial, Need, Sleeper};
use super::super::{criu_tool, explain_log};
use super::*;

const PAGEMAP: ImageMagic = ImageMagic {
    head: IMG_COMMON_MAGIC,
    kind: PAGEMAP_MAGIC,
};
const PE_LAZY: u32 = 1 << 1;

fn command(cmd: u32, flags: u32, nr_pages: u64, vaddr: u64, dst_id: u64) -> Vec<u8> {
    let mut c = Vec::with_capacity(COMMAND_LEN);
    c.extend_from_slice(&(flags << PS_CMD_BITS | cmd).to_ne_bytes());
    c.extend_from_slice(&[0; 4]);
    c.extend_from_slice(&nr_pages.to_ne_bytes());
    c.extend_from_slice(&vaddr.to_ne_bytes());
    c.extend_from_slice(&dst_id.to_ne_bytes());
    c
}

fn pid_id(pid: u64) -> u64 {
    pid << PS_TYPE_BITS | PS_TYPE_PID
}

fn shmem_id(shmid: u64) -> u64 {
    shmid << PS_TYPE_BITS | PS_TYPE_SHMEM
}

/// (vaddr, nr_pages, flags) of each entry, after checking the head names `pages_id`.
fn entries(path: &Path, pages_id: u32) -> Vec<(u64, u64, u32)> {
    let raw = read_image_entries(path, PAGEMAP).unwrap();
    let head = proto::PagemapHead::decode(raw[0].as_slice()).unwrap();
    assert_eq!(head.pages_id, pages_id);
    raw[1..]
        .iter()
        .map(|e| {
            let e = proto::PagemapEntry::decode(e.as_slice()).unwrap();
            (e.vaddr, e.nr_pages.unwrap(), e.flags.unwrap())
        })
        .collect()
}

/// A session as a dump sends it: two tasks' images (one with a lazy entry), a shared-memory
/// segment by the old ADD, a parent query, the close.
fn session() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let task: Vec<u8> = (0..2 * PAGE_SIZE as usize)
        .map(|i| (i % 251) as u8)
        .collect();
    let shm = vec![0x5a; PAGE_SIZE as usize];
    let mut s = Vec::new();
    s.extend(command(PS_IOV_OPEN2, 0, 0, 0, pid_id(7)));
    s.extend(command(PS_IOV_ADD_F, PE_PRESENT, 2, 0x1000, pid_id(7)));
    s.extend(&task);
    s.extend(command(PS_IOV_ADD_F, PE_LAZY, 3, 0x10000, pid_id(7)));
    s.extend(command(PS_IOV_OPEN2, 0, 0, 0, shmem_id(5)));
    s.extend(command(PS_IOV_ADD, 0, 1, 0, shmem_id(5)));
    s.extend(&shm);
    s.extend(command(PS_IOV_PARENT, 0, 0, 0, pid_id(7)));
    s.extend(command(PS_IOV_CLOSE, 0, 0, 0, 0));
    (s, task, shm)
}

#[test]
fn writes_the_images_criu_page_server_would_in_any_split() {
    let (stream, task, shm) = session();
    for split in [1, 7, 32, 4099, stream.len()] {
        let dir = tempfile::tempdir().unwrap();
        let mut r = PageReceiver::new(dir.path());
        let mut answer = Vec::new();
        for chunk in stream.chunks(split) {
            r.feed(chunk, &mut answer).unwrap();
        }
        let got = r.finish().unwrap();
        assert_eq!(
            got,
            ReceivedPages {
                pages: 3,
                pagemaps: 2
            }
        );
        // OPEN2, OPEN2: "no parent"; PARENT: 0; CLOSE: status 0.
        assert_eq!(
            answer,
            [&[0u8, 0][..], &[0; 4], &[0; 4]].concat(),
            "{split}"
        );

        let p = dir.path();
        assert_eq!(
            entries(&p.join("pagemap-7.img"), FIRST_PAGES_ID),
            [(0x1000, 2, PE_PRESENT), (0x10000, 3, PE_LAZY)]
        );
        assert_eq!(
            entries(&p.join("pagemap-shmem-5.img"), FIRST_PAGES_ID + 1),
            [(0, 1, PE_PRESENT)]
        );
        let pages = |id: u32| std::fs::read(p.join(format!("pages-{id}.img"))).unwrap();
        assert_eq!(pages(FIRST_PAGES_ID), task);
        assert_eq!(pages(FIRST_PAGES_ID + 1), shm);
    }
}

#[test]
fn a_broken_stream_is_refused_with_where_and_why() {
    let open = command(PS_IOV_OPEN2, 0, 0, 0, pid_id(7));
    let refused = |stream: Vec<u8>| {
        let dir = tempfile::tempdir().unwrap();
        let mut r = PageReceiver::new(dir.path());
        let mut answer = Vec::new();
        match r.feed(&stream, &mut answer) {
            Err(e) => e.to_string(),
            Ok(()) => r.finish().unwrap_err().to_string(),
        }
    };
    let err = refused([open.clone(), command(PS_IOV_GET, 0, 1, 0x1000, pid_id(7))].concat());
    assert!(err.contains("at byte 64") && err.contains("(GET)"), "{err}");
    let err = refused(command(0x77, 0, 0, 0, 0));
    assert!(err.contains("unknown command 0x77"), "{err}");
    let err = refused(command(PS_IOV_OPEN2, 0, 0, 0, 7 << PS_TYPE_BITS | 9));
    assert!(err.contains("unknown image type 9"), "{err}");
    let err = refused([open.clone(), command(PS_IOV_HOLE, 0, 1, 0x1000, pid_id(7))].concat());
    assert!(err.contains("parent image"), "{err}");
    let err = refused(command(PS_IOV_ADD_F, PE_PRESENT, 1, 0x1001, pid_id(7)));
    assert!(err.contains("1 pages at 0x1001"), "{err}");
    let err = refused(command(PS_IOV_ADD_F, PE_PRESENT, u64::MAX, 0, pid_id(7)));
    assert!(err.contains("18446744073709551615 pages"), "{err}");
    let err = refused([command(PS_IOV_CLOSE, 0, 0, 0, 0), vec![1, 2]].concat());
    assert!(err.contains("2 bytes after the close"), "{err}");
    let err = refused(open.clone());
    assert!(err.contains("ended without its close"), "{err}");
    let err = refused(
        [
            open.clone(),
            command(PS_IOV_ADD_F, PE_PRESENT, 1, 0x1000, pid_id(7)),
            vec![0; 100],
        ]
        .concat(),
    );
    assert!(err.contains("3996 page bytes short"), "{err}");
    let err = refused(open[..10].to_vec());
    assert!(err.contains("in the middle of a command"), "{err}");
}

/// Serves one page-server session on `listener` into `dir`, as ferryd does behind the tunnel.
fn serve_one(listener: TcpListener, dir: &Path) -> std::thread::JoinHandle<ReceivedPages> {
    let dir = dir.to_owned();
    std::thread::spawn(move || {
        let (mut sock, _) = listener.accept().unwrap();
        let mut r = PageReceiver::new(&dir);
        let mut buf = vec![0u8; 1 << 20];
        let mut answer = Vec::new();
        loop {
            let n = sock.read(&mut buf).unwrap();
            if n == 0 {
                return r.finish().unwrap();
            }
            r.feed(&buf[..n], &mut answer).unwrap();
            sock.write_all(&answer).unwrap();
            answer.clear();
        }
    })
}

fn pagemaps(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("pagemap-"))
        .collect();
    v.sort();
    v
}

/// A real dump into the receiver matches CRIU's own images of the same process entry for entry,
/// and CRIU restores from what the receiver wrote.
#[test]
fn a_real_dump_restores_from_what_the_receiver_wrote() {
    if absent(&[Need::Root, Need::Criu]) {
        return;
    }
    let _turn = serial();
    let ours = tempfile::tempdir().unwrap();
    let criu_own = tempfile::tempdir().unwrap();
    let sleeper = Sleeper::spawn();
    let (pid, tag) = (sleeper.pid().to_string(), sleeper.tag());

    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let server = serve_one(listener, ours.path());
    let dump = |dir: &Path, extra: &[&str]| {
        let r = criu_tool()
            .args(["dump", "-t", &pid, "-D"])
            .arg(dir)
            .args(["-o", "dump.log", "-v4"])
            .args(extra)
            .run();
        if let Err(e) = r {
            panic!("criu dump: {e}; {}", explain_log(&dir.join("dump.log")));
        }
    };
    let page_server = [
        "--leave-running",
        "--page-server",
        "--address",
        "127.0.0.1",
        "--port",
        &port,
    ];
    dump(ours.path(), &page_server);
    let got = server.join().unwrap();
    assert!(got.pages > 0 && got.pagemaps > 0, "{got:?}");
    // The same process, dumped by CRIU into its own images (and killed).
    dump(criu_own.path(), &[]);
    sleeper.reap();

    assert_eq!(pagemaps(ours.path()), pagemaps(criu_own.path()));
    for name in pagemaps(ours.path()) {
        let theirs = read_image_entries(&criu_own.path().join(&name), PAGEMAP).unwrap();
        let mine = read_image_entries(&ours.path().join(&name), PAGEMAP).unwrap();
        // Entry for entry the same, after the head (whose pages image numbering differs).
        assert_eq!(mine[1..], theirs[1..], "{name}");
    }

    // The receiver shared the dump's directory, as `criu page-server` may: restore from it.
    let restored = restore_detached(ours.path(), &tag, &[]);
    assert!(restored.is_alive());
}
