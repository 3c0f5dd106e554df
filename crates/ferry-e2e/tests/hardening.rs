//! Issue 13: hostile input from the API, an archive or a peer; private state; no long work
//! under a lock. Against a real ferryd, runc and CRIU.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_core::checkpoint::archive::{self, ArchiveCompression, Limits};
use ferry_core::container::{ContainerConfig, ContainerError};
use ferry_e2e::{bin, dir_names, Host};

/// A container's state dir is root's: its record 0600, its log 0640 at most.
fn assert_container_private(ctr: &Path) {
    assert_eq!(mode(ctr), 0o700);
    assert_eq!(mode(&ctr.join("container.json")), 0o600);
    assert!(
        mode(&ctr.join("ctr.log")) & 0o037 == 0,
        "ctr.log {:o}",
        mode(&ctr.join("ctr.log"))
    );
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// What an import may leave behind: the state dirs an import writes to.
fn state(h: &Host) -> Vec<(String, Vec<String>)> {
    ["containers", "checkpoints", "volumes", "netns", "tmp"]
        .iter()
        .map(|d| (d.to_string(), dir_names(&h.root().join(d))))
        .collect()
}

/// A raw API call: (status, body).
fn api(h: &Host, method: &str, path: &str, body: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "--path-as-is",
            "-m",
            "20",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
        ])
        .arg("--unix-socket")
        .arg(&h.socket)
        .args([
            "-X",
            method,
            "-H",
            "content-type: application/json",
            "-d",
            body,
        ])
        .arg(format!("http://ferryd{path}"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// Rewrites the exported checkpoint `src` into `out` after `edit` changed its ferry config,
/// with a manifest to match: what an attacker who crafts an archive can do.
fn tamper(src: &Path, out: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("cp");
    archive::import(src, &dir, &Limits::default()).expect("import the genuine archive");
    let cfg_path = dir.join("ferry-config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let name = cfg["name"].as_str().unwrap_or("x").to_owned();
    archive::write_manifest(&dir, &name).expect("manifest");
    let _ = std::fs::remove_file(out);
    archive::export(&dir, out, ArchiveCompression::Zstd).expect("export");
}

/// Rewrites `src` as Podman would have written it (no ferry manifest or config), after
/// `edit` changed its libpod config.dump: the Podman import path gets the same hostile values.
fn tamper_as_podman(src: &Path, out: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("cp");
    archive::import(src, &dir, &Limits::default()).expect("import the genuine archive");
    std::fs::remove_file(dir.join("manifest.json")).unwrap();
    std::fs::remove_file(dir.join("ferry-config.json")).unwrap();
    let cfg_path = dir.join("config.dump");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let mut tar = tar::Builder::new(std::fs::File::create(out).unwrap());
    tar.append_dir_all(".", &dir).unwrap();
    tar.finish().unwrap();
}

/// A directory outside the state root that a traversal would hit, with data in it.
fn victim(h: &Host) -> PathBuf {
    let v = h.dir.path().join("victim");
    std::fs::create_dir_all(v.join("_data")).unwrap();
    std::fs::write(v.join("keep"), "mine").unwrap();
    std::fs::write(v.join("_data/keep"), "mine too").unwrap();
    v
}

fn victim_intact(v: &Path) {
    assert_eq!(std::fs::read_to_string(v.join("keep")).unwrap(), "mine");
    assert_eq!(
        std::fs::read_to_string(v.join("_data/keep")).unwrap(),
        "mine too"
    );
}

/// Runs a counter with a volume, checkpoints it into an archive, removes it (and its volume):
/// the host is ready to import the archive, or a tampered copy.
fn exported_counter(h: &Host, name: &str) -> PathBuf {
    h.import("busybox");
    h.run_counter(name, &["-v", &format!("{name}-vol:/data")], 5);
    let out = h.dir.path().join(format!("{name}.tar.zst"));
    h.ferry_ok(&["checkpoint", name, "--export", out.to_str().unwrap()]);
    h.ferry_ok(&["rm", "-f", name]);
    std::fs::remove_dir_all(h.root().join("volumes").join(format!("{name}-vol"))).unwrap();
    out
}

#[test]
fn hostile_archives_are_refused_and_touch_nothing() {
    let h = Host::start();
    let genuine = exported_counter(&h, "arc");
    let v = victim(&h);
    // (what, JSON pointer in config.dump, hostile value, what the refusal says)
    let cases = [
        // root/containers/x/../../.. is the test's dir, where the victim lives.
        (
            "id with ..",
            "/id",
            "x/../../../victim",
            "invalid container id",
        ),
        ("absolute id", "/id", "/tmp", "invalid container id"),
        ("empty id", "/id", "", "invalid container id"),
        // root/volumes/../../victim/_data
        (
            "volume with ..",
            "/volumes/0/name",
            "../../victim",
            "invalid volume name",
        ),
        (
            "volume with /",
            "/volumes/0/name",
            "a/b",
            "invalid volume name",
        ),
        (
            "name with /",
            "/name",
            "a/../../b",
            "invalid container name",
        ),
    ];
    let before = state(&h);
    for (what, pointer, value, expect) in cases {
        let bad = h.dir.path().join("bad.tar.zst");
        tamper(&genuine, &bad, |c| {
            *c.pointer_mut(pointer).expect("field in config.dump") = value.into()
        });
        let err = h.ferry_err(&["restore", "--import", bad.to_str().unwrap()]);
        assert!(err.contains(expect), "{what}: {err}");
        victim_intact(&v);
        assert_eq!(state(&h), before, "{what} left something behind");
    }
    // The same values in a Podman-shaped archive's libpod config.
    let podman_cases = [
        ("/id", "x/../../../victim", "invalid container id"),
        ("/name", "a/../../b", "invalid container name"),
        (
            "/namedVolumes/0/volumeName",
            "../../victim",
            "invalid volume name",
        ),
    ];
    for (pointer, value, expect) in podman_cases {
        let bad = h.dir.path().join("bad-podman.tar");
        let _ = std::fs::remove_file(&bad);
        tamper_as_podman(&genuine, &bad, |c| {
            *c.pointer_mut(pointer)
                .expect("field in libpod's config.dump") = value.into()
        });
        let err = h.ferry_err(&["restore", "--import", bad.to_str().unwrap()]);
        assert!(err.contains(expect), "Podman-shaped {pointer}: {err}");
        victim_intact(&v);
        assert_eq!(
            state(&h),
            before,
            "Podman-shaped {pointer} left something behind"
        );
    }
    // The genuine archive still restores: the checks refuse only what is hostile.
    h.ferry_ok(&["restore", "--import", genuine.to_str().unwrap()]);
    assert_eq!(h.inspect("arc")["status"], "running");
}

#[test]
fn encrypted_exports_are_unreadable_and_need_the_right_untouched_file() {
    let h = Host::start();
    h.import("busybox");
    let secret = "password-4f1c9a";
    let script = format!("S={secret}; {}", ferry_e2e::COUNTER);
    h.run_detached("enc", &[], "busybox", &["sh", "-c", &script]);
    h.wait_for("ticks", Duration::from_secs(20), || {
        ferry_e2e::ticks(&h.logs("enc")).len() >= 5
    });
    let key = h.dir.path().join("key");
    std::fs::write(&key, "c0ffee".repeat(10) + "c0ff").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = h.dir.path().join("enc.tar.zst");
    let (o, k) = (out.to_str().unwrap(), key.to_str().unwrap());
    // A world-readable key is refused before anything is frozen.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = h.ferry_err(&["checkpoint", "enc", "--export", o, "--encrypt", k]);
    assert!(err.contains("chmod 600"), "{err}");
    assert_eq!(h.inspect("enc")["status"], "running");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    h.ferry_ok(&["checkpoint", "enc", "--export", o, "--encrypt", k]);
    let last = *ferry_e2e::ticks(&h.logs("enc")).last().unwrap();
    let raw = std::fs::read(&out).unwrap();
    assert!(
        !raw.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "the secret is readable in the encrypted archive"
    );
    h.ferry_ok(&["rm", "enc"]);
    let before = state(&h);

    let err = h.ferry_err(&["restore", "--import", o]);
    assert!(
        err.contains("encrypted") && err.contains("--decrypt"),
        "{err}"
    );
    let wrong = h.dir.path().join("wrong");
    std::fs::write(&wrong, "ab".repeat(32)).unwrap();
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = h.ferry_err(&[
        "restore",
        "--import",
        o,
        "--decrypt",
        wrong.to_str().unwrap(),
    ]);
    assert!(err.contains("wrong key"), "{err}");
    let mut bad = raw;
    let at = bad.len() * 2 / 3;
    bad[at] ^= 1;
    let tampered = h.dir.path().join("tampered.tar.zst");
    std::fs::write(&tampered, &bad).unwrap();
    let err = h.ferry_err(&[
        "restore",
        "--import",
        tampered.to_str().unwrap(),
        "--decrypt",
        k,
    ]);
    assert!(err.contains("changed") || err.contains("damaged"), "{err}");
    assert_eq!(
        state(&h),
        before,
        "a refused encrypted import left something behind"
    );

    h.ferry_ok(&["restore", "--import", o, "--decrypt", k]);
    h.wait_for(
        "ticks after the encrypted round trip",
        Duration::from_secs(20),
        || ferry_e2e::ticks(&h.logs("enc")).len() >= 3,
    );
    assert_eq!(ferry_e2e::ticks(&h.logs("enc"))[0], last + 1);
}

#[test]
fn a_failed_import_leaves_nothing_behind() {
    let h = Host::start();
    let genuine = exported_counter(&h, "fail");
    let before = state(&h);
    // A checkpoint whose process list CRIU cannot restore: the import gets as far as
    // registering the container, filling its volume and running CRIU, then fails.
    let bad = h.dir.path().join("broken.tar.zst");
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("cp");
    archive::import(&genuine, &dir, &Limits::default()).unwrap();
    let pstree = std::fs::read_dir(dir.join("checkpoint"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("pstree"))
        .expect("a pstree image")
        .path();
    std::fs::write(&pstree, b"not a CRIU image").unwrap();
    archive::write_manifest(&dir, "fail").unwrap();
    archive::export(&dir, &bad, ArchiveCompression::Zstd).unwrap();
    let err = h.ferry_err(&["restore", "--import", bad.to_str().unwrap()]);
    assert!(err.contains("restore"), "{err}");
    assert_eq!(state(&h), before, "a failed import left something behind");
    let ps: Vec<serde_json::Value> =
        serde_json::from_str(&h.ferry_ok(&["ps", "-a", "--json"])).unwrap();
    assert!(ps.is_empty(), "{ps:?}");
}

#[test]
fn hostile_api_requests_are_refused_with_400() {
    let h = Host::start();
    h.import("busybox");
    h.run_counter("api", &[], 2);
    let cases: &[(&str, &str, &str, &str)] = &[
        // (method, path, body, what the error says)
        (
            "POST",
            "/v1/containers",
            r#"{"name":"../x","image":"busybox"}"#,
            "invalid container name",
        ),
        (
            "POST",
            "/v1/containers",
            r#"{"name":"ok","image":"busybox","volumes":["../../etc:/x"]}"#,
            "volume",
        ),
        (
            "POST",
            "/v1/containers",
            r#"{"name":"ok","image":"busybox","volumes":["a/b:/x"]}"#,
            "invalid volume name",
        ),
        (
            "POST",
            "/v1/containers",
            r#"{"name":"ok","image":"busybox","bogus":1}"#,
            "unknown field",
        ),
        (
            "POST",
            "/v1/containers/api/checkpoint",
            r#"{"name":"../../x"}"#,
            "invalid checkpoint name",
        ),
        (
            "POST",
            "/v1/containers/api/checkpoint",
            r#"{"leave_running":true,"exprt":"/tmp/x"}"#,
            "unknown field",
        ),
        (
            "POST",
            "/v1/containers/api/stop",
            r#"{"timeout":18446744073709551615}"#,
            "too long",
        ),
        (
            "POST",
            "/v1/containers/api/stop",
            r#"{"timeout":9999999999}"#,
            "too long",
        ),
        (
            "POST",
            "/v1/containers/api/stop",
            r#"{"timeout":5,"force":true}"#,
            "unknown field",
        ),
        (
            "POST",
            "/v1/containers/api/restore",
            r#"{"from":"../../../etc"}"#,
            "invalid checkpoint name",
        ),
        (
            "DELETE",
            "/v1/containers/api/checkpoints/..",
            "",
            "invalid checkpoint name",
        ),
        (
            "POST",
            "/v1/images/import",
            r#"{"path":"/dev/zero"}"#,
            "character device",
        ),
        (
            "POST",
            "/v1/images/import",
            r#"{"path":"/tmp","nme":"x"}"#,
            "unknown field",
        ),
        (
            "POST",
            "/v1/restore",
            r#"{"import":"/x","rename":"y"}"#,
            "unknown field",
        ),
        (
            "POST",
            "/v1/migrations/..%2F..%2Fx/resolve",
            r#"{"decision":"resume-source"}"#,
            "invalid migration id",
        ),
        (
            "POST",
            "/v1/hosts",
            r#"{"name":"h","addr":"1.2.3.4:1","port":2}"#,
            "unknown field",
        ),
        ("POST", "/v1/containers", "{not json", "bad request body"),
    ];
    for (method, path, body, expect) in cases {
        let t = Instant::now();
        let (code, text) = api(&h, method, path, body);
        assert_eq!(code, 400, "{method} {path} {body}: {text}");
        assert!(text.contains(expect), "{method} {path} {body}: {text}");
        let err: serde_json::Value = serde_json::from_str(&text).expect("an API error body");
        assert_eq!(err["kind"], "invalid", "{text}");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{method} {path}: slow refusal"
        );
    }
    // Nothing of that reached the disk, and the container still runs.
    assert_eq!(dir_names(&h.root().join("containers")).len(), 1);
    assert_eq!(h.inspect("api")["status"], "running");
    assert!(!h.root().join("volumes/a").exists());
}

#[test]
fn image_import_refuses_an_endless_input_at_once() {
    let h = Host::start();
    let t = Instant::now();
    let err = h.ferry_err(&["image", "import", "/dev/zero"]);
    assert!(err.contains("character device"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5));
    // ferryd still serves.
    h.ferry_ok(&["image", "ls"]);
}

#[test]
fn a_long_stop_does_not_block_other_commands() {
    let h = Host::start();
    h.import("busybox");
    // PID 1 of a container ignores SIGTERM without a handler: stop waits its whole timeout.
    h.run_counter("slow", &[], 2);
    h.run_counter("other", &[], 2);
    let mut stop = Command::new(bin("ferry"))
        .arg("--socket")
        .arg(&h.socket)
        .args(["stop", "-t", "8", "slow"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    for args in [
        &["ps"][..],
        &["inspect", "slow"],
        &["inspect", "other"],
        &["stop", "-t", "1", "other"],
        &["checkpoint", "ls"],
    ] {
        let t = Instant::now();
        h.ferry_ok(args);
        assert!(
            t.elapsed() < Duration::from_secs(4),
            "ferry {args:?} took {:?} during a stop",
            t.elapsed()
        );
    }
    // The dying container cannot be checkpointed meanwhile.
    let err = h.ferry_err(&["checkpoint", "slow"]);
    assert!(err.contains("being stopped"), "{err}");
    let status = stop.wait().unwrap();
    assert!(status.success());
    assert_eq!(h.inspect("slow")["status"], "stopped");
    assert_eq!(h.inspect("other")["status"], "stopped");
}

/// Every path under `root` that others could read or enter: none may exist.
fn readable_by_others(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        // A directory others cannot enter hides everything below it.
        if mode(&dir) & 0o001 == 0 {
            continue;
        }
        out.push(format!("{} ({:o})", dir.display(), mode(&dir)));
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else if m.permissions().mode() & 0o004 != 0 {
                out.push(format!("{} ({:o})", p.display(), mode(&p)));
            }
        }
    }
    out
}

/// Files under `dir` whose mode is not 0600.
fn not_0600(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in walk(dir) {
        let m = std::fs::symlink_metadata(&e).unwrap();
        if m.is_file() && mode(&e) != 0o600 {
            out.push(format!("{} ({:o})", e.display(), mode(&e)));
        } else if m.is_dir() && mode(&e) != 0o700 {
            out.push(format!("{}/ ({:o})", e.display(), mode(&e)));
        }
    }
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_owned()];
    let mut i = 0;
    while i < out.len() {
        if out[i].is_dir() && !out[i].is_symlink() {
            let children: Vec<PathBuf> = std::fs::read_dir(&out[i])
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .collect();
            out.extend(children);
        }
        i += 1;
    }
    out
}

#[test]
fn state_is_private_after_run_checkpoint_and_import() {
    let h = Host::start();
    h.import("busybox");
    h.run_detached(
        "priv",
        &["-e", "SECRET=hunter2", "-v", "pdata:/data"],
        "busybox",
        &[
            "sh",
            "-c",
            "echo x > /data/f; i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.1; done",
        ],
    );
    h.wait_for("ticks", Duration::from_secs(20), || {
        ferry_e2e::ticks(&h.logs("priv")).len() >= 3
    });
    let root = h.root();
    let rec = h.inspect("priv");
    let id = rec["config"]["id"].as_str().unwrap().to_owned();
    let ctr = root.join("containers").join(&id);
    // After run.
    assert_eq!(mode(&root), 0o700);
    for d in [
        "containers",
        "volumes",
        "checkpoints",
        "tmp",
        "images",
        "netns",
        "network",
        "migrations",
    ] {
        assert_eq!(mode(&root.join(d)), 0o700, "{d}");
    }
    assert_container_private(&ctr);
    assert_eq!(mode(&ctr.join("bundle/config.json")), 0o600);
    // The upper dir is the container's `/`, with the image's root mode (containers/storage's
    // 0555 for a layer without `./`: a non-root user may enter, and CRIU finds the mode Podman
    // gives it); its parent keeps everyone else out.
    assert_eq!(mode(&ctr.join("upper")), 0o555);
    // Inside the container, umask and `/` are as Docker has them.
    let out = h.ferry_ok(&["logs", "priv"]);
    assert!(out.contains("tick"), "{out}");

    // After a checkpoint (and its export).
    let exported = h.dir.path().join("priv.tar.zst");
    h.ferry_ok(&[
        "checkpoint",
        "priv",
        "--name",
        "c1",
        "--export",
        exported.to_str().unwrap(),
    ]);
    assert_eq!(
        mode(&exported),
        0o600,
        "the exported archive holds the memory"
    );
    let snap = root.join("checkpoints").join(&id).join("c1");
    let bad = not_0600(&snap);
    assert!(bad.is_empty(), "checkpoint files not private: {bad:?}");
    assert!(walk(&snap).iter().any(|p| p
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("pages-"))));

    // After an import, as another container.
    h.ferry_ok(&["rm", "-f", "priv"]);
    h.ferry_ok(&["restore", "--import", exported.to_str().unwrap()]);
    let id2 = h.inspect("priv")["config"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let imported = root.join("checkpoints").join(&id2).join("imported");
    let bad = not_0600(&imported);
    assert!(
        bad.is_empty(),
        "imported checkpoint files not private: {bad:?}"
    );
    assert_eq!(
        mode(&root.join("containers").join(&id2).join("container.json")),
        0o600
    );
    assert_eq!(mode(&root.join("containers").join(&id2)), 0o700);

    // Nothing under the root is readable by others, and no tmp leftovers.
    let open = readable_by_others(&root);
    assert!(open.is_empty(), "readable by others: {open:?}");
    assert!(dir_names(&root.join("tmp"))
        .iter()
        .all(|n| !n.starts_with("import-")));
    // The socket: owner and group only.
    assert_eq!(mode(&h.socket), 0o660);
}

/// The peer path: what `Prepare` carries is parsed as a `ContainerConfig` (dest.rs), then
/// handed to `Engine::accept_incoming`. Both refuse a hostile identifier before any path.
#[test]
fn a_peers_prepare_with_hostile_identifiers_is_refused() {
    let mut h = Host::start();
    h.kill_ferryd();
    let v = victim(&h);
    let base = serde_json::json!({
        "id": "0123456789abcdef0123456789abcdef", "name": "incoming",
        "image": "sha256:0000000000000000000000000000000000000000000000000000000000000000",
        "image_ref": "busybox", "args": ["sh"], "env": [], "cwd": "/", "user": "",
        "ip": "10.78.1.77", "prefix": 16, "mac": "02:00:0a:4e:01:4d",
        "volumes": [{"name": "data", "destination": "/data", "readonly": false}],
        "memory": null, "created": "now"
    });
    for (field, value, expect) in [
        ("id", "x/../../../victim", "invalid container id"),
        ("name", "../incoming", "invalid container name"),
        ("volume", "../../victim", "invalid volume name"),
    ] {
        let mut j = base.clone();
        if field == "volume" {
            j["volumes"][0]["name"] = value.into();
        } else {
            j[field] = value.into();
        }
        let err = serde_json::from_value::<ContainerConfig>(j).unwrap_err();
        assert!(err.to_string().contains(expect), "{err}");
    }
    // A config that skipped parsing (built in code) is refused by the engine itself.
    let good: ContainerConfig = serde_json::from_value(base).unwrap();
    let root = h.root();
    let before = state(&h);
    let results = h.with_engine(move |e| {
        let mut out = Vec::new();
        for edit in 0..2 {
            let mut cfg = good.clone();
            match edit {
                0 => cfg.id = "x/../../../victim".into(),
                _ => cfg.volumes[0].name = "../../victim".into(),
            }
            out.push(e.accept_incoming(cfg, "peer"));
        }
        out
    });
    for r in results {
        let err = r.unwrap_err();
        assert!(matches!(err, ContainerError::InvalidId(_)), "{err}");
    }
    victim_intact(&v);
    assert_eq!(state(&h), before);
    assert!(!root.join("victim").exists());
}

/// After a live migration, what arrived on the destination is as private as what was made
/// there: its container dir, record and log, the volume, and no readable scratch.
#[test]
fn state_is_private_after_a_migration() {
    use ferry_e2e::lab::{lab, wait_for};
    let t = lab();
    t.import("host-a", "busybox");
    t.ok(
        "host-a",
        &[
            "run",
            "-d",
            "--name",
            "mover",
            "-e",
            "SECRET=hunter2",
            "-v",
            "mvol:/data",
            "busybox",
            "sh",
            "-c",
            ferry_e2e::COUNTER,
        ],
    );
    wait_for("ticks on A", Duration::from_secs(20), || {
        ferry_e2e::ticks(&t.logs("host-a", "mover")).len() >= 5
    });
    let (ok, report, err) = t.migrate("host-a", "mover", "host-b");
    assert!(ok, "A→B failed: {err}\n{}", t.logs_tail());
    assert_eq!(report["outcome"], "committed", "{report}");
    let root = t.host_root("host-b");
    let rec: serde_json::Value =
        serde_json::from_str(&t.ok("host-b", &["inspect", "mover"])).unwrap();
    let id = rec["config"]["id"].as_str().unwrap().to_owned();
    let ctr = root.join("containers").join(&id);
    assert_eq!(mode(&root), 0o700);
    for d in ["containers", "volumes", "checkpoints", "tmp", "migrations"] {
        assert_eq!(mode(&root.join(d)), 0o700, "{d}");
    }
    assert_container_private(&ctr);
    assert_eq!(mode(&root.join("volumes/mvol")), 0o700);
    // Whatever a migration leaves in tmp/ (a crash would) is private too.
    for e in walk(&root.join("tmp")) {
        let m = mode(&e);
        assert!(m & 0o007 == 0, "{} is {m:o}", e.display());
    }
    let open = readable_by_others(&root);
    assert!(open.is_empty(), "readable by others: {open:?}");
}

/// ferryd's tmpfs for incoming pages goes with it on a clean stop (issue 13: it stayed mounted).
#[test]
fn pages_tmpfs_is_unmounted_when_ferryd_stops() {
    let mut h = Host::start();
    let pages = h.root().join("pages");
    let mounted = || {
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some(pages.to_str().unwrap()))
    };
    assert!(mounted(), "ferryd mounts {} at start", pages.display());
    h.stop_ferryd();
    assert!(
        !mounted(),
        "{} is still mounted after SIGTERM",
        pages.display()
    );
}

/// `run --ip` asks every known peer about the address: one that uses it is named in a warning
/// (stderr and `--json`), and the container runs anyway. A peer that is down, or cut off, costs
/// `run` at most the question's timeout, and the warning says the address was not checked.
#[test]
fn run_ip_warns_when_a_peer_uses_the_address() {
    use ferry_e2e::lab::lab;
    let mut t = lab();
    t.import("host-a", "busybox");
    t.import("host-b", "busybox");
    let ip = "10.77.1.65";
    t.ok(
        "host-b",
        &[
            "run", "-d", "--name", "squatter", "--ip", ip, "busybox", "sleep", "3600",
        ],
    );
    let run = |t: &ferry_e2e::lab::TestLab, name: &str, ip: &str| {
        let t0 = Instant::now();
        let out = t.ferry(
            "host-a",
            &[
                "--json", "run", "-d", "--name", name, "--ip", ip, "busybox", "sleep", "3600",
            ],
        );
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "run --ip {ip}: {err}\n{}",
            t.logs_tail()
        );
        let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (reply, err, t0.elapsed())
    };

    let events = t
        .lab
        .host_command("host-a", "ferry")
        .unwrap()
        .args(["--json", "events"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let (reply, err, _) = run(&t, "twin", ip);
    assert!(
        err.contains("warning") && err.contains("host-b") && err.contains(ip),
        "the warning names the peer and the address: {err}"
    );
    assert!(err.contains("squatter"), "and what uses it there: {err}");
    assert_eq!(reply["config"]["name"], "twin", "{reply}");
    assert_eq!(reply["ip_check"][0]["peer"], "host-b", "{reply}");
    assert_eq!(reply["ip_check"][0]["answer"], "in-use", "{reply}");
    assert!(reply["warnings"][0].as_str().unwrap().contains("host-b"));
    assert_eq!(t.status("host-a", "twin").as_deref(), Some("running"));
    let log = std::fs::read_to_string(&t.lab.host("host-a").unwrap().log).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("host-b") && l.contains(ip)),
        "ferryd logs the warning"
    );

    // And an event says it too.
    std::thread::sleep(Duration::from_millis(1000));
    let mut events = events;
    events.kill().unwrap();
    let seen = String::from_utf8_lossy(&events.wait_with_output().unwrap().stdout).into_owned();
    assert!(
        seen.lines().any(|l| {
            let e: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
            e["action"] == "warning"
                && e["name"] == "twin"
                && e["detail"].as_str().is_some_and(|d| d.contains("host-b"))
        }),
        "no warning event: {seen}"
    );

    // A free address: no warning.
    let (reply, err, _) = run(&t, "free", "10.77.1.66");
    assert!(!err.contains("warning"), "{err}");
    assert_eq!(reply["ip_check"][0]["answer"], "free", "{reply}");
    assert!(reply.get("warnings").is_none(), "{reply}");

    // host-b cut off: its SYNs go unanswered, so only the timeout ends the question.
    t.link("host-b", false);
    let (reply, err, took) = run(&t, "cut", "10.77.1.67");
    t.link("host-b", true);
    assert!(
        took < Duration::from_secs(6),
        "run waited {took:?} on a silent peer"
    );
    assert!(
        err.contains("could not ask peer host-b") && err.contains("not checked"),
        "{err}"
    );
    assert_eq!(reply["ip_check"][0]["answer"], "unknown", "{reply}");

    // host-b's ferryd down: refused at once.
    t.lab.kill_ferryd("host-b").unwrap();
    let (_, err, took) = run(&t, "down", "10.77.1.68");
    assert!(
        took < Duration::from_secs(6),
        "run waited {took:?} on a dead peer"
    );
    assert!(err.contains("could not ask peer host-b"), "{err}");
    t.lab.start_ferryd("host-b").unwrap();
}

