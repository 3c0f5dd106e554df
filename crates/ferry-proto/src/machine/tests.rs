use super::*;
use crate::{BlobRef, DumpStats, Hello, ImageOffer, RestoreStats, StreamCompression, Welcome};

const BLOB_A: &str = "sha256:aaaa";
const BLOB_B: &str = "sha256:bbbb";
const BLOB_C: &str = "sha256:cccc";

fn hello(mode: MigrationMode) -> Message {
    Message::Hello(Hello {
        versions: (1, 2),
        host: "host-a".into(),
        criu_version: "4.2.1".into(),
        runc_version: "1.1.5".into(),
        kernel: "6.18".into(),
        mode,
        features: vec![],
    })
}

fn welcome() -> Message {
    Message::Welcome(Welcome {
        version: 1,
        host: "host-b".into(),
        criu_version: "4.2.1".into(),
        runc_version: "1.1.5".into(),
    })
}

fn prepare() -> Message {
    Message::Prepare {
        migration_id: "m1".into(),
        container: serde_json::json!({"id": "redis"}),
        image: ImageOffer {
            manifest: BLOB_A.into(),
            names: vec!["redis:7".into()],
            blobs: [BLOB_A, BLOB_B, BLOB_C]
                .iter()
                .map(|d| BlobRef {
                    digest: d.to_string(),
                    size: 10,
                })
                .collect(),
        },
    }
}

fn blob(digest: &str, stream: u32) -> Message {
    Message::BlobStart {
        digest: digest.into(),
        size: 10,
        stream,
        compression: StreamCompression::None,
    }
}

fn fs(pass: u8, what: FsTarget, stream: u32) -> Message {
    Message::FsStart {
        pass,
        what,
        stream,
        compression: StreamCompression::Zstd,
        summary: None,
    }
}

fn abort() -> Message {
    Message::Abort {
        reason: "test".into(),
    }
}

/// The whole conversation of a successful migration, in order.
fn happy_path(mode: MigrationMode) -> Vec<(Side, Message)> {
    use Side::{Destination as D, Source as S};
    let mut v = vec![
        (S, hello(mode)),
        (D, welcome()),
        (
            S,
            Message::CpuInfo {
                stream: 16,
                compression: StreamCompression::None,
            },
        ),
        (D, Message::CpuOk {}),
        (S, prepare()),
        (
            D,
            Message::NeedBlobs {
                digests: vec![BLOB_B.into(), BLOB_C.into()],
                from_registry: vec![],
            },
        ),
        (S, blob(BLOB_B, 17)),
        (
            S,
            Message::Progress {
                phase: "blobs".into(),
                done: 10,
                total: Some(20),
            },
        ),
        (S, blob(BLOB_C, 18)),
        (S, fs(1, FsTarget::Upper, 19)),
        (S, fs(1, FsTarget::Volume("data".into()), 20)),
        (
            S,
            Message::OpenPageSink {
                memory_bytes: 0,
                lz4: false,
            },
        ),
        (D, Message::PagesReady { lz4: false }),
        (
            S,
            Message::DumpDone {
                stats: DumpStats::default(),
            },
        ),
        (
            S,
            Message::ImagesStart {
                stream: 21,
                compression: StreamCompression::Zstd,
            },
        ),
        (S, fs(2, FsTarget::Upper, 22)),
        (S, fs(2, FsTarget::Volume("data".into()), 23)),
        (S, Message::Restore {}),
        (
            D,
            Message::Progress {
                phase: "restore".into(),
                done: 1,
                total: None,
            },
        ),
        (
            D,
            Message::Restored {
                stats: RestoreStats::default(),
            },
        ),
        (S, Message::Commit {}),
        (D, Message::Committed {}),
    ];
    if mode == MigrationMode::PostCopy {
        v.push((
            D,
            Message::LazyComplete {
                bytes: 1 << 30,
                pages: 1 << 18,
                faults: 12,
            },
        ));
    }
    v
}

fn deliver(
    s: &mut SenderMachine,
    r: &mut ReceiverMachine,
    from: Side,
    m: &Message,
) -> Result<(), ProtoError> {
    match from {
        Side::Source => {
            s.on_send(m)?;
            r.on_message(m)
        }
        Side::Destination => {
            r.on_send(m)?;
            s.on_message(m)
        }
    }
}

