//! Running one container: the OCI spec ferry hands to runc, a typed wrapper over the runc CLI,
//! and the per-container shim that owns the container's stdio and exit status.
//!
//! - [`spec`] builds `config.json` (namespaces with ferry's own netns, cgroup path, rlimits capped
//!   at this host's hard limits, the `org.criu.config` annotation) and resolves `--user`.
//! - [`runc`] runs runc with this host's `--root`; every call goes through [`crate::tool::Tool`]
//!   so runc's stderr ends up in the error.
//! - [`shim`] is a small detached process per container (`ferryd shim …`) that starts or restores
//!   the container, copies its stdout/stderr into `ctr.log` and records `exit.json`, so neither
//!   depends on ferryd staying up.
//! - [`freezer`] reads, thaws and checks a container's cgroup-v1 freezer (rollback after CRIU).

pub mod freezer;
pub mod runc;
pub mod shim;
pub mod spec;

#[cfg(test)]
mod testutil;