/// A `ferry` command started in the background on `h`.
fn spawn_ferry(h: &Host, args: &[&str]) -> std::process::Child {
    Command::new(bin("ferry"))
        .arg("--socket")
        .arg(&h.socket)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// `rm -f` of a container in a stop's grace period, or in the middle of a checkpoint, kills it
/// and removes it at once (Docker's `rm -f`), leaving nothing, and the other operation ends.
#[test]
fn rm_force_of_a_busy_container_kills_and_removes_it() {
    let h = Host::start();
    h.import("busybox");
    let before = state(&h);

    // A stop waiting out its grace period: PID 1 ignores SIGTERM.
    h.run_counter("slow", &[], 2);
    let stop = spawn_ferry(&h, &["stop", "-t", "30", "slow"]);
    std::thread::sleep(Duration::from_millis(800));
    let t = Instant::now();
    h.ferry_ok(&["rm", "-f", "slow"]);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "rm -f took {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    let out = stop.wait_with_output().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "the stop went on for {:?} after its container was removed",
        t.elapsed()
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing comes back once both have ended (the stop used to rewrite the record).
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(state(&h), before, "rm -f during a stop left something");
    assert_eq!(h.ferry_ok(&["ps", "-a", "--json"]).trim(), "[]");

    // A checkpoint of a few hundred MiB: `tail` keeps a line with no end in memory, and the
    // pipe stays open (so `tail` waits, holding it) while `sleep` runs.
    h.run_detached(
        "big",
        &[],
        "busybox",
        &[
            "sh",
            "-c",
            "(head -c 300m /dev/zero; exec sleep 3600) | tail",
        ],
    );
    let ckpts = h.root().join("checkpoints");
    // `head` fills the pipe at memory speed: a few seconds leave `tail` holding all of it.
    std::thread::sleep(Duration::from_secs(4));
    let big = h.inspect("big");
    assert_eq!(
        big["status"],
        "running",
        "{big}\n{}",
        ferry_e2e::tail(&h.ferryd_log(), 30)
    );
    let mut ckpt = spawn_ferry(&h, &["checkpoint", "big"]);
    h.wait_for("the checkpoint to start", Duration::from_secs(20), || {
        !dir_names(&ckpts).is_empty()
    });
    assert!(
        ckpt.try_wait().unwrap().is_none(),
        "the checkpoint ended too soon for the test"
    );
    let t = Instant::now();
    let out = h.ferry(&["rm", "-f", "big"]);
    assert!(
        out.status.success(),
        "rm -f during a checkpoint: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "rm -f took {:?}",
        t.elapsed()
    );
    let _ = ckpt.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        state(&h),
        before,
        "rm -f during a checkpoint left something"
    );
    assert_eq!(h.ferry_ok(&["ps", "-a", "--json"]).trim(), "[]");
    h.ferry_ok(&["image", "ls"]);
}

