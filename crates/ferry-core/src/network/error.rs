use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::tool::ToolError;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("could not open a netlink socket")]
    NetlinkSocket(#[source] std::io::Error),
    #[error("netlink: {op}")]
    Netlink {
        op: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("setting {what} in a container's netns")]
    Sysctl {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("network interface {name} does not exist")]
    LinkNotFound { name: String },
    #[error("network interface {name} exists but is not a bridge")]
    NotABridge { name: String },
    #[error("interface name {name:?} is invalid: {reason}")]
    InvalidIfName { name: String, reason: &'static str },
    #[error("network namespace {path}: {op}")]
    Netns {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("network namespace {path} already exists")]
    NetnsExists { path: PathBuf },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("raw socket: {op}")]
    Socket {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("could not start a thread for network namespace work")]
    Thread(#[source] std::io::Error),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("{ip} is outside subnet {subnet}")]
    OutsideSubnet { ip: Ipv4Addr, subnet: String },
    #[error("{ip} is already in use by {owner}")]
    InUse { ip: Ipv4Addr, owner: String },
    #[error("{ip} is reserved (network, broadcast, or an address of this host)")]
    Reserved { ip: Ipv4Addr },
    #[error("no free address left in {range}")]
    Exhausted { range: String },
    #[error("invalid address range {start}-{end} for subnet {subnet}")]
    InvalidRange {
        start: Ipv4Addr,
        end: Ipv4Addr,
        subnet: String,
    },
    #[error("invalid prefix length /{prefix}")]
    InvalidPrefix { prefix: u8 },
    #[error("IPAM state file {path} is corrupt")]
    IpamState {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl NetError {
    pub(crate) fn netlink(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
        let op = op.into();
        move |source| NetError::Netlink {
            op,
            source: Box::new(source),
        }
    }

    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> NetError {
        let path = path.into();
        move |source| NetError::Io { op, path, source }
    }
}

/// The negative errno of a netlink error reply, if that is what `e` is.
pub(crate) fn netlink_errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
        _ => None,
    }
}