/// Both machines after every prefix of the happy path.
fn snapshots(mode: MigrationMode) -> Vec<(SenderMachine, ReceiverMachine)> {
    let (mut s, mut r) = (SenderMachine::new(), ReceiverMachine::new());
    let mut out = vec![(s.clone(), r.clone())];
    for (side, m) in happy_path(mode) {
        deliver(&mut s, &mut r, side, &m)
            .unwrap_or_else(|e| panic!("{} from {side:?}: {e}", m.name()));
        assert_eq!(s.state(), r.state(), "machines disagree after {}", m.name());
        out.push((s.clone(), r.clone()));
    }
    out
}

#[test]
fn happy_path_stop_and_copy() {
    let snaps = snapshots(MigrationMode::StopAndCopy);
    let (s, r) = snaps.last().unwrap();
    assert_eq!(s.state(), State::Done);
    assert_eq!(r.state(), State::Done);
    assert_eq!(s.version(), Some(1));
    assert_eq!(r.mode(), Some(MigrationMode::StopAndCopy));
}

#[test]
fn happy_path_post_copy_drains_before_done() {
    let snaps = snapshots(MigrationMode::PostCopy);
    assert_eq!(snaps[snaps.len() - 2].0.state(), State::Draining);
    assert_eq!(snaps.last().unwrap().1.state(), State::Done);
}

#[test]
fn abort_from_either_side_at_every_point() {
    for mode in [MigrationMode::StopAndCopy, MigrationMode::PostCopy] {
        for (s, r) in snapshots(mode) {
            if s.state().is_final() {
                continue;
            }
            for from in [Side::Source, Side::Destination] {
                let (mut s, mut r) = (s.clone(), r.clone());
                let before = s.state();
                deliver(&mut s, &mut r, from, &abort())
                    .unwrap_or_else(|e| panic!("abort in {before:?}: {e}"));
                assert_eq!((s.state(), r.state()), (State::Aborted, State::Aborted));
                // Aborted is final: nothing more, not even another Abort.
                assert!(s.on_message(&abort()).is_err());
                assert!(r.on_send(&Message::Commit {}).is_err());
            }
        }
    }
}

#[test]
fn refusals_and_restore_failure_are_final() {
    let snaps = snapshots(MigrationMode::StopAndCopy);
    let refuse = Message::Refuse {
        reason: "CPU lacks avx512".into(),
    };
    let mut refusable = 0;
    for (s, r) in &snaps {
        let (mut s, mut r) = (s.clone(), r.clone());
        if deliver(&mut s, &mut r, Side::Destination, &refuse).is_ok() {
            refusable += 1;
            assert_eq!(s.state(), State::Refused);
            assert!(s.on_send(&prepare()).is_err());
        }
    }
    assert_eq!(refusable, 3, "Refuse answers Hello, CpuInfo and Prepare");

    let (s, r) = snaps
        .iter()
        .find(|(s, _)| s.state() == State::Restoring)
        .unwrap();
    let (mut s, mut r) = (s.clone(), r.clone());
    deliver(
        &mut s,
        &mut r,
        Side::Destination,
        &Message::RestoreFailed {
            reason: "criu".into(),
        },
    )
    .unwrap();
    assert_eq!(s.state(), State::RestoreFailed);
    assert!(s.on_send(&Message::Commit {}).is_err());
    assert!(s.on_send(&abort()).is_err());
}

/// One instance of every message, with contents that are valid on the happy path.
fn every_message(pending_blob: &str) -> Vec<Message> {
    vec![
        hello(MigrationMode::StopAndCopy),
        welcome(),
        Message::Refuse {
            reason: "no".into(),
        },
        Message::CpuInfo {
            stream: 900,
            compression: StreamCompression::None,
        },
        Message::CpuOk {},
        prepare(),
        Message::NeedBlobs {
            digests: vec![BLOB_B.into()],
            from_registry: vec![BLOB_C.into()],
        },
        blob(pending_blob, 901),
        fs(1, FsTarget::Volume("logs".into()), 902),
        Message::OpenPageSink {
            memory_bytes: 0,
            lz4: false,
        },
        Message::PagesReady { lz4: false },
        Message::DumpDone {
            stats: DumpStats::default(),
        },
        Message::ImagesStart {
            stream: 903,
            compression: StreamCompression::None,
        },
        fs(2, FsTarget::Volume("logs".into()), 904),
        Message::Restore {},
        Message::Restored {
            stats: RestoreStats::default(),
        },
        Message::RestoreFailed { reason: "x".into() },
        Message::Commit {},
        Message::Committed {},
        Message::LazyComplete {
            bytes: 0,
            pages: 0,
            faults: 0,
        },
        Message::Inquire {
            migration_id: "m1".into(),
        },
        Message::Verdict {
            migration_id: "m1".into(),
            verdict: crate::Verdict::Pending,
        },
        Message::IpQuery {
            ip: "10.77.1.64".into(),
        },
        Message::IpStatus {
            ip: "10.77.1.64".into(),
            in_use: true,
            user: None,
        },
        abort(),
        Message::Progress {
            phase: "p".into(),
            done: 0,
            total: None,
        },
    ]
}

