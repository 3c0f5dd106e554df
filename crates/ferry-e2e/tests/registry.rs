//! Issue 10 (registry): pull, run and push against a real registry (Debian's docker-registry),
//! over HTTPS with a CA ferryd trusts through `<root>/certs.d`, with htpasswd auth, a tampered
//! blob, and plain HTTP only when named insecure. The registry runs in the host's netns.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_e2e::registry::{available, Registry, RegistryOptions};
use ferry_e2e::{bin, Host};

fn registry(h: &Host, tls: bool, htpasswd: Option<(&str, &str)>) -> Registry {
    Registry::start(&RegistryOptions {
        netns: PathBuf::from(format!("/run/netns/{}", h.netns)),
        ip: "127.0.0.1".into(),
        tls,
        htpasswd: htpasswd.map(|(u, p)| (u.to_owned(), p.to_owned())),
    })
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn image_ids(h: &Host) -> Vec<String> {
    json(&h.ferry_ok(&["image", "ls", "--json"]))
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Files left in the store's staging area (a failed pull must leave none).
fn staging_leftovers(root: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(root.join("images/tmp"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// `ferry login` with the password on stdin.
fn login(h: &Host, registry: &str, user: &str, password: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(bin("ferry"))
        .arg("--socket")
        .arg(&h.socket)
        .args(["login", "--username", user, "--password-stdin", registry])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ferry login");
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn push_pull_run_round_trip_over_https() {
    if !available() {
        return;
    }
    let h = Host::start();
    let reg = registry(&h, true, None);
    h.import("busybox");
    let local = image_ids(&h);
    assert_eq!(local.len(), 1);
    let target = format!("{}/ferry/busybox:v1", reg.addr);

    // HTTPS by default: without the registry's CA, the certificate is refused.
    let err = h.ferry_err(&["push", "busybox", &target]);
    eprintln!("unknown CA, refused: {err}");
    assert!(
        err.contains("cannot reach registry")
            && err.contains("certs.d")
            && err.contains("UnknownIssuer"),
        "{err}"
    );

    reg.trust(&h.root());
    let pushed = json(&h.ferry_ok(&["push", "busybox", &target, "--json"]));
    assert_eq!(pushed["id"], local[0].as_str(), "{pushed}");
    let moved = pushed["blobs_moved"].as_u64().unwrap();
    assert!(moved >= 2, "config and layers uploaded: {pushed}");
    // Again: every blob is already there (HEAD first), only the manifest goes.
    let again = json(&h.ferry_ok(&["push", "busybox", &target, "--json"]));
    assert_eq!(again["blobs_moved"], 0, "{again}");
    assert_eq!(again["blobs_present"].as_u64().unwrap(), moved);

    // A store without the image pulls everything, verifies it and keeps id and reference.
    h.ferry_ok(&["image", "rm", &local[0]]);
    assert!(image_ids(&h).is_empty());
    let pulled = json(&h.ferry_ok(&["pull", &target, "--json"]));
    assert_eq!(
        pulled["id"],
        local[0].as_str(),
        "same manifest, same id: {pulled}"
    );
    assert_eq!(pulled["blobs_moved"].as_u64().unwrap(), moved, "{pulled}");
    assert_eq!(pulled["reference"], target.as_str());
    let inspect = json(&h.ferry_ok(&["image", "inspect", &target]));
    assert_eq!(inspect["source"]["reference"], target.as_str(), "{inspect}");
    assert_eq!(inspect["source"]["digest"], local[0].as_str());
    assert_eq!(inspect["source"]["registry"], reg.addr.as_str());
    let ls = h.ferry_ok(&["image", "ls"]);
    assert!(ls.contains(&target), "{ls}");

    // It runs, and ps shows the reference.
    h.ferry_ok(&[
        "run",
        "-d",
        "--name",
        "hello",
        &target,
        "sh",
        "-c",
        "echo hello from the registry; sleep 30",
    ]);
    h.wait_for("hello's output", Duration::from_secs(20), || {
        h.logs("hello").contains("hello from the registry")
    });
    let ps = h.ferry_ok(&["ps"]);
    assert!(ps.contains("hello") && ps.contains(&target), "{ps}");

    // tag gives the image another name; the image is one.
    let tagged = format!("{}/ferry/busybox:v2", reg.addr);
    h.ferry_ok(&["tag", &target, &tagged]);
    let inspect2 = json(&h.ferry_ok(&["image", "inspect", &tagged]));
    assert_eq!(inspect2["digest"], local[0].as_str());
    // ... and `ferry image pull` of a digest reference finds everything already there.
    let by_digest = format!("{}/ferry/busybox@{}", reg.addr, local[0]);
    let again = json(&h.ferry_ok(&["image", "pull", &by_digest, "--json"]));
    assert_eq!(again["blobs_moved"], 0, "{again}");
    assert!(staging_leftovers(&h.root()).is_empty());
}

#[test]
fn auth_login_refusal_and_credentials_file() {
    if !available() {
        return;
    }
    let h = Host::start();
    let reg = registry(&h, true, Some(("alice", "s3cret-pw")));
    reg.trust(&h.root());
    h.import("busybox");
    let target = format!("{}/private/busybox:latest", reg.addr);

    let err = h.ferry_err(&["push", "busybox", &target]);
    assert!(
        err.contains("authentication with registry") && err.contains("ferry login"),
        "{err}"
    );
    let bad = login(&h, &reg.addr, "alice", "wrong");
    assert!(!bad.status.success());
    let bad_err = String::from_utf8_lossy(&bad.stderr);
    eprintln!("bad password, refused: {bad_err}");
    assert!(
        bad_err.contains("authentication with registry")
            && bad_err.contains("wrong user name or password"),
        "{bad_err}"
    );
    let auth_file = h.root().join("auth.json");
    assert!(!auth_file.exists(), "a refused login stores nothing");

    let ok = login(&h, &reg.addr, "alice", "s3cret-pw");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let mode = std::fs::metadata(&auth_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "credentials file mode");
    let stored = std::fs::read_to_string(&auth_file).unwrap();
    assert!(
        stored.contains(&reg.addr) && !stored.contains("s3cret-pw"),
        "{stored}"
    );

    h.ferry_ok(&["push", "busybox", &target]);
    let id = image_ids(&h).remove(0);
    h.ferry_ok(&["image", "rm", &id]);
    h.ferry_ok(&["pull", &target]);
    assert_eq!(image_ids(&h), vec![id.clone()]);

    h.ferry_ok(&["logout", &reg.addr]);
    assert!(!std::fs::read_to_string(&auth_file)
        .unwrap()
        .contains(&reg.addr));
    h.ferry_ok(&["image", "rm", &id]);
    let err = h.ferry_err(&["pull", &target]);
    assert!(err.contains("ferry login"), "{err}");
    assert!(image_ids(&h).is_empty());
}

#[test]
fn tampered_blob_is_refused_and_nothing_registered() {
    if !available() {
        return;
    }
    let h = Host::start();
    let reg = registry(&h, true, None);
    reg.trust(&h.root());
    h.import("busybox");
    let target = format!("{}/ferry/tampered:v1", reg.addr);
    h.ferry_ok(&["push", "busybox", &target]);
    let img = json(&h.ferry_ok(&["image", "inspect", "busybox"]));
    let layer = img["layers"][0].as_str().unwrap().to_owned();
    h.ferry_ok(&["image", "rm", img["digest"].as_str().unwrap()]);

    // Same size, different bytes: only the digest can tell.
    let file = reg.blob_file(&layer);
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();

    let err = h.ferry_err(&["pull", &target]);
    eprintln!("tampered blob, refused: {err}");
    assert!(
        err.contains("digest mismatch") && err.contains(&layer),
        "names the blob and the mismatch: {err}"
    );
    assert!(image_ids(&h).is_empty(), "nothing registered");
    assert!(
        staging_leftovers(&h.root()).is_empty(),
        "nothing staged left"
    );
    assert!(
        !h.root()
            .join("images/blobs/sha256")
            .join(&layer[7..])
            .exists(),
        "the bad blob is not in the store"
    );
}

#[test]
fn plain_http_only_when_named_insecure() {
    if !available() {
        return;
    }
    let h = Host::start();
    let reg = registry(&h, false, None);
    h.import("busybox");
    let target = format!("{}/ferry/busybox:plain", reg.addr);

    let err = h.ferry_err(&["push", "busybox", &target]);
    eprintln!("plain HTTP, refused: {err}");
    assert!(err.contains("name it insecure"), "{err}");
    h.ferry_ok(&["push", "busybox", &target, "--tls-verify=false"]);
    let id = image_ids(&h).remove(0);
    h.ferry_ok(&["image", "rm", &id]);
    let err = h.ferry_err(&["pull", &target]);
    assert!(err.contains("name it insecure"), "{err}");
    assert!(image_ids(&h).is_empty());

    // Named in ferryd's config list: plain HTTP without a flag.
    std::fs::write(
        h.root().join("registries.json"),
        format!(r#"{{"insecure": ["{}"]}}"#, reg.addr),
    )
    .unwrap();
    h.ferry_ok(&["pull", &target]);
    assert_eq!(image_ids(&h), vec![id]);
}

/// A registry image migrates with zero layer bytes between the hosts (the destination fetches
/// them from the registry), and with the registry down, the source sends them.
#[test]
fn migration_takes_layers_from_the_registry_else_from_the_source() {
    use ferry_e2e::lab::{lab, wait_for};
    use ferry_e2e::{ticks, COUNTER};
    if !available() {
        return;
    }
    let t = lab();
    let mut reg = Registry::start(&RegistryOptions {
        netns: t.lab.client_netns(),
        ip: ferry_lab::CLIENT_ADDRESS.to_string(),
        tls: false,
        htpasswd: None,
    });
    for host in ["host-a", "host-b"] {
        std::fs::write(
            t.host_root(host).join("registries.json"),
            format!(r#"{{"insecure": ["{}"]}}"#, reg.addr),
        )
        .unwrap();
    }
    let image = format!("{}/ferry/busybox:v1", reg.addr);
    t.import("host-a", "busybox");
    t.ok("host-a", &["tag", "busybox", &image]);
    t.ok("host-a", &["push", &image]);
    t.ok(
        "host-a",
        &[
            "run", "-d", "--name", "counter", &image, "sh", "-c", COUNTER,
        ],
    );
    wait_for("ticks on A", Duration::from_secs(20), || {
        ticks(&t.logs("host-a", "counter")).len() >= 3
    });
    let layer_bytes = |r: &serde_json::Value| r["bytes"]["layers"].as_u64().unwrap();

    // Registry down: the destination falls back to the source.
    reg.stop();
    let (ok, report, err) = t.migrate("host-a", "counter", "host-b");
    assert!(ok, "A→B failed: {err}\n{}", t.logs_tail());
    assert!(
        layer_bytes(&report) > 0,
        "the source sent the layers: {report}"
    );
    assert!(
        report["layer_origins"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["from"] == "source"),
        "{report}"
    );
    assert_eq!(report["image_registry"], reg.addr.as_str());

    // Back to A (which has the image), then B forgets it: a fresh destination again.
    let (ok, _, err) = t.migrate("host-b", "counter", "host-a");
    assert!(ok, "B→A failed: {err}\n{}", t.logs_tail());
    t.ok("host-b", &["image", "rm", &image]);

    // Registry up: zero layer bytes between the hosts.
    reg.restart();
    let before = *ticks(&t.logs("host-a", "counter")).last().unwrap();
    let (ok, report, err) = t.migrate("host-a", "counter", "host-b");
    assert!(ok, "A→B failed: {err}\n{}", t.logs_tail());
    assert_eq!(
        layer_bytes(&report),
        0,
        "no layer bytes between hosts: {report}"
    );
    assert_eq!(report["layers_sent"], 0, "{report}");
    assert!(
        report["layer_origins"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["from"] == "registry"),
        "every blob from the registry: {report}"
    );
    wait_for("ticks on B", Duration::from_secs(20), || {
        ticks(&t.logs("host-b", "counter")).len() as u64 > before + 3
    });
    let inspect = json(&t.ok("host-b", &["image", "inspect", &image]));
    assert!(
        inspect["names"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == image.as_str()),
        "{inspect}"
    );
    eprintln!(
        "registry image A→B: layers {} B between hosts, origins {}",
        layer_bytes(&report),
        report["layer_origins"]
    );
}

/// ferryd killed in the middle of a pull: nothing is registered, and the restarted ferryd
/// clears the staging area.
#[test]
fn an_interrupted_pull_registers_nothing() {
    if !available() {
        return;
    }
    let mut h = Host::start();
    let reg = registry(&h, false, None);
    // A rootfs big enough that the pull is still running when ferryd dies.
    let src = tempfile::tempdir_in("/var/tmp").unwrap();
    let rootfs = src.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    let mut noise = vec![0u8; 96 << 20];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut noise[..]);
    std::fs::write(rootfs.join("noise"), &noise).unwrap();
    drop(noise);
    let tarball = src.path().join("big.tar");
    let out = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    h.ferry_ok(&[
        "image",
        "import",
        "--name",
        "big",
        tarball.to_str().unwrap(),
    ]);
    let target = format!("{}/ferry/big:v1", reg.addr);
    h.ferry_ok(&["push", "big", &target, "--insecure"]);
    let id = image_ids(&h).remove(0);
    h.ferry_ok(&["image", "rm", &id]);

    let pull = Command::new(bin("ferry"))
        .arg("--socket")
        .arg(&h.socket)
        .args(["pull", &target, "--insecure"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    h.wait_for("the pull's staging", Duration::from_secs(20), || {
        !staging_leftovers(&h.root()).is_empty()
    });
    h.kill_ferryd();
    let out = pull.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the pull cannot have finished");
    assert!(err.contains("ended the stream early"), "{err}");
    h.start_ferryd();
    assert!(image_ids(&h).is_empty(), "nothing registered");
    assert!(staging_leftovers(&h.root()).is_empty(), "staging cleared");
    // And a pull to the end works.
    h.ferry_ok(&["pull", &target, "--insecure"]);
    assert_eq!(image_ids(&h), vec![id]);
}

/// `PUT /v2/REPO/manifests/TAG` over plain HTTP from inside `netns` (ferry pushes image
/// manifests only; a test index goes up this way).
fn put_manifest(netns: &str, addr: &str, repo: &str, tag: &str, media_type: &str, body: Vec<u8>) {
    use std::io::{Read, Write};
    let ns = PathBuf::from(format!("/run/netns/{netns}"));
    let (addr, path) = (addr.to_owned(), format!("/v2/{repo}/manifests/{tag}"));
    let media_type = media_type.to_owned();
    let answer = ferry_core::network::in_netns(&ns, move || {
        let mut s = std::net::TcpStream::connect(&addr).expect("connect to the registry");
        write!(
            s,
            "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {media_type}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .unwrap();
        s.write_all(&body).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer
    })
    .expect("enter the netns");
    assert!(answer.starts_with("HTTP/1.1 201"), "PUT {tag}: {answer}");
}

/// A multi-arch index: the pull takes the linux/amd64 manifest, wherever it is in the list,
/// and keeps the index's digest as the registry digest.
#[test]
fn a_multi_arch_index_pulls_the_host_platform() {
    if !available() {
        return;
    }
    if std::env::consts::ARCH != "x86_64" {
        eprintln!("SKIPPED: the index below names amd64 as this host's platform");
        return;
    }
    let h = Host::start();
    let reg = registry(&h, false, None);
    h.import("busybox");
    // Another image (a plain rootfs tarball), to stand for the arm64 entry.
    let src = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::create_dir_all(src.path().join("rootfs/bin")).unwrap();
    std::fs::write(src.path().join("rootfs/bin/other"), b"other\n").unwrap();
    let tarball = src.path().join("other.tar");
    let out = Command::new("tar")
        .arg("-C")
        .arg(src.path().join("rootfs"))
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    h.ferry_ok(&[
        "image",
        "import",
        "--name",
        "other",
        tarball.to_str().unwrap(),
    ]);
    let repo = "ferry/multi";
    let mut entries = Vec::new();
    for (image, arch) in [("other", "arm64"), ("busybox", "amd64")] {
        h.ferry_ok(&[
            "push",
            image,
            &format!("{}/{repo}:{arch}", reg.addr),
            "--insecure",
        ]);
        let img = json(&h.ferry_ok(&["image", "inspect", image]));
        let digest = img["digest"].as_str().unwrap().to_owned();
        let size = std::fs::metadata(h.root().join("images/blobs/sha256").join(&digest[7..]))
            .unwrap()
            .len();
        entries.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest, "size": size,
            "platform": {"os": "linux", "architecture": arch},
        }));
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    }))
    .unwrap();
    let index_digest = ferry_core::image::Digest::of(&index).to_string();
    put_manifest(
        &h.netns,
        &reg.addr,
        repo,
        "1",
        "application/vnd.oci.image.index.v1+json",
        index,
    );
    let amd64 = entries[1]["digest"].as_str().unwrap().to_owned();
    for id in image_ids(&h) {
        h.ferry_ok(&["image", "rm", &id]);
    }
    let target = format!("{}/{repo}:1", reg.addr);
    let pulled = json(&h.ferry_ok(&["pull", &target, "--insecure", "--json"]));
    assert_eq!(pulled["id"], amd64.as_str(), "{pulled}");
    assert_eq!(pulled["registry_digest"], index_digest.as_str(), "{pulled}");
    assert_eq!(image_ids(&h), vec![amd64]);
    let inspect = json(&h.ferry_ok(&["image", "inspect", &target]));
    assert_eq!(
        inspect["source"]["digest"],
        index_digest.as_str(),
        "{inspect}"
    );
}

/// A checkpoint image goes through the registry like any image, and restores from the pull:
/// the way a ferry checkpoint reaches another node.
#[test]
fn a_checkpoint_image_goes_through_the_registry() {
    if !available() {
        return;
    }
    let h = Host::start();
    let reg = registry(&h, true, None);
    reg.trust(&h.root());
    h.import("busybox");
    h.run_counter("moving", &[], 5);
    let target = format!("{}/ckpt/moving:1", reg.addr);
    h.ferry_ok(&["checkpoint", "moving", "--create-image", &target]);
    let last = *ferry_e2e::ticks(&h.logs("moving")).last().unwrap();
    h.ferry_ok(&["push", &target]);
    h.ferry_ok(&["rm", "moving"]);
    h.ferry_ok(&["image", "rm", &target]);
    h.ferry_ok(&["pull", &target]);
    h.ferry_ok(&["restore", &target]);
    let mut t = Vec::new();
    h.wait_for("ticks after the pull", Duration::from_secs(20), || {
        t = ferry_e2e::ticks(&h.logs("moving"));
        t.len() >= 3
    });
    assert_eq!(t[0], last + 1, "the restored copy did not continue: {t:?}");
    assert!(t.windows(2).all(|w| w[1] == w[0] + 1), "{t:?}");
}