/// Feeds `fifo` one byte every 100 ms until its reader goes away (EPIPE) or 60 s pass.
fn slow_feeder(fifo: PathBuf) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        use std::io::Write;
        let Ok(mut w) = std::fs::OpenOptions::new().write(true).open(&fifo) else {
            return;
        };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(60) {
            if w.write_all(b"\0").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

/// Ctrl-C of `ferry image import` or `ferry restore --import` reading an endless, slow stream
/// (a FIFO) closes the API connection: ferryd stops the import, leaves nothing behind, keeps
/// serving, and the image store's lock is free.
#[test]
fn an_import_is_cancelled_when_its_client_goes_away() {
    let h = Host::start();
    h.import("busybox");
    let staging = h.root().join("images/tmp");
    let leftovers = || (state(&h), dir_names(&staging));
    let before = leftovers();
    for (i, cmd) in [&["image", "import"][..], &["restore", "--import"]]
        .into_iter()
        .enumerate()
    {
        let fifo = h.dir.path().join(format!("endless-{i}"));
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let feeder = slow_feeder(fifo.clone());
        let mut args = cmd.to_vec();
        args.push(fifo.to_str().unwrap());
        let cli = spawn_ferry(&h, &args);
        h.wait_for(
            "the import to be under way",
            Duration::from_secs(20),
            || leftovers() != before,
        );
        std::thread::sleep(Duration::from_millis(500));
        // The CLI dies (as on Ctrl-C: SIGKILL here, because a test run in the background
        // inherits SIGINT ignored), which closes its API connection.
        let mut cli = cli;
        assert!(
            cli.try_wait().unwrap().is_none(),
            "ferry {cmd:?} ended by itself"
        );
        cli.kill().unwrap();
        cli.wait().unwrap();
        let t0 = Instant::now();
        h.wait_for(
            "the cancelled import to clean up",
            Duration::from_secs(10),
            || leftovers() == before,
        );
        eprintln!(
            "ferry {cmd:?}: cleaned up {:?} after its client died",
            t0.elapsed()
        );
        feeder.join().unwrap();
        assert!(
            h.ferryd_log().contains("cancelled"),
            "ferryd says it cancelled: {}",
            ferry_e2e::tail(&h.ferryd_log(), 20)
        );
        // Responsive, and the store's lock is free: another import goes through at once.
        let t = Instant::now();
        h.ferry_ok(&["ps", "-a"]);
        h.import("busybox");
        assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
        std::fs::remove_file(&fifo).unwrap();
    }
    assert_eq!(h.ferry_ok(&["ps", "-a", "--json"]).trim(), "[]");
}