/// The table this test holds the machine to: what each state accepts, from whom.
fn allowed(state: State, from: Side, name: &str, blobs_left: bool, images_sent: bool) -> bool {
    use Side::{Destination as D, Source as S};
    use State::*;
    if state.is_final() {
        return false;
    }
    match (state, from, name) {
        (_, _, "Abort") => true,
        (Start | Negotiating | Inquiring | AskingIp, _, "Progress") => false,
        (_, _, "Progress") => true,
        (Start, S, "Hello" | "Inquire" | "IpQuery") => true,
        (Inquiring, D, "Verdict") => true,
        (AskingIp, D, "IpStatus") => true,
        (Negotiating, D, "Welcome" | "Refuse") => true,
        (Welcomed, S, "CpuInfo") => true,
        (CheckingCpu, D, "CpuOk" | "Refuse") => true,
        (CpuAccepted, S, "Prepare") => true,
        (Preparing, D, "NeedBlobs" | "Refuse") => true,
        (TransferringBlobs, S, "BlobStart") => blobs_left,
        (TransferringBlobs | PreCopy, S, "FsStart1" | "OpenPageSink") => !blobs_left,
        (OpeningPageSink, D, "PagesReady") => true,
        (Dumping, S, "DumpDone") => true,
        (Finishing, S, "ImagesStart") => !images_sent,
        (Finishing, S, "FsStart2") => true,
        (Finishing, S, "Restore") => images_sent,
        (Restoring, D, "Restored" | "RestoreFailed") => true,
        (Restored, S, "Commit") => true,
        (Committing, D, "Committed") => true,
        (Draining, D, "LazyComplete") => true,
        _ => false,
    }
}

