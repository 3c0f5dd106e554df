//! The CRIU config file of each container (named by its `org.criu.config` annotation, which
//! runc passes to CRIU on every checkpoint and restore), and the action script it names.
//!
//! The script runs `ferryd criu-hook`, which reports CRIU's actions to a migration in progress
//! (see `migration::hook`); without [`HOOK_SOCKET_ENV`] in its environment (a plain
//! checkpoint or restore) it exits at once.

use std::path::{Path, PathBuf};

/// Set in runc's environment by a migration; CRIU passes it on to the action script.
pub const HOOK_SOCKET_ENV: &str = "FERRY_HOOK_SOCKET";
pub const HOOK_SCRIPT: &str = "criu-hook.sh";
pub const CRIU_CONF: &str = "criu.conf";

/// Writes the container's CRIU config (named by the `org.criu.config` annotation) and the
/// action script it points to.
pub fn write_criu_config(ctr_dir: &Path, ferryd: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let script = ctr_dir.join(HOOK_SCRIPT);
    let body = format!(
        "#!/bin/sh\n# Written by ferryd: reports CRIU actions to a migration in progress.\n[ -n \"${HOOK_SOCKET_ENV}\" ] || exit 0\nexec '{}' criu-hook\n",
        ferryd.display()
    );
    std::fs::write(&script, body)?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    let conf = ctr_dir.join(CRIU_CONF);
    std::fs::write(&conf, format!("action-script {}\n", script.display()))?;
    Ok(conf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn config_names_an_executable_hook_script() {
        let d = tempfile::tempdir().unwrap();
        let conf = write_criu_config(d.path(), Path::new("/usr/bin/ferryd")).unwrap();
        let script = d.path().join(HOOK_SCRIPT);
        assert_eq!(
            std::fs::read_to_string(&conf).unwrap(),
            format!("action-script {}\n", script.display())
        );
        let body = std::fs::read_to_string(&script).unwrap();
        assert!(
            body.contains("[ -n \"$FERRY_HOOK_SOCKET\" ] || exit 0"),
            "{body}"
        );
        assert!(
            body.ends_with("exec '/usr/bin/ferryd' criu-hook\n"),
            "{body}"
        );
        let mode = std::fs::metadata(&script).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
    }
}