#[test]
fn unexpected_messages_table() {
    let mut checked = 0;
    for mode in [MigrationMode::StopAndCopy, MigrationMode::PostCopy] {
        for (s, r) in snapshots(mode) {
            let blobs_left = !s.0.blobs_pending.is_empty();
            let images_sent = s.0.images_sent;
            let pending =
                s.0.blobs_pending
                    .iter()
                    .next()
                    .cloned()
                    .unwrap_or(BLOB_B.into());
            for m in every_message(&pending) {
                let name = match &m {
                    Message::FsStart { pass: 1, .. } => "FsStart1",
                    Message::FsStart { .. } => "FsStart2",
                    other => other.name(),
                };
                for from in [Side::Source, Side::Destination] {
                    let want = allowed(s.state(), from, name, blobs_left, images_sent);
                    let (mut s2, mut r2) = (s.clone(), r.clone());
                    let got = match from {
                        Side::Source => (s2.on_send(&m), r2.on_message(&m)),
                        Side::Destination => (s2.on_message(&m), r2.on_send(&m)),
                    };
                    assert_eq!(
                        got.0.is_ok(),
                        want,
                        "{name} from {from:?} in {:?}: {:?}",
                        s.state(),
                        got.0
                    );
                    assert_eq!(
                        got.1.is_ok(),
                        want,
                        "{name} from {from:?} in {:?} (receiver)",
                        s.state()
                    );
                    if let Err(e) = got.0 {
                        // A rejected message leaves the machine untouched.
                        assert_eq!(s2.state(), s.state());
                        if !matches!(e, ProtoError::Invalid { .. }) {
                            assert_eq!(
                                e,
                                ProtoError::Unexpected {
                                    state: s.state(),
                                    side: from,
                                    message: m.name()
                                }
                            );
                        }
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 1000);
}

fn at(state: State) -> (SenderMachine, ReceiverMachine) {
    snapshots(MigrationMode::StopAndCopy)
        .into_iter()
        .find(|(s, _)| s.state() == state)
        .unwrap()
}

#[test]
fn content_rules() {
    let invalid = |r: Result<(), ProtoError>| matches!(r, Err(ProtoError::Invalid { .. }));

    let (_, mut r) = at(State::Negotiating);
    let mut w = welcome();
    if let Message::Welcome(w) = &mut w {
        w.version = 3;
    }
    assert!(invalid(r.on_send(&w)), "version outside the Hello range");
    assert_eq!(
        r.state(),
        State::Negotiating,
        "a rejected message changes nothing"
    );

    let (_, mut r) = at(State::Preparing);
    assert!(invalid(r.on_send(&Message::NeedBlobs {
        digests: vec!["sha256:zzzz".into()],
        from_registry: vec![],
    })));
    assert!(invalid(r.on_send(&Message::NeedBlobs {
        digests: vec![BLOB_B.into(), BLOB_B.into()],
        from_registry: vec![],
    })));
    r.on_send(&Message::NeedBlobs {
        digests: vec![],
        from_registry: vec![],
    })
    .unwrap();
    assert_eq!(r.state(), State::TransferringBlobs);
    r.on_message(&Message::OpenPageSink {
        memory_bytes: 0,
        lz4: false,
    })
    .unwrap();

    let (mut s, _) = at(State::TransferringBlobs);
    assert!(
        invalid(s.clone().on_send(&blob(BLOB_A, 700))),
        "not asked for"
    );
    assert!(
        invalid(s.clone().on_send(&Message::OpenPageSink {
            memory_bytes: 0,
            lz4: false,
        })),
        "blobs pending"
    );
    assert!(
        invalid(s.clone().on_send(&blob(BLOB_B, 16))),
        "stream 16 already used by cpuinfo"
    );
    assert!(
        invalid(s.clone().on_send(&blob(BLOB_B, crate::TUNNEL_STREAM))),
        "reserved stream"
    );
    s.on_send(&blob(BLOB_B, 700)).unwrap();
    assert!(invalid(s.on_send(&blob(BLOB_B, 701))), "sent twice");

    let (mut s, _) = at(State::PreCopy);
    assert!(
        invalid(s.on_send(&fs(1, FsTarget::Upper, 800))),
        "upper already sent in pass 1"
    );

    let (mut s, _) = at(State::Finishing);
    assert!(
        invalid(s.clone().on_send(&Message::Restore {})),
        "images not sent yet"
    );
    s.on_send(&fs(2, FsTarget::Upper, 801)).unwrap();
    assert!(invalid(s.on_send(&fs(2, FsTarget::Upper, 802))));

    let mut s = SenderMachine::new();
    let mut h = hello(MigrationMode::StopAndCopy);
    if let Message::Hello(h) = &mut h {
        h.versions = (3, 1);
    }
    assert!(invalid(s.on_send(&h)));
}

#[test]
fn inquiry_is_one_question_and_one_answer() {
    let mut s = SenderMachine::new();
    let mut r = ReceiverMachine::new();
    let ask = Message::Inquire {
        migration_id: "m1".into(),
    };
    s.on_send(&ask).unwrap();
    r.on_message(&ask).unwrap();
    assert_eq!(r.state(), State::Inquiring);
    assert!(r
        .on_send(&Message::Welcome(match welcome() {
            Message::Welcome(w) => w,
            _ => unreachable!(),
        }))
        .is_err());
    let answer = Message::Verdict {
        migration_id: "m1".into(),
        verdict: crate::Verdict::Committed,
    };
    r.on_send(&answer).unwrap();
    s.on_message(&answer).unwrap();
    assert_eq!(s.state(), State::Answered);
    assert!(s.state().is_final());
    assert!(s.on_send(&Message::Commit {}).is_err());
}

#[test]
fn ip_question_is_one_question_and_one_answer() {
    let ask = Message::IpQuery {
        ip: "10.77.1.64".into(),
    };
    let (mut s, mut r) = (SenderMachine::new(), ReceiverMachine::new());
    deliver(&mut s, &mut r, Side::Source, &ask).unwrap();
    assert_eq!((s.state(), r.state()), (State::AskingIp, State::AskingIp));
    // Every other message, from either side, is held to the same table as a migration's.
    for m in every_message(BLOB_B) {
        let name = match &m {
            Message::FsStart { pass: 1, .. } => "FsStart1",
            Message::FsStart { .. } => "FsStart2",
            other => other.name(),
        };
        for from in [Side::Source, Side::Destination] {
            let want = allowed(State::AskingIp, from, name, false, false);
            let (mut s2, mut r2) = (s.clone(), r.clone());
            let got = deliver(&mut s2, &mut r2, from, &m);
            assert_eq!(
                got.is_ok(),
                want,
                "{name} from {from:?} while asking: {got:?}"
            );
        }
    }
    let answer = Message::IpStatus {
        ip: "10.77.1.64".into(),
        in_use: false,
        user: None,
    };
    // The answer cannot open a conversation, nor a question come back.
    assert!(ReceiverMachine::new().on_send(&answer).is_err());
    assert!(r.on_message(&ask).is_err());
    deliver(&mut s, &mut r, Side::Destination, &answer).unwrap();
    assert_eq!(s.state(), State::Answered);
    assert!(s.on_send(&ask).is_err(), "one question per connection");
}
